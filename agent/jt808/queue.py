"""Store and forward: every location report kept, durable and encrypted, until the JT/T 808
platform acknowledges it.

Why not the spool: the spool's segments are sealed to *our* platform's key (the device cannot
read them back after a power cut) and leave it when *our* platform acknowledges them over
MQTT; the 808 platform acknowledges something else, at another time, and the device must
re-send the same bytes after a reboot. So this is a small queue of its own, built on the
same durability rules (:mod:`agent.storage.durable`)::

    <state_dir>/queue/<first id>.q    header (magic, 16-byte salt), then records:
                                      u32 length | u64 id | ChaCha20-Poly1305(t, body)
    <state_dir>/queue/acks.log        u64 ids acknowledged (or dropped by the cap)

* ``append`` returns after the record is written and fsync'ed; ``ack`` after the ids are.
  A record is "gone" only once its id is in ``acks.log``: nothing leaves before the
  platform's answer (or the size cap).
* Each start writes a new segment file (created whole by :func:`write_atomic`); an old file's
  torn tail (a cut in the middle of a write) is recognised by its length or its tag and
  ignored. A segment whose every record is gone is deleted; ``acks.log`` is rewritten
  (atomically) at open and when it grows, keeping only ids of segments still there.
* Records are encrypted (ChaCha20-Poly1305: fast on a Pi 4 without AES instructions) under a
  key derived by HKDF from the device key and the segment's random salt, the record id as
  nonce and associated data: positions do not rest in plaintext, a record cannot be moved
  or replayed under another id, and a wiped queue directory never reuses a nonce. The key is
  as safe as the device key (both live on the device): the 808 platform receives these same
  positions in the clear anyway.
* **Cap**: at most ``max_reports`` kept; beyond it the oldest is dropped (counted and
  reported to ``on_drop``). These positions are also in the sealed GPS segments that go to
  our own platform; the cap only bounds what the 808 platform gets late.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import SpoolError
from agent.storage.durable import fsync_dir, write_atomic

log = logging.getLogger(__name__)

MAGIC = b"EAJ808Q\x01"
SALT_LEN = 16
HEADER_LEN = len(MAGIC) + SALT_LEN
ACKS = "acks.log"
_REC = struct.Struct(">IQ")
_ID = struct.Struct(">Q")
_T = struct.Struct(">d")
TAG = 16
MAX_RECORD = 4096
ACK_LOG_COMPACT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    t: float  # the fix's time (UTC s)
    body: bytes  # the 0x0200 body


def derive_key(device_secret: bytes) -> bytes:
    """The queue's master key from the device's secret (e.g. its Ed25519 private bytes)."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"edge-agent jt808 queue key v1").derive(
        device_secret
    )


def _segment_cipher(master: bytes, salt: bytes) -> ChaCha20Poly1305:
    key = HKDF(hashes.SHA256(), 32, salt=salt, info=b"edge-agent jt808 queue segment v1").derive(
        master
    )
    return ChaCha20Poly1305(key)


def _nonce(rid: int) -> bytes:
    return b"\x00\x00\x00\x00" + _ID.pack(rid)


