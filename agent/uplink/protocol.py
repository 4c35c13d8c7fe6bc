"""The uplink's wire protocol: topics, payloads and chunking. Pure: no I/O, no MQTT client.

Every topic lives under ``devices/{device_id}/`` so that one broker ACL line,
``pattern readwrite devices/%u/#``, isolates each device. ``docs/protocol.md`` describes it for
platform teams; this module is the one implementation both ends share.

Device to platform::

    devices/{d}/state               retained birth (online) / last will (offline), JSON
    devices/{d}/live/{fix|alarm|status}   live lane: JSON; a fix binary since protocol 3
                                    (see encode_live_fix)
    devices/{d}/up/key              a signed key record (raw bytes, as stored)
    devices/{d}/up/seg/{stream}     one chunk of a sealed segment (binary, see Chunk)
    devices/{d}/up/cmd              answer to a command, JSON
    devices/{d}/heads               retained, the device-signed head of each stream (heads.py)

Platform to device::

    devices/{d}/down/ack            acknowledgements and progress, JSON: a batch signed by the
                                    platform's ack key (see encode_acks / parse_acks)
    devices/{d}/down/cmd            signed commands, JSON (agent.uplink.control)

Everything from the wire is read within bounds before it is used: JSON through
:func:`agent.boundedjson.loads` (size, depth, integer digits), identifiers through
:mod:`agent.ids` (device ids, streams, key ids, hashes, ``seq`` < 10^12), sizes and offsets
against :data:`MAX_SEGMENT_SIZE`. A malformed message raises :class:`FormatError` only.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import boundedjson, ids
from agent.errors import FormatError, VerificationError
from agent.gps import wire
from agent.model import Fix

ROOT = "devices"
STREAM_RE = ids.STREAM_RE
KEY_ID_RE = ids.KEY_ID_RE
HASH_RE = ids.HASH_RE
BOOT_RE = ids.BOOT_RE
CHUNK_MAGIC = b"EAC1"
CHUNK_HEAD = struct.Struct(">4sH")
MAX_CHUNK_HEADER = 1024
# Bytes reserved in each PUBLISH packet for the fixed header, topic, packet id, properties
# and the chunk header, when sizing chunks to the broker's maximum packet size.
PACKET_OVERHEAD = 2048
MAX_SEGMENT_SIZE = 1 << 40
LIVE_KINDS = ("fix", "alarm", "status")
# Stream names that are also the last level of another device topic. The broker ACL gives a
# device `devices/%u/up/seg/+` and `devices/%u/state`, so a certificate whose CN is
# "<other>/up/seg" could publish on devices/<other>/up/seg/state: these names are never streams.
RESERVED_STREAMS = frozenset({"state", "heads", "key", "cmd"})
# Acknowledgements: at most this many per signed batch, and this many bytes per message.
MAX_ACKS = 512
MAX_ACK_BYTES = 256 * 1024
MAX_REASON = 500
# How long a device waits before resending what the platform could not store for now.
MAX_RETRY_AFTER_S = 3600
ACK_CONTEXT = b"edge-agent ack v1\x00"


def check_device_id(device_id: object) -> str:
    """A device id as agent.ids defines it (ASCII, no leading dot, not reserved)."""
    return ids.check_device_id(device_id)


def check_stream(stream: object, what: str = "stream") -> str:
    """A stream name as agent.ids defines it, and not one of RESERVED_STREAMS."""
    name = ids.check_stream(stream, what)
    if name in RESERVED_STREAMS:
        raise FormatError(f"{what} {name!r}: reserved (it names another topic)")
    return name


@dataclass(frozen=True)
class Topics:
    """The topic names of one device."""

    device_id: str

    def __post_init__(self) -> None:
        check_device_id(self.device_id)

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.device_id}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    def live(self, kind: str) -> str:
        if kind not in LIVE_KINDS:
            raise FormatError(f"live kind {kind!r}: must be one of {', '.join(LIVE_KINDS)}")
        return f"{self.base}/live/{kind}"

    @property
    def key(self) -> str:
        return f"{self.base}/up/key"

    def segment(self, stream: str) -> str:
        return f"{self.base}/up/seg/{check_stream(stream)}"

    @property
    def command_result(self) -> str:
        return f"{self.base}/up/cmd"

    @property
    def ack(self) -> str:
        return f"{self.base}/down/ack"

    @property
    def command(self) -> str:
        return f"{self.base}/down/cmd"

    @property
    def down(self) -> str:
        return f"{self.base}/down/#"

    @property
    def heads(self) -> str:
        return f"{self.base}/heads"


# Filters the platform subscribes to (every device).
UP_FILTER = f"{ROOT}/+/up/#"
STATE_FILTER = f"{ROOT}/+/state"
LIVE_FILTER = f"{ROOT}/+/live/#"
HEADS_FILTER = f"{ROOT}/+/heads"


@dataclass(frozen=True)
class ParsedTopic:
    device_id: str
    kind: str  # state | live | key | seg | cmd-result | ack | cmd | heads
    arg: str = ""  # live kind or stream


def parse_topic(topic: str) -> ParsedTopic:
    """Split a topic of this protocol; anything else raises FormatError."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise FormatError(f"topic {topic[:200]!r}: not under {ROOT}/<device id>/")
    device, rest = parts[1], parts[2:]
    problem = ids.device_id_problem(device)
    if problem is not None:
        raise FormatError(f"topic {topic[:200]!r}: device id {problem}")
    if rest == ["state"]:
        return ParsedTopic(device, "state")
    if rest == ["heads"]:
        return ParsedTopic(device, "heads")
    if len(rest) == 2 and rest[0] == "live" and rest[1] in LIVE_KINDS:
        return ParsedTopic(device, "live", rest[1])
    if rest == ["up", "key"]:
        return ParsedTopic(device, "key")
    if len(rest) == 3 and rest[:2] == ["up", "seg"]:
        return ParsedTopic(device, "seg", check_stream(rest[2], f"topic {topic[:200]!r}: stream"))
    if rest == ["up", "cmd"]:
        return ParsedTopic(device, "cmd-result")
    if rest == ["down", "ack"]:
        return ParsedTopic(device, "ack")
    if rest == ["down", "cmd"]:
        return ParsedTopic(device, "cmd")
    raise FormatError(f"topic {topic[:200]!r}: unknown kind {'/'.join(rest)[:100]!r}")


