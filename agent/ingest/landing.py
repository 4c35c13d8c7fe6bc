"""A verified segment lands: assembled from its chunks into a temporary file, or written once
from memory into an unnamed file (O_TMPFILE) where the filesystem can, then named by
``link()``, which fails if another worker got there first (so several workers may share one
store), and its directory synced.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.ingest.partials import Partial
from agent.ingest.segment_checks import SegmentChecks
from agent.ingest.store_files import FILE_MODE, create_private
from agent.storage.seal import SegmentInfo
from agent.uplink import protocol as proto

# The store's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.ingest.store")


class SegmentLanding(SegmentChecks):
    """Completes segments, chunked or whole (a part of the Store)."""

    _tmpfile: bool  # O_TMPFILE works here (False once the filesystem refused it)

    def _complete(
        self, device: str, h: proto.ChunkHeader, whole: bytes | None, p: Partial | None
    ) -> list[proto.Ack]:
        if whole is not None:
            return self._complete_whole(device, h, whole)
        assert p is not None
        if p.ranges.get(0) == h.size:
            return self._complete_run(device, h, p)
        tmp = self.tmp / f"{uuid.uuid4().hex}.seg"
        plain_tmp: Path | None = None
        try:
            with create_private(tmp, "w+b") as f:
                self._assemble(p, f)
                f.flush()
                self._fsync_fd(f.fileno())
                verdict = self._verify(device, h, f, p)
                if isinstance(verdict, list):
                    return verdict
                info, plain_tmp = verdict
            landed = self._land(device, h, lambda final: os.link(tmp, final), plain_tmp, info)
            plain_tmp = None
            return landed
        finally:
            tmp.unlink(missing_ok=True)
            if plain_tmp is not None:
                plain_tmp.unlink(missing_ok=True)

    def _complete_run(self, device: str, h: proto.ChunkHeader, p: Partial) -> list[proto.Ack]:
        """An upload whose chunks all came in order: its one file already holds the whole
        segment. Moved out of ``partial/`` (no other chunk reaches it there), made durable,
        checked, and named by ``link()``: no copy of its bytes."""
        tmp = self.tmp / f"{uuid.uuid4().hex}.seg"
        run = p.dir / f"{0:012d}"
        plain_tmp: Path | None = None
        os.rename(run, tmp)
        try:
            with tmp.open("rb") as f:
                self._fsync_fd(f.fileno())
                verdict = self._verify(device, h, f, p)
            if isinstance(verdict, list):
                return verdict  # refused, or asked for again: the upload was dropped
            info, plain_tmp = verdict
            landed = self._land(device, h, lambda final: os.link(tmp, final), plain_tmp, info)
            plain_tmp = None
            return landed
        except BaseException:
            # The store's disk failed (OSError): the upload keeps its bytes for the retry.
            if p.dir.is_dir() and not run.exists():
                with contextlib.suppress(OSError):
                    os.rename(tmp, run)
            raise
        finally:
            tmp.unlink(missing_ok=True)
            if plain_tmp is not None:
                plain_tmp.unlink(missing_ok=True)

    def _complete_whole(self, device: str, h: proto.ChunkHeader, data: bytes) -> list[proto.Ack]:
        """A segment that came whole in one message: checked from memory, then written once,
        into an unnamed file (O_TMPFILE) that ``link()`` names, where the filesystem can."""
        plain_tmp: Path | None = None
        tmp = self.tmp / f"{uuid.uuid4().hex}.seg"
        fd = dfd = -1
        try:
            verdict = self._verify(device, h, io.BytesIO(data), None)
            if isinstance(verdict, list):
                return verdict
            info, plain_tmp = verdict
            final_dir = self.seg_path(device, h.stream, h.seq).parent
            self._mkdirs(final_dir)
            dfd = os.open(final_dir, os.O_RDONLY | os.O_DIRECTORY)
            fd = self._unnamed(dfd, tmp)
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._fsync_fd(fd)

            def link(final: Path) -> None:
                if not tmp.exists():  # the unnamed file: linkat following /proc/self/fd/N
                    os.link(f"/proc/self/fd/{fd}", final.name, dst_dir_fd=dfd, follow_symlinks=True)
                else:
                    os.link(tmp, final)

            landed = self._land(device, h, link, plain_tmp, info)
            plain_tmp = None
            return landed
        finally:
            for f in (fd, dfd):
                if f >= 0:
                    os.close(f)
            tmp.unlink(missing_ok=True)
            if plain_tmp is not None:
                plain_tmp.unlink(missing_ok=True)

    def _unnamed(self, dfd: int, fallback: Path) -> int:
        """A new file to write a segment into: unnamed (O_TMPFILE) in directory ``dfd`` (no
        name to create and remove again), or ``fallback`` where the filesystem cannot."""
        if self._tmpfile:
            try:
                return os.open(".", os.O_TMPFILE | os.O_WRONLY, FILE_MODE, dir_fd=dfd)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise
                self._tmpfile = False
        return os.open(fallback, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)

    def _land(
        self,
        device: str,
        h: proto.ChunkHeader,
        link: Callable[[Path], None],
        plain_tmp: Path | None,
        info: SegmentInfo,
    ) -> list[proto.Ack]:
        """Give a verified segment (and its plaintext) their final names: the segment's by
        ``link(final)``, a hard link that fails if another worker got there first."""
        whole = (h.stream, h.seq, h.hash) not in self._partials.get(device, {})
        final = self.seg_path(device, h.stream, h.seq)
        self._mkdirs(final.parent)
        if plain_tmp is not None:
            plain = self.plain_path(device, h.stream, h.seq)
            self._mkdirs(plain.parent)
            os.replace(plain_tmp, plain)
            self._fsync_dir(plain.parent)
        try:
            link(final)
        except FileExistsError:
            # Another worker stored it first.
            self._drop_partial(device, h, known_only=whole)
            if self._stored_hash(final) == h.hash:
                self.stats.duplicates += 1
                return [proto.SegmentAck(h.stream, h.seq, h.hash, "duplicate")]
            return [proto.Reject("seg", f"{h.label}: conflict", h.stream, h.seq, h.hash)]
        self._fsync_dir(final.parent)
        self._remember(final, h.hash)
        self._drop_partial(device, h, known_only=whole)
        self.stats.stored += 1
        log.debug("ingest: stored %s/%s (%d bytes)", device, h.label, info.size)
        return [proto.SegmentAck(h.stream, h.seq, h.hash, "stored")]
