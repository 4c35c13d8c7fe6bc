"""The talk protocol: topics, chunks, signatures, reassembly and receipts. Pure: no I/O.

A *message* is one press of the talk button (or one file from the control room): an Ogg Opus
file, cut into chunks that travel as MQTT messages (QoS 1)::

    "EAT1" | u16 header length | header JSON | bytes

    every chunk:     {"v": 1, "id": "<16-64 [A-Za-z0-9_-]>", "i": <index from 0>, "last": false}
    the last chunk:  {"v": 1, "id", "i", "last": true, "msg": {...}, "sig": "<hex>"}

The bytes of chunks 0..n-1, in index order, are the whole Ogg file. The last chunk carries the
message's description ``msg`` and an Ed25519 signature over ``CONTEXT + canonical JSON(msg)``::

    msg = {"v": 1, "id", "from", "to", "n", "size", "sha256", "content_type": "audio/ogg",
           "duration_s", "issued", "expires"}

so a receiver checks the whole message (count, size, SHA-256 of the bytes, addressee, validity
window, signer) before anything is played or saved: a message cut off by a dropped link can
never pass as a complete one. Control room -> device messages are signed with the platform's
command key (the one that signs commands); device -> control room messages with the device's
sealing key.

Topics (device ids as agent.ids defines them; group names 1-64 of ``A-Z a-z 0-9 . _ -``)::

    devices/{d}/talk/out       device -> platform  chunks of the officer's messages
    devices/{d}/talk/receipt   device -> platform  JSON receipts for incoming messages
    devices/{d}/talk/in        platform -> device  chunks of a message to this device
    devices/{d}/talk/ctl       platform -> device  JSON {"type": "resend", "id", "chunks": [...]}
    groups/{g}/talk/in         platform -> devices chunks of a message to a group

Receipts: ``{"v": 1, "id", "device", "status", "at", ...}`` with ``status`` one of
``delivered`` (complete and verified, sealed), ``played``, ``incomplete`` (``have``: the chunk
indices held; ``final`` false asks the sender for the rest, ``final`` true means the device gave
up and will never play it), ``rejected`` (``reason``), ``not_played`` (``reason``: no speaker,
queue full).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import boundedjson, ids
from agent.errors import FormatError, VerificationError

MAGIC = b"EAT1"
HEAD = struct.Struct(">4sH")
MAX_HEADER = 4096
CONTEXT = b"edge-agent talk v1\x00"
CONTENT_TYPE = "audio/ogg"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
MAX_CHUNKS = 4096
STATUSES = ("delivered", "played", "incomplete", "rejected", "not_played")
PLATFORM = "platform"
MAX_JSON = 64 * 1024
MAX_TIME = 10**11  # unix seconds: a bound on input (1e300 is not a time)


def new_id() -> str:
    return uuid.uuid4().hex


def _device(value: str) -> str:
    """A device id as agent.ids defines it (it becomes a topic level and a directory)."""
    return ids.check_device_id(value)


def _name(kind: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise FormatError(f"{kind} {value!r}: must be 1-64 of A-Z a-z 0-9 . _ -")
    return value


def out_topic(device: str) -> str:
    return f"devices/{_device(device)}/talk/out"


def receipt_topic(device: str) -> str:
    return f"devices/{_device(device)}/talk/receipt"


def in_topic(device: str) -> str:
    return f"devices/{_device(device)}/talk/in"


def ctl_topic(device: str) -> str:
    return f"devices/{_device(device)}/talk/ctl"


def group_topic(group: str) -> str:
    return f"groups/{_name('group', group)}/talk/in"


OUT_FILTER = "devices/+/talk/out"
RECEIPT_FILTER = "devices/+/talk/receipt"


def device_of(topic: str) -> str:
    """The device id of a ``devices/{d}/talk/...`` topic."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "devices" or parts[2] != "talk":
        raise FormatError(f"topic {topic!r}: not devices/<id>/talk/<kind>")
    return _device(parts[1])


def device_address(device: str) -> str:
    return f"device:{_device(device)}"


def group_address(group: str) -> str:
    return f"group:{_name('group', group)}"


# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class Chunk:
    id: str
    index: int
    last: bool
    data: bytes
    msg: dict[str, Any] | None = None  # the last chunk only
    sig: str = ""

    def encode(self) -> bytes:
        head: dict[str, Any] = {"v": 1, "id": self.id, "i": self.index, "last": self.last}
        if self.last:
            head["msg"] = self.msg
            head["sig"] = self.sig
        hb = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
        return HEAD.pack(MAGIC, len(hb)) + hb + self.data


