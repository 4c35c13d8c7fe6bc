"""The spool's SQLite index (``<spool>/index.sqlite3``): segment rows, chains, key rows.

WAL with ``synchronous=FULL``, but for new segments' rows: a put's row is committed without a
sync of its own (the next durable commit carries it), at least every ``INDEX_SYNC_S``. A power
cut that loses such a row leaves a sealed file that extends its chain, which recovery at open
adopts (:mod:`agent.storage.spoolrecovery`). Everything else commits durably.

When the disk fills, a transaction first gives back the ballast (:mod:`agent.storage.ballast`)
so acknowledgements (which free space) and refusals still commit; a commit the full disk still
refuses raises :class:`SpoolError` (retried when space returns), not a bare ``sqlite3`` error.

Segments in flight (being sent) are kept in memory only: after any stop, everything
unacknowledged is ready again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import wallclock
from agent.errors import SpoolError
from agent.storage.ballast import Ballast
from agent.storage.retention import Retention, classify

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

# A put's index row is committed without a WAL sync, but at least this often one is synced,
# so a power cut leaves at most this long of rows for recovery to rebuild (adopt).
INDEX_SYNC_S = 30.0

# (id, stream, seq, size, retention class) of a segment to remove
Removal = tuple[int, str, int, int, Retention]


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
class StreamBacklog:
    count: int
    bytes: int
    oldest_age_s: float | None


class SpoolIndex:
    """The index of the spool at ``root``, with what is kept beside it in memory: each
    stream's chain head, the stored key ids, the bytes used per retention class, the segments
    in flight."""

    def __init__(self, root: Path, ballast: Ballast) -> None:
        self.root = root
        self._seg_dirs: dict[str, Path] = {}  # stream -> root/seg/<stream> (paths made often)
        self._ballast = ballast
        self.lock = threading.Lock()
        self.chains: dict[str, tuple[int, str | None]] = {}
        self.inflight: set[int] = set()
        self.stored_keys: set[str] = set()  # the key rows (changed under the spool's key lock)
        self.used: dict[Retention, int] = {Retention.EVIDENCE: 0, Retention.TELEMETRY: 0}
        self._synced_at = time.monotonic()  # the last durable index commit
        self.db = sqlite3.connect(
            root / "index.sqlite3", check_same_thread=False, isolation_level=None
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def seg_path(self, stream: str, seq: int) -> Path:
        return self._seg_dir(stream) / f"{seq:012d}.seg"

    def _seg_dir(self, stream: str) -> Path:
        d = self._seg_dirs.get(stream)
        if d is None:
            d = self._seg_dirs[stream] = self.root / "seg" / stream
        return d

    def key_path(self, key_id: str) -> Path:
        return self.root / "keys" / f"{key_id}.key"

    @contextmanager
    def tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction. ``durable=False``: committed without syncing the WAL (it becomes
        durable with the next durable commit); only for what recovery rebuilds from the disk
        when a power cut loses it (a sealed segment's row: see :meth:`add_segment`)."""
        # The ballast is given back only when a write actually fails for room (below), not
        # when the disk is merely nearly full: whatever else fills the disk would take the
        # room before the record of a refusal (the reason it is kept) needs it.
        with self.lock:
            try:
                if not durable:
                    self.db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self.db
                    except BaseException:
                        # SQLITE_FULL inside a statement may have rolled it back already:
                        # a ROLLBACK then fails and would hide the error that matters.
                        if self.db.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                self.db.execute("ROLLBACK")
                        raise
                    try:
                        self.db.execute("COMMIT")
                    except sqlite3.Error:
                        # SQLITE_FULL (or I/O) at COMMIT may leave the transaction open: end
                        # it, or every later BEGIN fails ("within a transaction").
                        if self.db.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                self.db.execute("ROLLBACK")
                        raise
                    if durable:
                        self._synced_at = time.monotonic()
                finally:
                    if not durable:
                        self.db.execute("PRAGMA synchronous=FULL")
            except sqlite3.OperationalError as exc:
                if "full" in str(exc):
                    self._ballast.release(str(exc))
                    raise SpoolError(f"spool index: {exc} (retried when space returns)") from exc
                raise

    # ------------------------------------------------------------------ segment rows

    def add_segment(
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
        stream's chain (:func:`agent.storage.spoolrecovery.recover`), so the put's promise
        holds either way, and the next durable commit (an acknowledgement, a key, or this one
        when the last was ``INDEX_SYNC_S`` ago) makes the row durable too.
        """
        cls = classify(stream)
        durable = durable or time.monotonic() - self._synced_at >= INDEX_SYNC_S
        with self.tx(durable=durable) as db:
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
        self.chains[stream] = (seq + 1, manifest_hash)
        self.used[cls] += size

    def remove_many(self, rows: Sequence[Removal]) -> None:
        """Delete index rows in one transaction, then their files.

        A stop between the two leaves files whose rows are gone; recovery recognises them
        (their seq is below the chain's next) and finishes the removal.
        """
        if not rows:
            return
        with self.tx() as db:
            db.executemany("DELETE FROM segments WHERE id=?", [(r[0],) for r in rows])
        for sid, stream, seq, size, cls in rows:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._seg_dir(stream), f"{seq:012d}.seg"))
            self.used[cls] -= size
            self.inflight.discard(sid)

    def evictable_telemetry(self) -> list[tuple[int, str, int, int]]:
        """Ready telemetry segments (id, stream, seq, size), oldest first."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, stream, seq, size FROM segments WHERE class=? AND state=?"
                " ORDER BY created, id",
                (Retention.TELEMETRY.value, READY),
            ).fetchall()
        return rows

    def find_acked(self, acks: Sequence[tuple[str, int, str]]) -> tuple[list[bool], list[Removal]]:
        """The segments the acknowledgements (stream, seq, manifest hash each) remove.

        True for each acknowledgement that names a stored segment with its hash; a repeat of
        one earlier in the same call removes nothing (False), as it would in a later call."""
        results: list[bool] = []
        victims: list[Removal] = []
        ids: set[int] = set()  # of victims (a batch holds hundreds: no scan per ack)
        with self.lock:
            for stream, seq, manifest_hash in acks:
                row = self.db.execute(
                    "SELECT id, size, manifest_hash, class FROM segments WHERE stream=? AND seq=?",
                    (stream, seq),
                ).fetchone()
                ok = row is not None and row[2] == manifest_hash
                if row is not None and not ok:
                    log.warning(
                        "spool: ack for %s#%d names a different manifest hash; kept", stream, seq
                    )
                if ok and row[0] in ids:
                    ok = False  # the same segment twice in one batch: removed once
                if ok:
                    ids.add(row[0])
                    victims.append((row[0], stream, seq, row[1], Retention(row[3])))
                results.append(ok)
        return results, victims

    # ------------------------------------------------------------------ reading (uplink)

    def _item(self, row: tuple[Any, ...]) -> SpoolItem:
        sid, stream, seq, key_id, size, mhash, progress, created = row
        return SpoolItem(
            sid, stream, seq, key_id, size, mhash, progress, self.seg_path(stream, seq), created
        )

    _COLS = "id, stream, seq, key_id, size, manifest_hash, progress, created"

    def next_ready(self, priority: Sequence[str] = (), limit: int = 1) -> list[SpoolItem]:
        """Oldest ready segments, streams in ``priority`` order first, then the rest."""
        with self.lock:
            streams = [
                s
                for (s,) in self.db.execute(
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
                rows = self.db.execute(
                    f"SELECT {self._COLS} FROM segments WHERE state=? AND stream=?"
                    " ORDER BY seq LIMIT ?",
                    (READY, stream, want + len(self.inflight)),
                ).fetchall()
                out += [self._item(r) for r in rows if r[0] not in self.inflight][:want]
        return out

    def items(self, stream: str | None = None) -> list[SpoolItem]:
        q = f"SELECT {self._COLS} FROM segments WHERE state != ?"
        args: tuple[Any, ...] = (ACKED,)
        if stream is not None:
            q += " AND stream=?"
            args += (stream,)
        with self.lock:
            rows = self.db.execute(q + " ORDER BY stream, seq", args).fetchall()
        return [self._item(r) for r in rows]

    def mark_inflight(self, item_id: int) -> None:
        """Being sent: not offered again by ``next_ready`` until released or acknowledged.

        Kept in memory only: after any stop, everything unacknowledged is ready again.
        """
        with self.lock:
            self.inflight.add(item_id)

    def release(self, item_id: int) -> None:
        with self.lock:
            self.inflight.discard(item_id)

    def park(self, item_id: int, reason: str) -> None:
        log.error("spool: segment %d parked after the platform refused it: %s", item_id, reason)
        with self.tx() as db:
            db.execute("UPDATE segments SET state=? WHERE id=?", (REFUSED, item_id))
        with self.lock:
            self.inflight.discard(item_id)

    def retry_refused(self) -> int:
        with self.tx() as db:
            return db.execute(
                "UPDATE segments SET state=? WHERE state=?", (READY, REFUSED)
            ).rowcount

    def set_progress(self, item_id: int, bytes_done: int) -> None:
        # Not synced on its own (the next durable commit, e.g. the next acknowledgement,
        # carries it): a progress lost to a power cut only means resending bytes the platform
        # already holds, and a WAL sync per MiB delivered held the uplink's thread.
        with self.tx(durable=False) as db:
            db.execute("UPDATE segments SET progress=? WHERE id=?", (bytes_done, item_id))

    def backlog(self) -> dict[str, StreamBacklog]:
        now = wallclock.now()
        with self.lock:
            rows = self.db.execute(
                "SELECT stream, COUNT(*), SUM(size), MIN(created) FROM segments"
                " WHERE state != ? GROUP BY stream",
                (ACKED,),
            ).fetchall()
        return {
            s: StreamBacklog(n, int(b or 0), (now - oldest) if oldest else None)
            for s, n, b, oldest in rows
        }

    def batch_sealed(self, batch_id: str) -> bool:
        with self.lock:
            row = self.db.execute("SELECT 1 FROM segments WHERE batch_id=?", (batch_id,)).fetchone()
        return row is not None

    # ------------------------------------------------------------------ key rows

    def add_key(self, key_id: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?, 0)", (key_id, wallclock.now()))

    def key_acked(self, key_id: str) -> bool:
        with self.lock:
            row = self.db.execute("SELECT acked FROM keys WHERE key_id=?", (key_id,)).fetchone()
        return bool(row and row[0])

    def ack_key(self, key_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE keys SET acked=1 WHERE key_id=?", (key_id,))

    def unacked_keys(self) -> list[str]:
        with self.lock:
            rows = self.db.execute("SELECT key_id FROM keys WHERE acked=0 ORDER BY created")
            return [k for (k,) in rows.fetchall()]

    def collectable_keys(self, current: str) -> list[str]:
        """Acknowledged key records no stored segment needs (nor the current epoch)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT key_id FROM keys WHERE acked=1 AND key_id != ? AND key_id NOT IN"
                " (SELECT DISTINCT key_id FROM segments)",
                (current,),
            ).fetchall()
        return [kid for (kid,) in rows]

    def delete_key(self, key_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM keys WHERE key_id=?", (key_id,))
