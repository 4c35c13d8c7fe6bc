"""Protocol 4 at the platform: compact segments in, compact acknowledgements out
(agent.uplink.compact; docs/protocol.md, "Compact segments").

A compact segment names its **base** (an earlier segment of the stream, stored here, with the
first 4 bytes of its manifest hash). The platform reads that segment's manifest from the store
(or from the last one it rebuilt for that stream), rebuilds the sealed segment's exact bytes
and hands them to the store as one whole chunk: verified, stored and acknowledged as any
other. When it cannot rebuild it (the base is not in this store, or differs), it answers
``plain`` for that seq and the device sends the segment again as a chunk. A malformed message
is dropped and logged, like a malformed chunk.

A compact key record is rebuilt likewise and taken as a plain one (``Store.put_key``).

The answers to a device that sent a compact segment or key record in a batch go in the
compact form (``seg`` and ``key`` acknowledgements, ``plain``); any others (progress, retry,
reject) still go as the signed JSON batch of protocol 2.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import ids
from agent.errors import FormatError
from agent.ingest.store import Store
from agent.storage.seal import MAX_MANIFEST
from agent.uplink import compact
from agent.uplink import protocol as proto

log = logging.getLogger("agent.ingest.receiver")

BASE_CACHE = 4096  # the last manifest rebuilt per (device, stream)


class CompactSegments:
    """The compact form's state of one ingest worker: bases cached, plain answers owed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._bases: OrderedDict[tuple[str, str], compact.Base] = OrderedDict()
        self.devices: set[str] = set()  # devices that sent a compact segment in this batch
        self.plain: dict[str, list[compact.CompactAck]] = {}
        self.rebuilt = 0
        self.keys = 0
        self.plain_sent = 0

    def begin_batch(self) -> None:
        self.devices.clear()
        self.plain.clear()

    def _base(self, device: str, stream: str, seq: int, check: bytes) -> compact.Base | None:
        """The stored segment ``seq`` of the stream as a base, if it is here and its hash
        begins with ``check``."""
        cached = self._bases.get((device, stream))
        if cached is not None and cached.seq == seq and cached.hash[: len(check)] == check:
            return cached
        path = self.store.seg_path(device, stream, seq)
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                if size < 8 + 68:
                    return None
                f.seek(size - 4)
                (mlen,) = struct.unpack(">I", f.read(4))
                if mlen > MAX_MANIFEST or 8 + mlen + 68 > size:
                    return None
                f.seek(size - 68 - mlen)
                manifest = f.read(mlen)
        except FileNotFoundError:
            return None
        base = compact.Base(seq, manifest)
        return base if base.hash[: len(check)] == check else None

    def take(
        self, device: str, topic_stream: str, payload: bytes
    ) -> tuple[proto.ChunkHeader, bytes] | None:
        """The whole segment a compact message carries (its chunk header and bytes), or None
        when it cannot be rebuilt here (a ``plain`` answer is then owed). FormatError when
        malformed."""
        self.devices.add(device)
        head = compact.read_head(payload)
        base = None
        if head.base_seq is not None:
            base = self._base(device, topic_stream, head.base_seq, head.base_check)
            if base is None:
                log.info(
                    "ingest: %s/%s#%d: its base #%d is not here; asking for it as a chunk",
                    device,
                    topic_stream,
                    head.seq,
                    head.base_seq,
                )
                self.plain.setdefault(device, []).append(
                    compact.CompactAck(compact.PLAIN, topic_stream, head.seq)
                )
                self.plain_sent += 1
                return None
        data = compact.decode_segment(payload, base)
        _body, manifest, _sig = compact.split_segment(data)
        obj = proto.loads_object(manifest, "compact segment: manifest", MAX_MANIFEST)
        if obj.get("stream") != topic_stream or obj.get("seq") != head.seq:
            raise FormatError(
                f"compact segment: names {str(obj.get('stream'))[:40]}#{str(obj.get('seq'))[:20]}"
                f" on the topic of {topic_stream}, seq {head.seq}"
            )
        boot = ids.check_boot_id(obj.get("boot"), "compact segment: boot")
        self.rebuilt += 1
        mhash = hashlib.sha256(manifest).hexdigest()
        header = proto.ChunkHeader(topic_stream, head.seq, boot, mhash, len(data), 0)
        return header, data

    def put(self, device: str, stream: str, payload: bytes) -> list[proto.Ack]:
        """Store what a compact message carries: the store's acknowledgements (none when a
        ``plain`` answer is owed instead). FormatError when malformed; OSError from the store."""
        got = self.take(device, stream, payload)
        if got is None:
            return []
        header, data = got
        acks = self.store.put_chunk(device, header, data)
        if any(isinstance(a, proto.SegmentAck) and a.hash == header.hash for a in acks):
            self.stored(device, header, data)
        return acks

    def put_key(self, device: str, payload: bytes) -> list[proto.Ack]:
        """Store the key record a compact message carries (as ``Store.put_key`` does a plain
        one). FormatError when malformed; OSError from the store."""
        data = compact.decode_key_record(payload)
        self.devices.add(device)
        self.keys += 1
        ack = self.store.put_key(device, data)
        return [ack] if ack is not None else []

    def stored(self, device: str, header: proto.ChunkHeader, data: bytes) -> None:
        """``data`` is stored here (or was): the next segment of its stream may use it."""
        _body, manifest, _sig = compact.split_segment(data)
        key = (device, header.stream)
        self._bases[key] = compact.Base(header.seq, manifest)
        self._bases.move_to_end(key)
        if len(self._bases) > BASE_CACHE:
            self._bases.popitem(last=False)

    def answers(
        self, device: str, acks: list[proto.Ack], key: Ed25519PrivateKey | None
    ) -> tuple[list[bytes], list[proto.Ack]]:
        """The compact acknowledgement messages for ``device`` (if it sent compact segments
        and the platform signs), and the acknowledgements left for the JSON batch."""
        plain = self.plain.get(device, [])
        if device not in self.devices or key is None:
            return [], acks
        entries = list(plain)
        rest: list[proto.Ack] = []
        for a in acks:
            if isinstance(a, proto.SegmentAck):
                kind = compact.STORED if a.result == "stored" else compact.DUPLICATE
                entries.append(compact.CompactAck(kind, a.stream, a.seq, a.hash))
            elif isinstance(a, proto.KeyAck):
                entries.append(compact.CompactAck(compact.KEY, key_id=a.key_id))
            else:
                rest.append(a)
        return (compact.encode_acks(device, entries, key) if entries else []), rest
