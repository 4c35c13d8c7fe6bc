"""The sealed-segment and key-record formats (version 1): writing, parsing and verifying.

``docs/format.md`` is the normative description; this module is one implementation of it.

A **segment** file is::

    prefix   "EASEG\\0" + u16 version                      8 bytes
    body     frames: u32 length + AEAD ciphertext(+tag)    one frame per plaintext chunk
    manifest canonical JSON (UTF-8)                        signed
    sig      Ed25519 over "edge-agent segment v1\\0" + manifest     64 bytes
    u32      length of the manifest                        4 bytes

A **key record** has the same shape with prefix "EAKEY\\0" and no body: it carries one data key
wrapped to the platform's X25519 key, and many segments refer to it by ``key_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import FormatError, VerificationError
from agent.model import ClockState, format_utc
from agent.storage.keys import fingerprint, raw_public

VERSION = 1
SEG_MAGIC = b"EASEG\x00"
KEY_MAGIC = b"EAKEY\x00"
PREFIX_LEN = 8
TRAILER_FIXED = 64 + 4
TAG_LEN = 16
FRAME_HEADER = 4
SEG_CONTEXT = b"edge-agent segment v1\x00"
KEY_CONTEXT = b"edge-agent key v1\x00"
WRAP_INFO = b"edge-agent key wrap v1"
SEGMENT_KEY_INFO = b"edge-agent segment key v1"
MAX_MANIFEST = 64 * 1024
CIPHERS = ("aes-256-gcm", "chacha20-poly1305")
STREAM_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
WRAP_ALG = "x25519-hkdf-sha256-aes256gcm"


def canonical_json(obj: dict[str, Any]) -> bytes:
    """The one byte form of a manifest: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _prefix(magic: bytes) -> bytes:
    return magic + struct.pack(">H", VERSION)


def aead_for(cipher: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if cipher == "aes-256-gcm":
        return AESGCM(key)
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    raise FormatError(f"unknown cipher {cipher!r} (known: {', '.join(CIPHERS)})")


def chunk_nonce(index: int, last: bool) -> bytes:
    """11-byte big-endian chunk counter, then 1 if this is the final chunk else 0."""
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def segment_key(data_key: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=SEGMENT_KEY_INFO).derive(
        data_key
    )


def _kek(shared: bytes, epk: bytes, ppk: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + ppk, info=WRAP_INFO).derive(shared)


# --------------------------------------------------------------------------- key records


@dataclass(frozen=True)
class DataKey:
    """A data key of one epoch, as the device holds it (in memory only)."""

    key_id: str
    secret: bytes
    record: bytes  # the signed key record that travels with its segments


def make_data_key(
    *,
    device_id: str,
    boot_id: str,
    signing_key: Ed25519PrivateKey,
    platform_public: X25519PublicKey,
    created: float,
) -> DataKey:
    """A fresh random data key wrapped to the platform key, in a signed key record."""
    secret = os.urandom(32)
    key_id = os.urandom(8).hex()
    eph = X25519PrivateKey.generate()
    epk = raw_public(eph.public_key())
    ppk = raw_public(platform_public)
    kek = _kek(eph.exchange(platform_public), epk, ppk)
    wrapped = AESGCM(kek).encrypt(b"\x00" * 12, secret, key_id.encode())
    dpk = raw_public(signing_key.public_key())
    manifest = {
        "v": VERSION,
        "kind": "key",
        "device": device_id,
        "boot": boot_id,
        "key_id": key_id,
        "created_utc": format_utc(created),
        "wrap": WRAP_ALG,
        "platform_key": fingerprint(ppk),
        "epk": epk.hex(),
        "wrapped": wrapped.hex(),
        "device_pub": dpk.hex(),
        "signer": fingerprint(dpk),
    }
    body = canonical_json(manifest)
    sig = signing_key.sign(KEY_CONTEXT + body)
    record = _prefix(KEY_MAGIC) + body + sig + struct.pack(">I", len(body))
    return DataKey(key_id=key_id, secret=secret, record=record)


@dataclass(frozen=True)
class KeyRecord:
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes

    @property
    def key_id(self) -> str:
        return str(self.manifest["key_id"])

    @property
    def device(self) -> str:
        return str(self.manifest["device"])

    def device_public(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.manifest["device_pub"]))

    def unwrap(self, platform_private: X25519PrivateKey) -> bytes:
        """The data key, for the holder of the platform's private key."""
        epk = bytes.fromhex(self.manifest["epk"])
        ppk = raw_public(platform_private.public_key())
        if fingerprint(ppk) != self.manifest["platform_key"]:
            raise VerificationError(
                f"key {self.key_id}: wrapped to platform key {self.manifest['platform_key']}, "
                f"not to the given key {fingerprint(ppk)}"
            )
        kek = _kek(platform_private.exchange(X25519PublicKey.from_public_bytes(epk)), epk, ppk)
        try:
            return AESGCM(kek).decrypt(
                b"\x00" * 12, bytes.fromhex(self.manifest["wrapped"]), self.key_id.encode()
            )
        except InvalidTag:
            raise VerificationError(f"key {self.key_id}: wrapped key fails to unwrap") from None


