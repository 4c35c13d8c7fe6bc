"""Protocol 4: compact forms of a small sealed segment and of the platform's acknowledgement.
Pure: no I/O. docs/protocol.md ("Compact segments", "Compact acknowledgements") is the
normative text; this module is one implementation both ends share.

**A compact segment** carries the exact bytes of a sealed segment (version 2) without what the
platform can rebuild: the prefix and the trailer's length are implied, and the manifest is
coded field by field against a **base**, the manifest of an earlier segment of the stream that
the platform acknowledged (signed) to the device, so it holds it::

    "EAM1" | u8 flags (0x01: based; others zero) | varint seq
    [based: varint base seq | 4 bytes: the base's manifest hash, first 4 bytes]
    varint m | m bytes: the manifest coding | 64 bytes: the signature | the body (all frames)

The segment file is ``"EASEG\\0" u16 2 | body | manifest | signature | u32 len(manifest)``,
where ``manifest`` is the canonical JSON of the object the coding gives. The device encodes,
decodes its own message and sends it only if that gives its file byte for byte (else the
segment goes as a chunk), so the platform stores exactly what the device sealed and checks it
as any other (signature over the rebuilt manifest, body hash, chain).

Manifest coding: one entry per field, ``u8 op << 5 | key index`` (KEYS; index 31: the key
follows as varint length and ASCII), then the op's operand:

    0 SAME      the base's value of that key
    1 JSON      varint n, n bytes of JSON (a value of any type)
    2 HEX       varint n, n bytes: the value is their lower-case hex
    3 INT       zigzag varint: the value minus the base's (when an integer, else minus 0)
    4 TIME      zigzag varint: the timestamp in ms minus the base's (likewise)
    5 BODYHASH  the lower-case hex SHA-256 of the body this message carries
    6 BASEHASH  the lower-case hex SHA-256 of the base manifest's bytes
    7 STR       varint n, n bytes: the value is that ASCII string

**A compact acknowledgement** (``down/ack``; the answer to a device that sent compact
segments) names segments by stream and seq only; the manifest hash is in what is signed, not
in what is sent (the device knows the hash of each segment it sent)::

    0xA4 | varint count (1..MAX_ACKS) | count times: u8 kind | u8 n | stream (n) | varint seq
    (kind 3: u8 3 | the 8 bytes of a key id) | 64 bytes: Ed25519 by the platform's ack key over
      ACK4_CONTEXT | u8 len(device) | device | the message before the signature, with each
      entry of kind 0 or 1 followed by the segment's 32-byte manifest hash

kinds: 0 stored, 1 duplicate (a ``seg`` acknowledgement: the device may delete it), 2 plain
(the platform could not rebuild that compact segment, e.g. it lacks the base: send it again
as a chunk; no hash, deletes nothing), 3 key (the platform holds that key record).

**A compact key record** (``up/key``): ``"EAK1" | varint m | m bytes: its manifest coded as
above without a base | 64 bytes: its signature``; the record is ``"EAKEY\\0" 00 01 | manifest
| signature | u32 len(manifest)``.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import boundedjson, ids
from agent.errors import FormatError, VerificationError
from agent.storage.seal import MAX_MANIFEST

MAGIC = b"EAM1"
SEG_PREFIX = b"EASEG\x00" + struct.pack(">H", 2)
KEY_MAGIC = b"EAK1"
KEY_PREFIX = b"EAKEY\x00" + struct.pack(">H", 1)
SIG = 64
FLAG_BASED = 0x01
BASE_CHECK = 4  # bytes of the base's manifest hash the message carries
# The version 2 segment manifest's fields (docs/format.md), in canonical order.
KEYS = (
    "batch", "body_len", "body_sha256", "boot", "chunk_size", "chunks", "cipher", "clock",
    "content_type", "device", "device_pub", "end_mono_ns", "end_utc", "evicted", "key_id",
    "kind", "plain_len", "plain_sha256", "prev", "salt", "sealed_meta", "sealed_utc", "seq",
    "signer", "start_mono_ns", "start_utc", "stream", "v",
)  # fmt: skip
KEY_NAMED = 31
MAX_KEY = 64
MAX_FIELDS = 64
SAME, JSON, HEX, INT, TIME, BODYHASH, BASEHASH, STR = range(8)
MAX_INT = 1 << 63
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z")
_HEX_RE = re.compile(r"(?:[0-9a-f]{2})+")
_STR_RE = re.compile(r"[ -~]*")
MAX_MS = 253402300800000  # 10000-01-01T00:00:00.000Z

ACK_MAGIC = 0xA4
ACK4_CONTEXT = b"edge-agent ack v4\x00"
MAX_ACKS = 512
STORED, DUPLICATE, PLAIN, KEY = 0, 1, 2, 3


# --------------------------------------------------------------------------- varints


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _uvarint(n * 2 if n >= 0 else -n * 2 - 1)


class _Reader:
    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"{self.what}: cut short")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def uvarint(self) -> int:
        n = shift = 0
        for _ in range(10):
            b = self.u8()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n >= 1 << 64:
                    break
                return n
            shift += 7
        raise FormatError(f"{self.what}: a varint beyond 64 bits")

    def zigzag(self) -> int:
        n = self.uvarint()
        return n >> 1 if not n & 1 else -((n + 1) >> 1)

    def rest(self) -> memoryview:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


# --------------------------------------------------------------------------- timestamps


def _ms(value: str) -> int | None:
    m = _TIME_RE.fullmatch(value)
    if m is None:
        return None
    y, mo, d, h, mi, s, ms = (int(x) for x in m.groups())
    try:
        t = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    out = t * 1000 + ms
    return out if _stamp(out) == value else None


def _stamp(ms: int) -> str:
    if not 0 <= ms < MAX_MS:
        raise FormatError(f"compact segment: a timestamp of {ms} ms is out of range")
    t = time.gmtime(ms // 1000)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
        f"{t.tm_sec:02d}.{ms % 1000:03d}Z"
    )


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# --------------------------------------------------------------------------- manifests


def _entry(key: str, op: int) -> bytes:
    if key in KEYS:
        return bytes([op << 5 | KEYS.index(key)])
    raw = key.encode("ascii")
    return bytes([op << 5 | KEY_NAMED]) + _uvarint(len(raw)) + raw


def encode_manifest(
    obj: dict[str, Any], base: dict[str, Any] | None, body_hash: str, base_hash: str | None
) -> bytes:
    """The coding of manifest ``obj`` against ``base`` (None: no base); raises FormatError
    for what it cannot code (the caller then sends the segment as a chunk)."""
    out = bytearray()
    for key in sorted(obj):
        value = obj[key]
        if not key.isascii() or len(key) > MAX_KEY or not key:
            raise FormatError(f"compact: key {key[:40]!r} cannot be coded")
        old = base.get(key, ...) if base is not None else ...
        if old is not ... and canonical({"v": old}) == canonical({"v": value}):
            out += _entry(key, SAME)
        elif body_hash and value == body_hash:
            out += _entry(key, BODYHASH)
        elif base_hash is not None and value == base_hash:
            out += _entry(key, BASEHASH)
        elif _is_int(value) and -MAX_INT <= value < MAX_INT:
            ref = old if _is_int(old) else 0
            out += _entry(key, INT) + _zigzag(value - ref)
        elif isinstance(value, str) and _HEX_RE.fullmatch(value):
            raw = bytes.fromhex(value)
            out += _entry(key, HEX) + _uvarint(len(raw)) + raw
        elif isinstance(value, str) and (ms := _ms(value)) is not None:
            ref = _ms(old) if isinstance(old, str) else None
            out += _entry(key, TIME) + _zigzag(ms - (ref or 0))
        elif isinstance(value, str) and _STR_RE.fullmatch(value):
            raw = value.encode("ascii")
            out += _entry(key, STR) + _uvarint(len(raw)) + raw
        else:
            raw = canonical({"v": value})[5:-1]
            out += _entry(key, JSON) + _uvarint(len(raw)) + raw
    return bytes(out)


def decode_manifest(
    data: bytes, base: dict[str, Any] | None, body_hash: str, base_hash: str | None
) -> bytes:
    """The canonical manifest bytes a coding gives; FormatError when malformed."""
    what = "compact segment: manifest"
    r = _Reader(data, what)
    obj: dict[str, Any] = {}
    while r.pos < len(r.data):
        if len(obj) >= MAX_FIELDS:
            raise FormatError(f"{what}: more than {MAX_FIELDS} fields")
        head = r.u8()
        op, index = head >> 5, head & 0x1F
        if index == KEY_NAMED:
            n = r.uvarint()
            if not 0 < n <= MAX_KEY:
                raise FormatError(f"{what}: a key of {n} bytes")
            raw = r.take(n)
            if not raw.isascii():
                raise FormatError(f"{what}: a key that is not ASCII")
            key = raw.decode("ascii")
        elif index < len(KEYS):
            key = KEYS[index]
        else:
            raise FormatError(f"{what}: key index {index} is unknown")
        if key in obj:
            raise FormatError(f"{what}: key {key!r} twice")
        old = base.get(key, ...) if base is not None else ...
        if op == SAME:
            if old is ...:
                raise FormatError(f"{what}: {key!r} refers to a base that lacks it")
            value: Any = old
        elif op == JSON:
            value = boundedjson.loads(r.take(r.uvarint()), what, max_bytes=MAX_MANIFEST, want=None)
        elif op == HEX:
            value = r.take(r.uvarint()).hex()
        elif op == INT:
            ref = old if isinstance(old, int) and not isinstance(old, bool) else 0
            value = r.zigzag() + ref
            if not -MAX_INT <= value < MAX_INT:
                raise FormatError(f"{what}: {key!r} is out of range")
        elif op == TIME:
            ref_ms = _ms(old) if isinstance(old, str) else None
            value = _stamp(r.zigzag() + (ref_ms or 0))
        elif op == BODYHASH:
            if not body_hash:
                raise FormatError(f"{what}: {key!r} is the body's hash, and there is no body")
            value = body_hash
        elif op == BASEHASH:
            if base_hash is None:
                raise FormatError(f"{what}: {key!r} is the base's hash, and there is no base")
            value = base_hash
        else:
            raw = r.take(r.uvarint())
            if not _STR_RE.fullmatch(raw.decode("latin-1")):
                raise FormatError(f"{what}: {key!r} is not printable ASCII")
            value = raw.decode("ascii")
        obj[key] = value
    out = canonical(obj)
    if len(out) > MAX_MANIFEST:
        raise FormatError(f"{what}: {len(out)} bytes exceed {MAX_MANIFEST}")
    return out


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Base:
    """A manifest both ends hold: an earlier segment of the stream, acknowledged."""

    seq: int
    manifest: bytes

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.manifest).digest()


@dataclass(frozen=True)
class CompactHead:
    seq: int
    base_seq: int | None
    base_check: bytes


def split_segment(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(body, manifest, signature) of a version 2 sealed segment's bytes; FormatError if the
    bytes are not one."""
    if len(data) < len(SEG_PREFIX) + SIG + 4 or not data.startswith(SEG_PREFIX):
        raise FormatError("not a version 2 segment")
    (mlen,) = struct.unpack(">I", data[-4:])
    end = len(data) - 4 - SIG
    if mlen > MAX_MANIFEST or end - mlen < len(SEG_PREFIX):
        raise FormatError("segment trailer length is impossible")
    return data[len(SEG_PREFIX) : end - mlen], data[end - mlen : end], data[end : end + SIG]


