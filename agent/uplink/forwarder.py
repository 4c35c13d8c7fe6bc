"""Spool -> key records + chunks -> the platform's acknowledgements -> spool.ack.

Two lanes share one MQTT connection and one thread:

- **live**: the latest fix, alarms (newest first) and the latest status. Checked before every
  backfill chunk, so a live message waits at most for the chunks already in the socket (the
  broker window, ``window`` chunks), never for the backlog.
- **backfill**: stored segments, oldest first per stream, streams in ``priority`` order, under
  an optional bytes/s cap. A segment leaves the spool only on the **platform's** acknowledgement
  carrying its manifest hash; a broker PUBACK only frees a slot in the window.

Resume: the platform reports ``progress`` (bytes [0, next) of a segment held durably); the
forwarder stores it with ``spool.set_progress`` (in bytes) and after a reconnect, a restart or a
silence of ``ack_timeout_s`` resends from there, not from zero. A platform that reports a gap
(``got`` beyond ``next``) gets the missing bytes again unless they were already resent after the
chunk that revealed the gap.

Bundles (protocol 3): small segments of one stream travel several to a message, each whole
and acknowledged on its own (``uplink.bundle_kib``), so a backlog of GPS batches costs a
round trip per bundle, not per segment. The first bundle on a connection is a probe: a
platform that answers for none of its segments within ``ack_timeout_s`` (protocol 2 drops
bundles as malformed) gets them again as single chunks, and no more bundles on that
connection.

Flow control: at most ``window`` chunks unacknowledged by the broker, at most
``platform_window_kib`` bytes not yet confirmed by the platform and ``max_segments_in_flight``
segments awaiting acknowledgement, so the broker's per-client queue (mosquitto: 1000 messages)
never fills even when the platform is away.

Signed acknowledgements: with the platform's ack key (``uplink.ack_key``) only a batch signed
by it and naming this device counts (protocol.parse_acks); an unsigned or forged one deletes
nothing, is counted (``forged_acks``) and logged. A ``retry`` answer (the platform could not
store it for now) holds that segment or key record for ``after_s`` and then sends it again
from the last byte the platform confirmed.

Stream heads: after a change (and on each new connection) the forwarder publishes, retained
and signed with the device key, each stream's last sealed seq and manifest hash and how many
of its segments are not yet acknowledged (agent.uplink.heads), at most every ``HEADS_EVERY_S``.

Containment: every acknowledgement message is handled in its own ``try`` and acknowledged to
the broker whatever happens; the thread's loop outlives anything a round raises (reported once
per kind, then retried after a pause).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import wallclock
from agent.contain import Failures
from agent.errors import AgentError, FormatError, SpoolError, VerificationError
from agent.loops.guard import Guard
from agent.model import Alarm, Fix, Severity
from agent.storage.seal import MAX_MANIFEST
from agent.storage.spool import Spool, SpoolItem
from agent.uplink import heads as heads_msg
from agent.uplink import protocol as proto
from agent.uplink.mqtt import Inbound, MqttLink, Sent
from agent.uplink.settings import UplinkSettings

log = logging.getLogger(__name__)

KIB = 1024
IDLE_POLL_S = 0.5
READY_REFRESH_S = 1.0
MAX_ALARMS = 256
ACK_BATCH = 256  # acknowledgements handled (and removed from the spool) per transaction
HEADS_EVERY_S = 2.0  # the signed stream heads go out at most this often
FORGED_LOG_EVERY_S = 60.0
BUNDLE_MEMBER_OVERHEAD = 320  # a bundle member's length and chunk header, at most (~150 usually)


class TokenBucket:
    """Bytes/s cap with a burst of one second (or one chunk, if larger). 0 = unlimited."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._last = clock()

    def delay(self, n: int) -> float:
        """Seconds to wait before ``n`` bytes may go; 0 means go now (and takes them)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        cap = max(float(self.rate), float(n))
        self._tokens = min(cap, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate


@dataclass
class _Upload:
    item: SpoolItem
    boot: str
    size: int
    f: BinaryIO | None  # None when the whole segment is in ``data`` (a small one)
    confirmed: int  # bytes the platform holds durably
    next: int  # next byte to send
    last_word: float
    high: int = 0  # highest byte sent so far (for the resent figure)
    sent_at: dict[int, int] = field(default_factory=dict)  # offset -> send counter
    hold_until: float = 0.0  # the platform asked to wait (retry) until then
    data: bytes | None = None  # the whole segment, when small enough to bundle
    bundled: bool = False  # last sent in a bundle (no answer yet)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.item.stream, self.item.seq, self.item.manifest_hash)

    @property
    def fresh(self) -> bool:
        """Nothing of it sent yet (a resend always goes as single chunks)."""
        return self.high == 0 and self.next == 0

    def read(self, offset: int, n: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + n]
        assert self.f is not None
        self.f.seek(offset)
        return self.f.read(n)


def peek_segment(f: BinaryIO | bytes) -> tuple[int, str, str]:
    """(size, manifest hash, boot) of a sealed segment (a file, or its bytes) from its trailer
    alone: what the forwarder needs. The device sealed the file itself; the manifest hash,
    compared with the spool's index, is what tells a damaged or replaced file."""
    if isinstance(f, bytes):
        size = len(f)
        tail = f[-4:]
    else:
        size = f.seek(0, 2)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if size < 8 + 68 + 2:
        raise FormatError(f"segment of {size} bytes is too short")
    (mlen,) = struct.unpack(">I", tail)
    if mlen > MAX_MANIFEST or 8 + mlen + 68 > size:
        raise FormatError("segment trailer length is impossible")
    if isinstance(f, bytes):
        manifest = f[size - 68 - mlen : size - 68]
    else:
        f.seek(size - 68 - mlen)
        manifest = f.read(mlen)
    try:
        boot = json.loads(manifest).get("boot")
    except (ValueError, AttributeError):
        boot = None
    if not isinstance(boot, str):
        raise FormatError("segment manifest names no boot")
    return size, hashlib.sha256(manifest).hexdigest(), boot


