"""Uploads in progress (``partial/``), bounded per device (:class:`PartialLimits`): an
announced size beyond the device's quota is refused at once; bytes held or uploads open beyond
the quota make room by dropping that device's idle uploads (the device still has them and
resends), else are answered "retry later"; an upload that saw no chunk for ``expiry_s`` is
dropped (``expire_partials``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from agent import ids
from agent.errors import AgentError
from agent.ingest.store_files import MIB, StoreFiles
from agent.storage.durable import fsync_dir
from agent.uplink import protocol as proto

# The store's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.ingest.store")


@dataclass(frozen=True)
class PartialLimits:
    """Per-device bounds on uploads in progress (``partial/``)."""

    # Bytes one device may hold in unfinished uploads; also the largest segment it may announce.
    quota_bytes: int = 4 << 30
    # Unfinished uploads one device may have open (a device has at most 64 in flight).
    max_uploads: int = 256
    # An upload without a chunk for this long is dropped (the device resends it from byte 0).
    expiry_s: float = 24 * 3600.0
    # An upload idle this long may be dropped to make room for one that is moving.
    idle_s: float = 120.0
    # What a device is told to wait before sending again when there is no room.
    retry_after_s: int = 30


class QuotaFull(AgentError):
    """No room for this upload now (the device keeps it and sends it again later)."""


@dataclass
class Partial:
    dir: Path
    size: int
    ranges: dict[int, int] = field(default_factory=dict)  # offset -> end
    unsynced: list[Path] = field(default_factory=list)
    reported: int = 0
    resets: int = 0
    touched: float = 0.0

    def held(self) -> int:
        return sum(end - off for off, end in self.ranges.items())

    def contiguous(self) -> int:
        pos = 0
        for off in sorted(self.ranges):
            if off > pos:
                break
            pos = max(pos, self.ranges[off])
        return pos

    def covers(self, off: int, end: int) -> bool:
        pos = off
        for o in sorted(self.ranges):
            if o > pos:
                break
            pos = max(pos, self.ranges[o])
            if pos >= end:
                return True
        return pos >= end


class PartialUploads(StoreFiles):
    """Chunks held per upload, the quota, expiry (a part of the Store)."""

    limits: PartialLimits
    _clock: Callable[[], float]
    # Uploads in progress, per device: (stream, seq, hash) -> Partial; bytes held each.
    _partials: dict[str, dict[tuple[str, int, str], Partial]]
    _held: dict[str, int]

    def _device_partials(self, device: str) -> dict[tuple[str, int, str], Partial]:
        """The device's uploads in progress; read from ``partial/`` on first use (after a
        restart the sizes are not known yet: they count for the quota until a chunk comes)."""
        parts = self._partials.get(device)
        if parts is not None:
            return parts
        parts = self._partials[device] = {}
        held = 0
        base = ids.contained(self.root, device, "partial")
        if base.is_dir():
            for sdir in base.iterdir():
                if not sdir.is_dir() or ids.STREAM_RE.match(sdir.name) is None:
                    continue
                for pdir in sdir.iterdir():
                    seq_s, _, mhash = pdir.name.partition("-")
                    if not (pdir.is_dir() and seq_s.isdigit() and ids.HASH_RE.match(mhash)):
                        continue
                    part = Partial(pdir, -1, touched=pdir.stat().st_mtime)
                    self._read_ranges(part)
                    parts[(sdir.name, int(seq_s), mhash)] = part
                    held += part.held()
        self._held[device] = held
        return parts

    @staticmethod
    def _read_ranges(p: Partial) -> None:
        p.ranges.clear()
        if p.dir.is_dir():
            for f in p.dir.iterdir():
                if f.name.isdigit():
                    off = int(f.name)
                    p.ranges[off] = off + f.stat().st_size
                else:
                    f.unlink(missing_ok=True)
        p.unsynced = [p.dir / f"{off:012d}" for off in p.ranges]

    def _load_partial(self, device: str, h: proto.ChunkHeader) -> Partial:
        parts = self._device_partials(device)
        key = (h.stream, h.seq, h.hash)
        p = parts.get(key)
        if p is not None and p.size == h.size:
            return p
        if p is not None:
            self._held[device] -= p.held()
        p = Partial(self._partial_dir(device, h), h.size, touched=self._clock())
        self._read_ranges(p)
        self._held[device] += p.held()
        parts[key] = p
        return p

    def _forget_partial(self, device: str, key: tuple[str, int, str]) -> None:
        p = self._partials.get(device, {}).pop(key, None)
        if p is not None:
            self._held[device] -= p.held()
            shutil.rmtree(p.dir, ignore_errors=True)

    def _make_room(self, device: str, h: proto.ChunkHeader, p: Partial, grow: int) -> None:
        """Room for ``grow`` more bytes of upload ``p``: drop the device's idle uploads if
        needed; QuotaFull if there is still none."""
        lim = self.limits
        parts = self._device_partials(device)
        now = self._clock()

        def fits() -> bool:
            return self._held[device] + grow <= lim.quota_bytes and len(parts) <= lim.max_uploads

        if fits():
            return
        key = (h.stream, h.seq, h.hash)
        idle = sorted(
            (q.touched, k) for k, q in parts.items() if k != key and now - q.touched >= lim.idle_s
        )
        for _touched, k in idle:
            log.warning(
                "ingest: %s: dropping its idle upload %s#%d to make room (it will be resent)",
                device,
                k[0],
                k[1],
            )
            self._forget_partial(device, k)
            if fits():
                return
        self.stats.quota_refusals += 1
        raise QuotaFull(
            f"{device} holds {self._held[device]} bytes in {len(parts)} unfinished uploads "
            f"(quota {lim.quota_bytes} bytes, {lim.max_uploads} uploads)"
        )

    def expire_partials(self) -> int:
        """Drop uploads that saw no chunk for ``limits.expiry_s``; returns how many."""
        dropped = 0
        now = self._clock()
        with self._lock:
            for ddir in self.root.iterdir():
                if ids.device_id_problem(ddir.name) is not None or not ddir.is_dir():
                    continue
                base = ddir / "partial"
                if not base.is_dir():
                    continue
                parts = self._device_partials(ddir.name)
                for key, part in list(parts.items()):
                    try:
                        touched = max(part.touched, part.dir.stat().st_mtime)
                    except FileNotFoundError:
                        touched = part.touched
                    if now - touched >= self.limits.expiry_s:
                        log.info(
                            "ingest: %s: upload of %s#%d idle for %.0f s; dropped",
                            ddir.name,
                            key[0],
                            key[1],
                            now - touched,
                        )
                        self._forget_partial(ddir.name, key)
                        dropped += 1
        self.stats.partials_expired += dropped
        return dropped

    def _sync(self, p: Partial) -> None:
        if self._batching:
            self._dirty = self._dirty or bool(p.unsynced)
            p.unsynced = []
            return
        for path in p.unsynced:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if p.unsynced and p.dir.exists():
            fsync_dir(p.dir)
        p.unsynced = []

    def _assemble(self, p: Partial, out: BinaryIO) -> None:
        pos = 0
        for off in sorted(p.ranges):
            end = p.ranges[off]
            if end <= pos:
                continue
            with (p.dir / f"{off:012d}").open("rb") as f:
                f.seek(pos - off)
                shutil.copyfileobj(f, out, length=MIB)
            pos = end

    def _drop_partial(self, device: str, h: proto.ChunkHeader, *, known_only: bool = False) -> None:
        """Remove the upload's chunks; ``known_only``: only if this worker knows of them (a
        whole segment that came in one message usually has none, and a directory walk for
        each small segment is not free)."""
        key = (h.stream, h.seq, h.hash)
        if known_only and key not in self._device_partials(device):
            return
        self._forget_partial(device, key)
        shutil.rmtree(self._partial_dir(device, h), ignore_errors=True)
