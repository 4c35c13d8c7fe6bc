"""The platform's acknowledgements: a segment leaves the spool only on the **platform's**
acknowledgement carrying its manifest hash. With the platform's ack key (``uplink.ack_key``)
only a batch signed by it and naming this device counts (protocol.parse_acks); an unsigned or
forged one deletes nothing, is counted (``forged_acks``) and logged. ``progress`` is stored
for resume, ``retry`` holds a segment or key record for ``after_s``, ``reject`` parks it.

Containment: every acknowledgement message is handled in its own ``try`` and acknowledged to
the broker whatever happens.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import wallclock
from agent.contain import Failures
from agent.errors import FormatError, SpoolError, VerificationError
from agent.model import Alarm, Severity
from agent.uplink import compact
from agent.uplink import protocol as proto
from agent.uplink.mqtt import Inbound
from agent.uplink.transfer import ChunkedTransfer
from agent.uplink.uploads import Upload

# The forwarder's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.uplink.forwarder")

ACK_BATCH = 256  # acknowledgements handled (and removed from the spool) per transaction
FORGED_LOG_EVERY_S = 60.0


class AckHandling(ChunkedTransfer):
    """Reads, checks and applies the platform's acknowledgements (a part of the Forwarder)."""

    device_id: str
    acks: queue.Queue[Inbound]
    failures: Failures
    _ack_key: Ed25519PublicKey | None
    _forged_logged: float
    _alarm: Callable[[Alarm], None]
    _platform_has: dict[str, tuple[int, str]]  # per stream, the highest segment it acknowledged

    def _read_acks(self, msg: Inbound) -> list[proto.Ack]:
        """The acknowledgements a ``down/ack`` message carries, if it is to be believed."""
        try:
            if compact.is_compact_ack(msg.payload):
                return self._compact_acks(msg.payload)
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

    def _compact_acks(self, payload: bytes) -> list[proto.Ack]:
        """A compact acknowledgement (protocol 4): its ``seg`` acknowledgements; a ``plain``
        answer sends that segment again as a chunk. Without the ack key (a lab) it is taken
        on trust, like JSON ones."""
        out: list[proto.Ack] = []
        for a in compact.parse_acks(payload, self.device_id, self._ack_key, self._resolve):
            if a.kind == compact.PLAIN:
                self._send_plain(a.stream, a.seq)
            elif a.kind == compact.KEY:
                out.append(proto.KeyAck(a.key_id))
            else:
                result = "stored" if a.kind == compact.STORED else "duplicate"
                out.append(proto.SegmentAck(a.stream, a.seq, a.hash, result))
        return out

    def _drain_acks(self) -> None:
        """Handle every acknowledgement waiting; segment acks go to the spool in one batch.
        Every message is acknowledged to the broker, whatever it held."""
        batch: list[tuple[proto.SegmentAck, Upload | None]] = []
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

    def _remove_acked(self, batch: list[tuple[proto.SegmentAck, Upload | None]]) -> None:
        try:
            done = self.spool.ack_many([(a.stream, a.seq, a.hash) for a, _u in batch])
        except (SpoolError, sqlite3.Error, OSError) as exc:
            log.error("uplink: cannot record %d acknowledgements: %s", len(batch), exc)
            return
        gone: set[int] = set()
        for (ack, u), ok in zip(batch, done, strict=True):
            had = self._platform_has.get(ack.stream)
            if had is None or ack.seq >= had[0]:
                self._platform_has[ack.stream] = (ack.seq, ack.hash)  # news for the heads
            if ok:
                self.stats.segments_acked += 1
                log.debug("uplink: platform has %s#%d (%s)", ack.stream, ack.seq, ack.result)
            if u is not None and self._by_key.get(u.key) is u:
                self._answered(u)
                self._compact_acked(u)
                del self._by_key[u.key]
                self._ids.discard(u.item.id)
                gone.add(id(u))
                self._drop_upload(u, release=False)
        if gone:
            self._uploads = [u for u in self._uploads if id(u) not in gone]

    def _handle_ack(self, ack: proto.Progress | proto.KeyAck | proto.Reject | proto.Retry) -> None:
        now = self._clock()
        if isinstance(ack, proto.KeyAck | proto.Retry | proto.Reject) and ack.key_id:
            self._key_answered(ack.key_id)
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
