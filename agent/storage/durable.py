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