def parse_chunk(payload: bytes) -> Chunk:
    if len(payload) < HEAD.size:
        raise FormatError("talk chunk: too short")
    magic, n = HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise FormatError("talk chunk: bad magic")
    if n > MAX_HEADER or HEAD.size + n > len(payload):
        raise FormatError("talk chunk: bad header length")
    try:
        head = boundedjson.loads(payload[HEAD.size : HEAD.size + n], "talk chunk header")
    except FormatError as exc:
        raise FormatError(f"talk chunk: header is not acceptable JSON ({exc})") from None
    if not isinstance(head, dict) or head.get("v") != 1:
        raise FormatError("talk chunk: unsupported header")
    cid, index, last = head.get("id"), head.get("i"), head.get("last")
    if not isinstance(cid, str) or not ID_RE.match(cid):
        raise FormatError("talk chunk: bad id")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_CHUNKS:
        raise FormatError("talk chunk: bad index")
    if not isinstance(last, bool):
        raise FormatError("talk chunk: bad last flag")
    msg: dict[str, Any] | None = None
    sig = ""
    if last:
        msg, raw_sig = head.get("msg"), head.get("sig")
        if not isinstance(msg, dict) or not isinstance(raw_sig, str):
            raise FormatError("talk chunk: the last chunk lacks msg/sig")
        sig = raw_sig
    return Chunk(cid, index, last, payload[HEAD.size + n :], msg, sig)


def _signed(msg: dict[str, Any]) -> bytes:
    return CONTEXT + json.dumps(msg, sort_keys=True, separators=(",", ":")).encode()


def describe(
    message_id: str,
    body: bytes,
    n: int,
    *,
    sender: str,
    to: str,
    duration_s: float,
    ttl_s: float = 3600,
    now: float | None = None,
) -> dict[str, Any]:
    issued = time.time() if now is None else now
    return {
        "v": 1,
        "id": message_id,
        "from": sender,
        "to": to,
        "n": n,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "content_type": CONTENT_TYPE,
        "duration_s": round(duration_s, 3),
        "issued": round(issued, 3),
        "expires": round(issued + ttl_s, 3),
    }


def split(body: bytes, chunk_bytes: int) -> list[bytes]:
    """A whole message's bytes as chunk payloads (at least one)."""
    size = max(1, chunk_bytes)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    if len(parts) > MAX_CHUNKS:
        raise FormatError(f"talk: {len(parts)} chunks exceed {MAX_CHUNKS}; use larger chunks")
    return parts


def last_chunk(
    key: Ed25519PrivateKey, message_id: str, index: int, data: bytes, msg: dict[str, Any]
) -> Chunk:
    return Chunk(message_id, index, True, data, msg, key.sign(_signed(msg)).hex())


def build_message(
    key: Ed25519PrivateKey,
    body: bytes,
    *,
    sender: str,
    to: str,
    duration_s: float,
    chunk_bytes: int = 4096,
    ttl_s: float = 3600,
    message_id: str | None = None,
) -> list[Chunk]:
    """A whole, known message (a file) as signed chunks."""
    mid = message_id or new_id()
    parts = split(body, chunk_bytes)
    msg = describe(mid, body, len(parts), sender=sender, to=to, duration_s=duration_s, ttl_s=ttl_s)
    chunks = [Chunk(mid, i, False, p) for i, p in enumerate(parts[:-1])]
    chunks.append(last_chunk(key, mid, len(parts) - 1, parts[-1], msg))
    return chunks


# --------------------------------------------------------------------------- reassembly


@dataclass(frozen=True)
class Complete:
    id: str
    body: bytes
    msg: dict[str, Any]
    sig: str
    topic: str
    first_at: float
    done_at: float


@dataclass
class Partial:
    id: str
    topic: str
    first_at: float
    progress_at: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    n: int | None = None
    msg: dict[str, Any] | None = None
    sig: str = ""
    size: int = 0
    asked_at: float = 0.0
    asks: int = 0

    def have(self) -> list[int]:
        return sorted(self.chunks)

    def missing(self) -> list[int]:
        top = self.n if self.n is not None else (max(self.chunks) + 1 if self.chunks else 0)
        return [i for i in range(top) if i not in self.chunks]