KEY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "kind": str,
    "device": str,
    "boot": str,
    "key_id": str,
    "created_utc": str,
    "wrap": str,
    "platform_key": str,
    "epk": str,
    "wrapped": str,
    "device_pub": str,
    "signer": str,
}


def parse_key_record(data: bytes, trusted: Ed25519PublicKey | None = None) -> KeyRecord:
    """Parse and check a key record's signature (against ``trusted`` when pinned)."""
    if len(data) < PREFIX_LEN + TRAILER_FIXED + 2:
        raise FormatError("key record: too short")
    _check_prefix(data[:PREFIX_LEN], KEY_MAGIC, "key record")
    (mlen,) = struct.unpack(">I", data[-4:])
    if PREFIX_LEN + mlen + TRAILER_FIXED != len(data):
        raise FormatError("key record: length fields do not match the file (truncated?)")
    body = data[PREFIX_LEN : PREFIX_LEN + mlen]
    sig = data[PREFIX_LEN + mlen : PREFIX_LEN + mlen + 64]
    manifest = _parse_manifest(body, KEY_FIELDS, "key record")
    if manifest["kind"] != "key" or manifest["wrap"] != WRAP_ALG:
        raise FormatError(
            f"key record: unsupported kind/wrap {manifest['kind']}/{manifest['wrap']}"
        )
    for name, size in (("epk", 32), ("wrapped", 48), ("device_pub", 32)):
        _hex_field(manifest, name, size, "key record")
    rec = KeyRecord(manifest, body, sig)
    pub = rec.device_public()
    if fingerprint(raw_public(pub)) != manifest["signer"]:
        raise VerificationError(f"key {rec.key_id}: signer does not match device_pub")
    if trusted is not None and raw_public(trusted) != raw_public(pub):
        raise VerificationError(
            f"key {rec.key_id}: signed by {manifest['signer']}, not by the pinned device key "
            f"{fingerprint(raw_public(trusted))}"
        )
    try:
        pub.verify(sig, KEY_CONTEXT + body)
    except InvalidSignature:
        raise VerificationError(f"key {rec.key_id}: bad signature") from None
    return rec


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class SegmentHeader:
    """What the producer knows about a segment before its bytes are sealed."""

    stream: str
    content_type: str
    start_utc: float
    end_utc: float
    start_mono_ns: int
    end_mono_ns: int
    clock: ClockState
    meta: dict[str, Any]


@dataclass(frozen=True)
class ChainLink:
    """Where a segment sits in its stream: its number and the hash of the previous manifest."""

    seq: int
    prev: str | None


def rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes | memoryview]:
    """Yield ``size``-byte chunks from pieces of any size (the last may be shorter).

    Large pieces are sliced without copying them into a buffer first.
    """
    buf = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        if buf:
            take = min(size - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) < size:
                continue
            yield bytes(buf)
            buf = bytearray()
        n_whole = len(view) // size * size
        for i in range(0, n_whole, size):
            yield view[i : i + size]
        if n_whole < len(view):
            buf += view[n_whole:]
    if buf:
        yield bytes(buf)


