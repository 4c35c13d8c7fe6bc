"""Chunks in: a chunk of a segment already stored is a duplicate (or a conflict, refused);
others are held under ``partial/`` until the segment is whole. A progress report is only
sent after the chunks it covers are on disk (fsync), so a device never skips bytes the
platform would lose in a crash; a gap is reported with the offset that revealed it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

from agent.ingest.landing import SegmentLanding
from agent.ingest.partials import Partial, QuotaFull
from agent.ingest.store_files import create_private
from agent.uplink import protocol as proto

# The store's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.ingest.store")


class ChunkAssembly(SegmentLanding):
    """Takes chunks, reports progress for resume (a part of the Store)."""

    progress_every: int

    def put_chunk(
        self, device: str, h: proto.ChunkHeader, data: bytes | memoryview
    ) -> list[proto.Ack]:
        """Take one chunk; returns the acknowledgements to send to the device."""
        with self._lock:
            return self._put_chunk(device, h, data)

    def _put_chunk(
        self, device: str, h: proto.ChunkHeader, data: bytes | memoryview
    ) -> list[proto.Ack]:
        self.stats.chunks += 1
        final = self.seg_path(device, h.stream, h.seq)
        stored = self._stored_hash(final)
        if stored is not None:
            self.stats.chunks_duplicate += 1
            if stored == h.hash:
                self.stats.duplicates += 1
                return [proto.SegmentAck(h.stream, h.seq, h.hash, "duplicate")]
            self.stats.rejected += 1
            return [
                proto.Reject(
                    "seg",
                    f"{h.label} is already stored with a different manifest ({stored[:16]}); "
                    "not replacing evidence",
                    h.stream,
                    h.seq,
                    h.hash,
                )
            ]
        if h.size > self.limits.quota_bytes:
            self.stats.rejected += 1
            return [
                proto.Reject(
                    "seg",
                    f"{h.label}: announced size {h.size} exceeds the per-device upload quota "
                    f"of {self.limits.quota_bytes} bytes",
                    h.stream,
                    h.seq,
                    h.hash,
                )
            ]
        end = h.offset + len(data)
        if h.offset == 0 and end == h.size:
            return self._complete(device, h, bytes(data), None)
        p = self._load_partial(device, h)
        if p.covers(h.offset, end):
            self.stats.chunks_duplicate += 1
            if p.contiguous() >= h.size:  # everything is here (an earlier attempt was cut)
                return self._complete(device, h, None, p)
            self._sync(p)
            p.reported = p.contiguous()
            return [proto.Progress(h.stream, h.seq, h.hash, p.reported)]
        path = p.dir / f"{h.offset:012d}"
        if not (h.offset in p.ranges and p.ranges[h.offset] > end):
            grow = end - h.offset - (p.ranges.get(h.offset, h.offset) - h.offset)
            try:
                self._make_room(device, h, p, grow)
            except QuotaFull as exc:
                log.warning("ingest: %s/%s: no room now: %s", device, h.label, exc)
                return [
                    proto.Retry(
                        "seg",
                        f"no room for this upload now: {exc}",
                        self.limits.retry_after_s,
                        h.stream,
                        h.seq,
                        h.hash,
                        p.reported,
                    )
                ]
            run = self._extend_run(p, h.offset, data) if h.offset not in p.ranges else None
            if run is None:
                self._write_piece(p, h.offset, path, data)
                run = h.offset
            p.ranges[run] = end
            self._held[device] += grow
            run_path = p.dir / f"{run:012d}"
            if run_path not in p.unsynced:
                p.unsynced.append(run_path)
        # else: a longer chunk is already there at this offset
        p.touched = self._clock()
        self.stats.bytes += len(data)
        nxt = p.contiguous()
        if nxt >= h.size:
            return self._complete(device, h, None, p)
        if h.offset > nxt:
            self.stats.gaps += 1
            self._sync(p)
            p.reported = nxt
            return [proto.Progress(h.stream, h.seq, h.hash, nxt, got=h.offset)]
        if nxt - p.reported >= self.progress_every:
            self._sync(p)
            p.reported = nxt
            return [proto.Progress(h.stream, h.seq, h.hash, nxt)]
        return []

    def _write_piece(self, p: Partial, offset: int, path: Path, data: bytes | memoryview) -> None:
        """A piece of an upload that starts a new run, in a file of its own named by its
        offset (written under a temporary name, then renamed: a name is a whole piece)."""
        self._mkdirs(p.dir)
        tmp = p.dir / f".{offset}.{uuid.uuid4().hex[:8]}"
        try:
            with create_private(tmp) as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _extend_run(p: Partial, offset: int, data: bytes | memoryview) -> int | None:
        """Append a chunk to the file of the run that ends exactly where it starts (chunks
        arriving in order: one file per upload, no file created per chunk and no copy when
        it completes); the run's offset, or None when there is no such run (or its file is
        not as long as known: a piece of its own then).

        A failed write is cut back off, so the file still holds exactly its known run."""
        run = next((off for off, end in p.ranges.items() if end == offset), None)
        if run is None:
            return None
        try:
            fd = os.open(p.dir / f"{run:012d}", os.O_WRONLY)
        except FileNotFoundError:
            return None
        try:
            at = offset - run
            if os.fstat(fd).st_size != at:
                return None
            view = memoryview(data)
            try:
                while view:
                    n = os.pwrite(fd, view, at)
                    view, at = view[n:], at + n
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, offset - run)
                raise
        finally:
            os.close(fd)
        return run

    def durable_next(self, device: str, h: proto.ChunkHeader) -> int:
        """Bytes [0, n) of the upload the platform reported durable (0 if unknown)."""
        with self._lock:
            p = self._partials.get(device, {}).get((h.stream, h.seq, h.hash))
            return p.reported if p is not None else 0
