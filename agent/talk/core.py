"""What the talk's parts share: the settings and the link, the counters under one lock, the
"officer is talking" flag, publishing, and the queue of messages to seal.

:class:`agent.talk.device.Talk` builds one :class:`TalkCore` and hands it to its outgoing part
(:mod:`agent.talk.outgoing`: press, release, ``say``, chunks out, resends) and its incoming part
(:mod:`agent.talk.incoming`: reassembly, verification, receipts, playback).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.errors import UplinkError
from agent.loops.guard import Guard
from agent.talk.audio_io import AudioIO
from agent.talk.settings import TalkSettings
from agent.uplink.mqtt import MqttLink

log = logging.getLogger(__name__)

SAMPLE_BYTES = 2
T = TypeVar("T")

POLL_S = 0.05
SEAL_QUEUE = 64


@dataclass
class TalkStats:
    sent: int = 0
    sent_chunks: int = 0
    sent_bytes: int = 0
    received: int = 0
    played: int = 0
    incomplete: int = 0
    rejected: int = 0
    not_played: int = 0
    resent_chunks: int = 0
    bad_chunks: int = 0
    sealed: int = 0
    seal_failures: int = 0


@dataclass(frozen=True)
class SealJob:
    data: bytes
    meta: dict[str, Any]
    start_utc: float
    end_utc: float


class TalkCore:
    def __init__(
        self,
        settings: TalkSettings,
        device_id: str,
        link: MqttLink | None,
        io: AudioIO,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.link = link
        self.io = io
        self.stop = stop
        self.rate = settings.rate
        self.talking = threading.Event()  # the officer holds the button (or a file is sent)
        self.seal: queue.Queue[SealJob] = queue.Queue(SEAL_QUEUE)
        self.lock = threading.Lock()
        # guarded by lock:
        self.stats = TalkStats()
        self.mic_reason = "not checked"
        self.speaker_reason = "not checked"

    def serve(
        self,
        name: str,
        q: queue.Queue[T],
        handle: Callable[[T], object],
        idle: Callable[[], object] | None = None,
        *,
        drain: bool = False,
    ) -> None:
        """Thread body: ``handle`` each item of ``q`` as it comes, until the stop (with
        ``drain``, until the stop and ``q`` empty); ``idle`` after each half second without
        one. Both under the one loop guard: one that raises is reported once, waited out,
        and the thread goes on with the next item."""
        guard = Guard(name, self.stop, log)
        while not (self.stop.is_set() and (not drain or q.empty())):
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if idle is not None:
                    guard.attempt(idle)
                continue
            guard.attempt(functools.partial(handle, item))

    def publish(self, topic: str, payload: bytes) -> bool:
        """QoS 1 through the link (queued in its socket at once); False when it is down."""
        if self.link is None:
            return False
        try:
            return self.link.publish(topic, payload, qos=1) is not None
        except UplinkError as exc:
            log.warning("talk: publish to %s failed: %s", topic, exc)
            return False

    def queue_seal(self, job: SealJob) -> None:
        try:
            self.seal.put(job, timeout=5)
        except queue.Full:
            with self.lock:
                self.stats.seal_failures += 1
            log.error("talk: seal queue full: message %s not sealed", job.meta["message_id"])
