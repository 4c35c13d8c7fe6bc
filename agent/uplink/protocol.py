"""The uplink's wire protocol: topics, payloads and chunking. Pure: no I/O, no MQTT client.

Every topic lives under ``devices/{device_id}/`` so that one broker ACL line,
``pattern readwrite devices/%u/#``, isolates each device. ``docs/protocol.md`` describes it for
platform teams; this module is the one implementation both ends share.

Device to platform::

    devices/{d}/state               retained birth (online) / last will (offline), JSON
    devices/{d}/live/{fix|alarm|status}   live lane, JSON
    devices/{d}/up/key              a signed key record (raw bytes, as stored)
    devices/{d}/up/seg/{stream}     one chunk of a sealed segment (binary, see Chunk)
    devices/{d}/up/cmd              answer to a command, JSON

Platform to device::

    devices/{d}/down/ack            acknowledgements and progress, JSON (see parse_ack)
    devices/{d}/down/cmd            signed commands, JSON (agent.uplink.control)
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from agent.errors import FormatError

ROOT = "devices"
DEVICE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
STREAM_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
BOOT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CHUNK_MAGIC = b"EAC1"
CHUNK_HEAD = struct.Struct(">4sH")
MAX_CHUNK_HEADER = 1024
# Bytes reserved in each PUBLISH packet for the fixed header, topic, packet id, properties
# and the chunk header, when sizing chunks to the broker's maximum packet size.
PACKET_OVERHEAD = 2048
MAX_SEGMENT_SIZE = 1 << 40
LIVE_KINDS = ("fix", "alarm", "status")


def check_device_id(device_id: str) -> str:
    if not DEVICE_RE.match(device_id):
        raise FormatError(f"device id {device_id!r}: must be 1-64 of A-Z a-z 0-9 . _ -")
    return device_id


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
        if not STREAM_RE.match(stream):
            raise FormatError(f"stream {stream!r}: must match {STREAM_RE.pattern}")
        return f"{self.base}/up/seg/{stream}"

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


# Filters the platform subscribes to (every device).
UP_FILTER = f"{ROOT}/+/up/#"
STATE_FILTER = f"{ROOT}/+/state"
LIVE_FILTER = f"{ROOT}/+/live/#"


@dataclass(frozen=True)
class ParsedTopic:
    device_id: str
    kind: str  # state | live | key | seg | cmd-result | ack | cmd
    arg: str = ""  # live kind or stream


def parse_topic(topic: str) -> ParsedTopic:
    """Split a topic of this protocol; anything else raises FormatError."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT or not DEVICE_RE.match(parts[1]):
        raise FormatError(f"topic {topic!r}: not under {ROOT}/<device id>/")
    device, rest = parts[1], parts[2:]
    if rest == ["state"]:
        return ParsedTopic(device, "state")
    if len(rest) == 2 and rest[0] == "live" and rest[1] in LIVE_KINDS:
        return ParsedTopic(device, "live", rest[1])
    if rest == ["up", "key"]:
        return ParsedTopic(device, "key")
    if len(rest) == 3 and rest[:2] == ["up", "seg"] and STREAM_RE.match(rest[2]):
        return ParsedTopic(device, "seg", rest[2])
    if rest == ["up", "cmd"]:
        return ParsedTopic(device, "cmd-result")
    if rest == ["down", "ack"]:
        return ParsedTopic(device, "ack")
    if rest == ["down", "cmd"]:
        return ParsedTopic(device, "cmd")
    raise FormatError(f"topic {topic!r}: unknown kind {'/'.join(rest)!r}")