def join_segment(body: bytes | memoryview, manifest: bytes, sig: bytes) -> bytes:
    return b"".join((SEG_PREFIX, body, manifest, sig, struct.pack(">I", len(manifest))))


def read_head(payload: bytes | memoryview) -> CompactHead:
    """The fixed part of a compact segment (what names its base); FormatError if malformed."""
    r = _Reader(payload, "compact segment")
    if r.take(4) != MAGIC:
        raise FormatError("compact segment: bad magic")
    flags = r.u8()
    if flags & ~FLAG_BASED:
        raise FormatError(f"compact segment: unknown flags {flags:#x}")
    seq = ids.check_seq(r.uvarint(), "compact segment: seq")
    if not flags & FLAG_BASED:
        return CompactHead(seq, None, b"")
    base_seq = ids.check_seq(r.uvarint(), "compact segment: base seq")
    if base_seq >= seq:
        raise FormatError("compact segment: its base is not an earlier segment")
    return CompactHead(seq, base_seq, r.take(BASE_CHECK))


def is_compact(payload: bytes | memoryview) -> bool:
    return bytes(payload[:4]) == MAGIC


def _base_obj(base: Base | None) -> dict[str, Any] | None:
    if base is None:
        return None
    obj: dict[str, Any] = boundedjson.loads(
        base.manifest, "compact segment: base", max_bytes=MAX_MANIFEST, want=dict
    )
    return obj