def seal_segment(
    out: BinaryIO,
    *,
    header: SegmentHeader,
    link: ChainLink,
    device_id: str,
    boot_id: str,
    key: DataKey,
    signing_key: Ed25519PrivateKey,
    cipher: str,
    chunk_size: int,
    pieces: Iterable[bytes],
    sealed_utc: float,
) -> tuple[dict[str, Any], bytes]:
    """Encrypt ``pieces`` chunk by chunk into ``out``; return (manifest, manifest bytes).

    Memory stays bounded by two chunks whatever the segment's size. Plaintext goes only to
    the hash and the cipher, never to ``out``.
    """
    if not STREAM_RE.match(header.stream):
        raise FormatError(f"stream name {header.stream!r}: must match {STREAM_RE.pattern}")
    salt = os.urandom(16)
    aead = aead_for(cipher, segment_key(key.secret, salt))
    plain_hash = hashlib.sha256()
    body_hash = hashlib.sha256()
    plain_len = 0
    body_len = 0
    index = 0
    out.write(_prefix(SEG_MAGIC))

    def emit(chunk: bytes | memoryview, last: bool) -> None:
        nonlocal index, body_len
        ct = aead.encrypt(chunk_nonce(index, last), chunk, None)
        head = struct.pack(">I", len(ct))
        body_hash.update(head)
        body_hash.update(ct)
        out.write(head)
        out.write(ct)
        body_len += len(head) + len(ct)
        index += 1

    pending: bytes | memoryview | None = None
    for chunk in rechunk(pieces, chunk_size):
        plain_hash.update(chunk)
        plain_len += len(chunk)
        if pending is not None:
            emit(pending, last=False)
        pending = chunk
    emit(pending if pending is not None else b"", last=True)
    dpk = raw_public(signing_key.public_key())
    manifest: dict[str, Any] = {
        "v": VERSION,
        "kind": "segment",
        "device": device_id,
        "stream": header.stream,
        "boot": boot_id,
        "seq": link.seq,
        "prev": link.prev,
        "start_utc": format_utc(header.start_utc),
        "end_utc": format_utc(header.end_utc),
        "start_mono_ns": header.start_mono_ns,
        "end_mono_ns": header.end_mono_ns,
        "clock": header.clock.to_json(),
        "content_type": header.content_type,
        "plain_len": plain_len,
        "plain_sha256": plain_hash.hexdigest(),
        "cipher": cipher,
        "key_id": key.key_id,
        "salt": salt.hex(),
        "chunk_size": chunk_size,
        "chunks": index,
        "body_len": body_len,
        "body_sha256": body_hash.hexdigest(),
        "device_pub": dpk.hex(),
        "signer": fingerprint(dpk),
        "sealed_utc": format_utc(sealed_utc),
        "meta": header.meta,
    }
    body = canonical_json(manifest)
    if len(body) > MAX_MANIFEST:
        raise FormatError(f"manifest of {len(body)} bytes exceeds {MAX_MANIFEST}")
    sig = signing_key.sign(SEG_CONTEXT + body)
    out.write(body + sig + struct.pack(">I", len(body)))
    return manifest, body


SEGMENT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "kind": str,
    "device": str,
    "stream": str,
    "boot": str,
    "seq": int,
    "prev": (str, type(None)),
    "start_utc": str,
    "end_utc": str,
    "start_mono_ns": int,
    "end_mono_ns": int,
    "clock": dict,
    "content_type": str,
    "plain_len": int,
    "plain_sha256": str,
    "cipher": str,
    "key_id": str,
    "salt": str,
    "chunk_size": int,
    "chunks": int,
    "body_len": int,
    "body_sha256": str,
    "device_pub": str,
    "signer": str,
    "sealed_utc": str,
    "meta": dict,
}