# --------------------------------------------------------------------------- JSON helpers


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def loads_object(
    payload: bytes | bytearray | memoryview, what: str, max_bytes: int = 1 << 20
) -> dict[str, Any]:
    """A JSON object from the wire, read within bounds (agent.boundedjson)."""
    obj: dict[str, Any] = boundedjson.loads(payload, what, max_bytes=max_bytes, want=dict)
    return obj


def _field(obj: dict[str, Any], name: str, tp: type, what: str) -> Any:
    if name not in obj:
        raise FormatError(f"{what}: lacks {name!r}")
    value = obj[name]
    if isinstance(value, bool) and tp is not bool:
        raise FormatError(f"{what}: {name!r} must be {tp.__name__}")
    if not isinstance(value, tp):
        raise FormatError(f"{what}: {name!r} must be {tp.__name__}")
    return value


def _match(value: str, pattern: re.Pattern[str], name: str, what: str) -> str:
    if not value.isascii() or not pattern.match(value):
        raise FormatError(f"{what}: {name!r} is malformed: {value[:80]!r}")
    return value


def _seq(obj: dict[str, Any], what: str) -> int:
    value = _field(obj, "seq", int, what)
    if not 0 <= value < ids.MAX_SEQ:
        raise FormatError(f"{what}: seq {value} is out of range (0 <= seq < {ids.MAX_SEQ})")
    return int(value)


def _offset(obj: dict[str, Any], name: str, what: str) -> int:
    value = _field(obj, name, int, what)
    if not 0 <= value <= MAX_SEGMENT_SIZE:
        raise FormatError(f"{what}: {name!r} {value} is out of range")
    return int(value)


# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class ChunkHeader:
    """Which bytes of which sealed segment a chunk carries.

    ``offset``/``size`` are byte positions in the sealed segment file; ``hash`` is its manifest
    hash (what the acknowledgement must carry). The chunk's bytes follow the header.
    """

    stream: str
    seq: int
    boot: str
    hash: str
    size: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "boot": self.boot,
            "hash": self.hash,
            "size": self.size,
            "offset": self.offset,
        }

    @property
    def label(self) -> str:
        return f"{self.stream}#{self.seq}"


def encode_chunk(header: ChunkHeader, data: bytes) -> bytes:
    return chunk_head(header) + data


def chunk_head(header: ChunkHeader) -> bytes:
    """What precedes a chunk's bytes: ``encode_chunk(header, data)`` is this plus ``data``."""
    head = dumps(header.to_json())
    return CHUNK_HEAD.pack(CHUNK_MAGIC, len(head)) + head


class ChunkHeads:
    """``chunk_head`` of one segment's chunks (``header`` with any offset): the same bytes,
    the JSON encoded once per segment rather than once per chunk."""

    def __init__(self, header: ChunkHeader) -> None:
        text = dumps(replace(header, offset=0).to_json())
        before, sep, after = text.partition(b'"offset":0,')  # keys sorted: seq follows
        self._parts = (before + b'"offset":', b"," + after) if sep else None
        self._header = header

    def at(self, offset: int) -> bytes:
        if self._parts is None:  # (not the expected text: encode it every time)
            return chunk_head(replace(self._header, offset=offset))
        head = self._parts[0] + b"%d" % offset + self._parts[1]
        return CHUNK_HEAD.pack(CHUNK_MAGIC, len(head)) + head


def decode_chunk(payload: bytes | memoryview) -> tuple[ChunkHeader, memoryview]:
    """Parse and check a chunk; the data is a view into ``payload``."""
    what = "chunk"
    if len(payload) < CHUNK_HEAD.size:
        raise FormatError("chunk: shorter than its fixed header")
    magic, hlen = CHUNK_HEAD.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise FormatError(f"chunk: bad magic {magic!r} (expected {CHUNK_MAGIC!r})")
    if hlen > MAX_CHUNK_HEADER or CHUNK_HEAD.size + hlen > len(payload):
        raise FormatError(f"chunk: header length {hlen} is impossible")
    obj = loads_object(payload[CHUNK_HEAD.size : CHUNK_HEAD.size + hlen], what)
    stream = check_stream(_field(obj, "stream", str, what), "chunk: 'stream'")
    if _field(obj, "seq", int, what) < 0:
        raise FormatError(f"chunk: seq {obj['seq']} is negative")
    seq = _seq(obj, what)
    boot = _match(_field(obj, "boot", str, what), BOOT_RE, "boot", what)
    mhash = _match(_field(obj, "hash", str, what), HASH_RE, "hash", what)
    size = _offset(obj, "size", what)
    offset = _offset(obj, "offset", what)
    data = memoryview(payload)[CHUNK_HEAD.size + hlen :]
    if not 0 < size <= MAX_SEGMENT_SIZE:
        raise FormatError(f"chunk: segment size {size} is impossible")
    if offset < 0 or offset + len(data) > size:
        raise FormatError(f"chunk: bytes {offset}+{len(data)} lie outside a segment of {size}")
    if not data:
        raise FormatError("chunk: carries no bytes")
    return ChunkHeader(stream, seq, boot, mhash, size, offset), data


# A bundle (protocol 3): several whole small segments of one stream in one message, on the
# stream's topic, each still a complete chunk (offset 0, all of its bytes) that the platform
# verifies, stores and acknowledges on its own:
#
#   "EAB1" | u16 count (2..MAX_BUNDLE) | count times: u32 length | a chunk (encode_chunk)

BUNDLE_MAGIC = b"EAB1"
BUNDLE_HEAD = struct.Struct(">4sH")
BUNDLE_MEMBER = struct.Struct(">I")
MAX_BUNDLE = 1024


def is_bundle(payload: bytes | memoryview) -> bool:
    return bytes(payload[:4]) == BUNDLE_MAGIC


def bundle_member_size(header: ChunkHeader) -> int:
    """Bytes one whole segment of ``header.size`` adds to a bundle."""
    return BUNDLE_MEMBER.size + CHUNK_HEAD.size + len(dumps(header.to_json())) + header.size


