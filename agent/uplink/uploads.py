"""The forwarder's segments in flight: one :class:`Upload` per segment being sent, the table
of them (started from the spool oldest first, streams by priority, found by stream, seq and
manifest hash) and the trailer peek that tells a damaged or replaced file before it is sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from agent.errors import AgentError, FormatError, SpoolError
from agent.storage.seal import MAX_MANIFEST
from agent.storage.spool import Spool, SpoolItem
from agent.uplink import protocol as proto
from agent.uplink.mqtt import MqttLink
from agent.uplink.settings import UplinkSettings

# The forwarder's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.uplink.forwarder")

KIB = 1024
IDLE_POLL_S = 0.5
READY_REFRESH_S = 1.0
BUNDLE_MEMBER_OVERHEAD = 320  # a bundle member's length and chunk header, at most (~150 usually)


@dataclass
class Upload:
    item: SpoolItem
    boot: str
    size: int
    f: BinaryIO | None  # None when the whole segment is in ``data`` (a small one)
    confirmed: int  # bytes the platform holds durably
    next: int  # next byte to send
    last_word: float
    high: int = 0  # highest byte sent so far (for the resent figure)
    sent_at: dict[int, int] = field(default_factory=dict)  # offset -> send counter
    hold_until: float = 0.0  # the platform asked to wait (retry) until then
    data: bytes | None = None  # the whole segment, when small enough to bundle
    bundled: bool = False  # last sent in a bundle (no answer yet)
    compact: bool = False  # last sent in the compact form (no answer yet)
    _heads: proto.ChunkHeads | None = None  # its chunks' headers (made on the first chunk)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.item.stream, self.item.seq, self.item.manifest_hash)

    @property
    def fresh(self) -> bool:
        """Nothing of it sent yet (a resend always goes as single chunks)."""
        return self.high == 0 and self.next == 0

    def read(self, offset: int, n: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + n]
        assert self.f is not None
        self.f.seek(offset)
        return self.f.read(n)

    def chunk(self, offset: int, n: int) -> bytes | bytearray | None:
        """The chunk of bytes [offset, offset + n) as published (protocol.encode_chunk), or
        None if the segment is shorter than that."""
        if self._heads is None:
            self._heads = proto.ChunkHeads(
                proto.ChunkHeader(
                    self.item.stream,
                    self.item.seq,
                    self.boot,
                    self.item.manifest_hash,
                    self.size,
                    0,
                )
            )
        return self.framed(self._heads.at(offset), offset, n)

    def framed(self, head: bytes, offset: int, n: int) -> bytes | bytearray | None:
        """``head`` followed by bytes [offset, offset + n): a chunk's payload, read from the
        file straight behind its header (no copy of the bytes to join them). None if the
        segment is shorter than that."""
        if self.data is not None:
            data = self.data[offset : offset + n]
            return head + data if len(data) == n else None
        assert self.f is not None
        buf = bytearray(len(head) + n)
        buf[: len(head)] = head
        self.f.seek(offset)
        view = memoryview(buf)[len(head) :]
        got = 0
        while got < n:
            k = self.f.readinto(view[got:])  # type: ignore[attr-defined]  # (BufferedReader)
            if not k:
                return None
            got += k
        return buf


def peek_segment(f: BinaryIO | bytes) -> tuple[int, str, str]:
    """(size, manifest hash, boot) of a sealed segment (a file, or its bytes) from its trailer
    alone: what the forwarder needs. The device sealed the file itself; the manifest hash,
    compared with the spool's index, is what tells a damaged or replaced file."""
    if isinstance(f, bytes):
        size = len(f)
        tail = f[-4:]
    else:
        size = f.seek(0, 2)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if size < 8 + 68 + 2:
        raise FormatError(f"segment of {size} bytes is too short")
    (mlen,) = struct.unpack(">I", tail)
    if mlen > MAX_MANIFEST or 8 + mlen + 68 > size:
        raise FormatError("segment trailer length is impossible")
    if isinstance(f, bytes):
        manifest = f[size - 68 - mlen : size - 68]
    else:
        f.seek(size - 68 - mlen)
        manifest = f.read(mlen)
    try:
        boot = json.loads(manifest).get("boot")
    except (ValueError, AttributeError):
        boot = None
    if not isinstance(boot, str):
        raise FormatError("segment manifest names no boot")
    return size, hashlib.sha256(manifest).hexdigest(), boot