def encode_segment(data: bytes, seq: int, base: Base | None) -> bytes | None:
    """The compact form of sealed segment ``data`` (seq ``seq``) against ``base``, or None when
    it has none that gives back these exact bytes (send it as a chunk)."""
    try:
        body, manifest, sig = split_segment(data)
        obj = boundedjson.loads(manifest, "manifest", max_bytes=MAX_MANIFEST, want=dict)
        if obj.get("seq") != seq:
            return None
        base_obj = _base_obj(base)
        body_hash = hashlib.sha256(body).hexdigest()
        base_hash = base.hash.hex() if base is not None else None
        coding = encode_manifest(obj, base_obj, body_hash, base_hash)
    except (FormatError, ValueError, UnicodeError):
        return None
    head = bytearray(MAGIC)
    if base is None:
        head += bytes([0]) + _uvarint(seq)
    else:
        head += bytes([FLAG_BASED]) + _uvarint(seq) + _uvarint(base.seq)
        head += base.hash[:BASE_CHECK]
    payload = bytes(head) + _uvarint(len(coding)) + coding + sig + body
    try:
        back = decode_segment(payload, base)
    except FormatError:
        return None
    return payload if back == data else None


def decode_segment(payload: bytes | memoryview, base: Base | None) -> bytes:
    """The sealed segment's bytes; ``base`` must be the one the head names (read_head), with
    the same 4-byte check. FormatError when malformed or the base does not fit."""
    head = read_head(payload)
    if (head.base_seq is None) != (base is None):
        raise FormatError("compact segment: its base was not given")
    if base is not None and (
        base.seq != head.base_seq or base.hash[:BASE_CHECK] != head.base_check
    ):
        raise FormatError("compact segment: the base differs from the device's")
    r = _Reader(payload, "compact segment")
    r.take(5)
    r.uvarint()
    if base is not None:
        r.uvarint()
        r.take(BASE_CHECK)
    m = r.uvarint()
    if m > MAX_MANIFEST:
        raise FormatError(f"compact segment: a manifest coding of {m} bytes")
    coding = r.take(m)
    sig = r.take(SIG)
    body = r.rest()
    manifest = decode_manifest(
        coding,
        _base_obj(base),
        hashlib.sha256(body).hexdigest(),
        base.hash.hex() if base is not None else None,
    )
    return join_segment(body, manifest, sig)