def encode_bundle(members: list[tuple[ChunkHeader, bytes]]) -> bytes:
    """Whole segments (offset 0, all bytes) as one bundle."""
    if not 2 <= len(members) <= MAX_BUNDLE:
        raise FormatError(f"a bundle holds 2 to {MAX_BUNDLE} segments, not {len(members)}")
    out = [BUNDLE_HEAD.pack(BUNDLE_MAGIC, len(members))]
    for header, data in members:
        if header.offset != 0 or len(data) != header.size:
            raise FormatError(f"{header.label}: a bundle carries whole segments only")
        chunk = encode_chunk(header, data)
        out.append(BUNDLE_MEMBER.pack(len(chunk)))
        out.append(chunk)
    return b"".join(out)


def decode_bundle(payload: bytes) -> list[tuple[ChunkHeader, memoryview]]:
    """The whole segments a bundle carries, each checked as a chunk; FormatError otherwise
    (the whole bundle: nothing of a malformed one is taken)."""
    if len(payload) < BUNDLE_HEAD.size:
        raise FormatError("bundle: shorter than its fixed header")
    magic, count = BUNDLE_HEAD.unpack_from(payload)
    if magic != BUNDLE_MAGIC:
        raise FormatError(f"bundle: bad magic {magic!r}")
    if not 2 <= count <= MAX_BUNDLE:
        raise FormatError(f"bundle: {count} segments (2 to {MAX_BUNDLE})")
    view = memoryview(payload)
    pos = BUNDLE_HEAD.size
    out: list[tuple[ChunkHeader, memoryview]] = []
    for i in range(count):
        if pos + BUNDLE_MEMBER.size > len(payload):
            raise FormatError(f"bundle: member {i} is cut short")
        (n,) = BUNDLE_MEMBER.unpack_from(payload, pos)
        pos += BUNDLE_MEMBER.size
        if pos + n > len(payload):
            raise FormatError(f"bundle: member {i} of {n} bytes is cut short")
        header, data = decode_chunk(view[pos : pos + n])
        if header.offset != 0 or len(data) != header.size:
            raise FormatError(f"bundle: member {i} ({header.label}) is not a whole segment")
        out.append((header, data))
        pos += n
    if pos != len(payload):
        raise FormatError(f"bundle: {len(payload) - pos} bytes after the last member")
    return out


def chunk_size_for(max_packet: int | None, max_chunk: int) -> int:
    """Largest chunk payload that fits the broker's maximum packet size (and ours)."""
    if max_packet is None or max_packet <= 0:
        return max_chunk
    fit = max_packet - PACKET_OVERHEAD
    if fit < 1024:
        raise FormatError(f"broker maximum packet size {max_packet} leaves no room for chunks")
    return min(max_chunk, fit)


# --------------------------------------------------------------------------- acks


@dataclass(frozen=True)
class SegmentAck:
    """The platform stored (or already had) the segment; the device may delete it."""

    stream: str
    seq: int
    hash: str
    result: str  # stored | duplicate


@dataclass(frozen=True)
class Progress:
    """The platform durably holds bytes [0, next) of the segment.

    ``got`` is set when the platform received bytes at ``got`` while lacking ``next``: a gap.
    """

    stream: str
    seq: int
    hash: str
    next: int
    got: int | None = None


@dataclass(frozen=True)
class KeyAck:
    key_id: str


@dataclass(frozen=True)
class Reject:
    """The platform refused a segment or key record; the device keeps it and raises an alarm."""

    what: str  # seg | key
    reason: str
    stream: str = ""
    seq: int = -1
    hash: str = ""
    key_id: str = ""


@dataclass(frozen=True)
class Retry:
    """The platform could not store this for now (a full or failing disk, a quota): the
    device keeps it and sends it again, from byte ``next`` of the segment, after ``after_s``.
    Nothing is refused and nothing may be deleted."""

    what: str  # seg | key
    reason: str
    after_s: int
    stream: str = ""
    seq: int = -1
    hash: str = ""
    next: int = 0
    key_id: str = ""


Ack = SegmentAck | Progress | KeyAck | Reject | Retry