@dataclass
class ForwarderStats:
    chunks_sent: int = 0
    chunks_resent: int = 0
    bytes_sent: int = 0
    segments_acked: int = 0
    keys_acked: int = 0
    live_sent: int = 0
    rejected: int = 0
    resends_after_silence: int = 0
    bad_acks: int = 0
    forged_acks: int = 0
    retries: int = 0
    heads_sent: int = 0
    bundles_sent: int = 0
    segments_bundled: int = 0
    compact_sent: int = 0


class UploadTable:
    """The uploads in flight and the spool they come from (a part of the Forwarder: its
    ``__init__`` sets these attributes; only the forwarder thread touches them)."""

    spool: Spool
    link: MqttLink
    settings: UplinkSettings
    stats: ForwarderStats
    _clock: Callable[[], float]
    _max_chunk: int
    _uploads: list[Upload]
    _by_key: dict[tuple[str, int, str], Upload]
    _ready: deque[SpoolItem]
    _ready_at: float
    _ids: set[int]  # spool ids of self._uploads
    _rejected: set[int]

    def _find(self, stream: str, seq: int, mhash: str) -> Upload | None:
        return self._by_key.get((stream, seq, mhash))

    def _remove(self, u: Upload) -> None:
        self._uploads.remove(u)
        self._by_key.pop(u.key, None)
        self._ids.discard(u.item.id)

    def chunk_size(self) -> int:
        return proto.chunk_size_for(self.link.max_packet, self._max_chunk)

    def _bundle_cap(self) -> int:
        return min(self.settings.bundle_kib * KIB, self.chunk_size())

    @staticmethod
    def _bundle_size(u: Upload | SpoolItem) -> int:
        """Bytes a whole segment adds to a bundle, at most (its chunk header is ~150 bytes)."""
        return u.size + BUNDLE_MEMBER_OVERHEAD

    def _start_next(self, accept: Callable[[SpoolItem], bool] | None = None) -> Upload | None:
        """Start the next ready segment (oldest first, streams by priority); with ``accept``,
        only if that segment is acceptable (else it stays next)."""
        now = self._clock()
        if not self._ready or now - self._ready_at > READY_REFRESH_S:
            # The spool leaves out what is in flight (mark_inflight); what we refused to send
            # is left out here. Only as many as could start now, and a few more.
            limit = max(0, self.settings.max_segments_in_flight - len(self._uploads)) + 8
            self._ready = deque(
                [
                    i
                    for i in self.spool.next_ready(
                        self.settings.priority, limit + len(self._rejected)
                    )
                    if i.id not in self._rejected and i.id not in self._ids
                ][:limit]
            )
            self._ready_at = now
        while self._ready:
            item = self._ready[0]
            if item.id in self._rejected or item.id in self._ids:
                self._ready.popleft()
                continue
            if accept is not None and not accept(item):
                return None
            self._ready.popleft()
            try:
                f = self.spool.open_segment(item)
            except OSError as exc:
                log.warning("uplink: skipping %s#%d: %s", item.stream, item.seq, exc)
                continue
            try:
                data = None
                if self.settings.bundle_kib > 0 and self._bundle_size(item) <= self._bundle_cap():
                    data = f.read()  # a small one (as indexed): whole, in one read
                size, mhash, boot = peek_segment(data if data is not None else f)
                if data is not None and size + BUNDLE_MEMBER_OVERHEAD > self._bundle_cap():
                    data = None  # larger than indexed: sent in chunks from the file
            except (OSError, AgentError) as exc:
                f.close()
                log.warning("uplink: skipping %s#%d: %s", item.stream, item.seq, exc)
                continue
            if mhash != item.manifest_hash:
                log.error("uplink: %s#%d: file differs from the index", item.stream, item.seq)
                f.close()
                self._rejected.add(item.id)
                continue
            if data is not None:
                f.close()
            start = item.progress if 0 <= item.progress < size else 0
            self.spool.mark_inflight(item.id)
            u = Upload(
                item=item,
                boot=boot,
                size=size,
                f=None if data is not None else f,
                confirmed=start,
                next=start,
                last_word=now,
                high=start,
                data=data,
            )
            if start:
                log.info(
                    "uplink: resuming %s#%d at byte %d of %d", item.stream, item.seq, start, u.size
                )
            self._uploads.append(u)
            self._by_key[u.key] = u
            self._ids.add(item.id)
            return u
        return None

    def _drop_upload(self, u: Upload, *, release: bool) -> None:
        if u.f is not None:
            with contextlib.suppress(OSError):
                u.f.close()
        if release:
            try:
                self.spool.release(u.item.id)
            except (SpoolError, sqlite3.Error) as exc:
                log.warning("uplink: cannot release %s: %s", u.item.stream, exc)