# --------------------------------------------------------------------------- key records


def is_compact_key(payload: bytes | memoryview) -> bool:
    return bytes(payload[:4]) == KEY_MAGIC


def encode_key_record(data: bytes) -> bytes | None:
    """The compact form of key record ``data`` (``"EAK1" | varint m | the manifest coding, no
    base | 64 bytes signature``), or None when it would not give back these exact bytes."""
    try:
        if not data.startswith(KEY_PREFIX) or len(data) < len(KEY_PREFIX) + SIG + 4:
            return None
        (mlen,) = struct.unpack(">I", data[-4:])
        if mlen > MAX_MANIFEST or len(KEY_PREFIX) + mlen + SIG + 4 != len(data):
            return None
        manifest = data[len(KEY_PREFIX) : len(KEY_PREFIX) + mlen]
        sig = data[len(KEY_PREFIX) + mlen : len(KEY_PREFIX) + mlen + SIG]
        obj = boundedjson.loads(manifest, "key record", max_bytes=MAX_MANIFEST, want=dict)
        coding = encode_manifest(obj, None, "", None)
        payload = KEY_MAGIC + _uvarint(len(coding)) + coding + sig
        return payload if decode_key_record(payload) == data else None
    except (FormatError, ValueError, UnicodeError):
        return None


def decode_key_record(payload: bytes | memoryview) -> bytes:
    """The key record's bytes (``"EAKEY\\0" 00 01 | manifest | signature | u32 length``);
    FormatError when malformed."""
    r = _Reader(payload, "compact key record")
    if r.take(4) != KEY_MAGIC:
        raise FormatError("compact key record: bad magic")
    m = r.uvarint()
    if m > MAX_MANIFEST:
        raise FormatError(f"compact key record: a manifest coding of {m} bytes")
    manifest = decode_manifest(r.take(m), None, "", None)
    sig = r.take(SIG)
    if r.pos != len(r.data):
        raise FormatError("compact key record: bytes after the signature")
    return KEY_PREFIX + manifest + sig + struct.pack(">I", len(manifest))