class Reassembler:
    """Chunks in (any order, duplicates welcome), whole messages out. Not thread-safe: one
    owner thread. Memory is bounded by ``max_bytes`` per message and ``max_messages``."""

    def __init__(self, max_bytes: int, max_messages: int = 16, remember: int = 256) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.partials: dict[str, Partial] = {}
        self._finished: dict[str, str] = {}  # id -> final status (duplicates after the end)
        self._remember = remember

    def finished(self, message_id: str) -> str | None:
        return self._finished.get(message_id)

    def finish(self, message_id: str, status: str) -> None:
        self.partials.pop(message_id, None)
        self._finished[message_id] = status
        while len(self._finished) > self._remember:
            self._finished.pop(next(iter(self._finished)))

    def add(self, chunk: Chunk, topic: str, now: float) -> Complete | None:
        """Take a chunk; a whole message once its last chunk and every index are here.

        Raises FormatError for a chunk that cannot belong to a message (too large, conflicting
        count): the caller reports and drops the message.
        """
        p = self.partials.get(chunk.id)
        if p is None:
            if len(self.partials) >= self.max_messages:
                oldest = min(self.partials.values(), key=lambda x: x.progress_at)
                self.partials.pop(oldest.id)
            p = self.partials[chunk.id] = Partial(chunk.id, topic, now, now)
        if chunk.last:
            n = chunk.index + 1
            if p.n is not None and p.n != n:
                raise FormatError(f"talk {chunk.id}: two different last chunks")
            if any(i >= n for i in p.chunks):
                raise FormatError(f"talk {chunk.id}: chunk beyond the last one")
            p.n, p.msg, p.sig = n, chunk.msg, chunk.sig
        elif p.n is not None and chunk.index >= p.n:
            raise FormatError(f"talk {chunk.id}: chunk {chunk.index} beyond the last one")
        if chunk.index not in p.chunks:
            p.size += len(chunk.data)
            if p.size > self.max_bytes:
                raise FormatError(f"talk {chunk.id}: larger than {self.max_bytes} bytes")
            p.chunks[chunk.index] = chunk.data
            p.progress_at = now
        if p.n is None or len(p.chunks) < p.n or p.msg is None:
            return None
        self.partials.pop(chunk.id)
        body = b"".join(p.chunks[i] for i in range(p.n))
        return Complete(p.id, body, p.msg, p.sig, p.topic, p.first_at, now)

    def stale(self, now: float, gap_s: float) -> Iterator[Partial]:
        """Partial messages without progress for ``gap_s``."""
        for p in list(self.partials.values()):
            if now - p.progress_at >= gap_s:
                yield p


def verify(done: Complete, key: Ed25519PublicKey, *, now: float, skew_s: float = 300) -> None:
    """Check a reassembled message against its signed description; VerificationError if not."""
    msg = done.msg
    try:
        key.verify(bytes.fromhex(done.sig), _signed(msg))
    except (InvalidSignature, ValueError):
        raise VerificationError("bad signature") from None
    if msg.get("v") != 1 or msg.get("id") != done.id:
        raise VerificationError("the signed description names another message")
    if msg.get("size") != len(done.body):
        raise VerificationError(f"size {len(done.body)} is not the signed {msg.get('size')}")
    if msg.get("sha256") != hashlib.sha256(done.body).hexdigest():
        raise VerificationError("the bytes do not match the signed SHA-256")
    issued, expires = msg.get("issued"), msg.get("expires")
    if not valid_time(issued) or not valid_time(expires):
        raise VerificationError("no validity window")
    if expires + skew_s < now:
        raise VerificationError(f"expired {now - expires:.0f} s ago")
    if issued - skew_s > now:
        raise VerificationError(f"issued {issued - now:.0f} s in the future (check clocks)")


# --------------------------------------------------------------------------- receipts & control


def receipt(device: str, message_id: str, status: str, **extra: Any) -> bytes:
    if status not in STATUSES:
        raise FormatError(f"receipt status {status!r}")
    body = {"v": 1, "id": message_id, "device": device, "status": status}
    body["at"] = round(time.time(), 3)
    body.update(extra)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_json(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON object from the wire, within bounds (agent.boundedjson); FormatError if not."""
    obj: dict[str, Any] = boundedjson.loads(payload, what, max_bytes=MAX_JSON)
    return obj


def valid_time(value: object) -> TypeGuard[int | float]:
    """A unix time one may compute with: a finite number in [0, MAX_TIME)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < MAX_TIME


def resend_request(message_id: str, chunks: list[int]) -> bytes:
    body = {"v": 1, "type": "resend", "id": message_id, "chunks": chunks}
    return json.dumps(body, separators=(",", ":")).encode()


def parse_resend(payload: bytes) -> tuple[str, list[int]]:
    obj = parse_json(payload, "talk control")
    mid, chunks = obj.get("id"), obj.get("chunks")
    if obj.get("type") != "resend" or not isinstance(mid, str) or not ID_RE.match(mid):
        raise FormatError("talk control: not a resend request")
    if not isinstance(chunks, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_CHUNKS for i in chunks
    ):
        raise FormatError("talk control: chunks must be a list of indices")
    return mid, chunks
