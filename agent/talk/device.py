"""Push-to-talk on the device: the officer's voice out, the control room's messages in.

Threads (all end on the one stop event; queues are bounded)::

    press()/release()/say()  (any thread: button, GPIO, local socket)  --sessions (16)-->
    talk-out    microphone -> Opus/Ogg -> a chunk every chunk_ms of audio -> MQTT (QoS 1)
                at release: the last chunk, signed; then a seal job       --seal jobs (64)-->
    talk-seal   Spool.put_bytes("audio", ogg, audio/ogg, meta {talk, direction, message_id})
    talk-in     talk/in, groups/{g}/talk/in, talk/ctl -> reassembly -> verify -> receipts,
                seal job (direction "in"), playback queue (queue_messages); gaps: ask, give up
    talk-play   waits while the officer talks; tone, message -> speaker; receipt "played"

The outgoing side is :mod:`agent.talk.outgoing`, the incoming side (with playback)
:mod:`agent.talk.incoming`; what they share (settings, link, counters, the talking flag, the
seal queue) is :class:`agent.talk.core.TalkCore`. This module wires them and seals.

Voice goes out through :meth:`MqttLink.publish` from the talk-out thread, not through the
forwarder: the publish is queued in the link's socket at once, behind at most the ``window``
backfill chunks the forwarder already handed to the link (the same bound the live lane has) and
ahead of everything else in the spool. The forwarder is not changed. The sealed copy of every
message follows the usual evidence path (spool, backfill, platform acknowledgement).

The microphone is the device's one (:class:`agent.capture.audio.Microphone`; the audio
recorder's when audio is on): a press takes a tap on it (a missing one refuses the press with
its reason), the release gives it back. On a device with push-to-talk alone, the talk makes
its own, which opens the device for a press only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import wallclock
from agent.capture.audio import Microphone
from agent.capture.portaudio import PortAudio
from agent.capture.settings import AudioSettings
from agent.errors import CommandError, SpoolError
from agent.storage.spool import Spool
from agent.talk import wire
from agent.talk.audio_io import INPUT_QUEUE_BLOCKS, AudioIO, SoundDeviceIO
from agent.talk.core import SealJob, TalkCore, TalkStats
from agent.talk.incoming import Incoming
from agent.talk.outgoing import BLOCK_MS, Outgoing
from agent.talk.settings import TalkSettings
from agent.uplink.control import SeenIds
from agent.uplink.mqtt import MqttLink

log = logging.getLogger(__name__)

__all__ = ["Talk", "TalkStats", "command_handlers"]


class Talk:
    """The device's talk service. Build before the MQTT link starts (it adds routes).

    ``microphone``/``portaudio``: the device's one microphone and PortAudio, shared with the
    audio recorder; ``io`` replaces the real devices altogether.
    """

    def __init__(
        self,
        settings: TalkSettings,
        *,
        device_id: str,
        spool: Spool,
        stop: threading.Event,
        link: MqttLink | None,
        command_key: Ed25519PublicKey | None,
        signing_key: Ed25519PrivateKey | None,
        seen: SeenIds | None = None,
        io: AudioIO | None = None,
        microphone: Microphone | None = None,
        portaudio: PortAudio | None = None,
        clock: Callable[[], float] = wallclock.now,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.spool = spool
        self.stop = stop
        self.link = link
        self._own_mic: Microphone | None = None
        if io is None:
            pa = portaudio or PortAudio()
            if microphone is None:  # push-to-talk alone: the device opens for a press only
                microphone = self._own_mic = Microphone(
                    AudioSettings(
                        enabled=True,
                        device=settings.microphone,
                        rate=settings.rate,
                        block_ms=BLOCK_MS,
                        queue_blocks=INPUT_QUEUE_BLOCKS,
                    ),
                    stop,
                    portaudio=pa,
                )
            elif settings.microphone.strip() not in ("", microphone.settings.device.strip()):
                log.warning("talk: talk.microphone %r is not used: push-to-talk shares the "
                            "recorder's microphone (audio.device %r)", settings.microphone,
                            microphone.settings.device)  # fmt: skip
            io = SoundDeviceIO(microphone, settings.speaker, pa)
        self.io: AudioIO = io
        self.core = core = TalkCore(settings, device_id, link, io, stop)
        self.stats: TalkStats = core.stats
        self.outgoing = Outgoing(core, signing_key)
        self.incoming = Incoming(
            core,
            command_key=command_key,
            seen=seen,
            clock=clock,
            on_control=self.outgoing.resend,
        )
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start_threads(self) -> None:
        core = self.core
        self.io.start()
        if self._own_mic is not None:
            self._threads.append(self._own_mic.thread)
        core.mic_reason = self.io.probe_input()
        core.speaker_reason = self.io.probe_output()
        for what, reason in (("microphone", core.mic_reason), ("speaker", core.speaker_reason)):
            if reason:
                log.warning("talk: no %s: %s (talk refused until it is there)", what, reason)
        for name, body in (
            ("talk-out", self.outgoing.run),
            ("talk-in", self.incoming.run),
            ("talk-play", self.incoming.play),
            ("talk-seal", self._run_seal),
        ):
            t = threading.Thread(target=body, name=name)
            t.start()
            self._threads.append(t)

    def is_alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def threads(self) -> list[threading.Thread]:
        """The talk threads once started (the composition root watches each)."""
        return list(self._threads)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads (after the stop event); True when all have ended."""
        for t in self._threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ state (any thread)

    @property
    def talking(self) -> bool:
        return self.core.talking.is_set()

    def health(self) -> dict[str, Any]:
        core = self.core
        with core.lock:
            mic, spk = core.mic_reason, core.speaker_reason
            st = core.stats
            return {
                "state": "ok" if not mic and not spk else "degraded",
                "microphone": {"state": "missing" if mic else "ok", "reason": mic},
                "speaker": {"state": "missing" if spk else "ok", "reason": spk},
                "talking": core.talking.is_set(),
                "waiting_to_play": self.incoming.waiting,
                "uplink": self.link is not None and self.link.connected,
                "sent": st.sent,
                "received": st.received,
                "played": st.played,
                "incomplete": st.incomplete,
                "rejected": st.rejected,
                "not_played": st.not_played,
                "seal_failures": st.seal_failures,
            }

    # ------------------------------------------------------------------ press to talk

    def press(self, source: str = "device") -> dict[str, Any]:
        """Start a message from the microphone; CommandError with the reason if it cannot."""
        return self.outgoing.press(source)

    def release(self, source: str = "device") -> dict[str, Any]:
        return self.outgoing.release(source)

    def say(self, path: Path, source: str = "device") -> dict[str, Any]:
        """Send a file (any format FFmpeg reads) as a message, as if spoken now."""
        return self.outgoing.say(path, source)

    # ------------------------------------------------------------------ talk-seal

    def _run_seal(self) -> None:
        self.core.serve("talk-seal", self.core.seal, self._seal, drain=True)

    def _seal(self, job: SealJob) -> None:
        core = self.core
        try:
            self.spool.put_bytes(
                "audio",
                job.data,
                content_type=wire.CONTENT_TYPE,
                meta=job.meta,
                start_utc=job.start_utc,
                end_utc=job.end_utc,
            )
            with core.lock:
                core.stats.sealed += 1
        except (SpoolError, OSError) as exc:
            with core.lock:
                core.stats.seal_failures += 1
            log.error("talk: cannot seal message %s: %s", job.meta["message_id"], exc)


def command_handlers(talk: Talk, origin: str = "device") -> dict[str, Callable[..., Any]]:
    """``talk.press``, ``talk.release``, ``talk.say`` (local socket only: the platform must not
    open an officer's microphone) and ``talk.status``."""

    def press(args: dict[str, Any]) -> dict[str, Any]:
        return talk.press(origin)

    def release(args: dict[str, Any]) -> dict[str, Any]:
        return talk.release(origin)

    def say(args: dict[str, Any]) -> dict[str, Any]:
        path = args.get("path")
        if not isinstance(path, str) or not path:
            raise CommandError('talk.say: needs {"path": FILE}')
        return talk.say(Path(path), origin)

    def status(args: dict[str, Any]) -> dict[str, Any]:
        return talk.health()

    if origin != "device":
        return {"talk.status": status}
    return {"talk.press": press, "talk.release": release, "talk.say": say, "talk.status": status}
