"""The durable on-device spool: sealed segments waiting for the platform's acknowledgement.

Layout under the spool directory::

    index.sqlite3            SQLite (WAL, synchronous=FULL but for new segments' rows, below):
                             segments, chains, key records
    seg/<stream>/<seq>.seg   sealed segments, each written tmp -> fsync -> rename -> fsync dir
    keys/<key_id>.key        signed key records (the wrapped data keys segments refer to)
    tmp/                     segments being sealed (ciphertext only); emptied at open
    quarantine/              anything unreadable found at open; never deleted by the agent
    journal/                 small records' and fragment journals (records.py, segjournal.py)
    .ballast                 a few MB given back when the disk fills

A put returns only after the segment file is durable in its place; its index row is committed
then without a sync of its own (the next durable commit carries it): a power cut that loses the
row leaves a sealed file that extends its chain, which the next open adopts. So a put costs two
syncs (the file, its directory), and writes each byte once. A segment leaves the spool only
when the platform acknowledges it with its manifest hash. At open, segments that
were in flight go back to ready, temp files are removed, a sealed file that was renamed into
place but not yet indexed (a cut between the two) is adopted, and anything else that does not
parse is moved to quarantine with a log line.

:class:`Spool` is the one public face; its parts, each with its own rules written down:
:mod:`~agent.storage.spoolindex` (the SQLite index, its transactions and the uplink's
queries), :mod:`~agent.storage.spoolrecovery` (recovery at open),
:mod:`~agent.storage.spooladmission` (quotas, refusals, telemetry eviction) and
:mod:`~agent.storage.ballast`.

Thread use: any number of producer threads may ``put`` (each stream is sealed under its own
lock), and one reader thread (the uplink) drives ``next_ready``/``ack``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from agent import wallclock
from agent.errors import SpoolError
from agent.model import Alarm, ClockState
from agent.storage.ballast import Ballast
from agent.storage.durable import StreamingWriter, fsync_dir, makedirs_durable, write_atomic
from agent.storage.manifest import EVENT_STREAM
from agent.storage.retention import Retention, classify
from agent.storage.seal import BodyWriter, ChainLink, SegmentHeader
from agent.storage.sealer import Sealer
from agent.storage.settings import MIB, SpoolSettings
from agent.storage.spooladmission import SpoolAdmission
from agent.storage.spoolindex import SpoolIndex, SpoolItem, StreamBacklog
from agent.storage.spoolrecovery import recover

__all__ = ["EVENT_STREAM", "PutResult", "Spool", "SpoolItem", "StreamBacklog"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PutResult:
    stream: str
    seq: int
    size: int
    manifest_hash: str
    path: Path


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
        self._locks_lock = threading.Lock()
        self._stream_locks: dict[str, threading.RLock] = {}  # put_event holds it around put
        for sub in ("seg", "keys", "tmp", "quarantine", "journal"):
            makedirs_durable(self.root / sub)
        self._ballast = Ballast(self.root, settings.reserve_mb * MIB)
        self._index = SpoolIndex(self.root, self._ballast)
        self._admission = SpoolAdmission(
            settings, self._index, self._ballast, self._alarm, self._put_event_safe
        )
        self.recovery = recover(self._index, self._put_event_safe)
        self._ballast.ensure()

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def _stream_lock(self, stream: str) -> threading.RLock:
        with self._locks_lock:
            lock = self._stream_locks.get(stream)
            if lock is None:
                lock = self._stream_locks[stream] = threading.RLock()
            return lock

    def clock_state(self) -> ClockState:
        """The clock's trust state, as given by whoever owns the clock (GPS, NTP)."""
        return self._clock_state()

    def ensure_key_stored(self) -> str:
        """Store the current epoch's key record durably (once); returns its key id."""
        key = self.sealer.current_key()
        with self._locks_lock:
            if key.key_id in self._index.stored_keys:
                return key.key_id
            try:
                write_atomic(self._index.key_path(key.key_id), key.record, self.root / "tmp")
            except OSError as exc:
                raise SpoolError(f"cannot store key record {key.key_id}: {exc}") from exc
            self._index.add_key(key.key_id)
            self._index.stored_keys.add(key.key_id)
            return key.key_id

    def _key_stored_for(self, stream: str) -> None:
        """:meth:`ensure_key_stored` before a segment of ``stream``: a disk too full for the
        key record refuses the segment like a disk too full for the segment itself."""
        try:
            self.ensure_key_stored()
        except SpoolError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                self._admission.refuse(
                    stream, f"disk full while storing the key record ({cause.strerror})"
                )
            raise

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
            quota = self._admission.quota(cls)
            if self._index.used[cls] >= quota:
                self._admission.refuse(
                    stream, f"evidence quota full ({self._index.used[cls]} of {quota} bytes)"
                )
        with self._stream_lock(stream):
            self._key_stored_for(stream)
            key = self.sealer.current_key()
            if key.key_id not in self._index.stored_keys:  # rotated in between
                self._key_stored_for(stream)
            seq, prev = self._index.chains.get(stream, (0, None))
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
                    self._admission.refuse(stream, f"disk full while sealing ({exc.strerror})")
                raise SpoolError(f"cannot write segment {stream}#{seq}: {exc}") from exc
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            mhash = hashlib.sha256(mbytes).hexdigest()
            self._admission.make_room(stream, cls, size, tmp)
            final = self._index.seg_path(stream, seq)
            makedirs_durable(final.parent)  # a new stream's directory, durably
            os.replace(tmp, final)
            fsync_dir(final.parent)
            with self._unplaced_on_failure(final):
                self._index.add_segment(
                    stream, seq, self.sealer.boot_id, key.key_id, size, mhash, batch_id,
                    durable=False,
                )  # fmt: skip
            return PutResult(stream, seq, size, mhash, final)

    @contextmanager
    def _unplaced_on_failure(
        self, final: Path, back_to: tuple[Path, int] | None = None
    ) -> Iterator[None]:
        """A sealed file renamed into place whose index row then failed (a full disk at the
        commit) is taken out again: the put raised, so nothing was promised, and the stream's
        chain did not move, so a retry seals other bytes under the same seq; left in place,
        the file would be replaced by them (two segments under one seq). ``back_to``: a
        streamed body goes back to its journal file, its trailer cut off, as it was before
        (the journal's evidence is never removed here). A power cut before this leaves the
        file to recovery, which adopts it (the chain then moves)."""
        try:
            yield
        except BaseException:
            if back_to is None:
                final.unlink(missing_ok=True)
            else:
                path, size = back_to
                os.replace(final, path)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(path.parent)
            fsync_dir(final.parent)
            raise

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
            quota = self._admission.quota(cls)
            if self._index.used[cls] >= quota:
                body_path.unlink(missing_ok=True)
                self._admission.refuse(
                    stream, f"evidence quota full ({self._index.used[cls]} of {quota} bytes)"
                )
        with self._stream_lock(stream):
            if body.key.key_id not in self._index.stored_keys:
                raise SpoolError(
                    f"{stream}: key {body.key.key_id} of a streamed body is not stored"
                )
            seq, prev = self._index.chains.get(stream, (0, None))
            try:
                body_size = body_path.stat().st_size  # where the trailer begins
                with body_path.open("ab") as f:
                    _manifest, mbytes = self.sealer.seal_body(f, header, ChainLink(seq, prev), body)
                    f.flush()
                    os.fsync(f.fileno())
                size = body_path.stat().st_size
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    body_path.unlink(missing_ok=True)
                    self._admission.refuse(stream, f"disk full while sealing ({exc.strerror})")
                raise SpoolError(f"cannot seal segment {stream}#{seq}: {exc}") from exc
            mhash = hashlib.sha256(mbytes).hexdigest()
            self._admission.make_room(stream, cls, size, body_path)
            final = self._index.seg_path(stream, seq)
            makedirs_durable(final.parent)
            os.replace(body_path, final)
            fsync_dir(final.parent)
            with self._unplaced_on_failure(final, back_to=(body_path, body_size)):
                self._index.add_segment(
                    stream, seq, self.sealer.boot_id, body.key.key_id, size, mhash, batch_id,
                    durable=False,
                )  # fmt: skip
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
        # Stamped under the stream's lock, where its seq is taken: events from several threads
        # get times in seq order (verify reports a later seq with an earlier time "reordered").
        with self._stream_lock(EVENT_STREAM):
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
                if attempt == 1 and self._ballast.release(f"recording {kind}"):
                    continue
                log.critical("spool: cannot record event %s %s: %s", kind, details, exc)
                return

    # ------------------------------------------------------------------ reading (uplink)

    def next_ready(self, priority: Sequence[str] = (), limit: int = 1) -> list[SpoolItem]:
        """Oldest ready segments, streams in ``priority`` order first, then the rest."""
        return self._index.next_ready(priority, limit)

    def items(self, stream: str | None = None) -> list[SpoolItem]:
        return self._index.items(stream)

    def mark_inflight(self, item_id: int) -> None:
        """Being sent: not offered again by ``next_ready`` until released or acknowledged.

        Kept in memory only: after any stop, everything unacknowledged is ready again.
        """
        self._index.mark_inflight(item_id)

    def release(self, item_id: int) -> None:
        self._index.release(item_id)

    def park(self, item_id: int, reason: str) -> None:
        """The platform refused this segment: keep it (it is evidence), stop resending it.

        ``retry_refused`` (``edge-agent spool --retry``) offers it again, e.g. after the
        platform's problem is fixed.
        """
        self._index.park(item_id, reason)

    def retry_refused(self) -> int:
        return self._index.retry_refused()

    def set_progress(self, item_id: int, bytes_done: int) -> None:
        """Remember how many bytes of a segment the platform holds (across restarts; made
        durable by the next durable commit: one lost to a power cut costs a resend only)."""
        self._index.set_progress(item_id, bytes_done)

    def ack(self, stream: str, seq: int, manifest_hash: str) -> bool:
        """The platform has this segment: remove it. False if unknown or the hash differs."""
        return self.ack_many([(stream, seq, manifest_hash)])[0]

    def ack_many(self, acks: Sequence[tuple[str, int, str]]) -> list[bool]:
        """Several acknowledgements in one transaction (stream, seq, manifest hash each).

        True for each acknowledgement that removed a segment; a repeat of one earlier in the
        same call removed nothing (False), as it would in a later call."""
        results, victims = self._index.find_acked(acks)
        try:
            self._index.remove_many(victims)
        except SpoolError:
            # A full disk: the failed commit gave the ballast back (it is kept until a write
            # actually needs it); acknowledging is what frees space, so once more with it.
            if not self._ballast.released:
                raise
            self._index.remove_many(victims)
        if victims and self._ballast.released:
            self._ballast.ensure()
        return results

    def open_segment(self, item: SpoolItem) -> BinaryIO:
        return item.path.open("rb")

    def key_record(self, key_id: str) -> bytes:
        try:
            return self._index.key_path(key_id).read_bytes()
        except OSError as exc:
            raise SpoolError(f"key record {key_id}: {exc}") from exc

    def key_acked(self, key_id: str) -> bool:
        return self._index.key_acked(key_id)

    def ack_key(self, key_id: str) -> None:
        """The platform holds this key record; it is deleted once no stored segment needs it."""
        self._index.ack_key(key_id)
        self.collect_keys()

    def unacked_keys(self) -> list[str]:
        """Key records the platform has not confirmed yet (send these before anything else)."""
        return self._index.unacked_keys()

    def collect_keys(self) -> int:
        rows = self._index.collectable_keys(self.sealer.current_key().key_id)
        for kid in rows:
            self._index.key_path(kid).unlink(missing_ok=True)
            self._index.delete_key(kid)
            with self._locks_lock:
                self._index.stored_keys.discard(kid)
        return len(rows)

    # ------------------------------------------------------------------ figures

    def backlog(self) -> dict[str, StreamBacklog]:
        return self._index.backlog()

    def usage(self) -> dict[str, int]:
        return {cls.value: used for cls, used in self._index.used.items()}

    def chain_state(self) -> dict[str, tuple[int, str | None]]:
        return dict(self._index.chains)

    def batch_sealed(self, batch_id: str) -> bool:
        return self._index.batch_sealed(batch_id)