def ack_to_json(ack: Ack) -> dict[str, Any]:
    """One acknowledgement as the JSON object of docs/protocol.md."""
    if isinstance(ack, SegmentAck):
        return {
            "type": "seg",
            "stream": ack.stream,
            "seq": ack.seq,
            "hash": ack.hash,
            "result": ack.result,
        }
    if isinstance(ack, Progress):
        obj: dict[str, Any] = {
            "type": "progress",
            "stream": ack.stream,
            "seq": ack.seq,
            "hash": ack.hash,
            "next": ack.next,
        }
        if ack.got is not None:
            obj["got"] = ack.got
        return obj
    if isinstance(ack, KeyAck):
        return {"type": "key", "key_id": ack.key_id}
    if isinstance(ack, Retry):
        obj = {"type": "retry", "what": ack.what, "reason": ack.reason[:MAX_REASON]}
        obj["after_s"] = ack.after_s
        if ack.what == "seg":
            obj.update(stream=ack.stream, seq=ack.seq, hash=ack.hash, next=ack.next)
        else:
            obj.update(key_id=ack.key_id)
        return obj
    obj = {"type": "reject", "what": ack.what, "reason": ack.reason[:MAX_REASON]}
    if ack.what == "seg":
        obj.update(stream=ack.stream, seq=ack.seq, hash=ack.hash)
    else:
        obj.update(key_id=ack.key_id)
    return obj


def encode_ack(ack: Ack) -> bytes:
    """One unsigned acknowledgement (protocol v1; see :func:`encode_acks` for v2)."""
    return dumps(ack_to_json(ack))


def ack_from_json(obj: dict[str, Any]) -> Ack:
    """One acknowledgement object, checked field by field; FormatError otherwise."""
    what = "ack"
    kind = _field(obj, "type", str, what)
    if kind == "key":
        return KeyAck(_match(_field(obj, "key_id", str, what), KEY_ID_RE, "key_id", what))
    if kind in ("reject", "retry"):
        target = _field(obj, "what", str, what)
        reason = _field(obj, "reason", str, what)[:MAX_REASON]
        after = 0
        if kind == "retry":
            after = _field(obj, "after_s", int, what)
            if not 0 <= after <= MAX_RETRY_AFTER_S:
                raise FormatError(f"ack: after_s {after} is out of range")
        if target == "key":
            kid = _match(_field(obj, "key_id", str, what), KEY_ID_RE, "key_id", what)
            if kind == "retry":
                return Retry("key", reason, after, key_id=kid)
            return Reject("key", reason, key_id=kid)
        if target != "seg":
            raise FormatError(f"ack: {kind} of unknown kind {target[:40]!r}")
    elif kind not in ("seg", "progress"):
        raise FormatError(f"ack: unknown type {kind[:40]!r}")
    stream = check_stream(_field(obj, "stream", str, what), "ack: 'stream'")
    if _field(obj, "seq", int, what) < 0:
        raise FormatError("ack: seq is negative")
    seq = _seq(obj, what)
    mhash = _match(_field(obj, "hash", str, what), HASH_RE, "hash", what)
    if kind == "seg":
        result = _field(obj, "result", str, what)
        if result not in ("stored", "duplicate"):
            raise FormatError(f"ack: result {result[:40]!r} is not stored|duplicate")
        return SegmentAck(stream, seq, mhash, result)
    if kind == "reject":
        return Reject("seg", _field(obj, "reason", str, what)[:MAX_REASON], stream, seq, mhash)
    if kind == "retry":
        nxt = _offset(obj, "next", what)
        return Retry("seg", obj["reason"][:MAX_REASON], after, stream, seq, mhash, nxt)
    nxt = _offset(obj, "next", what)
    got = _offset(obj, "got", what) if obj.get("got") is not None else None
    return Progress(stream, seq, mhash, nxt, got)


def parse_ack(payload: bytes) -> Ack:
    """One unsigned acknowledgement (protocol v1)."""
    return ack_from_json(loads_object(payload, "ack", MAX_ACK_BYTES))


