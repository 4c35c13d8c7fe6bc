"""The store's files: paths built from checked names (contained in the store), private files
and directories (0600/0700 whatever the umask), durability (fsync, or one ``syncfs`` per
group commit), the cache of stored segments' manifest hashes, and listing what is stored.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from agent import ids
from agent.storage.durable import fsync_dir, syncfs
from agent.storage.seal import read_segment_info
from agent.uplink import protocol as proto

MIB = 1024 * 1024
HASH_CACHE = 100_000
DIR_CACHE = 100_000
FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass
class StoreStats:
    stored: int = 0
    duplicates: int = 0
    chunks: int = 0
    chunks_duplicate: int = 0
    bytes: int = 0
    keys: int = 0
    rejected: int = 0
    decrypted: int = 0
    missing_keys: int = 0
    gaps: int = 0
    refused_devices: int = 0
    partials_expired: int = 0
    quota_refusals: int = 0


def private_dirs(root: Path, path: Path) -> None:
    """``mkdir -p path`` (under ``root``), every new level 0700 whatever the umask."""
    missing: list[Path] = []
    p = path
    while p != root and not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)


def create_private(path: Path, mode: str = "wb") -> BinaryIO:
    """A new private file (0600 whatever the umask)."""
    flags = os.O_CREAT | os.O_EXCL | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return cast(BinaryIO, os.fdopen(fd, mode))
    except BaseException:
        os.close(fd)
        raise


class StoreFiles:
    """Paths, private files and durability (a part of the Store: its ``__init__`` sets these
    attributes; the public methods take the one lock)."""

    root: Path
    tmp: Path
    stats: StoreStats
    _lock: threading.Lock
    _hashes: OrderedDict[Path, str]
    _dirs: dict[tuple[str, ...], Path]
    # Group commit: inside ``batch()`` each fsync is replaced by one syncfs at its end.
    _batching: bool
    _dirty: bool

    def _dir(self, *parts: str) -> Path:
        """``ids.contained(root, *parts)`` for a directory of checked names, remembered: a
        file name checked by agent.ids then joins it without resolving the path again (a
        resolve walks every component with lstat, which cost the ingest half its time)."""
        d = self._dirs.get(parts)
        if d is None:
            if len(self._dirs) >= DIR_CACHE:
                self._dirs.clear()
            d = self._dirs[parts] = ids.contained(self.root, *parts)
        return d

    def seg_path(self, device: str, stream: str, seq: int) -> Path:
        ids.check_device_id(device)
        ids.check_stream(stream)
        ids.check_seq(seq)
        return self._dir(device, "seg", stream) / f"{seq:012d}.seg"

    def plain_path(self, device: str, stream: str, seq: int) -> Path:
        ids.check_device_id(device)
        ids.check_stream(stream)
        ids.check_seq(seq)
        return self._dir(device, "plain", stream) / f"{seq:012d}.bin"

    def key_path(self, device: str, key_id: str) -> Path:
        ids.check_device_id(device)
        ids.check_key_id(key_id)
        return self._dir(device, "keys") / f"{key_id}.key"

    def device_dir(self, device: str) -> Path:
        ids.check_device_id(device)
        return ids.contained(self.root, device)

    def _partial_dir(self, device: str, h: proto.ChunkHeader) -> Path:
        ids.check_device_id(device)
        ids.check_stream(h.stream)
        ids.check_seq(h.seq)
        ids.check_hash(h.hash)
        return self._dir(device, "partial", h.stream) / f"{h.seq:012d}-{h.hash}"

    def _mkdirs(self, path: Path) -> None:
        private_dirs(self.root, path)

    def mkdirs(self, path: Path) -> None:
        """``mkdir -p`` under the store's root, new levels 0700."""
        private_dirs(self.root, ids.contained(self.root, *path.relative_to(self.root).parts))

    def stored_hash(self, path: Path) -> str | None:
        """The manifest hash of a stored segment file (None when there is none)."""
        with self._lock:
            return self._stored_hash(path)

    def _stored_hash(self, path: Path) -> str | None:
        h = self._hashes.get(path)
        if h is not None:
            return h
        if not path.exists():
            return None
        with path.open("rb") as f:
            h = read_segment_info(f).manifest_hash
        self._remember(path, h)
        return h

    def _remember(self, path: Path, h: str) -> None:
        self._hashes[path] = h
        if len(self._hashes) > HASH_CACHE:
            self._hashes.popitem(last=False)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: what is stored inside becomes durable together when it ends (one
        ``syncfs`` of the store's filesystem instead of an fsync per file and directory).
        Acknowledge what the batch stored only after it has ended."""
        self._batching, self._dirty = True, False
        try:
            yield
        finally:
            self._batching = False
            if self._dirty:
                self._dirty = False
                syncfs(self.root)

    def _fsync_fd(self, fd: int) -> None:
        if self._batching:
            self._dirty = True
        else:
            os.fsync(fd)

    def _fsync_dir(self, path: Path) -> None:
        if self._batching:
            self._dirty = True
        else:
            fsync_dir(path)

    def segments(self, device: str, stream: str | None = None) -> list[Path]:
        base = ids.contained(self.root, ids.check_device_id(device), "seg")
        if not base.exists():
            return []
        dirs = (
            [ids.contained(base, ids.check_stream(stream))]
            if stream
            else sorted(p for p in base.iterdir() if p.is_dir())
        )
        out: list[Path] = []
        for d in dirs:
            if d.exists():
                out.extend(sorted(d.glob("*.seg")))
        return out
