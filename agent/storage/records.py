"""Small records (a GPS fix is ~40 bytes) kept durably without a key wrap or signature each.

Records of one stream are appended to a journal, each encrypted under the current epoch's
data key (AEAD, 4-byte frame + 16-byte tag on disk), and made durable by fsync (per record, or
per group with ``commit``). Every ``batch_s`` seconds or ``batch_max_records`` records the batch
is sealed as one ordinary segment whose plaintext is the records, each prefixed by its u16
length, and the journal is removed. On the wire a record then costs 2 bytes plus its share of
one manifest and signature (see docs/format.md).

The plaintext of the open batch is held in memory only. After a power cut the device can no
longer decrypt its journal (the data key lived in RAM), so at the next open the journal's
ciphertext itself is sealed as a segment of content type ``application/x-edge-journal``: the
platform, which can unwrap the epoch key, reads the records out of it. Nothing that
``append`` returned from is lost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from agent import wallclock
from agent.errors import AgentError, FormatError, SpoolError, VerificationError
from agent.storage.durable import fsync_dir
from agent.storage.seal import TAG_LEN, SegmentHeader, aead_for, chunk_nonce, segment_key
from agent.storage.spool import PutResult, Spool

log = logging.getLogger(__name__)

JOURNAL_MAGIC = b"EAJNL\x00"
JOURNAL_VERSION = 2
# magic, version, key id, salt, batch id; version 2 adds the cipher (one byte, JOURNAL_CIPHERS)
JOURNAL_HEADER_V1 = struct.Struct(">6sH8s16s16s")
JOURNAL_HEADER = struct.Struct(">6sH8s16s16sB")
JOURNAL_CIPHERS = {1: "aes-256-gcm", 2: "chacha20-poly1305"}
JOURNAL_CONTENT_TYPE = "application/x-edge-journal"
# Content types whose plaintext is a batch of records, each prefixed by its u16 length.
RECORD_BATCH_TYPES = frozenset({"application/x-edge-fix"})
MAX_RECORD = 65535


@dataclass(frozen=True)
class JournalHeader:
    key_id: str
    salt: bytes
    batch_id: str
    cipher: str | None  # None in a version 1 journal (its header did not name one)
    size: int


def parse_journal(data: bytes, *, whole: bool = False) -> tuple[JournalHeader, list[bytes]]:
    """Split a journal into its header and whole encrypted frames.

    A torn tail (a frame cut by a power cut) is dropped, or with ``whole`` refused: a journal
    sealed into a recovered segment holds whole frames only.
    """
    if len(data) < JOURNAL_HEADER_V1.size:
        raise FormatError("journal: too short")
    magic, version, kid, salt, bid = JOURNAL_HEADER_V1.unpack_from(data)
    if magic != JOURNAL_MAGIC or version not in (1, JOURNAL_VERSION):
        raise FormatError("journal: bad magic or version")
    cipher: str | None = None
    pos = JOURNAL_HEADER_V1.size
    if version == JOURNAL_VERSION:
        if len(data) < JOURNAL_HEADER.size:
            raise FormatError("journal: too short")
        code = JOURNAL_HEADER.unpack_from(data)[5]
        if code not in JOURNAL_CIPHERS:
            raise FormatError(f"journal: unknown cipher code {code}")
        cipher = JOURNAL_CIPHERS[code]
        pos = JOURNAL_HEADER.size
    header = JournalHeader(kid.hex(), salt, bid.hex(), cipher, pos)
    frames: list[bytes] = []
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        if n < TAG_LEN or n > MAX_RECORD + TAG_LEN or pos + 4 + n > len(data):
            break
        frames.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    if whole and pos != len(data):
        raise FormatError(f"journal: {len(data) - pos} bytes after the last whole frame")
    return header, frames


def decrypt_journal(data: bytes, data_key: bytes, cipher: str | None = None) -> list[bytes]:
    """Platform side: the records of a recovered journal (needs the epoch's data key).

    A journal is decrypted with the cipher its header names. A version 1 header names none:
    then ``cipher`` (the recovered segment's) is tried first, then the other; AEAD
    authentication tells which one it was written with. Raises VerificationError when no
    cipher authenticates every frame.
    """
    header, frames = parse_journal(data)
    if header.cipher is not None:
        candidates = [header.cipher]
    else:
        candidates = [c for c in (cipher, *JOURNAL_CIPHERS.values()) if c is not None]
    for name in dict.fromkeys(candidates):
        aead = aead_for(name, segment_key(data_key, header.salt))
        try:
            return [aead.decrypt(chunk_nonce(i, False), ct, None) for i, ct in enumerate(frames)]
        except InvalidTag:
            continue
    raise VerificationError(
        f"journal {header.batch_id}: a frame fails authentication (altered, or the wrong key)"
    )


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` or raise (a short write on a full disk is ENOSPC)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def pack_records(records: list[bytes]) -> bytes:
    return b"".join(struct.pack(">H", len(r)) + r for r in records)


def unpack_records(data: bytes) -> list[bytes]:
    """The records of a batch's plaintext (each prefixed by its u16 length), exactly."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise FormatError("records: truncated length prefix")
        (n,) = struct.unpack_from(">H", data, pos)
        if pos + 2 + n > len(data):
            raise FormatError("records: truncated record")
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


class RecordLog:
    """Durable small records of one stream, sealed in batches. Thread-safe."""

    def __init__(
        self,
        spool: Spool,
        stream: str,
        *,
        content_type: str,
        batch_s: float | None = None,
        batch_max_records: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        pack: Callable[[list[bytes]], bytes] | None = None,
        record_type: str | None = None,
    ) -> None:
        """``pack`` codes a batch's records as its plaintext in a content type of its own
        (e.g. agent.gps.fixdelta); ``record_type`` is then the record batch type of one
        record, which a recovered journal's meta names. Without ``pack`` the records are
        u16-length-prefixed and ``content_type`` is a record batch type."""
        record_type = record_type or content_type
        if record_type not in RECORD_BATCH_TYPES or (pack is None and record_type != content_type):
            raise SpoolError(
                f"{stream}: {record_type!r} is not a record batch type "
                f"({', '.join(sorted(RECORD_BATCH_TYPES))})"
            )
        self.spool = spool
        self.stream = stream
        self.content_type = content_type
        self.record_type = record_type
        self._pack = pack or pack_records
        self.batch_s = batch_s if batch_s is not None else spool.settings.batch_s
        self.batch_max = batch_max_records or spool.settings.batch_max_records
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._dir = spool.root / "journal"
        self._dir.mkdir(exist_ok=True)
        self._path = self._dir / f"{stream}.jnl"
        self._fd: int | None = None
        self._size = 0  # bytes of whole frames (and header) in the journal
        self._spoilt = False  # an append failed: the batch takes no further record
        self._records: list[bytes] = []
        self._times: list[float] = []
        self._monos: list[int] = []  # when each record was appended, on the monotonic clock
        self._opened_mono = 0.0
        self._batch_id = ""
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self.recovered = self._recover()

    # -------------------------------------------------------------- recovery

    def _recover(self) -> PutResult | None:
        """Seal the journal the last stop left (and any held back before); returns what the
        journal left by the last stop was sealed as. A journal the spool refuses now (a full
        disk at the start) is held back under another name and sealed after a later batch:
        the agent starts and records whatever the disk does."""
        self._path.with_suffix(".part").unlink(missing_ok=True)
        self._retry_held()
        if not self._path.exists():
            return None
        try:
            return self._seal_journal(self._path)
        except (AgentError, OSError) as exc:
            held = self._dir / f"{self.stream}.held-{time.time_ns()}.jnl"
            os.replace(self._path, held)
            fsync_dir(self._dir)
            log.error(
                "records: the %s journal left by the last stop cannot be sealed now (%s): "
                "kept as %s, sealed once there is room",
                self.stream,
                exc,
                held.name,
            )
            return None

    def _retry_held(self) -> None:
        """Seal the journals held back at a start (each stays until it is sealed)."""
        for path in sorted(self._dir.glob(f"{self.stream}.held-*.jnl")):
            try:
                self._seal_journal(path)
            except (AgentError, OSError) as exc:
                log.debug("records: %s still held: %s", path.name, exc)
                return

    def _seal_journal(self, path: Path) -> PutResult | None:
        data = path.read_bytes()
        try:
            header, frames = parse_journal(data)
        except FormatError as exc:
            dest = self.spool.root / "quarantine" / f"{int(wallclock.now())}-{path.name}"
            log.error("records: journal %s unreadable (%s): moved to %s", path, exc, dest)
            os.replace(path, dest)
            return None
        result: PutResult | None = None
        if frames and not self.spool.batch_sealed(header.batch_id):
            whole = data[: header.size + sum(4 + len(f) for f in frames)]
            now = wallclock.now()
            mono = time.monotonic_ns()
            result = self.spool.put(
                SegmentHeader(
                    stream=self.stream,
                    content_type=JOURNAL_CONTENT_TYPE,
                    start_utc=now,
                    end_utc=now,
                    start_mono_ns=mono,
                    end_mono_ns=mono,
                    clock=self.spool.clock_state(),
                    meta={
                        "recovered": True,
                        "inner_key_id": header.key_id,
                        "inner_content_type": self.record_type,
                        "records": len(frames),
                    },
                    batch=header.batch_id,
                ),
                [whole],
                batch_id=header.batch_id,
            )
            log.warning(
                "records: sealed %d %s records recovered from a journal left by a stop",
                len(frames),
                self.stream,
            )
        path.unlink()
        fsync_dir(self._dir)
        return result

    # -------------------------------------------------------------- writing

    def _open_batch(self) -> None:
        key_id = self.spool.ensure_key_stored()
        key = self.spool.sealer.current_key()
        salt = os.urandom(16)
        batch = os.urandom(16)
        cipher = self.spool.sealer.settings.cipher
        code = next(c for c, name in JOURNAL_CIPHERS.items() if name == cipher)
        self._aead = aead_for(cipher, segment_key(key.secret, salt))
        self._batch_id = batch.hex()
        header = JOURNAL_HEADER.pack(
            JOURNAL_MAGIC, JOURNAL_VERSION, bytes.fromhex(key_id), salt, batch, code
        )
        # The journal appears whole (header written and synced) or not at all: a failure (a
        # full disk) leaves no file and no open descriptor behind, and the next append tries
        # again with a fresh salt.
        tmp = self._path.with_suffix(".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            _write_all(fd, header)
            os.fsync(fd)
            os.replace(tmp, self._path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd = fd
        self._size = len(header)
        self._opened_mono = self._monotonic()
        fsync_dir(self._dir)

    def append(self, record: bytes, *, t: float | None = None, durable: bool = True) -> None:
        """Store one record; durable on return unless ``durable=False`` (then call commit)."""
        if len(record) > MAX_RECORD:
            raise SpoolError(f"{self.stream}: record of {len(record)} bytes exceeds {MAX_RECORD}")
        with self._lock:
            if self._spoilt:
                self._restart_batch()
            if self._fd is None:
                self._open_batch()
            assert self._fd is not None
            assert self._aead is not None
            ct = self._aead.encrypt(chunk_nonce(len(self._records), False), record, None)
            try:
                _write_all(self._fd, struct.pack(">I", len(ct)) + ct)
                if durable:
                    os.fsync(self._fd)
            except BaseException:
                # Not stored: the caller keeps the record and retries. The frame may be on
                # the disk in part (a torn tail, cut off here when possible), and its nonce
                # was used: this batch takes no further record (see _restart_batch).
                self._spoilt = True
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            self._size += 4 + len(ct)
            self._records.append(record)
            self._times.append(wallclock.now() if t is None else t)
            self._monos.append(time.monotonic_ns())
            due = len(self._records) >= self.batch_max
        if due:
            # The record is stored (durable in the journal): a batch that cannot be sealed
            # now stays open, and due() tells the owner to roll it later.
            try:
                self.roll()
            except (AgentError, OSError) as exc:
                log.debug("records: %s batch not sealed yet: %s", self.stream, exc)

    def _restart_batch(self) -> None:
        """After a failed append: seal what the batch holds (or drop an empty journal) so the
        next record starts a batch with a new key, never reusing a nonce. Raises when the
        batch cannot be sealed yet (its records stay in the journal)."""
        if self._records:
            self._roll_locked()
        elif self._fd is not None:
            self._drop_journal()
        self._spoilt = False

    def commit(self) -> None:
        """Group commit: make every record appended so far durable."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def due(self) -> bool:
        with self._lock:
            return bool(self._records) and (
                self._monotonic() - self._opened_mono >= self.batch_s
                or len(self._records) >= self.batch_max
            )

    def pending(self) -> int:
        with self._lock:
            return len(self._records)

    def roll(self) -> PutResult | None:
        """Seal the open batch as one segment and start afresh."""
        with self._lock:
            return self._roll_locked()

    def _roll_locked(self) -> PutResult | None:
        if self._fd is None or not self._records:
            return None
        os.fsync(self._fd)
        records, times, batch_id = self._records, self._times, self._batch_id
        # The monotonic span is measured, not derived from wall-clock times (which step).
        start_mono, end_mono = self._monos[0], self._monos[-1]
        result = self.spool.put(
            SegmentHeader(
                stream=self.stream,
                content_type=self.content_type,
                start_utc=times[0],
                end_utc=times[-1],
                start_mono_ns=start_mono,
                end_mono_ns=end_mono,
                clock=self.spool.clock_state(),
                meta={"records": len(records)},
                batch=batch_id,
            ),
            [self._pack(records)],
            batch_id=batch_id,
        )
        # Sealed: the batch is over whatever the clean-up below meets (a journal left
        # behind is recognised as sealed at the next open, or replaced by the next batch).
        self._records, self._times, self._monos = [], [], []
        self._spoilt = False
        self._drop_journal()
        self._retry_held()  # there was room for this batch: maybe for a held journal too
        return result

    def _drop_journal(self) -> None:
        fd, self._fd, self._size = self._fd, None, 0
        try:
            if fd is not None:
                os.close(fd)
            self._path.unlink(missing_ok=True)
            fsync_dir(self._dir)
        except OSError as exc:
            log.warning("records: %s journal not removed yet: %s", self.stream, exc)

    def close(self) -> PutResult | None:
        """Seal what is pending (clean shutdown)."""
        return self.roll()

    @property
    def journal_path(self) -> Path:
        return self._path