# A batch of acknowledgements (protocol v2), signed by the platform's ack key:
#   {"v": 2, "device": "<id>", "acks": [<ack>, ...], "sig": "<hex Ed25519>"}
# "sig" covers ACK_CONTEXT + canonical JSON of the other three fields; it binds every
# acknowledgement to this device, stream, seq and manifest hash. "sig" is absent only where
# the platform runs without an ack key (a lab); a device holding the ack key ignores such
# messages.


def _ack_body(device: str, acks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"v": 2, "device": device, "acks": acks}


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_acks(device: str, acks: list[Ack], key: Ed25519PrivateKey | None) -> list[bytes]:
    """The acknowledgements for one device as signed messages (one per MAX_ACKS)."""
    out = []
    for i in range(0, len(acks), MAX_ACKS):
        body = _ack_body(device, [ack_to_json(a) for a in acks[i : i + MAX_ACKS]])
        if key is not None:
            body["sig"] = key.sign(ACK_CONTEXT + _canonical(body)).hex()
        out.append(_canonical(body))
    return out


@dataclass(frozen=True)
class AckBatch:
    acks: list[Ack]
    signed: bool  # True only when the signature was checked against the platform's ack key


def parse_acks(payload: bytes, device: str, key: Ed25519PublicKey | None) -> AckBatch:
    """A ``down/ack`` message for ``device``.

    With the platform's ack ``key``: only a v2 batch signed by it, naming this device, is
    accepted (VerificationError otherwise: unsigned, forged, or for another device). Without
    a key (a lab): v2 batches and v1 single acknowledgements are taken on trust.
    """
    obj = loads_object(payload, "ack", MAX_ACK_BYTES)
    if obj.get("v") != 2:
        if "type" in obj and key is None:
            return AckBatch([ack_from_json(obj)], signed=False)
        if "type" in obj:
            raise VerificationError("an unsigned acknowledgement (protocol v1)")
        raise FormatError(f"ack: version {str(obj.get('v'))[:20]} is not supported")
    unknown = set(obj) - {"v", "device", "acks", "sig"}
    if unknown:
        raise FormatError(f"ack: unknown fields {', '.join(sorted(unknown))[:100]}")
    named = _field(obj, "device", str, "ack")
    raw = _field(obj, "acks", list, "ack")
    if len(raw) > MAX_ACKS or not all(isinstance(a, dict) for a in raw):
        raise FormatError(f"ack: 'acks' must be a list of at most {MAX_ACKS} objects")
    if key is not None:
        sig = obj.get("sig")
        if not isinstance(sig, str):
            raise VerificationError("an unsigned acknowledgement")
        try:
            key.verify(bytes.fromhex(sig), ACK_CONTEXT + _canonical(_ack_body(named, raw)))
        except (InvalidSignature, ValueError):
            raise VerificationError(
                "bad signature (not signed by the platform's ack key)"
            ) from None
    if named != device:
        raise VerificationError(f"acknowledgements for {named[:70]!r}, not for {device!r}")
    return AckBatch([ack_from_json(a) for a in raw], signed=key is not None)


# --------------------------------------------------------------------------- state / live


def birth(boot_id: str, versions: dict[str, str], backlog: dict[str, Any]) -> bytes:
    return dumps({"state": "online", "boot": boot_id, "versions": versions, "backlog": backlog})


def last_will(boot_id: str) -> bytes:
    return dumps({"state": "offline", "boot": boot_id})


# --------------------------------------------------------------------------- live fixes
# Protocol 3: a live fix travels binary, as the 28-byte wire fix of agent.gps.wire, followed,
# when the device reports vehicle fields (a fleet part), by a trailer:
#
#   u8  inputs: 0x01 ignition known, 0x02 ignition on, 0x04 brush, 0x08 pump, 0x10 lift
#       (0xe0 zero)
#   u8  n (0..MAX_LIVE_AREAS): the areas and routes the vehicle is in, then n times
#       u8 length (1..64) and the id in ASCII (agent.ids' device-id characters)
#
# A JSON object (protocol 2: the TPV, plus "inputs" and "in") is still accepted on the same
# topic; a reader tells them apart by the first byte: "{" is JSON (protocol 2 devices send
# compact JSON), anything else a wire fix (its version in the top three bits: 0x20..0x3f).