@dataclass(frozen=True)
class SegmentInfo:
    """A segment's parsed trailer (not yet verified)."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    size: int

    @property
    def stream(self) -> str:
        return str(self.manifest["stream"])

    @property
    def seq(self) -> int:
        return int(self.manifest["seq"])

    @property
    def device(self) -> str:
        return str(self.manifest["device"])

    @property
    def key_id(self) -> str:
        return str(self.manifest["key_id"])

    @property
    def manifest_hash(self) -> str:
        """What the next segment of the stream carries as ``prev``."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.device}/{self.stream}#{self.seq}"


def _check_prefix(prefix: bytes, magic: bytes, what: str) -> None:
    if prefix[:6] != magic:
        raise FormatError(f"{what}: not an edge-agent {what} (bad magic {prefix[:6]!r})")
    (version,) = struct.unpack(">H", prefix[6:8])
    if version != VERSION:
        raise FormatError(f"{what}: format version {version} is not supported (only {VERSION})")


def _parse_manifest(
    body: bytes, fields: dict[str, type | tuple[type, ...]], what: str
) -> dict[str, Any]:
    try:
        manifest = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{what}: manifest is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise FormatError(f"{what}: manifest is not an object")
    if canonical_json(manifest) != body:
        raise FormatError(f"{what}: manifest is not in canonical form")
    for name, tp in fields.items():
        if name not in manifest:
            raise FormatError(f"{what}: manifest lacks {name!r}")
        value = manifest[name]
        if isinstance(value, bool) or not isinstance(value, tp):
            raise FormatError(f"{what}: manifest field {name!r} has the wrong type")
    if manifest["v"] != VERSION:
        raise FormatError(f"{what}: manifest version {manifest['v']} is not supported")
    return manifest


