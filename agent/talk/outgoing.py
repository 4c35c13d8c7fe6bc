"""Push-to-talk's outgoing side: the officer's voice to the control room.

``press``/``release``/``say`` may be called from any thread (button, GPIO, local socket); one
message at a time goes to the ``talk-out`` thread (:meth:`Outgoing.run`): microphone (a tap on
the device's one microphone) or file -> Opus/Ogg -> a chunk every ``chunk_ms`` of audio ->
MQTT (QoS 1); at the release the last chunk, signed; then the sealed copy. Chunks the link could
not take are kept (the ``KEEP_SENT`` newest messages) and sent when it is back, or again when
the platform asks for them (``talk/ctl``).

The capture keeps to the wall clock: only samples up to "now" are encoded (PulseAudio's sine
source delivers 2 s ahead), and the message ends at the sample matching the release moment
(waiting ``RELEASE_GRACE_S`` for a late block, and up to ``MAX_LATE_S`` while the microphone has
not yet delivered that moment: a shared microphone that delivers in bursts, as PulseAudio's
sine source does every 2 s, hands it over late).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import wallclock
from agent.errors import AgentError, CommandError, FormatError, SourceError
from agent.talk import wire
from agent.talk.audio_io import Input
from agent.talk.core import SAMPLE_BYTES, SealJob, TalkCore

if TYPE_CHECKING:
    from agent.talk.codec import OggOpusWriter

log = logging.getLogger(__name__)

BLOCK_MS = 20
RELEASE_GRACE_S = 0.25
MAX_LATE_S = 3.0  # waiting for a microphone still to deliver the release moment
KEEP_SENT = 16  # recent outgoing messages kept for resend requests


class _PcmInput:
    """A file (``say``) as a microphone that has everything at once."""

    def __init__(self, pcm: bytes, block: int, rate: int) -> None:
        self.rate = rate
        step = block * SAMPLE_BYTES
        self._parts = [pcm[i : i + step] for i in range(0, len(pcm), step)]

    def read(self, timeout: float) -> bytes | None:
        return self._parts.pop(0) if self._parts else None

    def pending(self, until_mono_ns: int) -> bool:
        return False

    def close(self) -> None:
        self._parts.clear()


@dataclass
class _Session:
    id: str
    source: str
    input: Input
    press_mono: float
    press_utc: float
    samples: int | None = None  # known length (a file); None: until the release
    paced: bool = True  # keep to the wall clock (a microphone)
    released: threading.Event = field(default_factory=threading.Event)
    release_mono: float = 0.0


@dataclass
class _Sent:
    chunks: list[bytes]
    unsent: set[int]


@dataclass
class _Message:
    """The message being captured: its chunks so far."""

    session: _Session
    topic: str
    body: bytearray = field(default_factory=bytearray)
    chunks: list[bytes] = field(default_factory=list)


class Outgoing:
    def __init__(self, core: TalkCore, signing_key: Ed25519PrivateKey | None) -> None:
        self.core = core
        self._signing_key = signing_key
        self.address = wire.device_address(core.device_id)
        self.block = core.rate * BLOCK_MS // 1000
        self._sessions: queue.Queue[_Session] = queue.Queue(16)
        # guarded by core.lock:
        self._session: _Session | None = None
        self._sent: OrderedDict[str, _Sent] = OrderedDict()

    # ------------------------------------------------------------------ any thread

    def press(self, source: str = "device") -> dict[str, Any]:
        """Start a message from the microphone; CommandError with the reason if it cannot."""
        core = self.core
        with core.lock:
            if self._session is not None:
                return {"id": self._session.id, "already": True}
        self._check_can_send()
        try:
            inp = core.io.open_input()
        except SourceError as exc:
            with core.lock:
                core.mic_reason = str(exc)
            log.warning("talk: refused (no microphone): %s", exc)
            raise CommandError(f"talk refused: no microphone ({exc})") from None
        with core.lock:
            core.mic_reason = ""
        s = _Session(wire.new_id(), source, inp, time.monotonic(), wallclock.now())
        return {"id": self._begin(s)}

    def release(self, source: str = "device") -> dict[str, Any]:
        with self.core.lock:
            s = self._session
        if s is None or s.released.is_set():
            return {"already": True}
        s.release_mono = time.monotonic()
        s.released.set()
        return {"id": s.id, "duration_s": round(s.release_mono - s.press_mono, 3)}

    def say(self, path: Path, source: str = "device") -> dict[str, Any]:
        """Send a file (any format FFmpeg reads) as a message, as if spoken now."""
        from agent.talk.codec import decode_to_pcm

        rate = self.core.rate
        self._check_can_send()
        try:
            pcm = decode_to_pcm(path, rate)
        except SourceError as exc:
            raise CommandError(str(exc)) from None
        n = len(pcm) // SAMPLE_BYTES
        inp = _PcmInput(pcm, self.block, rate)
        s = _Session(wire.new_id(), source, inp, 0.0, wallclock.now(), n, False)
        s.released.set()
        with self.core.lock:
            if self._session is not None:
                raise CommandError("talk: already talking; release first")
        return {"id": self._begin(s), "duration_s": round(n / rate, 3)}

    def _check_can_send(self) -> None:
        if self.core.link is None:
            raise CommandError("talk refused: no uplink (uplink.enabled is false)")
        if self._signing_key is None:
            raise CommandError("talk refused: no device signing key")

    def _begin(self, s: _Session) -> str:
        core = self.core
        with core.lock:
            if self._session is not None:
                s.input.close()
                return self._session.id
            self._session = s
        core.talking.set()
        try:
            self._sessions.put_nowait(s)
        except queue.Full:
            with core.lock:
                self._session = None
            core.talking.clear()
            s.input.close()
            raise CommandError("talk: busy") from None
        log.info("talk: %s starts message %s", s.source, s.id)
        return s.id

    # ------------------------------------------------------------------ talk-out

    def run(self) -> None:
        self.core.serve("talk-out", self._sessions, self._talk_out, idle=self._retry_unsent)

    def _talk_out(self, s: _Session) -> None:
        core = self.core
        try:
            self._capture(s)
        except AgentError as exc:
            log.error("talk: message %s failed: %s", s.id, exc)
        finally:
            s.input.close()
            with core.lock:
                self._session = None
            core.talking.clear()

    def _capture(self, s: _Session) -> None:
        from agent.talk.codec import OggOpusWriter

        cfg = self.core.settings
        rate = s.input.rate  # the microphone's (the recorder's when they share it)
        enc = OggOpusWriter(rate, cfg.bitrate_kbps)
        chunk_samples = rate * cfg.chunk_ms // 1000
        max_samples = int(cfg.max_message_s * rate)
        m = _Message(s, wire.out_topic(self.core.device_id))
        pending = bytearray()
        target = s.samples
        deadline = 0.0
        marked = 0
        try:
            while True:
                if target is None and s.released.is_set():
                    target = max(0, round((s.release_mono - s.press_mono) * rate))
                    deadline = time.monotonic() + RELEASE_GRACE_S
                too_long = s.paced and time.monotonic() - s.press_mono > max_samples / rate
                if target is None and (enc.samples >= max_samples or too_long):
                    log.warning("talk: message %s reached %g s: released", s.id, enc.samples / rate)
                    target = enc.samples
                    deadline = time.monotonic()
                if target is not None and (
                    enc.samples >= target or (s.paced and self._late(s, deadline))
                ):
                    break
                if self.core.stop.is_set():
                    break
                block = s.input.read(0.02)
                if block is None and not s.paced and not pending:
                    break  # a file that ended
                if block:
                    pending += block
                # Keep to the wall clock: never encode samples from after "now" (or the release).
                allowed = len(pending) // SAMPLE_BYTES
                if s.paced:
                    now_samples = round((time.monotonic() - s.press_mono) * rate)
                    allowed = min(allowed, max(0, now_samples - enc.samples))
                if target is not None:
                    allowed = min(allowed, target - enc.samples)
                if allowed > 0:
                    enc.write(bytes(pending[: allowed * SAMPLE_BYTES]))
                    del pending[: allowed * SAMPLE_BYTES]
                if enc.samples - marked >= chunk_samples and self._chunk(m, enc.take()):
                    marked = enc.samples
            tail = enc.take() + enc.finish()
        finally:
            enc.close()
        self._finish(m, tail, enc, rate)

    @staticmethod
    def _late(s: _Session, deadline: float) -> bool:
        """Past the release's grace, unless the microphone is still to deliver that moment."""
        now = time.monotonic()
        if now <= deadline:
            return False
        return now > deadline + MAX_LATE_S or not s.input.pending(round(s.release_mono * 1e9))

    def _chunk(self, m: _Message, data: bytes) -> bool:
        """Send the Ogg pages made since the last chunk (none yet: False)."""
        if not data:
            return False
        m.body += data
        m.chunks.append(wire.Chunk(m.session.id, len(m.chunks), False, data).encode())
        self._publish_chunk(m.session.id, m.topic, m.chunks, len(m.chunks) - 1)
        return True

    def _finish(self, m: _Message, tail: bytes, enc: OggOpusWriter, rate: int) -> None:
        """The last chunk, signed over the whole message; then its sealed copy."""
        s, core = m.session, self.core
        m.body += tail
        duration = enc.samples / rate
        assert self._signing_key is not None
        msg = wire.describe(
            s.id,
            bytes(m.body),
            len(m.chunks) + 1,
            sender=self.address,
            to=wire.PLATFORM,
            duration_s=duration,
        )
        m.chunks.append(wire.last_chunk(self._signing_key, s.id, len(m.chunks), tail, msg).encode())
        self._publish_chunk(s.id, m.topic, m.chunks, len(m.chunks) - 1)
        with core.lock:
            core.stats.sent += 1
        log.info("talk: message %s sent: %.2f s, %d chunks", s.id, duration, len(m.chunks))
        meta = {
            "talk": True,
            "direction": "out",
            "message_id": s.id,
            "from": self.address,
            "to": wire.PLATFORM,
            "source": s.source,
            "codec": "opus",
            "container": "ogg",
            "rate": rate,
            "channels": 1,
            "duration_s": round(duration, 3),
            "sha256": msg["sha256"],
            "chunks": len(m.chunks),
        }
        core.queue_seal(SealJob(bytes(m.body), meta, s.press_utc, s.press_utc + duration))

    # ------------------------------------------------------------------ chunks held

    def _publish_chunk(self, mid: str, topic: str, chunks: list[bytes], index: int) -> None:
        core = self.core
        with core.lock:
            sent = self._sent.get(mid)
            if sent is None:
                sent = self._sent[mid] = _Sent(chunks, set())
                while len(self._sent) > KEEP_SENT:
                    self._sent.popitem(last=False)
        ok = core.publish(topic, chunks[index])
        with core.lock:
            if ok:
                core.stats.sent_chunks += 1
                core.stats.sent_bytes += len(chunks[index])
            else:
                sent.unsent.add(index)

    def _retry_unsent(self) -> None:
        core = self.core
        if core.link is None or not core.link.connected:
            return
        with core.lock:
            todo = [(mid, s) for mid, s in self._sent.items() if s.unsent]
        topic = wire.out_topic(core.device_id)
        for mid, sent in todo:
            for i in sorted(sent.unsent):
                if not core.publish(topic, sent.chunks[i]):
                    return
                with core.lock:
                    sent.unsent.discard(i)
                    core.stats.resent_chunks += 1
            log.info("talk: message %s: chunks held while offline sent", mid)

    def resend(self, payload: bytes) -> None:
        """A ``talk/ctl`` request from the platform: send the chunks it lacks again."""
        core = self.core
        try:
            mid, wanted = wire.parse_resend(payload)
        except FormatError as exc:
            log.warning("talk: bad control message: %s", exc)
            return
        with core.lock:
            sent = self._sent.get(mid)
        if sent is None:
            log.warning("talk: resend of %s asked: no longer held", mid)
            return
        topic = wire.out_topic(core.device_id)
        for i in wanted or range(len(sent.chunks)):
            if i < len(sent.chunks) and core.publish(topic, sent.chunks[i]):
                with core.lock:
                    core.stats.resent_chunks += 1
        log.info("talk: message %s: %d chunks resent on request", mid, len(wanted))
