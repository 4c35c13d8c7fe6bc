"""Push-to-talk on the device: the officer's voice out, the control room's messages in.

Threads (all end on the one stop event; queues are bounded)::

    press()/release()/say()  (any thread: button, GPIO, local socket)  --sessions (16)-->
    talk-out    microphone -> Opus/Ogg -> a chunk every chunk_ms of audio -> MQTT (QoS 1)
                at release: the last chunk, signed; then a seal job       --seal jobs (64)-->
    talk-seal   Spool.put_bytes("audio", ogg, audio/ogg, meta {talk, direction, message_id})
    talk-in     talk/in, groups/{g}/talk/in, talk/ctl -> reassembly -> verify -> receipts,
                seal job (direction "in"), playback queue (queue_messages); gaps: ask, give up
    talk-play   waits while the officer talks; tone, message -> speaker; receipt "played"

Voice goes out through :meth:`MqttLink.publish` from the talk-out thread, not through the
forwarder: the publish is queued in the link's socket at once, behind at most the ``window``
backfill chunks the forwarder already handed to the link (the same bound the live lane has) and
ahead of everything else in the spool. The forwarder is not changed. The sealed copy of every
message follows the usual evidence path (spool, backfill, platform acknowledgement).

The microphone is opened at the press (so a missing one refuses the press with its reason) and
closed at the release. The capture keeps to the wall clock: only samples up to "now" are
encoded (PulseAudio's sine source delivers 2 s ahead), and the message ends at the sample
matching the release moment (waiting at most ``RELEASE_GRACE_S`` for a late block).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import wallclock
from agent.errors import (
    AgentError,
    CommandError,
    FormatError,
    SourceError,
    SpoolError,
    UplinkError,
    VerificationError,
)
from agent.storage.spool import Spool
from agent.talk import wire
from agent.talk.audio_io import AudioIO, Input, SoundDeviceIO
from agent.talk.settings import TalkSettings
from agent.uplink.control import SeenIds
from agent.uplink.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)

SAMPLE_BYTES = 2
BLOCK_MS = 20
RELEASE_GRACE_S = 0.25
KEEP_SENT = 16  # recent outgoing messages kept for resend requests
POLL_S = 0.05
SKEW_S = 300.0


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


class _PcmInput:
    """A file (``say``) as a microphone that has everything at once."""

    def __init__(self, pcm: bytes, block: int) -> None:
        step = block * SAMPLE_BYTES
        self._parts = [pcm[i : i + step] for i in range(0, len(pcm), step)]

    def read(self, timeout: float) -> bytes | None:
        return self._parts.pop(0) if self._parts else None

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


@dataclass(frozen=True)
class _Playable:
    id: str
    body: bytes
    msg: dict[str, Any]


@dataclass(frozen=True)
class _SealJob:
    data: bytes
    meta: dict[str, Any]
    start_utc: float
    end_utc: float


class Talk:
    """The device's talk service. Build before the MQTT link starts (it adds routes)."""

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
        clock: Callable[[], float] = wallclock.now,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.spool = spool
        self.stop = stop
        self.link = link
        self._command_key = command_key
        self._signing_key = signing_key
        self._seen = seen
        self.io: AudioIO = io or SoundDeviceIO(settings.microphone, settings.speaker)
        self._clock = clock
        self.rate = settings.rate
        self.block = settings.rate * BLOCK_MS // 1000
        self.address = wire.device_address(device_id)
        self._groups = {wire.group_topic(g): wire.group_address(g) for g in settings.groups}
        self._inboxes: list[tuple[str, queue.Queue[Inbound]]] = []
        if link is not None:
            self._inboxes.append(("in", link.route(wire.in_topic(device_id))))
            for topic in self._groups:
                self._inboxes.append(("in", link.route(topic)))
            self._inboxes.append(("ctl", link.route(wire.ctl_topic(device_id))))
        self._sessions: queue.Queue[_Session] = queue.Queue(16)
        self._play: queue.Queue[_Playable] = queue.Queue(settings.queue_messages)
        self._seal: queue.Queue[_SealJob] = queue.Queue(64)
        self._talking = threading.Event()
        self._lock = threading.Lock()
        # guarded by _lock:
        self._session: _Session | None = None
        self._sent: OrderedDict[str, _Sent] = OrderedDict()
        self._receipts: list[tuple[str, bytes]] = []  # not yet published (link down)
        self._waiting = 0  # delivered messages not yet played (queued or held by talk-play)
        self._mic_reason = "not checked"
        self._speaker_reason = "not checked"
        self.stats = TalkStats()
        # owned by talk-in:
        self._reasm = wire.Reassembler(settings.max_message_kib * 1024, settings.queue_messages)
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start_threads(self) -> None:
        self._mic_reason = self.io.probe_input()
        self._speaker_reason = self.io.probe_output()
        for what, reason in (("microphone", self._mic_reason), ("speaker", self._speaker_reason)):
            if reason:
                log.warning("talk: no %s: %s (talk refused until it is there)", what, reason)
        for name, body in (
            ("talk-out", self._run_out),
            ("talk-in", self._run_in),
            ("talk-play", self._run_play),
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
        return self._talking.is_set()

    def health(self) -> dict[str, Any]:
        with self._lock:
            mic, spk = self._mic_reason, self._speaker_reason
            st = self.stats
            return {
                "state": "ok" if not mic and not spk else "degraded",
                "microphone": {"state": "missing" if mic else "ok", "reason": mic},
                "speaker": {"state": "missing" if spk else "ok", "reason": spk},
                "talking": self._talking.is_set(),
                "waiting_to_play": self._waiting,
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
        with self._lock:
            if self._session is not None:
                return {"id": self._session.id, "already": True}
        self._check_can_send()
        try:
            inp = self.io.open_input(self.rate, self.block)
        except SourceError as exc:
            with self._lock:
                self._mic_reason = str(exc)
            log.warning("talk: refused (no microphone): %s", exc)
            raise CommandError(f"talk refused: no microphone ({exc})") from None
        with self._lock:
            self._mic_reason = ""
        s = _Session(wire.new_id(), source, inp, time.monotonic(), wallclock.now())
        return {"id": self._begin(s)}

    def release(self, source: str = "device") -> dict[str, Any]:
        with self._lock:
            s = self._session
        if s is None or s.released.is_set():
            return {"already": True}
        s.release_mono = time.monotonic()
        s.released.set()
        return {"id": s.id, "duration_s": round(s.release_mono - s.press_mono, 3)}

    def say(self, path: Path, source: str = "device") -> dict[str, Any]:
        """Send a file (any format FFmpeg reads) as a message, as if spoken now."""
        from agent.talk.codec import decode_to_pcm

        self._check_can_send()
        try:
            pcm = decode_to_pcm(path, self.rate)
        except SourceError as exc:
            raise CommandError(str(exc)) from None
        n = len(pcm) // SAMPLE_BYTES
        s = _Session(
            wire.new_id(), source, _PcmInput(pcm, self.block), 0.0, wallclock.now(), n, False
        )
        s.released.set()
        with self._lock:
            if self._session is not None:
                raise CommandError("talk: already talking; release first")
        return {"id": self._begin(s), "duration_s": round(n / self.rate, 3)}

    def _check_can_send(self) -> None:
        if self.link is None:
            raise CommandError("talk refused: no uplink (uplink.enabled is false)")
        if self._signing_key is None:
            raise CommandError("talk refused: no device signing key")

    def _begin(self, s: _Session) -> str:
        with self._lock:
            if self._session is not None:
                s.input.close()
                return self._session.id
            self._session = s
        self._talking.set()
        try:
            self._sessions.put_nowait(s)
        except queue.Full:
            with self._lock:
                self._session = None
            self._talking.clear()
            s.input.close()
            raise CommandError("talk: busy") from None
        log.info("talk: %s starts message %s", s.source, s.id)
        return s.id

    # ------------------------------------------------------------------ talk-out

    def _run_out(self) -> None:
        while not self.stop.is_set():
            try:
                s = self._sessions.get(timeout=0.5)
            except queue.Empty:
                self._retry_unsent()
                continue
            try:
                self._capture(s)
            except AgentError as exc:
                log.error("talk: message %s failed: %s", s.id, exc)
            finally:
                s.input.close()
                with self._lock:
                    self._session = None
                self._talking.clear()

    def _capture(self, s: _Session) -> None:
        from agent.talk.codec import OggOpusWriter

        rate = self.rate
        enc = OggOpusWriter(rate, self.settings.bitrate_kbps)
        chunk_samples = rate * self.settings.chunk_ms // 1000
        max_samples = int(self.settings.max_message_s * rate)
        body = bytearray()
        chunks: list[bytes] = []
        topic = wire.out_topic(self.device_id)
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
                    enc.samples >= target or (s.paced and time.monotonic() > deadline)
                ):
                    break
                if self.stop.is_set():
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
                if enc.samples - marked >= chunk_samples:
                    data = enc.take()
                    if data:
                        body += data
                        marked = enc.samples
                        chunks.append(wire.Chunk(s.id, len(chunks), False, data).encode())
                        self._publish_chunk(s.id, topic, chunks, len(chunks) - 1)
            tail = enc.take() + enc.finish()
        finally:
            enc.close()
        body += tail
        duration = enc.samples / rate
        assert self._signing_key is not None
        msg = wire.describe(
            s.id,
            bytes(body),
            len(chunks) + 1,
            sender=self.address,
            to=wire.PLATFORM,
            duration_s=duration,
        )
        chunks.append(wire.last_chunk(self._signing_key, s.id, len(chunks), tail, msg).encode())
        self._publish_chunk(s.id, topic, chunks, len(chunks) - 1)
        with self._lock:
            self.stats.sent += 1
        log.info("talk: message %s sent: %.2f s, %d chunks", s.id, duration, len(chunks))
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
            "chunks": len(chunks),
        }
        self._queue_seal(_SealJob(bytes(body), meta, s.press_utc, s.press_utc + duration))

    def _publish_chunk(self, mid: str, topic: str, chunks: list[bytes], index: int) -> None:
        with self._lock:
            sent = self._sent.get(mid)
            if sent is None:
                sent = self._sent[mid] = _Sent(chunks, set())
                while len(self._sent) > KEEP_SENT:
                    self._sent.popitem(last=False)
        ok = self._publish(topic, chunks[index])
        with self._lock:
            if ok:
                self.stats.sent_chunks += 1
                self.stats.sent_bytes += len(chunks[index])
            else:
                sent.unsent.add(index)

    def _publish(self, topic: str, payload: bytes) -> bool:
        if self.link is None:
            return False
        try:
            return self.link.publish(topic, payload, qos=1) is not None
        except UplinkError as exc:
            log.warning("talk: publish to %s failed: %s", topic, exc)
            return False

    def _retry_unsent(self) -> None:
        if self.link is None or not self.link.connected:
            return
        with self._lock:
            todo = [(mid, s) for mid, s in self._sent.items() if s.unsent]
        topic = wire.out_topic(self.device_id)
        for mid, sent in todo:
            for i in sorted(sent.unsent):
                if not self._publish(topic, sent.chunks[i]):
                    return
                with self._lock:
                    sent.unsent.discard(i)
                    self.stats.resent_chunks += 1
            log.info("talk: message %s: chunks held while offline sent", mid)

    def _resend(self, payload: bytes) -> None:
        try:
            mid, wanted = wire.parse_resend(payload)
        except FormatError as exc:
            log.warning("talk: bad control message: %s", exc)
            return
        with self._lock:
            sent = self._sent.get(mid)
        if sent is None:
            log.warning("talk: resend of %s asked: no longer held", mid)
            return
        topic = wire.out_topic(self.device_id)
        for i in wanted or range(len(sent.chunks)):
            if i < len(sent.chunks) and self._publish(topic, sent.chunks[i]):
                with self._lock:
                    self.stats.resent_chunks += 1
        log.info("talk: message %s: %d chunks resent on request", mid, len(wanted))

    # ------------------------------------------------------------------ talk-seal

    def _queue_seal(self, job: _SealJob) -> None:
        try:
            self._seal.put(job, timeout=5)
        except queue.Full:
            with self._lock:
                self.stats.seal_failures += 1
            log.error("talk: seal queue full: message %s not sealed", job.meta["message_id"])

    def _run_seal(self) -> None:
        while not (self.stop.is_set() and self._seal.empty()):
            try:
                job = self._seal.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.spool.put_bytes(
                    "audio",
                    job.data,
                    content_type=wire.CONTENT_TYPE,
                    meta=job.meta,
                    start_utc=job.start_utc,
                    end_utc=job.end_utc,
                )
                with self._lock:
                    self.stats.sealed += 1
            except (SpoolError, OSError) as exc:
                with self._lock:
                    self.stats.seal_failures += 1
                log.error("talk: cannot seal message %s: %s", job.meta["message_id"], exc)

    # ------------------------------------------------------------------ talk-in

    def _run_in(self) -> None:
        while not self.stop.is_set():
            got = False
            for kind, inbox in self._inboxes:
                try:
                    msg = inbox.get_nowait()
                except queue.Empty:
                    continue
                got = True
                try:
                    if kind == "ctl":
                        self._resend(msg.payload)
                    else:
                        self._on_chunk(msg)
                except Exception as exc:  # contained (agent.contain): the next one is handled
                    log.error("talk: the message on %s failed: %r", msg.topic[:200], exc)
                finally:
                    if self.link is not None:
                        self.link.ack(msg)
            self._check_stale(time.monotonic())
            self._flush_receipts()
            if not got:
                self.stop.wait(POLL_S)

    def _on_chunk(self, msg: Inbound) -> None:
        try:
            chunk = wire.parse_chunk(msg.payload)
        except FormatError as exc:
            with self._lock:
                self.stats.bad_chunks += 1
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
        with self._lock:
            self.stats.rejected += 1
        self._reasm.finish(mid, "rejected")
        self._receipt(mid, "rejected", reason=reason)

    def _deliver(self, done: wire.Complete) -> None:
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
        with self._lock:
            self.stats.received += 1
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
        self._queue_seal(_SealJob(done.body, meta, now - duration, now))
        try:
            self._play.put_nowait(_Playable(done.id, done.body, done.msg))
            with self._lock:
                self._waiting += 1
        except queue.Full:
            self._not_played(done.id, f"{self.settings.queue_messages} messages already waiting")

    def _check_stale(self, now: float) -> None:
        s = self.settings
        for p in self._reasm.stale(now, s.gap_s):
            if now - p.progress_at >= s.resume_s:
                log.warning(
                    "talk: message %s incomplete after %.0f s (have %d of %s chunks): dropped",
                    p.id,
                    now - p.first_at,
                    len(p.chunks),
                    p.n if p.n is not None else "?",
                )
                with self._lock:
                    self.stats.incomplete += 1
                self._reasm.finish(p.id, "incomplete")
                self._receipt(
                    p.id, "incomplete", final=True, have=p.have(), n=p.n, reason="gave up"
                )
            elif now - p.asked_at >= s.gap_s:
                p.asked_at = now
                p.asks += 1
                self._receipt(p.id, "incomplete", final=False, have=p.have(), n=p.n)

    def _receipt(self, mid: str, status: str, **extra: Any) -> None:
        payload = wire.receipt(self.device_id, mid, status, **extra)
        topic = wire.receipt_topic(self.device_id)
        if not self._publish(topic, payload):
            with self._lock:
                self._receipts.append((topic, payload))
                del self._receipts[:-256]

    def _flush_receipts(self) -> None:
        with self._lock:
            if not self._receipts:
                return
            todo, self._receipts = self._receipts, []
        for i, (topic, payload) in enumerate(todo):
            if not self._publish(topic, payload):
                with self._lock:
                    self._receipts[:0] = todo[i:]
                return

    # ------------------------------------------------------------------ talk-play

    def _not_played(self, mid: str, reason: str) -> None:
        log.warning("talk: message %s not played: %s", mid, reason)
        with self._lock:
            self.stats.not_played += 1
        self._receipt(mid, "not_played", reason=reason)

    def _run_play(self) -> None:
        while not self.stop.is_set():
            try:
                item = self._play.get(timeout=0.5)
            except queue.Empty:
                continue
            # A message that arrives while the officer talks waits for the release.
            while self._talking.is_set():
                if self.stop.wait(POLL_S):
                    return
            try:
                self._play_one(item)
            finally:
                with self._lock:
                    self._waiting -= 1

    def _play_one(self, item: _Playable) -> None:
        from agent.talk.codec import decode_to_pcm, silence, tone

        s = self.settings
        try:
            pcm = decode_to_pcm(item.body, self.rate)
        except SourceError as exc:
            self._not_played(item.id, f"cannot decode: {exc}")
            return
        try:
            out = self.io.open_output(self.rate)
        except SourceError as exc:
            with self._lock:
                self._speaker_reason = str(exc)
            self._not_played(item.id, f"no speaker ({exc})")
            return
        with self._lock:
            self._speaker_reason = ""
        began = time.monotonic()
        try:
            sound = (
                tone(s.tone_hz, s.tone_ms, self.rate)
                + silence(100, self.rate)
                + pcm
                + silence(300, self.rate)
            )
            step = self.rate // 10 * SAMPLE_BYTES
            for i in range(0, len(sound), step):
                if self.stop.is_set():
                    return
                out.write(sound[i : i + step])
        except SourceError as exc:
            self._not_played(item.id, str(exc))
            return
        finally:
            out.close()
        with self._lock:
            self.stats.played += 1
        log.info("talk: message %s played", item.id)
        self._receipt(
            item.id,
            "played",
            duration_s=round(len(pcm) / SAMPLE_BYTES / self.rate, 3),
            took_s=round(time.monotonic() - began, 3),
        )


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