class ReportQueue:
    """Durable, encrypted, bounded FIFO of reports with out-of-order acknowledgements.

    Thread-safe: producers append (GPS thread, alarm threads), the session acks and reads.
    """

    def __init__(
        self,
        directory: Path,
        master_key: bytes,
        *,
        max_reports: int = 20000,
        segment_records: int = 2048,
        on_drop: Callable[[int, float], None] | None = None,
    ) -> None:
        self.dir = directory
        self._master = master_key
        self.max_reports = max_reports
        self.segment_records = segment_records
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._live: OrderedDict[int, Record] = OrderedDict()
        self._seg_of: dict[int, int] = {}  # record id -> segment first id
        self._seg_left: dict[int, int] = {}  # segment first id -> records not gone
        self._next_id = 1
        self._fd: int | None = None  # the segment being written
        self._seg_first = 0
        self._seg_count = 0
        self._cipher: ChaCha20Poly1305 | None = None
        self._ack_fd: int | None = None
        self._ack_bytes = 0
        self.appended = 0
        self.acked = 0
        self.dropped = 0
        self.recovered = 0
        self.torn = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._recover()

    # ------------------------------------------------------------------ recovery

    def _segments(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.dir.glob("*.q"):
            if p.stem.isdigit():
                out.append((int(p.stem), p))
            else:
                log.warning("jt808 queue: ignoring stray file %s", p.name)
        return sorted(out)

    def _read_acks(self) -> set[int]:
        path = self.dir / ACKS
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return set()
        whole = len(data) - len(data) % _ID.size
        return {_ID.unpack_from(data, i)[0] for i in range(0, whole, _ID.size)}

    def _recover(self) -> None:
        gone = self._read_acks()
        top = max(gone, default=0)
        records: dict[int, tuple[int, Record]] = {}
        for first, path in self._segments():
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.error("jt808 queue: cannot read %s: %s", path, exc)
                continue
            if len(data) < HEADER_LEN or not data.startswith(MAGIC):
                log.error("jt808 queue: %s is not a queue segment; left alone", path.name)
                continue
            cipher = _segment_cipher(self._master, data[len(MAGIC) : HEADER_LEN])
            pos = HEADER_LEN
            while pos + _REC.size <= len(data):
                n, rid = _REC.unpack_from(data, pos)
                end = pos + 4 + n
                if n < 8 + TAG or n > MAX_RECORD or end > len(data):
                    self.torn += 1
                    break
                try:
                    plain = cipher.decrypt(_nonce(rid), data[pos + _REC.size : end], _ID.pack(rid))
                except InvalidTag:
                    self.torn += 1
                    break
                top = max(top, rid)
                if rid not in gone:
                    (t,) = _T.unpack_from(plain, 0)
                    records[rid] = (first, Record(rid, t, plain[_T.size :]))
                pos = end
            if pos != len(data):
                log.warning(
                    "jt808 queue: %s ends in %d unreadable bytes (a write cut short); ignored",
                    path.name,
                    len(data) - pos,
                )
        for rid in sorted(records):
            first, rec = records[rid]
            self._live[rid] = rec
            self._seg_of[rid] = first
            self._seg_left[first] = self._seg_left.get(first, 0) + 1
        self._next_id = top + 1
        self.recovered = len(self._live)
        # Segments with nothing left, and acknowledgements of ids no longer stored, go.
        removed = False
        for first, path in self._segments():
            if self._seg_left.get(first, 0) == 0:
                path.unlink()
                removed = True
        if removed:
            fsync_dir(self.dir)
        keep = sorted(i for i in gone if i >= min(self._seg_left, default=self._next_id))
        write_atomic(self.dir / ACKS, b"".join(_ID.pack(i) for i in keep))
        self._ack_bytes = len(keep) * _ID.size
        self._ack_fd = os.open(self.dir / ACKS, os.O_WRONLY | os.O_APPEND)
        if self.recovered:
            log.info("jt808 queue: %d reports waiting for the platform", self.recovered)

    # ------------------------------------------------------------------ writing

    def _open_segment(self) -> None:
        salt = os.urandom(SALT_LEN)
        first = self._next_id
        path = self.dir / f"{first:020d}.q"
        write_atomic(path, MAGIC + salt)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._seg_first = first
        self._seg_count = 0
        self._cipher = _segment_cipher(self._master, salt)

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._cipher = None

    def append(self, body: bytes, t: float) -> int:
        """Store one report; durable on return. Returns its id."""
        if len(body) + _T.size + TAG + 8 > MAX_RECORD:
            raise SpoolError(f"jt808 queue: a report of {len(body)} bytes is too large")
        with self._lock:
            try:
                while len(self._live) >= self.max_reports:
                    self._drop_oldest()
                if self._fd is None or self._seg_count >= self.segment_records:
                    self._roll()
                assert self._fd is not None and self._cipher is not None
                rid = self._next_id
                ct = self._cipher.encrypt(_nonce(rid), _T.pack(t) + body, _ID.pack(rid))
                os.write(self._fd, _REC.pack(8 + len(ct), rid) + ct)
                os.fsync(self._fd)
            except OSError as exc:
                self._close_segment()  # a new segment next time: no torn record in between
                raise SpoolError(f"jt808 queue: cannot store a report: {exc}") from exc
            self._next_id = rid + 1
            self._seg_count += 1
            self._live[rid] = Record(rid, t, body)
            self._seg_of[rid] = self._seg_first
            self._seg_left[self._seg_first] = self._seg_left.get(self._seg_first, 0) + 1
            self.appended += 1
            return rid

    def _roll(self) -> None:
        """Close the segment being written (deleting it if everything in it is gone)."""
        was = self._seg_first if self._fd is not None else None
        self._close_segment()
        if was is not None and self._seg_left.get(was, 0) == 0:
            self._seg_left.pop(was, None)
            (self.dir / f"{was:020d}.q").unlink(missing_ok=True)
        self._open_segment()

    def _drop_oldest(self) -> None:
        rid, rec = next(iter(self._live.items()))
        self._gone([rid])
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(rid, rec.t)

    def ack(self, ids: Iterable[int]) -> int:
        """The platform has these reports: forget them (durably). Returns how many were
        still stored."""
        with self._lock:
            known = [i for i in ids if i in self._live]
            if known:
                self._gone(known)
                self.acked += len(known)
            return len(known)

    def _gone(self, ids: list[int]) -> None:
        assert self._ack_fd is not None
        try:
            os.write(self._ack_fd, b"".join(_ID.pack(i) for i in ids))
            os.fsync(self._ack_fd)
        except OSError as exc:
            raise SpoolError(f"jt808 queue: cannot record acknowledgements: {exc}") from exc
        self._ack_bytes += len(ids) * _ID.size
        emptied = []
        for rid in ids:
            del self._live[rid]
            first = self._seg_of.pop(rid)
            self._seg_left[first] -= 1
            if self._seg_left[first] == 0:
                emptied.append(first)
        for first in emptied:
            if first == self._seg_first and self._fd is not None:
                if self._seg_count < self.segment_records:
                    continue  # still being written; removed once full and empty
                self._close_segment()
            del self._seg_left[first]
            (self.dir / f"{first:020d}.q").unlink(missing_ok=True)
        if emptied:
            fsync_dir(self.dir)
        if self._ack_bytes > ACK_LOG_COMPACT_BYTES:
            self._compact_acks()

    def _compact_acks(self) -> None:
        """Rewrite acks.log with the gone ids of segments still stored (the rest are moot).

        Segments hold consecutive ids, so those are the ids from the lowest stored segment on
        that are no longer live (ids of segments deleted in between are harmless extras)."""
        assert self._ack_fd is not None
        lowest = min(self._seg_left, default=self._next_id)
        keep = [i for i in range(lowest, self._next_id) if i not in self._live]
        os.close(self._ack_fd)
        self._ack_fd = None
        write_atomic(self.dir / ACKS, b"".join(_ID.pack(i) for i in keep))
        self._ack_bytes = len(keep) * _ID.size
        self._ack_fd = os.open(self.dir / ACKS, os.O_WRONLY | os.O_APPEND)

    # ------------------------------------------------------------------ reading

    def oldest(self, n: int, skip: set[int] | frozenset[int] = frozenset()) -> list[Record]:
        """Up to ``n`` reports, oldest first, leaving out ``skip`` (those in flight)."""
        with self._lock:
            out = []
            for rid, rec in self._live.items():
                if rid in skip:
                    continue
                out.append(rec)
                if len(out) >= n:
                    break
            return out

    def newer(self, first_id: int, skip: set[int] | frozenset[int] = frozenset()) -> list[Record]:
        """Reports with an id from ``first_id`` on, oldest first, leaving out ``skip``."""
        with self._lock:
            out = []
            for rid in reversed(self._live):
                if rid < first_id:
                    break
                if rid not in skip:
                    out.append(self._live[rid])
            out.reverse()
            return out

    def get(self, rid: int) -> Record | None:
        with self._lock:
            return self._live.get(rid)

    @property
    def next_id(self) -> int:
        """The id the next stored report will get."""
        with self._lock:
            return self._next_id

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def oldest_time(self) -> float | None:
        with self._lock:
            for rec in self._live.values():
                return rec.t
            return None

    def close(self) -> None:
        with self._lock:
            self._close_segment()
            if self._ack_fd is not None:
                os.close(self._ack_fd)
                self._ack_fd = None
