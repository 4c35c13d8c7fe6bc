"""Push-to-talk's incoming side: the control room's messages to the officer.

``talk-in`` (:meth:`Incoming.run`) reads ``talk/in``, ``groups/{g}/talk/in`` and ``talk/ctl``:
chunks are reassembled, the message verified (the platform's signature, the addressee, not a
replay, not expired), answered with receipts, sealed (direction "in") and queued to play
(``queue_messages``); a message silent for ``gap_s`` is asked for what it lacks, for
``resume_s`` given up (``incomplete``). ``talk-play`` (:meth:`Incoming.play`) waits while the
officer talks, then plays a tone and the message on the speaker; receipt ``played``.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import wallclock
from agent.errors import FormatError, SourceError, VerificationError
from agent.loops.guard import Guard
from agent.talk import wire
from agent.talk.core import POLL_S, SAMPLE_BYTES, SealJob, TalkCore
from agent.uplink.control import SeenIds
from agent.uplink.mqtt import Inbound

log = logging.getLogger(__name__)

SKEW_S = 300.0


@dataclass(frozen=True)
class _Playable:
    id: str
    body: bytes
    msg: dict[str, Any]


class Incoming:
    """``on_control``: what to do with a ``talk/ctl`` request (the outgoing side's resend)."""

    def __init__(
        self,
        core: TalkCore,
        *,
        command_key: Ed25519PublicKey | None,
        seen: SeenIds | None,
        clock: Callable[[], float],
        on_control: Callable[[bytes], None],
    ) -> None:
        self.core = core
        s = core.settings
        self._command_key = command_key
        self._seen = seen
        self._clock = clock
        self._on_control = on_control
        self.address = wire.device_address(core.device_id)
        self._groups = {wire.group_topic(g): wire.group_address(g) for g in s.groups}
        self._inboxes: list[tuple[str, queue.Queue[Inbound]]] = []
        link = core.link
        if link is not None:
            self._inboxes.append(("in", link.route(wire.in_topic(core.device_id))))
            for topic in self._groups:
                self._inboxes.append(("in", link.route(topic)))
            self._inboxes.append(("ctl", link.route(wire.ctl_topic(core.device_id))))
        self._play: queue.Queue[_Playable] = queue.Queue(s.queue_messages)
        # guarded by core.lock:
        self._receipts: list[tuple[str, bytes]] = []  # not yet published (link down)
        self.waiting = 0  # delivered messages not yet played (queued or held by talk-play)
        # owned by talk-in:
        self._reasm = wire.Reassembler(s.max_message_kib * 1024, s.queue_messages)

    # ------------------------------------------------------------------ talk-in

    def run(self) -> None:
        # Each message contained (agent.contain); the round under the one loop guard.
        Guard("talk-in", self.core.stop, log).run(self._round)

    def _round(self) -> None:
        core = self.core
        got = False
        for kind, inbox in self._inboxes:
            try:
                msg = inbox.get_nowait()
            except queue.Empty:
                continue
            got = True
            try:
                if kind == "ctl":
                    self._on_control(msg.payload)
                else:
                    self._on_chunk(msg)
            except Exception as exc:  # contained (agent.contain): the next one is handled
                log.error("talk: the message on %s failed: %r", msg.topic[:200], exc)
            finally:
                if core.link is not None:
                    core.link.ack(msg)
        self._check_stale(time.monotonic())
        self._flush_receipts()
        if not got:
            core.stop.wait(POLL_S)

    def _on_chunk(self, msg: Inbound) -> None:
        try:
            chunk = wire.parse_chunk(msg.payload)
        except FormatError as exc:
            with self.core.lock:
                self.core.stats.bad_chunks += 1
            log.warning("talk: bad chunk on %s: %s", msg.topic, exc)
            return
        done_status = self._reasm.finished(chunk.id)
        if done_status is not None:
            if chunk.last:  # the sender did not hear us: say it again
                self._receipt(chunk.id, done_status, repeated=True)
            return
        try:
            done = self._reasm.add(chunk, msg.topic, time.monotonic())
        except FormatError as exc:
            self._reject(chunk.id, str(exc))
            return
        if done is not None:
            self._deliver(done)

    def _reject(self, mid: str, reason: str) -> None:
        log.warning("talk: message %s rejected: %s", mid, reason)
        with self.core.lock:
            self.core.stats.rejected += 1
        self._reasm.finish(mid, "rejected")
        self._receipt(mid, "rejected", reason=reason)

    def _deliver(self, done: wire.Complete) -> None:
        core = self.core
        to = done.msg.get("to")
        try:
            if self._command_key is None:
                raise VerificationError("no platform key on this device (uplink.command_key)")
            wire.verify(done, self._command_key, now=self._clock(), skew_s=SKEW_S)
            expected = self._groups.get(done.topic, self.address)
            if to != expected:
                raise VerificationError(f"addressed to {to!r}, not {expected!r}")
            if self._seen is not None:
                if done.id in self._seen:
                    raise VerificationError("replayed (id already received)")
                self._seen.add(done.id, float(done.msg["expires"]), SKEW_S)
        except VerificationError as exc:
            self._reject(done.id, str(exc))
            return
        duration = float(done.msg.get("duration_s") or 0.0)
        with core.lock:
            core.stats.received += 1
        self._reasm.finish(done.id, "delivered")
        self._receipt(done.id, "delivered", n=done.msg["n"], size=len(done.body))
        log.info("talk: message %s from %s delivered (%.1f s)", done.id, done.msg["from"], duration)
        now = wallclock.now()
        meta = {
            "talk": True,
            "direction": "in",
            "message_id": done.id,
            "from": done.msg.get("from"),
            "to": to,
            "codec": "opus",
            "container": "ogg",
            "duration_s": duration,
            "sha256": done.msg["sha256"],
            "signed": {"msg": done.msg, "sig": done.sig},
        }
        core.queue_seal(SealJob(done.body, meta, now - duration, now))
        try:
            self._play.put_nowait(_Playable(done.id, done.body, done.msg))
            with core.lock:
                self.waiting += 1
        except queue.Full:
            self._not_played(done.id, f"{core.settings.queue_messages} messages already waiting")

    def _check_stale(self, now: float) -> None:
        s = self.core.settings
        for p in self._reasm.stale(now, s.gap_s):
            if now - p.progress_at >= s.resume_s:
                log.warning(
                    "talk: message %s incomplete after %.0f s (have %d of %s chunks): dropped",
                    p.id,
                    now - p.first_at,
                    len(p.chunks),
                    p.n if p.n is not None else "?",
                )
                with self.core.lock:
                    self.core.stats.incomplete += 1
                self._reasm.finish(p.id, "incomplete")
                self._receipt(
                    p.id, "incomplete", final=True, have=p.have(), n=p.n, reason="gave up"
                )
            elif now - p.asked_at >= s.gap_s:
                p.asked_at = now
                p.asks += 1
                self._receipt(p.id, "incomplete", final=False, have=p.have(), n=p.n)

    def _receipt(self, mid: str, status: str, **extra: Any) -> None:
        core = self.core
        payload = wire.receipt(core.device_id, mid, status, **extra)
        topic = wire.receipt_topic(core.device_id)
        if not core.publish(topic, payload):
            with core.lock:
                self._receipts.append((topic, payload))
                del self._receipts[:-256]

    def _flush_receipts(self) -> None:
        core = self.core
        with core.lock:
            if not self._receipts:
                return
            todo, self._receipts = self._receipts, []
        for i, (topic, payload) in enumerate(todo):
            if not core.publish(topic, payload):
                with core.lock:
                    self._receipts[:0] = todo[i:]
                return

    # ------------------------------------------------------------------ talk-play

    def _not_played(self, mid: str, reason: str) -> None:
        log.warning("talk: message %s not played: %s", mid, reason)
        with self.core.lock:
            self.core.stats.not_played += 1
        self._receipt(mid, "not_played", reason=reason)

    def play(self) -> None:
        self.core.serve("talk-play", self._play, self._play_when_free)

    def _play_when_free(self, item: _Playable) -> None:
        core = self.core
        # A message that arrives while the officer talks waits for the release.
        while core.talking.is_set():
            if core.stop.wait(POLL_S):
                return
        try:
            self._play_one(item)
        finally:
            with core.lock:
                self.waiting -= 1

    def _play_one(self, item: _Playable) -> None:
        from agent.talk.codec import decode_to_pcm, silence, tone

        core = self.core
        s, rate = core.settings, core.rate
        try:
            pcm = decode_to_pcm(item.body, rate)
        except SourceError as exc:
            self._not_played(item.id, f"cannot decode: {exc}")
            return
        try:
            out = core.io.open_output(rate)
        except SourceError as exc:
            with core.lock:
                core.speaker_reason = str(exc)
            self._not_played(item.id, f"no speaker ({exc})")
            return
        with core.lock:
            core.speaker_reason = ""
        began = time.monotonic()
        try:
            sound = tone(s.tone_hz, s.tone_ms, rate) + silence(100, rate) + pcm + silence(300, rate)
            step = rate // 10 * SAMPLE_BYTES
            for i in range(0, len(sound), step):
                if core.stop.is_set():
                    return
                out.write(sound[i : i + step])
        except SourceError as exc:
            self._not_played(item.id, str(exc))
            return
        finally:
            out.close()
        with core.lock:
            core.stats.played += 1
        log.info("talk: message %s played", item.id)
        self._receipt(
            item.id,
            "played",
            duration_s=round(len(pcm) / SAMPLE_BYTES / rate, 3),
            took_s=round(time.monotonic() - began, 3),
        )
