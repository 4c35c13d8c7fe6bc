"""The platform's evidence store: chunks in, verified segments out, each exactly once.

Layout (a generic verifier walks ``seg/`` and ``keys/``)::

    <store>/<device>/device.pub                 the device's Ed25519 key (pinned on first use,
                                                or given with --devices)
    <store>/<device>/keys/<key_id>.key          signed key records, as the device sent them
    <store>/<device>/seg/<stream>/<seq:012d>.seg   sealed segments, byte-identical to the spool
    <store>/<device>/plain/<stream>/<seq:012d>.bin decrypted (with the platform key only)
    <store>/<device>/partial/<stream>/<seq:012d>-<hash>/<offset:012d>   chunks being assembled
    <store>/.tmp/                               assembly; emptied of stale files at start

Every file lands by rename (temp, fsync, rename, fsync directory). The sealed segment's final
name is the store's record that it was accepted: it is created with ``link()``, which fails if
another worker got there first, so several workers may share one store. A progress report is
only sent after the chunks it covers are on disk (fsync), so a device never skips bytes the
platform would lose in a crash. The store's key is (device, stream, seq); the boot and the
manifest hash tell a re-delivery (acknowledged again: "duplicate") from a conflict (refused).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

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


@dataclass
class _Partial:
    dir: Path
    size: int
    ranges: dict[int, int] = field(default_factory=dict)  # offset -> end
    unsynced: list[Path] = field(default_factory=list)
    reported: int = 0
    resets: int = 0

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


class Store:
    """See the module docstring. Thread-safe (one lock); several processes may share a store."""

    def __init__(
        self,
        root: Path,
        *,
        platform_key: X25519PrivateKey | None = None,
        devices: Path | None = None,
        progress_every: int = MIB,
    ) -> None:
        self.root = root
        self.platform_key = platform_key
        self.devices = devices
        self.progress_every = progress_every
        self.stats = StoreStats()
        self._lock = threading.Lock()
        self._partials: dict[tuple[str, str, int, str], _Partial] = {}
        self._hashes: OrderedDict[Path, str] = OrderedDict()
        self._pins: dict[str, Ed25519PublicKey] = {}
        self.tmp = root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Group commit: inside ``batch()`` each fsync is replaced by one syncfs at its end.
        self._batching = False
        self._dirty = False
        for stale in self.tmp.iterdir():
            stale.unlink(missing_ok=True)

    # ------------------------------------------------------------------ paths

    def seg_path(self, device: str, stream: str, seq: int) -> Path:
        return self.root / device / "seg" / stream / f"{seq:012d}.seg"

    def plain_path(self, device: str, stream: str, seq: int) -> Path:
        return self.root / device / "plain" / stream / f"{seq:012d}.bin"

    def key_path(self, device: str, key_id: str) -> Path:
        return self.root / device / "keys" / f"{key_id}.key"

    def _partial_dir(self, device: str, h: proto.ChunkHeader) -> Path:
        return self.root / device / "partial" / h.stream / f"{h.seq:012d}-{h.hash}"

    # ------------------------------------------------------------------ device keys

    def _pinned(self, device: str) -> Ed25519PublicKey | None:
        pin = self._pins.get(device)
        if pin is not None:
            return pin
        for path in (
            (self.devices / f"{device}.pub") if self.devices else None,
            self.root / device / "device.pub",
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
        if self.devices is not None:
            raise VerificationError(f"device {device!r} is not registered in {self.devices}")
        return None

    def _pin(self, device: str, device_pub_hex: str) -> Ed25519PublicKey:
        """Trust on first use: the first verified record of a device pins its key."""
        pinned = self._pinned(device)
        if pinned is not None:
            return pinned
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(device_pub_hex))
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path = self.root / device / "device.pub"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, pem, self.tmp)
        log.info("ingest: pinned device %s to key %s", device, fingerprint(raw_public(key)))
        self._pins[device] = key
        return key

    # ------------------------------------------------------------------ key records

    def put_key(self, device: str, data: bytes) -> proto.Ack | None:
        with self._lock:
            try:
                rec = parse_key_record(data)
            except (FormatError, VerificationError) as exc:
                self.stats.rejected += 1
                log.warning("ingest: %s sent an unreadable key record: %s", device, exc)
                return None
            kid = rec.key_id
            if not proto.KEY_ID_RE.match(kid):
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
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data, self.tmp)
                self.stats.keys += 1
            return proto.KeyAck(kid)

    # ------------------------------------------------------------------ chunks

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

    def _load_partial(self, device: str, h: proto.ChunkHeader) -> _Partial:
        key = (device, h.stream, h.seq, h.hash)
        p = self._partials.get(key)
        if p is not None and p.size == h.size:
            return p
        d = self._partial_dir(device, h)
        p = _Partial(d, h.size)
        if d.is_dir():
            for f in d.iterdir():
                if f.name.isdigit():
                    off = int(f.name)
                    p.ranges[off] = off + f.stat().st_size
                else:
                    f.unlink(missing_ok=True)
            p.unsynced = [d / f"{off:012d}" for off in p.ranges]
        self._partials[key] = p
        return p

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
        p.dir.mkdir(parents=True, exist_ok=True)
        path = p.dir / f"{h.offset:012d}"
        if h.offset in p.ranges and p.ranges[h.offset] > end:
            pass  # a longer chunk is already there at this offset
        else:
            tmp = p.dir / f".{h.offset}.{uuid.uuid4().hex[:8]}"
            with tmp.open("wb") as f:
                f.write(data)
            os.replace(tmp, path)
            p.ranges[h.offset] = end
            p.unsynced.append(path)
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

    def _drop_partial(self, device: str, h: proto.ChunkHeader) -> None:
        self._partials.pop((device, h.stream, h.seq, h.hash), None)
        shutil.rmtree(self._partial_dir(device, h), ignore_errors=True)

    def _complete(
        self, device: str, h: proto.ChunkHeader, whole: bytes | None, p: _Partial | None
    ) -> list[proto.Ack]:
        tmp = self.tmp / f"{uuid.uuid4().hex}.seg"
        plain_tmp: Path | None = None
        try:
            with tmp.open("w+b") as f:
                if whole is not None:
                    f.write(whole)
                else:
                    assert p is not None
                    self._assemble(p, f)
                f.flush()
                self._fsync_fd(f.fileno())
                try:
                    info = read_segment_info(f)
                except FormatError as exc:
                    return self._reset_or_reject(device, h, p, f"unreadable: {exc}")
                if info.manifest_hash != h.hash:
                    return self._reset_or_reject(
                        device, h, p, "reassembled bytes do not carry the announced manifest hash"
                    )
                try:
                    self._check(device, h, f, info)
                    plain_tmp = self._decrypt(device, f, info)
                except (AgentError, ValueError) as exc:
                    self.stats.rejected += 1
                    log.warning("ingest: refused %s/%s: %s", device, h.label, exc)
                    self._drop_partial(device, h)
                    return [proto.Reject("seg", str(exc), h.stream, h.seq, h.hash)]
            final = self.seg_path(device, h.stream, h.seq)
            final.parent.mkdir(parents=True, exist_ok=True)
            if plain_tmp is not None:
                plain = self.plain_path(device, h.stream, h.seq)
                plain.parent.mkdir(parents=True, exist_ok=True)
                os.replace(plain_tmp, plain)
                self._fsync_dir(plain.parent)
                plain_tmp = None
            try:
                os.link(tmp, final)
            except FileExistsError:
                # Another worker stored it first.
                self._drop_partial(device, h)
                if self._stored_hash(final) == h.hash:
                    self.stats.duplicates += 1
                    return [proto.SegmentAck(h.stream, h.seq, h.hash, "duplicate")]
                return [proto.Reject("seg", f"{h.label}: conflict", h.stream, h.seq, h.hash)]
            self._fsync_dir(final.parent)
            self._remember(final, h.hash)
            self._drop_partial(device, h)
            self.stats.stored += 1
            log.debug("ingest: stored %s/%s (%d bytes)", device, h.label, info.size)
            return [proto.SegmentAck(h.stream, h.seq, h.hash, "stored")]
        finally:
            tmp.unlink(missing_ok=True)
            if plain_tmp is not None:
                plain_tmp.unlink(missing_ok=True)

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
        prev = self._stored_hash(self.seg_path(device, info.stream, info.seq - 1))
        if info.seq == 0 and m["prev"] is not None:
            raise VerificationError(f"{h.label}: the first segment of a stream names a previous")
        if prev is not None and m["prev"] != prev:
            raise VerificationError(
                f"{h.label}: chain broken: prev {str(m['prev'])[:16]} but the stored "
                f"#{info.seq - 1} is {prev[:16]}"
            )
        after = self.seg_path(device, info.stream, info.seq + 1)
        if after.exists():
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
            with out.open("wb") as g:
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
        base = self.root / device / "seg"
        if not base.exists():
            return []
        dirs = [base / stream] if stream else sorted(p for p in base.iterdir() if p.is_dir())
        out: list[Path] = []
        for d in dirs:
            if d.exists():
                out.extend(sorted(d.glob("*.seg")))
        return out