# --------------------------------------------------------------------------- JSON helpers


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def loads_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what}: must be a JSON object")
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
    if not pattern.match(value):
        raise FormatError(f"{what}: {name!r} is malformed: {value[:80]!r}")
    return value


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
    head = dumps(header.to_json())
    return CHUNK_HEAD.pack(CHUNK_MAGIC, len(head)) + head + data


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, memoryview]:
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
    stream = _match(_field(obj, "stream", str, what), STREAM_RE, "stream", what)
    seq = _field(obj, "seq", int, what)
    boot = _match(_field(obj, "boot", str, what), BOOT_RE, "boot", what)
    mhash = _match(_field(obj, "hash", str, what), HASH_RE, "hash", what)
    size = _field(obj, "size", int, what)
    offset = _field(obj, "offset", int, what)
    data = memoryview(payload)[CHUNK_HEAD.size + hlen :]
    if seq < 0:
        raise FormatError(f"chunk: seq {seq} is negative")
    if not 0 < size <= MAX_SEGMENT_SIZE:
        raise FormatError(f"chunk: segment size {size} is impossible")
    if offset < 0 or offset + len(data) > size:
        raise FormatError(f"chunk: bytes {offset}+{len(data)} lie outside a segment of {size}")
    if not data:
        raise FormatError("chunk: carries no bytes")
    return ChunkHeader(stream, seq, boot, mhash, size, offset), data


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


Ack = SegmentAck | Progress | KeyAck | Reject


def encode_ack(ack: Ack) -> bytes:
    if isinstance(ack, SegmentAck):
        return dumps(
            {
                "type": "seg",
                "stream": ack.stream,
                "seq": ack.seq,
                "hash": ack.hash,
                "result": ack.result,
            }
        )
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
        return dumps(obj)
    if isinstance(ack, KeyAck):
        return dumps({"type": "key", "key_id": ack.key_id})
    obj = {"type": "reject", "what": ack.what, "reason": ack.reason}
    if ack.what == "seg":
        obj.update(stream=ack.stream, seq=ack.seq, hash=ack.hash)
    else:
        obj.update(key_id=ack.key_id)
    return dumps(obj)


def parse_ack(payload: bytes) -> Ack:
    what = "ack"
    obj = loads_object(payload, what)
    kind = _field(obj, "type", str, what)
    if kind == "key":
        return KeyAck(_match(_field(obj, "key_id", str, what), KEY_ID_RE, "key_id", what))
    if kind == "reject":
        target = _field(obj, "what", str, what)
        reason = _field(obj, "reason", str, what)[:500]
        if target == "key":
            kid = _match(_field(obj, "key_id", str, what), KEY_ID_RE, "key_id", what)
            return Reject("key", reason, key_id=kid)
        if target != "seg":
            raise FormatError(f"ack: reject of unknown kind {target!r}")
    if kind not in ("seg", "progress", "reject"):
        raise FormatError(f"ack: unknown type {kind!r}")
    stream = _match(_field(obj, "stream", str, what), STREAM_RE, "stream", what)
    seq = _field(obj, "seq", int, what)
    mhash = _match(_field(obj, "hash", str, what), HASH_RE, "hash", what)
    if seq < 0:
        raise FormatError("ack: seq is negative")
    if kind == "seg":
        result = _field(obj, "result", str, what)
        if result not in ("stored", "duplicate"):
            raise FormatError(f"ack: result {result!r} is not stored|duplicate")
        return SegmentAck(stream, seq, mhash, result)
    if kind == "reject":
        return Reject("seg", _field(obj, "reason", str, what)[:500], stream, seq, mhash)
    nxt = _field(obj, "next", int, what)
    got = obj.get("got")
    if nxt < 0 or (got is not None and (isinstance(got, bool) or not isinstance(got, int))):
        raise FormatError("ack: progress fields are malformed")
    return Progress(stream, seq, mhash, nxt, got)


# --------------------------------------------------------------------------- state / live


def birth(boot_id: str, versions: dict[str, str], backlog: dict[str, Any]) -> bytes:
    return dumps({"state": "online", "boot": boot_id, "versions": versions, "backlog": backlog})


def last_will(boot_id: str) -> bytes:
    return dumps({"state": "offline", "boot": boot_id})
