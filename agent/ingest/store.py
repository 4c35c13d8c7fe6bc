"""The platform's evidence store: chunks in, verified segments out, each exactly once.

Layout (a generic verifier walks ``seg/`` and ``keys/``)::

    <store>/<device>/device.pub                 the device's Ed25519 key (pinned on first use,
                                                or given with --devices)
    <store>/<device>/keys/<key_id>.key          signed key records, as the device sent them
    <store>/<device>/seg/<stream>/<seq:012d>.seg   sealed segments, byte-identical to the spool
    <store>/<device>/plain/<stream>/<seq:012d>.bin decrypted (with the platform key only)
    <store>/<device>/partial/<stream>/<seq:012d>-<hash>/<offset:012d>   chunks being assembled
    <store>/<device>/heads.json                 the device's signed stream heads (heads.py)
    <store>/.tmp/                               assembly; files older than an hour are
                                                removed at start (left by a crash)

Names from outside are checked before they become paths: device ids, streams, key ids and
hashes by :mod:`agent.ids` (a device id from the topic that is not valid is refused), and every
path is built with :func:`agent.ids.contained`, so nothing lands outside the store. Files are
created 0600 and directories 0700 whatever the umask (decrypted evidence is in here).

Device keys: registered ones (``devices=DIR`` holding ``<device>.pub``, what ``edge-agent
provision`` produces for the platform) are the production setting; a device without one is
refused. Trust on first use (``trust_on_first_use=True``: the first key a device presents is
pinned in ``<store>/<device>/device.pub``) is for laboratories only and logged loudly.

Uploads in progress are bounded per device (:class:`PartialLimits`): an announced size beyond
the device's quota is refused at once; bytes held or uploads open beyond the quota make room by
dropping that device's idle uploads (the device still has them and resends), else are answered
"retry later"; an upload that saw no chunk for ``expiry_s`` is dropped
(:meth:`Store.expire_partials`).

Every file lands by rename (temp, fsync, rename, fsync directory). The sealed segment's final
name is the store's record that it was accepted: it is created with ``link()``, which fails if
another worker got there first, so several workers may share one store. A progress report is
only sent after the chunks it covers are on disk (fsync), so a device never skips bytes the
platform would lose in a crash. The store's key is (device, stream, seq); the boot and the
manifest hash tell a re-delivery (acknowledged again: "duplicate") from a conflict (refused).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import ids
from agent.errors import AgentError, FormatError, KeyFileError, VerificationError
from agent.storage.durable import fsync_dir, syncfs, write_atomic
from agent.storage.keys import fingerprint, raw_public
from agent.storage.seal import (
    SegmentInfo,
    decrypt_segment,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_segment,
)
from agent.uplink import protocol as proto

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_RESETS = 3
HASH_CACHE = 100_000
DIR_CACHE = 100_000
FILE_MODE = 0o600
STALE_TMP_S = 3600.0
DIR_MODE = 0o700


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
class _Partial:
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


def _why(exc: BaseException) -> str:
    """A refusal's reason: the message of our own errors, the type of anything else."""
    if isinstance(exc, AgentError):
        return str(exc)[:500]
    return f"{type(exc).__name__}: {str(exc)[:200]}"


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


def _create(path: Path, mode: str = "wb") -> BinaryIO:
    """A new private file (0600 whatever the umask)."""
    flags = os.O_CREAT | os.O_EXCL | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return cast(BinaryIO, os.fdopen(fd, mode))
    except BaseException:
        os.close(fd)
        raise


