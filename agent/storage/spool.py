"""The durable on-device spool: sealed segments waiting for the platform's acknowledgement.

Layout under the spool directory::

    index.sqlite3            SQLite (WAL, synchronous=FULL but for new segments' rows, below):
                             segments, chains, key records
    seg/<stream>/<seq>.seg   sealed segments, each written tmp -> fsync -> rename -> fsync dir
    keys/<key_id>.key        signed key records (the wrapped data keys segments refer to)
    tmp/                     segments being sealed (ciphertext only); emptied at open
    quarantine/              anything unreadable found at open; never deleted by the agent

A put returns only after the segment file is durable in its place; its index row is committed
then without a sync of its own (the next durable commit carries it): a power cut that loses the
row leaves a sealed file that extends its chain, which the next open adopts. So a put costs two
syncs (the file, its directory), and writes each byte once. A segment leaves the spool only
when the platform acknowledges it with its manifest hash. At open, segments that
were in flight go back to ready, temp files are removed, a sealed file that was renamed into
place but not yet indexed (a cut between the two) is adopted, and anything else that does not
parse is moved to quarantine with a log line.

Thread use: any number of producer threads may ``put`` (each stream is sealed under its own
lock), and one reader thread (the uplink) drives ``next_ready``/``ack``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from agent import wallclock
from agent.errors import EvidenceRefused, FormatError, SpoolError
from agent.model import Alarm, ClockState, Severity
from agent.storage.durable import StreamingWriter, fsync_dir, makedirs_durable, write_atomic
from agent.storage.retention import Candidate, Retention, admit, classify
from agent.storage.seal import (
    BodyWriter,
    ChainLink,
    SegmentHeader,
    parse_key_record,
    read_segment_info,
)
from agent.storage.sealer import Sealer
from agent.storage.settings import MIB, SpoolSettings

log = logging.getLogger(__name__)

READY = "ready"
INFLIGHT = "inflight"  # written by older versions only; in flight is now kept in memory
ACKED = "acked"
REFUSED = "refused"  # the platform refused it: kept (evidence), not resent until retried

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    boot TEXT NOT NULL,
    key_id TEXT NOT NULL,
    class TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest_hash TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    UNIQUE (stream, seq)
);
CREATE INDEX IF NOT EXISTS segments_state ON segments (state, stream, seq);
CREATE TABLE IF NOT EXISTS chains (
    stream TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    last_hash TEXT
);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
);
"""

EVENT_STREAM = "event"
# A put's index row is committed without a WAL sync, but at least this often one is synced,
# so a power cut leaves at most this long of rows for recovery to rebuild (adopt).
INDEX_SYNC_S = 30.0
BALLAST = ".ballast"
BALLAST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class SpoolItem:
    """A stored segment as the reader sees it."""

    id: int
    stream: str
    seq: int
    key_id: str
    size: int
    manifest_hash: str
    progress: int
    path: Path
    created: float


@dataclass(frozen=True)
class PutResult:
    stream: str
    seq: int
    size: int
    manifest_hash: str
    path: Path


@dataclass(frozen=True)
class StreamBacklog:
    count: int
    bytes: int
    oldest_age_s: float | None