LIVE_INPUTS = ((0x04, "brush"), (0x08, "pump"), (0x10, "lift"))
_IGNITION_KNOWN, _IGNITION_ON, _INPUTS_RESERVED = 0x01, 0x02, 0xE0
MAX_LIVE_AREAS = 32
MAX_LIVE_ID = 64
_LIVE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _live_trailer(extra: dict[str, Any]) -> bytes | None:
    if set(extra) - {"inputs", "in"}:
        return None
    inputs = extra.get("inputs", {})
    inside = extra.get("in", [])
    if not isinstance(inputs, dict) or not isinstance(inside, list):
        return None
    if set(inputs) - {"ignition", "brush", "pump", "lift"} or len(inside) > MAX_LIVE_AREAS:
        return None
    if not all(type(v) is bool for v in inputs.values()):
        return None
    bits = 0
    if "ignition" in inputs:
        bits |= _IGNITION_KNOWN | (_IGNITION_ON if inputs["ignition"] else 0)
    for bit, name in LIVE_INPUTS:
        if inputs.get(name, False):
            bits |= bit
    out = bytearray([bits, len(inside)])
    for area in inside:
        if not isinstance(area, str) or not _LIVE_ID.fullmatch(area):
            return None
        out.append(len(area))
        out += area.encode()
    return bytes(out)


def encode_live_fix(fix: Fix, extra: dict[str, Any] | None = None) -> bytes | None:
    """The binary live fix (protocol 3); None when it cannot carry this one (a time outside
    1970..2106, or ``extra`` holding more than the vehicle's inputs and areas): send JSON."""
    try:
        head = wire.encode_fix(fix)
    except FormatError:
        return None
    if not extra:
        return head
    trailer = _live_trailer(extra)
    return None if trailer is None else head + trailer


def live_fix_json(fix: Fix, extra: dict[str, Any] | None = None) -> bytes:
    """The JSON live fix (protocol 2): gpsd's TPV and the vehicle's fields."""
    return dumps({**fix.to_tpv(), **(extra or {})})


def decode_live_fix(payload: bytes) -> dict[str, Any]:
    """A live fix of either form as the JSON object protocol 2 carried (TPV, "inputs", "in");
    FormatError when malformed."""
    if not payload:
        raise FormatError("live fix: empty")
    if payload[:1] == b"{":
        return loads_object(payload, "live fix", max_bytes=64 * 1024)
    if len(payload) < wire.SIZE:
        raise FormatError(f"live fix: {len(payload)} bytes, neither JSON nor a wire fix")
    obj: dict[str, Any] = wire.decode_fix(bytes(payload[: wire.SIZE])).to_tpv()
    rest = memoryview(payload)[wire.SIZE :]
    if not rest:
        return obj
    if len(rest) < 2:
        raise FormatError("live fix: a truncated trailer")
    bits, n = rest[0], rest[1]
    if bits & _INPUTS_RESERVED or (bits & _IGNITION_ON and not bits & _IGNITION_KNOWN):
        raise FormatError("live fix: reserved input bits set")
    if n > MAX_LIVE_AREAS:
        raise FormatError(f"live fix: {n} areas (at most {MAX_LIVE_AREAS})")
    inputs: dict[str, bool] = {name: bool(bits & bit) for bit, name in LIVE_INPUTS}
    if bits & _IGNITION_KNOWN:
        inputs["ignition"] = bool(bits & _IGNITION_ON)
    pos = 2
    inside: list[str] = []
    for _ in range(n):
        if pos >= len(rest) or pos + 1 + rest[pos] > len(rest):
            raise FormatError("live fix: a truncated area id")
        size = rest[pos]
        raw = bytes(rest[pos + 1 : pos + 1 + size])
        if not raw.isascii() or not _LIVE_ID.fullmatch(raw.decode("ascii")):
            raise FormatError("live fix: a malformed area id")
        inside.append(raw.decode("ascii"))
        pos += 1 + size
    if pos != len(rest):
        raise FormatError(f"live fix: {len(rest) - pos} bytes after the trailer")
    obj["inputs"] = inputs
    obj["in"] = inside
    return obj