class Store:
    """See the module docstring. Thread-safe (one lock); several processes may share a store."""

    def __init__(
        self,
        root: Path,
        *,
        platform_key: X25519PrivateKey | None = None,
        devices: Path | None = None,
        trust_on_first_use: bool | None = None,
        progress_every: int = MIB,
        limits: PartialLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``trust_on_first_use``: None means "only when no ``devices`` directory is given"
        (the Python API's default for laboratories; ``edge-agent ingest`` asks explicitly)."""
        if not root.exists():
            root.mkdir(mode=DIR_MODE, parents=True)
            os.chmod(root, DIR_MODE)
        self.root = root.resolve()
        self.platform_key = platform_key
        self.devices = devices
        self.tofu = devices is None if trust_on_first_use is None else trust_on_first_use
        self.progress_every = progress_every
        self.limits = limits or PartialLimits()
        self._clock = clock
        self.stats = StoreStats()
        self._lock = threading.Lock()
        # Uploads in progress, per device: (stream, seq, hash) -> _Partial; bytes held each.
        self._partials: dict[str, dict[tuple[str, int, str], _Partial]] = {}
        self._held: dict[str, int] = {}
        self._hashes: OrderedDict[Path, str] = OrderedDict()
        self._pins: dict[str, Ed25519PublicKey] = {}
        self._dirs: dict[tuple[str, ...], Path] = {}
        self._tmpfile = hasattr(os, "O_TMPFILE") and Path("/proc/self/fd").is_dir()
        self.tmp = self.root / ".tmp"
        private_dirs(self.root, self.tmp)
        if self.tofu:
            log.warning(
                "ingest: TRUST ON FIRST USE: the first key a device presents is pinned as its "
                "own; a stolen or forged certificate can claim a device that has not sent yet. "
                "Register device keys (--devices DIR) in production"
            )
        # Group commit: inside ``batch()`` each fsync is replaced by one syncfs at its end.
        self._batching = False
        self._dirty = False
        # Left by a crash. Another worker sharing the store may be assembling right now: only
        # what is older than an hour is stale.
        for stale in self.tmp.iterdir():
            try:
                if time.time() - stale.stat().st_mtime > STALE_TMP_S:
                    stale.unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    # ------------------------------------------------------------------ paths

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

    # ------------------------------------------------------------------ device keys

    def pinned(self, device: str) -> Ed25519PublicKey | None:
        """The device's registered (or, under trust on first use, pinned) key; None if none."""
        with self._lock:
            return self._pinned(device)

    def _pinned(self, device: str) -> Ed25519PublicKey | None:
        ids.check_device_id(device)
        pin = self._pins.get(device)
        if pin is not None:
            return pin
        for path in (
            ids.contained(self.devices, f"{device}.pub") if self.devices else None,
            ids.contained(self.root, device, "device.pub") if self.tofu else None,
        ):
            if path is not None and path.exists():
                try:
                    key = serialization.load_pem_public_key(path.read_bytes())
                except ValueError as exc:
                    raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None
                if not isinstance(key, Ed25519PublicKey):
                    raise KeyFileError(f"{path}: not an Ed25519 public key")
                self._pins[device] = key
                return key
        if not self.tofu:
            where = self.devices if self.devices is not None else "--devices"
            raise VerificationError(
                f"device {device!r} is not registered (no {device}.pub in {where}); "
                "register its key (edge-agent provision writes it) before it can deliver"
            )
        return None

    def _pin(self, device: str, device_pub_hex: str) -> Ed25519PublicKey:
        """The key to check ``device``'s records against: its registered key, or (trust on
        first use only) the key of its first verified record, pinned."""
        pinned = self._pinned(device)
        if pinned is not None:
            return pinned
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(device_pub_hex))
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path = ids.contained(self.root, device, "device.pub")
        self._mkdirs(path.parent)
        write_atomic(path, pem, self.tmp)
        log.warning(
            "ingest: TRUST ON FIRST USE: pinned device %s to the key it presented, %s "
            "(not a registered key)",
            device,
            fingerprint(raw_public(key)),
        )
        self._pins[device] = key
        return key

    # ------------------------------------------------------------------ key records

    def put_key(self, device: str, data: bytes) -> proto.Ack | None:
        ids.check_device_id(device)
        with self._lock:
            try:
                rec = parse_key_record(data)
            except (FormatError, VerificationError, ValueError, RecursionError) as exc:
                self.stats.rejected += 1
                log.warning("ingest: %s sent an unreadable key record: %s", device, exc)
                return None
            kid = rec.key_id
            if ids.KEY_ID_RE.match(kid) is None or not kid.isascii():
                log.warning("ingest: %s sent a key record with a malformed id", device)
                return None
            try:
                if rec.device != device:
                    raise VerificationError(
                        f"key record claims device {rec.device!r} but was sent by {device!r}"
                    )
                trusted = self._pin(device, rec.manifest["device_pub"])
                parse_key_record(data, trusted)
                if self.platform_key is not None:
                    rec.unwrap(self.platform_key)
            except (AgentError, ValueError) as exc:
                self.stats.rejected += 1
                log.warning("ingest: refused key %s from %s: %s", kid, device, exc)
                return proto.Reject("key", str(exc), key_id=kid)
            path = self.key_path(device, kid)
            if not path.exists():
                self._mkdirs(path.parent)
                write_atomic(path, data, self.tmp)
                self.stats.keys += 1
            return proto.KeyAck(kid)

    # ------------------------------------------------------------------ chunks

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

    def _device_partials(self, device: str) -> dict[tuple[str, int, str], _Partial]:
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
                    part = _Partial(pdir, -1, touched=pdir.stat().st_mtime)
                    self._read_ranges(part)
                    parts[(sdir.name, int(seq_s), mhash)] = part
                    held += part.held()
        self._held[device] = held
        return parts

    @staticmethod
    def _read_ranges(p: _Partial) -> None:
        p.ranges.clear()
        if p.dir.is_dir():
            for f in p.dir.iterdir():
                if f.name.isdigit():
                    off = int(f.name)
                    p.ranges[off] = off + f.stat().st_size
                else:
                    f.unlink(missing_ok=True)
        p.unsynced = [p.dir / f"{off:012d}" for off in p.ranges]

    def _load_partial(self, device: str, h: proto.ChunkHeader) -> _Partial:
        parts = self._device_partials(device)
        key = (h.stream, h.seq, h.hash)
        p = parts.get(key)
        if p is not None and p.size == h.size:
            return p
        if p is not None:
            self._held[device] -= p.held()
        p = _Partial(self._partial_dir(device, h), h.size, touched=self._clock())
        self._read_ranges(p)
        self._held[device] += p.held()
        parts[key] = p
        return p

    def _forget_partial(self, device: str, key: tuple[str, int, str]) -> None:
        p = self._partials.get(device, {}).pop(key, None)
        if p is not None:
            self._held[device] -= p.held()
            shutil.rmtree(p.dir, ignore_errors=True)

    def _make_room(self, device: str, h: proto.ChunkHeader, p: _Partial, grow: int) -> None:
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

    def _sync(self, p: _Partial) -> None:
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
            self._mkdirs(p.dir)
            tmp = p.dir / f".{h.offset}.{uuid.uuid4().hex[:8]}"
            try:
                with _create(tmp) as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            p.ranges[h.offset] = end
            self._held[device] += grow
            p.unsynced.append(path)
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

    def durable_next(self, device: str, h: proto.ChunkHeader) -> int:
        """Bytes [0, n) of the upload the platform reported durable (0 if unknown)."""
        with self._lock:
            p = self._partials.get(device, {}).get((h.stream, h.seq, h.hash))
            return p.reported if p is not None else 0

    def _assemble(self, p: _Partial, out: BinaryIO) -> None:
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

    def _complete(
        self, device: str, h: proto.ChunkHeader, whole: bytes | None, p: _Partial | None
    ) -> list[proto.Ack]:
        if whole is not None:
            return self._complete_whole(device, h, whole)
        assert p is not None
        tmp = self.tmp / f"{uuid.uuid4().hex}.seg"
        plain_tmp: Path | None = None
        try:
            with _create(tmp, "w+b") as f:
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

    def _verify(
        self, device: str, h: proto.ChunkHeader, f: BinaryIO, p: _Partial | None
    ) -> tuple[SegmentInfo, Path | None] | list[proto.Ack]:
        """(info, decrypted plaintext file or None) of a segment that passes every check, or
        the acknowledgement that refuses it (or asks for it again)."""
        try:
            info = read_segment_info(f)
        except OSError:
            raise  # the store's disk, not the segment: the device is asked to retry
        except Exception as exc:  # FormatError, or anything a crafted manifest causes
            return self._reset_or_reject(device, h, p, f"unreadable: {_why(exc)}")
        if info.manifest_hash != h.hash:
            return self._reset_or_reject(
                device, h, p, "reassembled bytes do not carry the announced manifest hash"
            )
        try:
            self._check(device, h, f, info)
            return info, self._decrypt(device, f, info)
        except OSError:
            raise
        except Exception as exc:  # AgentError, or anything a crafted segment causes
            self.stats.rejected += 1
            log.warning("ingest: refused %s/%s: %s", device, h.label, _why(exc))
            self._drop_partial(device, h, known_only=p is None)
            return [proto.Reject("seg", _why(exc), h.stream, h.seq, h.hash)]

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

    def _reset_or_reject(
        self, device: str, h: proto.ChunkHeader, p: _Partial | None, why: str
    ) -> list[proto.Ack]:
        resets = (p.resets if p is not None else MAX_RESETS) + 1
        self._drop_partial(device, h)
        if resets > MAX_RESETS:
            self.stats.rejected += 1
            return [proto.Reject("seg", f"{h.label}: {why}", h.stream, h.seq, h.hash)]
        log.warning("ingest: %s/%s %s; asking for it again from byte 0", device, h.label, why)
        fresh = self._load_partial(device, h)
        fresh.resets = resets
        return [proto.Progress(h.stream, h.seq, h.hash, 0, got=h.size)]

    def _check(self, device: str, h: proto.ChunkHeader, f: BinaryIO, info: SegmentInfo) -> None:
        m = info.manifest
        if info.device != device:
            raise VerificationError(
                f"{h.label} claims device {info.device!r} but was sent by {device!r}"
            )
        if (info.stream, info.seq, m["boot"]) != (h.stream, h.seq, h.boot):
            raise VerificationError(
                f"chunk header says {h.label} boot {h.boot}, manifest says "
                f"{info.stream}#{info.seq} boot {m['boot']}"
            )
        trusted = self._pin(device, m["device_pub"])
        verify_segment(f, info, trusted)
        prev = (
            self._stored_hash(self.seg_path(device, info.stream, info.seq - 1))
            if info.seq > 0
            else None
        )
        if info.seq == 0 and m["prev"] is not None:
            raise VerificationError(f"{h.label}: the first segment of a stream names a previous")
        if prev is not None and m["prev"] != prev:
            raise VerificationError(
                f"{h.label}: chain broken: prev {str(m['prev'])[:16]} but the stored "
                f"#{info.seq - 1} is {prev[:16]}"
            )
        after = (
            self.seg_path(device, info.stream, info.seq + 1) if info.seq + 1 < ids.MAX_SEQ else None
        )
        if after is not None and after.exists():
            with after.open("rb") as g:
                nxt = read_segment_info(g)
            if nxt.manifest["prev"] != info.manifest_hash:
                raise VerificationError(
                    f"{h.label}: chain broken: the stored #{info.seq + 1} names another prev"
                )
        if prev is None and info.seq > 0:
            log.info(
                "ingest: %s/%s arrived before #%d (gap for now)", device, h.label, info.seq - 1
            )

    def _decrypt(self, device: str, f: BinaryIO, info: SegmentInfo) -> Path | None:
        if self.platform_key is None:
            return None
        kpath = self.key_path(device, info.key_id)
        if not kpath.exists():
            self.stats.missing_keys += 1
            log.warning(
                "ingest: %s/%s: key record %s not received; stored sealed only",
                device,
                info.label,
                info.key_id,
            )
            return None
        rec = parse_key_record(kpath.read_bytes(), self._pinned(device))
        data_key = rec.unwrap(self.platform_key)
        open_meta(info, data_key)  # sealed meta (format v2) that does not open: refused
        out = self.tmp / f"{uuid.uuid4().hex}.bin"
        try:
            with _create(out) as g:
                decrypt_segment(f, info, data_key, g.write)
                g.flush()
                self._fsync_fd(g.fileno())
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        self.stats.decrypted += 1
        return out

    # ------------------------------------------------------------------ reading

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