@dataclass
class ForwarderStats:
    chunks_sent: int = 0
    chunks_resent: int = 0
    bytes_sent: int = 0
    segments_acked: int = 0
    keys_acked: int = 0
    live_sent: int = 0
    rejected: int = 0
    resends_after_silence: int = 0
    bad_acks: int = 0
    forged_acks: int = 0
    retries: int = 0
    heads_sent: int = 0
    bundles_sent: int = 0
    segments_bundled: int = 0


class Forwarder:
    """See the module docstring. ``run()`` is the thread body; live reports are thread-safe."""

    def __init__(
        self,
        spool: Spool,
        link: MqttLink,
        device_id: str,
        settings: UplinkSettings,
        stop: threading.Event,
        *,
        alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ack_key: Ed25519PublicKey | None = None,
        heads_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.spool = spool
        self.link = link
        self.device_id = device_id
        self.topics = proto.Topics(device_id)
        if ack_key is None and settings.ack_key is not None:
            from agent.uplink.control import load_ack_public

            ack_key = load_ack_public(settings.ack_key)
        self._ack_key = ack_key
        if ack_key is None:
            log.warning(
                "uplink: no platform ack key (uplink.ack_key): acknowledgements are taken on "
                "trust; any client allowed to publish on %s can make this device delete "
                "evidence. Install the platform's ack.pub (edge-agent provision --ack-key)",
                self.topics.ack,
            )
        self._heads_key = heads_key if heads_key is not None else spool.sealer.signing_key
        self._heads_due = 0.0
        self._heads_state: object = None
        self._heads_generation = 0  # the connection the last heads went out on
        self._forged_logged = -1e18
        self.failures = Failures("uplink-forwarder", log)
        self.settings = settings
        self.stop = stop
        self._alarm = alarm or (lambda a: None)
        self._guard = Guard("uplink-forwarder", stop, log, alarm=alarm)
        self._clock = clock
        self.wake = link.wake
        self.acks = link.route(self.topics.ack)
        self.stats = ForwarderStats()
        self._bucket = TokenBucket(settings.bandwidth_bps, clock)
        self._max_chunk = settings.max_chunk_kib * KIB
        self._live_lock = threading.Lock()
        # guarded by _live_lock:
        self._fix: bytes | None = None
        self._status: bytes | None = None
        self._alarms: deque[bytes] = deque(maxlen=MAX_ALARMS)
        # owned by the forwarder thread:
        self._uploads: list[_Upload] = []
        self._by_key: dict[tuple[str, int, str], _Upload] = {}
        # Does the platform take bundles? None: not known on this connection (one probe
        # bundle may go); False: it answered none of a bundle (single chunks until the next
        # connection); True: it answered for a bundled segment.
        self._bundles: bool | None = None
        self._probe_out = False
        self._ready: deque[SpoolItem] = deque()
        self._ids: set[int] = set()  # spool ids of self._uploads
        self._unacked: deque[tuple[Sent, int]] = deque()  # backfill publishes, their sizes
        self._ready_at = -1e9
        self._rejected: set[int] = set()
        self._keys_acked: set[str] = set()
        self._keys_sent: dict[str, float] = {}
        self._keys_rejected: set[str] = set()
        self._generation = 0
        self._counter = 0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ live lane (any thread)

    def report_fix(self, fix: Fix, extra: dict[str, Any] | None = None) -> None:
        """The newest position for the live lane; ``extra`` adds fields (vehicle inputs).

        Binary (protocol 3, docs/protocol.md) unless ``uplink.live_fix = "json"`` or the
        binary form cannot carry it."""
        payload = None
        if self.settings.live_fix == "binary":
            payload = proto.encode_live_fix(fix, extra)
        if payload is None:
            payload = proto.live_fix_json(fix, extra)
        with self._live_lock:
            self._fix = payload
        self.wake.set()

    def report_alarm(self, alarm: Alarm) -> None:
        with self._live_lock:
            self._alarms.append(proto.dumps(alarm.to_json()))
        self.wake.set()

    def report_status(self, status: dict[str, Any]) -> None:
        payload = proto.dumps(status)
        with self._live_lock:
            self._status = payload
        self.wake.set()

    def live_pending(self) -> int:
        with self._live_lock:
            return len(self._alarms) + (self._fix is not None) + (self._status is not None)

    # ------------------------------------------------------------------ thread

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="uplink-forwarder")
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                # Any failure (a full disk, a broken file, a bug) is reported once per outage
                # and backed off; the thread goes on and the round is retried (agent/loops).
                with self._guard:
                    self.wake.clear()
                    wait = self._step()
                    if wait > 0:
                        self.wake.wait(min(wait, IDLE_POLL_S))
        finally:
            for u in self._uploads:
                self._drop_upload(u, release=True)
            self._uploads.clear()
            self._by_key.clear()
            self._ids.clear()

    def _step(self) -> float:
        """One round: acks, live, timeouts, then backfill messages while the broker's window
        has room (the live lane checked before each). Returns a wait."""
        gen = self.link.generation
        if gen != self._generation:
            self._generation = gen
            self._on_new_connection()
        self._drain_acks()
        if not self.link.connected:
            return IDLE_POLL_S
        self._send_live()
        self._send_heads()
        for mid, reason in self.link.failures().items():
            log.error("uplink: the broker refused publish %d: %s", mid, reason)
        self._check_silence()
        wait = self._send_backfill()
        for _ in range(self.settings.window - 1):
            if wait > 0 or self.stop.is_set():
                break
            self._send_live()
            wait = self._send_backfill()
        return wait

    def _on_new_connection(self) -> None:
        now = self._clock()
        if self._heads_generation != self._generation:
            # Say it again on this connection (unless it already went out on it: the link
            # may have connected between reading its generation and publishing the heads).
            self._heads_state = None
        self._keys_sent.clear()
        if self._bundles is False:
            self._bundles = None  # the platform may have been upgraded: probe again
        self._probe_out = False
        for u in self._uploads:
            if u.next != u.confirmed:
                log.debug("uplink: %s resumes at byte %d", u.item.stream, u.confirmed)
            u.next = u.confirmed
            u.last_word = now
            u.bundled = False  # sent again as chunks: an answer now says nothing of bundles

    # ------------------------------------------------------------------ live

    def _send_live(self) -> None:
        with self._live_lock:
            alarms = list(reversed(self._alarms))
            self._alarms.clear()
            fix, self._fix = self._fix, None
            status, self._status = self._status, None
        items: list[tuple[str, bytes]] = [(self.topics.live("alarm"), a) for a in alarms]
        if fix is not None:
            items.append((self.topics.live("fix"), fix))
        if status is not None:
            items.append((self.topics.live("status"), status))
        unsent: list[tuple[str, bytes]] = []
        for topic, payload in items:
            if self.link.publish(topic, payload, qos=1) is None:
                unsent.append((topic, payload))
            else:
                self.stats.live_sent += 1
        if unsent:
            with self._live_lock:
                for topic, payload in unsent:
                    if topic.endswith("/alarm"):
                        self._alarms.appendleft(payload)
                    elif topic.endswith("/fix") and self._fix is None:
                        self._fix = payload
                    elif topic.endswith("/status") and self._status is None:
                        self._status = payload

    # ------------------------------------------------------------------ acks

    def _send_heads(self) -> None:
        """Publish the signed stream heads when they changed (retained; see heads.py)."""
        if self._heads_key is None:
            return
        now = self._clock()
        if now < self._heads_due:
            return
        self._heads_due = now + HEADS_EVERY_S
        chains = self.spool.chain_state()
        pending = {s: b.count for s, b in self.spool.backlog().items()}
        state = (sorted(chains.items()), sorted(pending.items()))
        if state == self._heads_state:
            return
        payload = heads_msg.sign_heads(
            self._heads_key,
            self.device_id,
            str(getattr(self.spool.sealer, "boot_id", "") or "unknown"),
            wallclock.now(),
            chains,
            pending,
        )
        sent = self.link.publish(self.topics.heads, payload, qos=1, retain=True)
        if sent is not None:
            self._heads_state, self._heads_generation = state, sent.generation
            self.stats.heads_sent += 1

    def _read_acks(self, msg: Inbound) -> list[proto.Ack]:
        """The acknowledgements a ``down/ack`` message carries, if it is to be believed."""
        try:
            return proto.parse_acks(msg.payload, self.device_id, self._ack_key).acks
        except VerificationError as exc:
            self.stats.forged_acks += 1
            now = self._clock()
            if now - self._forged_logged >= FORGED_LOG_EVERY_S:
                self._forged_logged = now
                log.error(
                    "uplink: ignored an acknowledgement on %s not signed by the platform's ack "
                    "key (%s): nothing deleted (%d so far)",
                    msg.topic,
                    exc,
                    self.stats.forged_acks,
                )
        except FormatError as exc:
            self.stats.bad_acks += 1
            log.warning("uplink: ignoring a malformed acknowledgement on %s: %s", msg.topic, exc)
        except Exception as exc:
            self.stats.bad_acks += 1
            self.failures(f"reading an acknowledgement on {msg.topic}", exc)
        return []

    def _drain_acks(self) -> None:
        """Handle every acknowledgement waiting; segment acks go to the spool in one batch.
        Every message is acknowledged to the broker, whatever it held."""
        batch: list[tuple[proto.SegmentAck, _Upload | None]] = []
        handled: list[Inbound] = []
        try:
            while len(handled) < ACK_BATCH:
                try:
                    msg = self.acks.get_nowait()
                except queue.Empty:
                    break
                handled.append(msg)
                for ack in self._read_acks(msg):
                    if isinstance(ack, proto.SegmentAck):
                        batch.append((ack, self._find(ack.stream, ack.seq, ack.hash)))
                        continue
                    try:
                        self._handle_ack(ack)
                    except Exception as exc:
                        self.failures(f"handling {type(ack).__name__}", exc)
            if batch:
                self._remove_acked(batch)
        finally:
            # Acknowledged to the broker once handled (and, for segments, removed). Should the
            # spool fail, nothing was removed: the upload stays, the platform is asked again
            # after ack_timeout_s and answers "duplicate".
            for msg in handled:
                self.link.ack(msg)

    def _remove_acked(self, batch: list[tuple[proto.SegmentAck, _Upload | None]]) -> None:
        try:
            done = self.spool.ack_many([(a.stream, a.seq, a.hash) for a, _u in batch])
        except (SpoolError, sqlite3.Error, OSError) as exc:
            log.error("uplink: cannot record %d acknowledgements: %s", len(batch), exc)
            return
        gone: set[int] = set()
        for (ack, u), ok in zip(batch, done, strict=True):
            if ok:
                self.stats.segments_acked += 1
                log.debug("uplink: platform has %s#%d (%s)", ack.stream, ack.seq, ack.result)
            if u is not None and self._by_key.get(u.key) is u:
                self._answered(u)
                del self._by_key[u.key]
                self._ids.discard(u.item.id)
                gone.add(id(u))
                self._drop_upload(u, release=False)
        if gone:
            self._uploads = [u for u in self._uploads if id(u) not in gone]

    def _find(self, stream: str, seq: int, mhash: str) -> _Upload | None:
        return self._by_key.get((stream, seq, mhash))

    def _answered(self, u: _Upload) -> None:
        """The platform said something about ``u``: if it came in a bundle, bundles work."""
        if u.bundled:
            u.bundled = False
            if self._bundles is not True:
                log.info("uplink: the platform takes bundles of small segments (protocol 3)")
            self._bundles = True
            self._probe_out = False

    def _remove(self, u: _Upload) -> None:
        self._uploads.remove(u)
        self._by_key.pop(u.key, None)
        self._ids.discard(u.item.id)

    def _handle_ack(self, ack: proto.Progress | proto.KeyAck | proto.Reject | proto.Retry) -> None:
        now = self._clock()
        if isinstance(ack, proto.Retry):
            self._retry_later(ack, now)
        elif isinstance(ack, proto.Progress):
            u = self._find(ack.stream, ack.seq, ack.hash)
            if u is None or ack.next > u.size:
                return
            self._answered(u)
            u.last_word = now
            if ack.next > u.confirmed:
                u.confirmed = ack.next
                try:
                    # A whole segment's progress is worth nothing after a restart (it is
                    # resent from zero unless acknowledged), so only partial progress is kept.
                    if ack.next < u.size:
                        self.spool.set_progress(u.item.id, ack.next)
                except SpoolError as exc:
                    log.warning("uplink: cannot record progress of %s: %s", u.item.stream, exc)
                u.next = max(u.next, u.confirmed)
            # A gap: resend from it, unless we already did after sending what revealed it.
            if (
                ack.got is not None
                and ack.next < u.next
                and u.sent_at.get(ack.next, -1) < u.sent_at.get(ack.got, 1 << 62)
            ):
                log.debug("uplink: platform lacks %s#%d at %d", ack.stream, ack.seq, ack.next)
                u.next = ack.next
        elif isinstance(ack, proto.KeyAck):
            if ack.key_id not in self._keys_acked:
                self._keys_acked.add(ack.key_id)
                self.stats.keys_acked += 1
                try:
                    self.spool.ack_key(ack.key_id)
                except SpoolError as exc:
                    log.warning("uplink: cannot record key ack %s: %s", ack.key_id, exc)
        else:
            self._rejected_by_platform(ack)

    def _retry_later(self, ack: proto.Retry, now: float) -> None:
        """The platform could not take it now: hold it ``after_s``, then send it again (from
        the last byte the platform confirmed). Nothing is deleted."""
        self.stats.retries += 1
        if ack.what == "key":
            log.warning(
                "uplink: the platform asks to resend key record %s in %d s: %s",
                ack.key_id,
                ack.after_s,
                ack.reason,
            )
            self._keys_sent[ack.key_id] = now + ack.after_s - self.settings.ack_timeout_s
            return
        u = self._find(ack.stream, ack.seq, ack.hash)
        if u is None:
            return
        self._answered(u)
        log.warning(
            "uplink: the platform asks to resend %s#%d in %d s: %s",
            ack.stream,
            ack.seq,
            ack.after_s,
            ack.reason,
        )
        u.next = u.confirmed
        u.hold_until = now + ack.after_s
        u.last_word = u.hold_until

    def _rejected_by_platform(self, ack: proto.Reject) -> None:
        self.stats.rejected += 1
        if ack.what == "key":
            what = f"key record {ack.key_id}"
            self._keys_rejected.add(ack.key_id)
            victims = [u for u in self._uploads if u.item.key_id == ack.key_id]
        else:
            what = f"segment {ack.stream}#{ack.seq}"
            u = self._find(ack.stream, ack.seq, ack.hash)
            victims = [u] if u is not None else []
            if u is not None:
                self._answered(u)
        log.error("uplink: the platform refused %s: %s (kept in the spool)", what, ack.reason)
        self._alarm(
            Alarm(
                "upload_refused",
                f"the platform refused {what}: {ack.reason}",
                Severity.CRITICAL,
                wallclock.now(),
                {"what": what, "reason": ack.reason},
            )
        )
        for u in victims:
            self._rejected.add(u.item.id)
            self._remove(u)
            self._drop_upload(u, release=True)
            if ack.what != "key":
                try:
                    self.spool.park(u.item.id, ack.reason)
                except (SpoolError, sqlite3.Error) as exc:
                    log.warning("uplink: cannot park %s: %s", u.item.stream, exc)

    def _check_silence(self) -> None:
        now = self._clock()
        for u in self._uploads:
            waiting = u.next > u.confirmed or u.confirmed >= u.size
            if waiting and now - u.last_word > self.settings.ack_timeout_s:
                # All bytes confirmed but no acknowledgement: send the last chunk again so the
                # platform finishes (or says "duplicate").
                restart = (
                    u.confirmed if u.confirmed < u.size else max(0, u.size - self.chunk_size())
                )
                log.info(
                    "uplink: no word from the platform on %s#%d for %.0f s; resending from byte %d",
                    u.item.stream,
                    u.item.seq,
                    now - u.last_word,
                    restart,
                )
                self.stats.resends_after_silence += 1
                if u.bundled and self._bundles is not True:
                    if self._bundles is None:
                        log.warning(
                            "uplink: the platform answered nothing of a bundle (protocol 2?): "
                            "single chunks until the next connection"
                        )
                    self._bundles = False
                    self._probe_out = False
                u.bundled = False
                u.next = restart
                u.last_word = now

    # ------------------------------------------------------------------ backfill

    def chunk_size(self) -> int:
        return proto.chunk_size_for(self.link.max_packet, self._max_chunk)

    def _send_backfill(self) -> float:
        if (
            self.link.outstanding() >= self.settings.window
            or self._in_socket() >= self.settings.window_kib * KIB
        ):
            return IDLE_POLL_S  # woken by the PUBACK
        unconfirmed = sum(u.next - u.confirmed for u in self._uploads)
        if unconfirmed >= self.settings.platform_window_kib * KIB:
            return IDLE_POLL_S  # woken by the platform's progress
        now = self._clock()
        u = next((u for u in self._uploads if u.next < u.size and u.hold_until <= now), None)
        if u is None:
            if len(self._uploads) >= self.settings.max_segments_in_flight:
                return IDLE_POLL_S
            u = self._start_next()
            if u is None:
                return IDLE_POLL_S
        kid = u.item.key_id
        if kid not in self._keys_acked:
            if self.spool.key_acked(kid):
                self._keys_acked.add(kid)
            else:
                return self._send_key(kid)
        if self._may_bundle(u):
            members = self._gather(u, unconfirmed, now)
            if len(members) >= 2:
                return self._send_bundle(members)
        elif self._probing(u):
            return IDLE_POLL_S  # the probe's answer decides how this one goes: wait for it
        n = min(self.chunk_size(), u.size - u.next)
        delay = self._bucket.delay(n)
        if delay > 0:
            return delay
        data = u.read(u.next, n)
        if len(data) != n:
            log.error("uplink: %s is shorter than indexed; dropping it", u.item.path)
            self._remove(u)
            self._drop_upload(u, release=True)
            self._rejected.add(u.item.id)
            return 0.0
        header = proto.ChunkHeader(
            u.item.stream, u.item.seq, u.boot, u.item.manifest_hash, u.size, u.next
        )
        sent = self.link.publish(
            self.topics.segment(u.item.stream), proto.encode_chunk(header, data), qos=1
        )
        if sent is None:
            return IDLE_POLL_S  # not connected: woken by the reconnect
        self._unacked.append((sent, n))
        if u.next < u.high:
            self.stats.chunks_resent += 1
        if u.next == u.confirmed and u.next >= u.high:
            u.last_word = self._clock()
        self._counter += 1
        u.sent_at[u.next] = self._counter
        u.next += n
        u.high = max(u.high, u.next)
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += n
        return 0.0

    def _in_socket(self) -> int:
        """Backfill bytes published and not yet acknowledged by the broker (PUBACK): what a
        live message would wait behind on a slow link."""
        q = self._unacked
        while q and not self.link.pending(q[0][0]):
            q.popleft()
        if len(q) > 4 * self.settings.window:  # PUBACKs out of order: look at them all
            self._unacked = q = deque(e for e in q if self.link.pending(e[0]))
        return sum(n for _s, n in q)

    # ------------------------------------------------------------------ bundles

    def _bundle_cap(self) -> int:
        return min(self.settings.bundle_kib * KIB, self.chunk_size())

    @staticmethod
    def _bundle_size(u: _Upload | SpoolItem) -> int:
        """Bytes a whole segment adds to a bundle, at most (its chunk header is ~150 bytes)."""
        return u.size + BUNDLE_MEMBER_OVERHEAD

    def _probing(self, u: _Upload) -> bool:
        """``u`` could go in a bundle, but the probe bundle has not been answered yet."""
        return (
            self._bundles is None
            and self._probe_out
            and self.settings.bundle_kib > 0
            and u.fresh
            and u.data is not None
        )

    def _may_bundle(self, u: _Upload) -> bool:
        if self.settings.bundle_kib <= 0 or self._bundles is False:
            return False
        if self._bundles is None and self._probe_out:
            return False  # one probe at a time until the platform answers
        return u.fresh and u.data is not None and self._bundle_size(u) <= self._bundle_cap()

    def _gather(self, first: _Upload, unconfirmed: int, now: float) -> list[_Upload]:
        """``first`` and more fresh small segments of its stream (started from the spool as
        needed) for one bundle, within the bundle size, the platform window and the limit
        of segments in flight."""
        cap = self._bundle_cap()
        room = self.settings.platform_window_kib * KIB - unconfirmed
        stream, kid = first.item.stream, first.item.key_id
        members, total = [first], self._bundle_size(first)

        def fits(size: int) -> bool:
            return total + size <= cap and total + size <= room and len(members) < proto.MAX_BUNDLE

        for v in self._uploads:
            if (
                v is not first
                and v.fresh
                and v.data is not None
                and v.item.stream == stream
                and v.item.key_id == kid
                and v.hold_until <= now
                and fits(self._bundle_size(v))
            ):
                members.append(v)
                total += self._bundle_size(v)

        def accept(item: SpoolItem) -> bool:
            return item.stream == stream and item.key_id == kid and fits(self._bundle_size(item))

        while len(self._uploads) < self.settings.max_segments_in_flight:
            w = self._start_next(accept)
            if w is None:
                break
            if not (w.fresh and w.data is not None):
                break  # resumed from stored progress, or larger than indexed: on its own
            members.append(w)
            total += self._bundle_size(w)
        return members

    def _send_bundle(self, members: list[_Upload]) -> float:
        payload = proto.encode_bundle(
            [
                (
                    proto.ChunkHeader(
                        u.item.stream, u.item.seq, u.boot, u.item.manifest_hash, u.size, 0
                    ),
                    u.read(0, u.size),
                )
                for u in members
            ]
        )
        delay = self._bucket.delay(len(payload))
        if delay > 0:
            return delay
        sent = self.link.publish(self.topics.segment(members[0].item.stream), payload, qos=1)
        if sent is None:
            return IDLE_POLL_S
        self._unacked.append((sent, len(payload)))
        now = self._clock()
        self._counter += 1
        for u in members:
            u.sent_at[0] = self._counter
            u.next = u.high = u.size
            u.last_word = now
            u.bundled = True
            self.stats.bytes_sent += u.size
        if self._bundles is None:
            self._probe_out = True
        self.stats.bundles_sent += 1
        self.stats.segments_bundled += len(members)
        self.stats.chunks_sent += 1
        return 0.0

    def _send_key(self, kid: str) -> float:
        if kid in self._keys_rejected:
            return IDLE_POLL_S
        now = self._clock()
        sent_at = self._keys_sent.get(kid)
        if sent_at is not None and now - sent_at < self.settings.ack_timeout_s:
            return IDLE_POLL_S  # woken by the key ack
        try:
            record = self.spool.key_record(kid)
        except SpoolError as exc:
            log.error("uplink: %s; its segments cannot be decrypted by the platform", exc)
            self._keys_rejected.add(kid)
            return 0.0
        if self.link.publish(self.topics.key, record, qos=1) is not None:
            self._keys_sent[kid] = now
        return IDLE_POLL_S

    def _start_next(self, accept: Callable[[SpoolItem], bool] | None = None) -> _Upload | None:
        """Start the next ready segment (oldest first, streams by priority); with ``accept``,
        only if that segment is acceptable (else it stays next)."""
        now = self._clock()
        if not self._ready or now - self._ready_at > READY_REFRESH_S:
            # The spool leaves out what is in flight (mark_inflight); what we refused to send
            # is left out here. Only as many as could start now, and a few more.
            limit = max(0, self.settings.max_segments_in_flight - len(self._uploads)) + 8
            self._ready = deque(
                [
                    i
                    for i in self.spool.next_ready(
                        self.settings.priority, limit + len(self._rejected)
                    )
                    if i.id not in self._rejected and i.id not in self._ids
                ][:limit]
            )
            self._ready_at = now
        while self._ready:
            item = self._ready[0]
            if item.id in self._rejected or item.id in self._ids:
                self._ready.popleft()
                continue
            if accept is not None and not accept(item):
                return None
            self._ready.popleft()
            try:
                f = self.spool.open_segment(item)
            except OSError as exc:
                log.warning("uplink: skipping %s#%d: %s", item.stream, item.seq, exc)
                continue
            try:
                data = None
                if self.settings.bundle_kib > 0 and self._bundle_size(item) <= self._bundle_cap():
                    data = f.read()  # a small one (as indexed): whole, in one read
                size, mhash, boot = peek_segment(data if data is not None else f)
                if data is not None and size + BUNDLE_MEMBER_OVERHEAD > self._bundle_cap():
                    data = None  # larger than indexed: sent in chunks from the file
            except (OSError, AgentError) as exc:
                f.close()
                log.warning("uplink: skipping %s#%d: %s", item.stream, item.seq, exc)
                continue
            if mhash != item.manifest_hash:
                log.error("uplink: %s#%d: file differs from the index", item.stream, item.seq)
                f.close()
                self._rejected.add(item.id)
                continue
            if data is not None:
                f.close()
            start = item.progress if 0 <= item.progress < size else 0
            self.spool.mark_inflight(item.id)
            u = _Upload(
                item=item,
                boot=boot,
                size=size,
                f=None if data is not None else f,
                confirmed=start,
                next=start,
                last_word=now,
                high=start,
                data=data,
            )
            if start:
                log.info(
                    "uplink: resuming %s#%d at byte %d of %d", item.stream, item.seq, start, u.size
                )
            self._uploads.append(u)
            self._by_key[u.key] = u
            self._ids.add(item.id)
            return u
        return None

    def _drop_upload(self, u: _Upload, *, release: bool) -> None:
        if u.f is not None:
            with contextlib.suppress(OSError):
                u.f.close()
        if release:
            try:
                self.spool.release(u.item.id)
            except (SpoolError, sqlite3.Error) as exc:
                log.warning("uplink: cannot release %s: %s", u.item.stream, exc)

    # ------------------------------------------------------------------ figures

    def in_flight(self) -> int:
        return len(self._uploads)

    @property
    def acks_signed(self) -> bool:
        """True when only acknowledgements signed by the platform's ack key count."""
        return self._ack_key is not None
