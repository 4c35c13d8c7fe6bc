"""Small helpers for writing files that survive a power cut."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """``mkdir -p`` whose new directories survive a power cut: each new directory's entry is
    made durable by an fsync of its parent (a directory that exists is left alone)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """temp file, write, fsync, rename over ``path``, fsync the directory."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def syncfs(path: Path) -> None:
    """Make everything written to ``path``'s filesystem durable, in one call (syncfs(2)).

    One journal commit for many files, where an fsync per file and directory costs one each.
    Falls back to sync(2) where the C library has no syncfs.
    """
    libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter already uses
    fn = getattr(libc, "syncfs", None)
    if fn is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


# sync_file_range(2): start writeback of a range, do not wait for it (linux/fs.h).
_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_WINDOW = 1024 * 1024


class StreamingWriter:
    """Writes a file that will be made durable by one ``fsync`` at its end, and has the disk
    write it meanwhile.

    Every ``window`` bytes it starts the writeback of what was written since
    (``sync_file_range(2)``, ``SYNC_FILE_RANGE_WRITE``, which does not wait): the disk works
    while the caller seals the next window, and the final ``fsync`` finds little left to
    write. Only a hint: durability is the ``fsync``'s (where the call is missing or refused,
    nothing else changes). Each byte is written once, straight from the caller's buffer (no
    buffering copy).
    """

    def __init__(self, fd: int, window: int = WRITEBACK_WINDOW) -> None:
        self._fd = fd
        self._window = window
        self.pos = 0
        self._kicked = 0  # writeback started up to here
        fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
        if fn is not None:
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            fn.restype = ctypes.c_int
        self._sync_range = fn

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.pos += total
        if self.pos - self._kicked >= self._window:
            self._writeback()
        return total

    def flush(self) -> None:
        """Nothing is buffered here (for callers that flush before ``fsync``)."""

    def _writeback(self) -> None:
        fn = self._sync_range
        start, length = self._kicked, self.pos - self._kicked
        if fn is not None and fn(self._fd, start, length, _SYNC_FILE_RANGE_WRITE) != 0:
            self._sync_range = None  # not supported here (or refused): the fsync does it all
        self._kicked = self.pos