def _hex_field(manifest: dict[str, Any], name: str, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(manifest[name])
    except ValueError:
        raise FormatError(f"{what}: {name} is not hex") from None
    if len(raw) != size:
        raise FormatError(f"{what}: {name} must be {size} bytes")
    return raw


def read_segment_info(f: BinaryIO) -> SegmentInfo:
    """Parse a segment's prefix and trailer; check the structure, not the contents."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size < PREFIX_LEN + TRAILER_FIXED + 2:
        raise FormatError(f"segment: too short ({size} bytes): truncated")
    f.seek(0)
    _check_prefix(f.read(PREFIX_LEN), SEG_MAGIC, "segment")
    f.seek(size - 4)
    (mlen,) = struct.unpack(">I", f.read(4))
    if mlen > MAX_MANIFEST or PREFIX_LEN + mlen + TRAILER_FIXED > size:
        raise FormatError("segment: trailer length is impossible: truncated or not a segment")
    f.seek(size - TRAILER_FIXED - mlen)
    body = f.read(mlen)
    sig = f.read(64)
    manifest = _parse_manifest(body, SEGMENT_FIELDS, "segment")
    if manifest["kind"] != "segment":
        raise FormatError(f"segment: kind is {manifest['kind']!r}")
    if PREFIX_LEN + manifest["body_len"] + mlen + TRAILER_FIXED != size:
        _check_manifest_signature(manifest, body, sig)
        raise FormatError(
            f"segment {manifest['stream']}#{manifest['seq']}: body is "
            f"{size - PREFIX_LEN - mlen - TRAILER_FIXED} bytes, manifest says "
            f"{manifest['body_len']}: truncated or padded"
        )
    if manifest["cipher"] not in CIPHERS:
        raise FormatError(f"segment: unknown cipher {manifest['cipher']!r}")
    _hex_field(manifest, "device_pub", 32, "segment")
    _hex_field(manifest, "salt", 16, "segment")
    return SegmentInfo(manifest, body, sig, size)


def _check_manifest_signature(manifest: dict[str, Any], body: bytes, sig: bytes) -> None:
    """Tell an altered manifest apart from a truncated file."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(manifest["device_pub"]))
        pub.verify(sig, SEG_CONTEXT + body)
    except (ValueError, InvalidSignature):
        raise VerificationError(
            f"segment {manifest['stream']}#{manifest['seq']}: bad signature "
            "(manifest or signature altered)"
        ) from None


def _iter_frames(f: BinaryIO, info: SegmentInfo) -> Iterator[tuple[bytes, bytes]]:
    """(frame header, ciphertext) pairs of the body, with structural checks."""
    f.seek(PREFIX_LEN)
    remaining = int(info.manifest["body_len"])
    limit = int(info.manifest["chunk_size"]) + TAG_LEN
    while remaining > 0:
        head = f.read(FRAME_HEADER)
        if len(head) < FRAME_HEADER:
            raise VerificationError(f"{info.label}: body truncated")
        (n,) = struct.unpack(">I", head)
        if n < TAG_LEN or n > limit or n + FRAME_HEADER > remaining:
            raise VerificationError(f"{info.label}: chunk frame length {n} is impossible")
        ct = f.read(n)
        if len(ct) < n:
            raise VerificationError(f"{info.label}: body truncated")
        remaining -= n + FRAME_HEADER
        yield head, ct


def verify_segment(
    f: BinaryIO, info: SegmentInfo, trusted: Ed25519PublicKey | None = None, *, body: bool = True
) -> None:
    """Check the signature and the body hash (no key needed: anyone can do this).

    ``body=False`` skips the body hash, for a caller that decrypts next: every chunk's AEAD
    tag and the signed plaintext hash then prove the body, and one hash pass is saved.
    """
    pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(info.manifest["device_pub"]))
    if fingerprint(raw_public(pub)) != info.manifest["signer"]:
        raise VerificationError(f"{info.label}: signer does not match device_pub")
    if trusted is not None and raw_public(trusted) != raw_public(pub):
        raise VerificationError(
            f"{info.label}: signed by {info.manifest['signer']}, not by the pinned device key "
            f"{fingerprint(raw_public(trusted))}"
        )
    try:
        pub.verify(info.signature, SEG_CONTEXT + info.manifest_bytes)
    except InvalidSignature:
        raise VerificationError(
            f"{info.label}: bad signature (manifest or signature altered)"
        ) from None
    if not body:
        return
    h = hashlib.sha256()
    count = 0
    for head, ct in _iter_frames(f, info):
        h.update(head)
        h.update(ct)
        count += 1
    if not hmac.compare_digest(h.hexdigest(), info.manifest["body_sha256"]):
        raise VerificationError(f"{info.label}: body altered (SHA-256 of the body differs)")
    if count != info.manifest["chunks"]:
        raise VerificationError(
            f"{info.label}: {count} chunks, manifest says {info.manifest['chunks']}"
        )


def decrypt_segment(
    f: BinaryIO, info: SegmentInfo, data_key: bytes, sink: Callable[[bytes], object]
) -> None:
    """Decrypt into ``sink`` chunk by chunk, checking order, the final mark and the plain hash.

    Callers should :func:`verify_segment` first; this raises VerificationError on any mismatch,
    after which what reached ``sink`` must be discarded.
    """
    aead = aead_for(
        info.manifest["cipher"], segment_key(data_key, bytes.fromhex(info.manifest["salt"]))
    )
    chunks = int(info.manifest["chunks"])
    h = hashlib.sha256()
    n = 0
    index = 0
    for _head, ct in _iter_frames(f, info):
        last = index == chunks - 1
        try:
            pt = aead.decrypt(chunk_nonce(index, last), ct, None)
        except InvalidTag:
            raise VerificationError(
                f"{info.label}: chunk {index} fails authentication (altered, reordered or "
                "truncated, or the wrong key)"
            ) from None
        h.update(pt)
        n += len(pt)
        sink(pt)
        index += 1
    if index != chunks:
        raise VerificationError(f"{info.label}: {index} chunks, manifest says {chunks}")
    if n != info.manifest["plain_len"] or not hmac.compare_digest(
        h.hexdigest(), info.manifest["plain_sha256"]
    ):
        raise VerificationError(f"{info.label}: plaintext length or SHA-256 differs from manifest")


# --------------------------------------------------------------------------- streamed sealing