# --------------------------------------------------------------------------- acknowledgements


@dataclass(frozen=True)
class CompactAck:
    kind: int  # STORED | DUPLICATE | PLAIN | KEY
    stream: str = ""
    seq: int = 0
    hash: str = ""  # the manifest hash (in what is signed; empty for PLAIN and KEY)
    key_id: str = ""  # KEY only


def _signed(device: str, body: bytes, hashes: list[bytes]) -> bytes:
    dev = device.encode("ascii")
    return ACK4_CONTEXT + bytes([len(dev)]) + dev + body + b"".join(hashes)


def _ack_body(acks: list[CompactAck]) -> tuple[bytes, list[bytes]]:
    """The message's entries, and (in order) the hashes the signature covers."""
    out = bytearray([ACK_MAGIC]) + _uvarint(len(acks))
    hashes: list[bytes] = []
    for a in acks:
        if a.kind == KEY:
            out += bytes([KEY]) + bytes.fromhex(a.key_id)
            continue
        s = a.stream.encode("ascii")
        out += bytes([a.kind, len(s)]) + s + _uvarint(a.seq)
        if a.kind != PLAIN:
            hashes.append(bytes.fromhex(a.hash))
    return bytes(out), hashes


def encode_acks(device: str, acks: list[CompactAck], key: Ed25519PrivateKey) -> list[bytes]:
    """Signed compact acknowledgement messages (one per MAX_ACKS)."""
    out = []
    for i in range(0, len(acks), MAX_ACKS):
        body, hashes = _ack_body(acks[i : i + MAX_ACKS])
        out.append(body + key.sign(_signed(device, body, hashes)))
    return out


def is_compact_ack(payload: bytes | memoryview) -> bool:
    return len(payload) > 0 and payload[0] == ACK_MAGIC


def parse_acks(
    payload: bytes | memoryview,
    device: str,
    key: Ed25519PublicKey | None,
    resolve: Callable[[str, int], str | None],
) -> list[CompactAck]:
    """A compact acknowledgement message for ``device``. ``resolve(stream, seq)`` gives the
    manifest hash of the device's own segment (None: not known: the message cannot be checked,
    VerificationError). With ``key``, a bad signature is a VerificationError; FormatError when
    malformed."""
    what = "compact ack"
    if len(payload) < 2 + SIG:
        raise FormatError(f"{what}: too short")
    view = memoryview(payload)
    r = _Reader(view[:-SIG], what)
    if r.u8() != ACK_MAGIC:
        raise FormatError(f"{what}: bad magic")
    count = r.uvarint()
    if not 1 <= count <= MAX_ACKS:
        raise FormatError(f"{what}: {count} entries (1 to {MAX_ACKS})")
    out: list[CompactAck] = []
    hashes: list[bytes] = []
    for _ in range(count):
        kind = r.u8()
        if kind == KEY:
            out.append(CompactAck(KEY, key_id=r.take(8).hex()))
            continue
        if kind not in (STORED, DUPLICATE, PLAIN):
            raise FormatError(f"{what}: unknown kind {kind}")
        raw = r.take(r.u8())
        stream = ids.check_stream(raw.decode("latin-1"), f"{what}: stream")
        seq = ids.check_seq(r.uvarint(), f"{what}: seq")
        mhash = ""
        if kind != PLAIN:
            found = resolve(stream, seq)
            if found is None:
                raise VerificationError(f"{what}: names {stream}#{seq}, which this device lacks")
            mhash = ids.check_hash(found)
            hashes.append(bytes.fromhex(mhash))
        out.append(CompactAck(kind, stream, seq, mhash))
    if r.pos != len(r.data):
        raise FormatError(f"{what}: {len(r.data) - r.pos} bytes after the last entry")
    if key is not None:
        try:
            key.verify(bytes(view[-SIG:]), _signed(device, bytes(view[:-SIG]), hashes))
        except InvalidSignature:
            raise VerificationError(
                f"{what}: bad signature (not the platform's ack key, or not this device's)"
            ) from None
    return out