class Spool:
    """A durable, quota-bounded queue of sealed segments. See the module docstring."""

    def __init__(
        self,
        settings: SpoolSettings,
        sealer: Sealer,
        *,
        alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], ClockState] = ClockState,
    ) -> None:
        self.settings = settings
        self.sealer = sealer
        self.root = settings.dir
        self._alarm = alarm or (lambda a: None)
        self._clock_state = clock
        self._db_lock = threading.Lock()
        self._locks_lock = threading.Lock()
        self._stream_locks: dict[str, threading.Lock] = {}
        self._chains: dict[str, tuple[int, str | None]] = {}
        self._stored_keys: set[str] = set()
        self._inflight: set[int] = set()
        self._ballast_released = False
        self._synced_at = time.monotonic()  # the last durable index commit
        self._used: dict[Retention, int] = {Retention.EVIDENCE: 0, Retention.TELEMETRY: 0}
        for sub in ("seg", "keys", "tmp", "quarantine", "journal"):
            makedirs_durable(self.root / sub)
        self._db = sqlite3.connect(
            self.root / "index.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.recovery = self._recover()
        self._ensure_ballast()

    # ------------------------------------------------------------------ open / recovery

    def close(self) -> None:
        with self._db_lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction. ``durable=False``: committed without syncing the WAL (it becomes
        durable with the next durable commit); only for what recovery rebuilds from the disk
        when a power cut loses it (a sealed segment's row: see :meth:`_index`)."""
        if self._disk_free() < BALLAST_BYTES:
            self._release_ballast("the disk is nearly full")
        with self._db_lock:
            try:
                if not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                    if durable:
                        self._synced_at = time.monotonic()
                finally:
                    if not durable:
                        self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.OperationalError as exc:
                if "full" in str(exc):
                    self._release_ballast(str(exc))
                    raise SpoolError(f"spool index: {exc} (retried when space returns)") from exc
                raise

    def _ensure_ballast(self) -> None:
        """Keep a few MB allocated that can be given back when the disk fills up, so the
        index can still record acknowledgements (which free space) and refusals."""
        path = self.root / BALLAST
        if path.exists():
            return
        if self._disk_free() < self.settings.reserve_mb * MIB + 4 * BALLAST_BYTES:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, BALLAST_BYTES)
            os.fsync(fd)
        except OSError as exc:
            log.debug("spool: no ballast: %s", exc)
            os.close(fd)
            path.unlink(missing_ok=True)
            return
        os.close(fd)
        self._ballast_released = False

    def _release_ballast(self, why: str) -> bool:
        path = self.root / BALLAST
        if not path.exists():
            return False
        path.unlink()
        if not self._ballast_released:
            log.warning("spool: released the %d-byte ballast: %s", BALLAST_BYTES, why)
        self._ballast_released = True
        return True

    def _seg_path(self, stream: str, seq: int) -> Path:
        return self.root / "seg" / stream / f"{seq:012d}.seg"

    def _key_path(self, key_id: str) -> Path:
        return self.root / "keys" / f"{key_id}.key"

    def _quarantine(self, path: Path, why: str) -> None:
        dest = (
            self.root / "quarantine" / f"{int(wallclock.now())}-{uuid.uuid4().hex[:8]}-{path.name}"
        )
        log.error("spool: moving %s to quarantine: %s", path, why)
        os.replace(path, dest)
        fsync_dir(dest.parent)

    def _recover(self) -> dict[str, int]:
        """Bring the spool to a consistent state after any stop, clean or not."""
        stats = {"tmp_removed": 0, "inflight_reset": 0, "adopted": 0, "quarantined": 0, "lost": 0}
        for tmp in (self.root / "tmp").iterdir():
            tmp.unlink()
            stats["tmp_removed"] += 1
        if stats["tmp_removed"]:
            log.info("spool: removed %d unfinished temp files", stats["tmp_removed"])
            fsync_dir(self.root / "tmp")
        with self._tx() as db:
            cur = db.execute("UPDATE segments SET state=? WHERE state=?", (READY, INFLIGHT))
            stats["inflight_reset"] = cur.rowcount
            # Acknowledged segments whose file removal was cut short.
            for sid, stream, seq in db.execute(
                "SELECT id, stream, seq FROM segments WHERE state=?", (ACKED,)
            ).fetchall():
                self._seg_path(stream, seq).unlink(missing_ok=True)
                db.execute("DELETE FROM segments WHERE id=?", (sid,))
            for stream, next_seq, last_hash in db.execute("SELECT * FROM chains"):
                self._chains[stream] = (next_seq, last_hash)
            self._stored_keys = {k for (k,) in db.execute("SELECT key_id FROM keys")}
        indexed: dict[tuple[str, int], tuple[int, str]] = {
            (s, q): (i, h)
            for i, s, q, h in self._db.execute(
                "SELECT id, stream, seq, manifest_hash FROM segments"
            )
        }
        # Key records written but not indexed (cut before the index row) are adopted.
        for path in (self.root / "keys").glob("*.key"):
            kid = path.stem
            if kid in self._stored_keys:
                continue
            try:
                rec = parse_key_record(path.read_bytes())
            except Exception as exc:
                self._quarantine(path, f"unreadable key record: {exc}")
                stats["quarantined"] += 1
                continue
            with self._tx() as db:
                db.execute("INSERT INTO keys VALUES (?, ?, 0)", (rec.key_id, wallclock.now()))
            self._stored_keys.add(rec.key_id)
        seen: set[tuple[str, int]] = set()
        seg_root = self.root / "seg"
        for sdir in sorted(p for p in seg_root.iterdir() if p.is_dir()):
            for path in sorted(sdir.glob("*.seg")):
                self._recover_file(path, indexed, seen, stats)
            for stray in sdir.glob(".*.part"):
                stray.unlink()
        for (stream, seq), (sid, _h) in indexed.items():
            if (stream, seq) not in seen:
                log.error("spool: segment %s#%d is indexed but its file is missing", stream, seq)
                stats["lost"] += 1
                with self._tx() as db:
                    db.execute("DELETE FROM segments WHERE id=?", (sid,))
        with self._db_lock:
            for cls in Retention:
                (used,) = self._db.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM segments WHERE class=?", (cls.value,)
                ).fetchone()
                self._used[cls] = int(used)
        if stats["adopted"]:
            log.info(
                "spool: adopted %d sealed segments whose index rows the last stop lost",
                stats["adopted"],
            )
        if stats["quarantined"] or stats["lost"]:
            self._put_event_safe(
                "spool_recovery",
                {k: v for k, v in stats.items() if v},
            )
        return stats

    def _recover_file(
        self,
        path: Path,
        indexed: dict[tuple[str, int], tuple[int, str]],
        seen: set[tuple[str, int]],
        stats: dict[str, int],
    ) -> None:
        try:
            with path.open("rb") as f:
                info = read_segment_info(f)
        except (FormatError, OSError) as exc:
            self._quarantine(path, str(exc))
            stats["quarantined"] += 1
            return
        key = (info.stream, info.seq)
        if path != self._seg_path(info.stream, info.seq):
            self._quarantine(path, f"file name does not match its manifest ({info.label})")
            stats["quarantined"] += 1
            return
        if key in indexed:
            if indexed[key][1] != info.manifest_hash:
                self._quarantine(path, "manifest differs from the index")
                stats["quarantined"] += 1
                return
            seen.add(key)
            return
        next_seq, last_hash = self._chains.get(info.stream, (0, None))
        if info.seq < next_seq:
            # Its index row was deleted (the platform acknowledged it, or telemetry was
            # overwritten) and the stop came before the file's removal: finish the removal.
            path.unlink()
            stats["removed_acked"] = stats.get("removed_acked", 0) + 1
            log.info("spool: removed %s, acknowledged just before the last stop", info.label)
            return
        if info.seq == next_seq and info.manifest["prev"] == last_hash:
            # Renamed into place, cut before its index row: complete and sealed, so keep it.
            self._index(
                info.stream,
                info.seq,
                info.manifest["boot"],
                info.key_id,
                info.size,
                info.manifest_hash,
                info.batch,
            )
            seen.add(key)
            stats["adopted"] += 1
            log.debug("spool: adopted %s, sealed but not indexed at the last stop", info.label)
            return
        self._quarantine(path, f"{info.label} is not in the index and does not extend its chain")
        stats["quarantined"] += 1

    def _index(
        self,
        stream: str,
        seq: int,
        boot: str,
        key_id: str,
        size: int,
        manifest_hash: str,
        batch_id: str | None,
        *,
        durable: bool = True,
    ) -> None:
        """Index a sealed segment whose file is durable in its place.

        ``durable=False`` (a put): the row is committed without its own WAL sync. A power
        cut may lose it, never the file: recovery adopts a sealed file that extends its
        stream's chain (:meth:`_recover_file`), so the put's promise holds either way, and the
        next durable commit (an acknowledgement, a key, or this one when the last was
        ``INDEX_SYNC_S`` ago) makes the row durable too.
        """
        cls = classify(stream)
        durable = durable or time.monotonic() - self._synced_at >= INDEX_SYNC_S
        with self._tx(durable=durable) as db:
            db.execute(
                "INSERT INTO segments (stream, seq, boot, key_id, class, size, manifest_hash,"
                " created, state, batch_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    stream,
                    seq,
                    boot,
                    key_id,
                    cls.value,
                    size,
                    manifest_hash,
                    wallclock.now(),
                    READY,
                    batch_id,
                ),
            )
            db.execute(
                "INSERT INTO chains VALUES (?, ?, ?) ON CONFLICT(stream) DO UPDATE"
                " SET next_seq=excluded.next_seq, last_hash=excluded.last_hash",
                (stream, seq + 1, manifest_hash),
            )
        self._chains[stream] = (seq + 1, manifest_hash)
        self._used[cls] += size

    # ------------------------------------------------------------------ writing

    def _stream_lock(self, stream: str) -> threading.Lock:
        with self._locks_lock:
            lock = self._stream_locks.get(stream)
            if lock is None:
                lock = self._stream_locks[stream] = threading.Lock()
            return lock

    def clock_state(self) -> ClockState:
        """The clock's trust state, as given by whoever owns the clock (GPS, NTP)."""
        return self._clock_state()

    def ensure_key_stored(self) -> str:
        """Store the current epoch's key record durably (once); returns its key id."""
        key = self.sealer.current_key()
        with self._locks_lock:
            if key.key_id in self._stored_keys:
                return key.key_id
            write_atomic(self._key_path(key.key_id), key.record, self.root / "tmp")
            with self._tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO keys VALUES (?, ?, 0)", (key.key_id, wallclock.now())
                )
            self._stored_keys.add(key.key_id)
            return key.key_id

    def _disk_free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def put(
        self,
        header: SegmentHeader,
        pieces: Iterable[bytes],
        *,
        batch_id: str | None = None,
    ) -> PutResult:
        """Seal ``pieces`` as the next segment of ``header.stream`` and store it durably.

        Raises :class:`EvidenceRefused` (after recording the refusal as an event and raising an
        alarm) when the stream's retention class or the disk has no room.
        """
        stream = header.stream
        cls = classify(stream)
        if stream != EVENT_STREAM and cls is Retention.EVIDENCE:
            quota = self._quota(cls)
            if self._used[cls] >= quota:
                self._refuse(stream, f"evidence quota full ({self._used[cls]} of {quota} bytes)")
        with self._stream_lock(stream):
            self.ensure_key_stored()
            key = self.sealer.current_key()
            if key.key_id not in self._stored_keys:  # rotated in between
                self.ensure_key_stored()
            seq, prev = self._chains.get(stream, (0, None))
            tmp = self.root / "tmp" / f"{stream}-{seq}-{uuid.uuid4().hex[:8]}.part"
            try:
                # Sealed straight into the file (each byte written once, the disk writing
                # behind the sealer: StreamingWriter), then one fsync.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    out = StreamingWriter(fd)
                    _manifest, mbytes = self.sealer.seal(
                        cast(BinaryIO, out), header, ChainLink(seq, prev), pieces, key
                    )
                    os.fsync(fd)
                finally:
                    os.close(fd)
                size = out.pos
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self._refuse(stream, f"disk full while sealing ({exc.strerror})")
                raise SpoolError(f"cannot write segment {stream}#{seq}: {exc}") from exc
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            mhash = hashlib.sha256(mbytes).hexdigest()
            self._make_room(stream, cls, size, tmp)
            final = self._seg_path(stream, seq)
            makedirs_durable(final.parent)  # a new stream's directory, durably
            os.replace(tmp, final)
            fsync_dir(final.parent)
            self._index(
                stream, seq, self.sealer.boot_id, key.key_id, size, mhash, batch_id, durable=False
            )
            return PutResult(stream, seq, size, mhash, final)

    def put_streamed(
        self,
        header: SegmentHeader,
        body_path: Path,
        body: BodyWriter,
        *,
        batch_id: str | None = None,
    ) -> PutResult:
        """Seal a body already written (and made durable) chunk by chunk at ``body_path`` as
        the next segment of ``header.stream``: the trailer is appended, the file synced and
        renamed into place. The fragment journal's way to seal a segment without writing its
        bytes twice. The key of ``body`` must be stored (:meth:`ensure_key_stored`).

        Refused like :meth:`put` (the body is then removed: it was new evidence).
        """
        stream = header.stream
        cls = classify(stream)
        if stream != EVENT_STREAM and cls is Retention.EVIDENCE:
            quota = self._quota(cls)
            if self._used[cls] >= quota:
                body_path.unlink(missing_ok=True)
                self._refuse(stream, f"evidence quota full ({self._used[cls]} of {quota} bytes)")
        with self._stream_lock(stream):
            if body.key.key_id not in self._stored_keys:
                raise SpoolError(
                    f"{stream}: key {body.key.key_id} of a streamed body is not stored"
                )
            seq, prev = self._chains.get(stream, (0, None))
            try:
                with body_path.open("ab") as f:
                    _manifest, mbytes = self.sealer.seal_body(f, header, ChainLink(seq, prev), body)
                    f.flush()
                    os.fsync(f.fileno())
                size = body_path.stat().st_size
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    body_path.unlink(missing_ok=True)
                    self._refuse(stream, f"disk full while sealing ({exc.strerror})")
                raise SpoolError(f"cannot seal segment {stream}#{seq}: {exc}") from exc
            mhash = hashlib.sha256(mbytes).hexdigest()
            self._make_room(stream, cls, size, body_path)
            final = self._seg_path(stream, seq)
            makedirs_durable(final.parent)
            os.replace(body_path, final)
            fsync_dir(final.parent)
            self._index(
                stream,
                seq,
                self.sealer.boot_id,
                body.key.key_id,
                size,
                mhash,
                batch_id,
                durable=False,
            )
            return PutResult(stream, seq, size, mhash, final)

    def put_bytes(
        self,
        stream: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        meta: dict[str, Any] | None = None,
        start_utc: float | None = None,
        end_utc: float | None = None,
    ) -> PutResult:
        """Seal a byte string captured just now (stills, event records, small files)."""
        now = wallclock.now()
        mono = time.monotonic_ns()
        header = SegmentHeader(
            stream=stream,
            content_type=content_type,
            start_utc=start_utc if start_utc is not None else now,
            end_utc=end_utc if end_utc is not None else now,
            start_mono_ns=mono,
            end_mono_ns=mono,
            clock=self._clock_state(),
            meta=meta or {},
        )
        return self.put(header, [data])

    def put_event(
        self, kind: str, details: dict[str, Any], *, evicted: dict[str, Any] | None = None
    ) -> PutResult:
        """An event record (trigger, mark, refusal, eviction, ...) in the ``event`` stream.

        ``details`` are encrypted like any evidence (its meta, ``{"type": kind}``, is sealed
        too); ``evicted`` (``{"stream", "seqs"}`` of a ``telemetry_evicted`` record) also goes
        into the signed manifest in clear, for a verifier without the key to accept the gap.
        """
        body = json.dumps({"type": kind, **details}, sort_keys=True).encode()
        now = wallclock.now()
        mono = time.monotonic_ns()
        header = SegmentHeader(
            stream=EVENT_STREAM,
            content_type="application/json",
            start_utc=now,
            end_utc=now,
            start_mono_ns=mono,
            end_mono_ns=mono,
            clock=self._clock_state(),
            meta={"type": kind},
            evicted=evicted,
        )
        return self.put(header, [body])

    def _put_event_safe(
        self, kind: str, details: dict[str, Any], evicted: dict[str, Any] | None = None
    ) -> None:
        for attempt in (1, 2):
            try:
                self.put_event(kind, details, evicted=evicted)
                return
            except (OSError, SpoolError) as exc:
                # The record of why evidence is missing matters most when the disk is full:
                # give back the ballast for it.
                if attempt == 1 and self._release_ballast(f"recording {kind}"):
                    continue
                log.critical("spool: cannot record event %s %s: %s", kind, details, exc)
                return

    def _quota(self, cls: Retention) -> int:
        mb = (
            self.settings.evidence_quota_mb
            if cls is Retention.EVIDENCE
            else self.settings.telemetry_quota_mb
        )
        return mb * MIB

    def _refuse(self, stream: str, reason: str) -> None:
        log.error("spool: refusing new %s evidence: %s", stream, reason)
        self._alarm(
            Alarm(
                "evidence_refused",
                f"new {stream} evidence refused: {reason}",
                Severity.CRITICAL,
                wallclock.now(),
                {"stream": stream, "reason": reason},
            )
        )
        if stream != EVENT_STREAM:
            self._put_event_safe("evidence_refused", {"stream": stream, "reason": reason})
        raise EvidenceRefused(f"{stream}: {reason}")

    def _make_room(self, stream: str, cls: Retention, size: int, tmp: Path) -> None:
        if stream == EVENT_STREAM:
            # Event records are tiny and say why a gap exists: they only need the disk.
            if self._disk_free() <= 0:
                tmp.unlink(missing_ok=True)
                raise EvidenceRefused("event: disk full")
            return

        def evictable() -> Iterator[Candidate]:
            # Read only when telemetry must make room (not at every put).
            with self._db_lock:
                rows = self._db.execute(
                    "SELECT id, stream, seq, size FROM segments WHERE class=? AND state=?"
                    " ORDER BY created, id",
                    (Retention.TELEMETRY.value, READY),
                ).fetchall()
            yield from (Candidate(*r) for r in rows)

        decision = admit(
            retention=cls,
            size=size,
            used=self._used[cls],
            quota=self._quota(cls),
            disk_free=self._disk_free(),
            reserve=self.settings.reserve_mb * MIB,
            evictable=evictable() if cls is Retention.TELEMETRY else (),
        )
        if not decision.admit:
            tmp.unlink(missing_ok=True)
            if cls is Retention.EVIDENCE:
                self._refuse(stream, decision.reason)
            log.warning("spool: dropping new %s segment: %s", stream, decision.reason)
            raise SpoolError(f"{stream}: {decision.reason}")
        if decision.evict:
            self._evict(decision.evict)

    def _evict(self, victims: Sequence[Candidate]) -> None:
        by_stream: dict[str, list[int]] = {}
        for v in victims:
            self._remove(v.id, v.stream, v.seq, v.size, Retention.TELEMETRY)
            by_stream.setdefault(v.stream, []).append(v.seq)
        for stream, seqs in by_stream.items():
            log.warning(
                "spool: telemetry quota full: overwrote %d oldest %s segments", len(seqs), stream
            )
            gap = {"stream": stream, "seqs": sorted(seqs)}
            self._put_event_safe(
                "telemetry_evicted", {**gap, "reason": "telemetry quota full"}, evicted=gap
            )

    def _remove(self, sid: int, stream: str, seq: int, size: int, cls: Retention) -> None:
        self._remove_many([(sid, stream, seq, size, cls)])

    def _remove_many(self, rows: Sequence[tuple[int, str, int, int, Retention]]) -> None:
        """Delete index rows in one transaction, then their files.

        A stop between the two leaves files whose rows are gone; recovery recognises them
        (their seq is below the chain's next) and finishes the removal.
        """
        if not rows:
            return
        with self._tx() as db:
            db.executemany("DELETE FROM segments WHERE id=?", [(r[0],) for r in rows])
        for sid, stream, seq, size, cls in rows:
            self._seg_path(stream, seq).unlink(missing_ok=True)
            self._used[cls] -= size
            self._inflight.discard(sid)

    # ------------------------------------------------------------------ reading (uplink)

    def _item(self, row: tuple[Any, ...]) -> SpoolItem:
        sid, stream, seq, key_id, size, mhash, progress, created = row
        return SpoolItem(
            sid, stream, seq, key_id, size, mhash, progress, self._seg_path(stream, seq), created
        )

    _COLS = "id, stream, seq, key_id, size, manifest_hash, progress, created"

    def next_ready(self, priority: Sequence[str] = (), limit: int = 1) -> list[SpoolItem]:
        """Oldest ready segments, streams in ``priority`` order first, then the rest."""
        with self._db_lock:
            streams = [
                s
                for (s,) in self._db.execute(
                    "SELECT DISTINCT stream FROM segments WHERE state=?", (READY,)
                )
            ]
            rank = {s: i for i, s in enumerate(priority)}
            streams.sort(key=lambda s: (rank.get(s, len(rank)), s))
            out: list[SpoolItem] = []
            for stream in streams:
                want = limit - len(out)
                if want <= 0:
                    break
                rows = self._db.execute(
                    f"SELECT {self._COLS} FROM segments WHERE state=? AND stream=?"
                    " ORDER BY seq LIMIT ?",
                    (READY, stream, want + len(self._inflight)),
                ).fetchall()
                out += [self._item(r) for r in rows if r[0] not in self._inflight][:want]
        return out

    def items(self, stream: str | None = None) -> list[SpoolItem]:
        q = f"SELECT {self._COLS} FROM segments WHERE state != ?"
        args: tuple[Any, ...] = (ACKED,)
        if stream is not None:
            q += " AND stream=?"
            args += (stream,)
        with self._db_lock:
            rows = self._db.execute(q + " ORDER BY stream, seq", args).fetchall()
        return [self._item(r) for r in rows]

    def mark_inflight(self, item_id: int) -> None:
        """Being sent: not offered again by ``next_ready`` until released or acknowledged.

        Kept in memory only: after any stop, everything unacknowledged is ready again.
        """
        with self._db_lock:
            self._inflight.add(item_id)

    def release(self, item_id: int) -> None:
        with self._db_lock:
            self._inflight.discard(item_id)

    def park(self, item_id: int, reason: str) -> None:
        """The platform refused this segment: keep it (it is evidence), stop resending it.

        ``retry_refused`` (``edge-agent spool --retry``) offers it again, e.g. after the
        platform's problem is fixed.
        """
        log.error("spool: segment %d parked after the platform refused it: %s", item_id, reason)
        with self._tx() as db:
            db.execute("UPDATE segments SET state=? WHERE id=?", (REFUSED, item_id))
        with self._db_lock:
            self._inflight.discard(item_id)

    def retry_refused(self) -> int:
        with self._tx() as db:
            return db.execute(
                "UPDATE segments SET state=? WHERE state=?", (READY, REFUSED)
            ).rowcount

    def set_progress(self, item_id: int, bytes_done: int) -> None:
        """Remember how many bytes of a segment the platform holds (survives power cuts)."""
        with self._tx() as db:
            db.execute("UPDATE segments SET progress=? WHERE id=?", (bytes_done, item_id))

    def ack(self, stream: str, seq: int, manifest_hash: str) -> bool:
        """The platform has this segment: remove it. False if unknown or the hash differs."""
        return self.ack_many([(stream, seq, manifest_hash)])[0]

    def ack_many(self, acks: Sequence[tuple[str, int, str]]) -> list[bool]:
        """Several acknowledgements in one transaction (stream, seq, manifest hash each).

        True for each acknowledgement that removed a segment; a repeat of one earlier in the
        same call removed nothing (False), as it would in a later call."""
        results: list[bool] = []
        victims: list[tuple[int, str, int, int, Retention]] = []
        with self._db_lock:
            for stream, seq, manifest_hash in acks:
                row = self._db.execute(
                    "SELECT id, size, manifest_hash, class FROM segments WHERE stream=? AND seq=?",
                    (stream, seq),
                ).fetchone()
                ok = row is not None and row[2] == manifest_hash
                if row is not None and not ok:
                    log.warning(
                        "spool: ack for %s#%d names a different manifest hash; kept", stream, seq
                    )
                if ok and any(v[0] == row[0] for v in victims):
                    ok = False  # the same segment twice in one batch: removed once
                if ok:
                    victims.append((row[0], stream, seq, row[1], Retention(row[3])))
                results.append(ok)
        self._remove_many(victims)
        if victims and self._ballast_released:
            self._ensure_ballast()
        return results

    def open_segment(self, item: SpoolItem) -> BinaryIO:
        return item.path.open("rb")

    def key_record(self, key_id: str) -> bytes:
        try:
            return self._key_path(key_id).read_bytes()
        except OSError as exc:
            raise SpoolError(f"key record {key_id}: {exc}") from exc

    def key_acked(self, key_id: str) -> bool:
        with self._db_lock:
            row = self._db.execute("SELECT acked FROM keys WHERE key_id=?", (key_id,)).fetchone()
        return bool(row and row[0])

    def ack_key(self, key_id: str) -> None:
        """The platform holds this key record; it is deleted once no stored segment needs it."""
        with self._tx() as db:
            db.execute("UPDATE keys SET acked=1 WHERE key_id=?", (key_id,))
        self.collect_keys()

    def unacked_keys(self) -> list[str]:
        """Key records the platform has not confirmed yet (send these before anything else)."""
        with self._db_lock:
            rows = self._db.execute("SELECT key_id FROM keys WHERE acked=0 ORDER BY created")
            return [k for (k,) in rows.fetchall()]

    def collect_keys(self) -> int:
        current = self.sealer.current_key().key_id
        with self._db_lock:
            rows = self._db.execute(
                "SELECT key_id FROM keys WHERE acked=1 AND key_id != ? AND key_id NOT IN"
                " (SELECT DISTINCT key_id FROM segments)",
                (current,),
            ).fetchall()
        for (kid,) in rows:
            self._key_path(kid).unlink(missing_ok=True)
            with self._tx() as db:
                db.execute("DELETE FROM keys WHERE key_id=?", (kid,))
            with self._locks_lock:
                self._stored_keys.discard(kid)
        return len(rows)

    # ------------------------------------------------------------------ figures

    def backlog(self) -> dict[str, StreamBacklog]:
        now = wallclock.now()
        with self._db_lock:
            rows = self._db.execute(
                "SELECT stream, COUNT(*), SUM(size), MIN(created) FROM segments"
                " WHERE state != ? GROUP BY stream",
                (ACKED,),
            ).fetchall()
        return {
            s: StreamBacklog(n, int(b or 0), (now - oldest) if oldest else None)
            for s, n, b, oldest in rows
        }

    def usage(self) -> dict[str, int]:
        return {cls.value: used for cls, used in self._used.items()}

    def chain_state(self) -> dict[str, tuple[int, str | None]]:
        return dict(self._chains)

    def batch_sealed(self, batch_id: str) -> bool:
        with self._db_lock:
            row = self._db.execute(
                "SELECT 1 FROM segments WHERE batch_id=?", (batch_id,)
            ).fetchone()
        return row is not None