class BodyWriter:
    """A segment body sealed chunk by chunk as its plaintext arrives.

    For a producer that must make data durable before the segment is complete (the fragment
    journal, :mod:`agent.storage.segjournal`): :meth:`frame` encrypts one chunk into the frame
    to append; :func:`seal_trailer` then writes the manifest and signature after the last one.
    The bytes are exactly those :func:`seal_segment` writes: every chunk but the final one holds
    ``chunk_size`` bytes, the final one is marked. Holds no plaintext.
    """

    def __init__(self, key: DataKey, cipher: str, chunk_size: int) -> None:
        self.key = key
        self.cipher = cipher
        self.chunk_size = chunk_size
        self.salt = os.urandom(16)
        self._aead = aead_for(cipher, segment_key(key.secret, self.salt))
        self._plain_hash = hashlib.sha256()
        self._body_hash = hashlib.sha256()
        self.plain_len = 0
        self.body_len = 0
        self.chunks = 0
        self.finished = False

    @staticmethod
    def prefix() -> bytes:
        """The file's first bytes (magic and version), before the first frame."""
        return _prefix(SEG_MAGIC)

    def frame(self, chunk: bytes, *, last: bool = False) -> bytes:
        """The frame (u32 length + ciphertext) of the next chunk."""
        if self.finished:
            raise FormatError("segment body: a chunk after the final one")
        if len(chunk) > self.chunk_size or (not last and len(chunk) != self.chunk_size):
            raise FormatError(
                f"segment body: chunk of {len(chunk)} bytes (chunk size {self.chunk_size}, "
                "only the final chunk may be shorter)"
            )
        ct = self._aead.encrypt(chunk_nonce(self.chunks, last), chunk, None)
        frame = struct.pack(">I", len(ct)) + ct
        self._plain_hash.update(chunk)
        self._body_hash.update(frame)
        self.plain_len += len(chunk)
        self.body_len += len(frame)
        self.chunks += 1
        self.finished = last
        return frame


def seal_trailer(
    out: BinaryIO,
    body: BodyWriter,
    *,
    header: SegmentHeader,
    link: ChainLink,
    device_id: str,
    boot_id: str,
    signing_key: Ed25519PrivateKey,
    sealed_utc: float,
) -> tuple[dict[str, Any], bytes]:
    """Write the manifest and signature after a finished :class:`BodyWriter` body.

    The manifest is the one :func:`seal_segment` makes for the same bytes (keep the two alike).
    """
    if not body.finished:
        raise FormatError("segment body: the final chunk is missing")
    if not STREAM_RE.match(header.stream):
        raise FormatError(f"stream name {header.stream!r}: must match {STREAM_RE.pattern}")
    dpk = raw_public(signing_key.public_key())
    manifest: dict[str, Any] = {
        "v": VERSION,
        "kind": "segment",
        "device": device_id,
        "stream": header.stream,
        "boot": boot_id,
        "seq": link.seq,
        "prev": link.prev,
        "start_utc": format_utc(header.start_utc),
        "end_utc": format_utc(header.end_utc),
        "start_mono_ns": header.start_mono_ns,
        "end_mono_ns": header.end_mono_ns,
        "clock": header.clock.to_json(),
        "content_type": header.content_type,
        "plain_len": body.plain_len,
        "plain_sha256": body._plain_hash.hexdigest(),
        "cipher": body.cipher,
        "key_id": body.key.key_id,
        "salt": body.salt.hex(),
        "chunk_size": body.chunk_size,
        "chunks": body.chunks,
        "body_len": body.body_len,
        "body_sha256": body._body_hash.hexdigest(),
        "device_pub": dpk.hex(),
        "signer": fingerprint(dpk),
        "sealed_utc": format_utc(sealed_utc),
        "meta": header.meta,
    }
    mbytes = canonical_json(manifest)
    if len(mbytes) > MAX_MANIFEST:
        raise FormatError(f"manifest of {len(mbytes)} bytes exceeds {MAX_MANIFEST}")
    sig = signing_key.sign(SEG_CONTEXT + mbytes)
    out.write(mbytes + sig + struct.pack(">I", len(mbytes)))
    return manifest, mbytes
