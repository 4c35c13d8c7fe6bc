"""The sealed-segment and key-record formats: writing, parsing and verifying.

``docs/format.md`` is the normative description; this module is one implementation of it, and
:mod:`agent.storage.manifest` holds the value rules of every manifest field.

A **segment** file (version 2, written; version 1 is still read) is::

    prefix   "EASEG\\0" + u16 version                      8 bytes
    body     frames: u32 length + AEAD ciphertext(+tag)    one frame per plaintext chunk
    manifest canonical JSON (ASCII)                        signed; ``meta`` sealed inside it
    sig      Ed25519 over "edge-agent segment v2\\0" + manifest     64 bytes
    u32      length of the manifest                        4 bytes

A **key record** has the same shape with prefix "EAKEY\\0" (version 1) and no body: it carries
one data key wrapped to the platform's X25519 key, and many segments refer to it by ``key_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent import boundedjson
from agent.errors import FormatError, VerificationError
from agent.model import ClockState, format_utc
from agent.storage.keys import fingerprint, raw_public
from agent.storage.manifest import (
    CIPHERS,
    FRAME_HEADER,
    KEY_VERSION,
    MAX_MANIFEST,
    SEGMENT_VERSION,
    SEGMENT_VERSIONS,
    TAG_LEN,
    WRAP_ALG,
    canonical_json,
    check_evicted,
    check_key_manifest,
    check_segment_manifest,
    frame_sizes,
    parse_manifest,
)

__all__ = [
    "CIPHERS",
    "FRAME_HEADER",
    "MAX_MANIFEST",
    "TAG_LEN",
    "ChainLink",
    "DataKey",
    "DecryptFailed",
    "KeyRecord",
    "SegmentHeader",
    "SegmentInfo",
    "aead_for",
    "canonical_json",
    "check_signature",
    "chunk_nonce",
    "decrypt_segment",
    "make_data_key",
    "open_meta",
    "parse_key_record",
    "read_segment_info",
    "seal_segment",
    "segment_key",
    "verify_body",
    "verify_decrypt_body",
    "verify_decrypt_segment",
    "verify_segment",
]

log = logging.getLogger(__name__)

VERSION = SEGMENT_VERSION
_U32 = struct.Struct(">I")
SEG_MAGIC = b"EASEG\x00"
KEY_MAGIC = b"EAKEY\x00"
PREFIX_LEN = 8
TRAILER_FIXED = 64 + 4
KEY_CONTEXT = b"edge-agent key v1\x00"
WRAP_INFO = b"edge-agent key wrap v1"
SEGMENT_KEY_INFO = b"edge-agent segment key v1"
META_KEY_INFO = b"edge-agent segment meta v2"
META_NONCE = b"\x00" * 12
# Depth of a manifest's JSON: version 1 carries the producer's meta in clear; version 2 is flat
# but for clock, evicted and its seqs.
MANIFEST_DEPTH = {1: boundedjson.DEFAULT_MAX_DEPTH, 2: 3}


def segment_context(version: int) -> bytes:
    """What a segment's signature covers before its manifest: names the format version."""
    return b"edge-agent segment v%d\x00" % version


def _prefix(magic: bytes, version: int) -> bytes:
    return magic + struct.pack(">H", version)


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


def meta_key(data_key: bytes, salt: bytes) -> bytes:
    """The key of a segment's sealed meta: its own HKDF output, so a fixed nonce is safe."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=META_KEY_INFO).derive(
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
        "v": KEY_VERSION,
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
    check_key_manifest(manifest)
    body = canonical_json(manifest)
    sig = signing_key.sign(KEY_CONTEXT + body)
    record = _prefix(KEY_MAGIC, KEY_VERSION) + body + sig + struct.pack(">I", len(body))
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
        try:
            shared = platform_private.exchange(X25519PublicKey.from_public_bytes(epk))
        except ValueError:  # a low-order point: no shared secret
            raise VerificationError(f"key {self.key_id}: epk is not a usable public key") from None
        kek = _kek(shared, epk, ppk)
        try:
            return AESGCM(kek).decrypt(
                b"\x00" * 12, bytes.fromhex(self.manifest["wrapped"]), self.key_id.encode()
            )
        except InvalidTag:
            raise VerificationError(f"key {self.key_id}: wrapped key fails to unwrap") from None


def parse_key_record(data: bytes, trusted: Ed25519PublicKey | None = None) -> KeyRecord:
    """Parse a key record, check every manifest field and its signature (against ``trusted``
    when pinned)."""
    if len(data) < PREFIX_LEN + TRAILER_FIXED + 2:
        raise FormatError("key record: too short")
    _check_prefix(data[:PREFIX_LEN], KEY_MAGIC, "key record", (KEY_VERSION,))
    (mlen,) = struct.unpack(">I", data[-4:])
    if mlen > MAX_MANIFEST or PREFIX_LEN + mlen + TRAILER_FIXED != len(data):
        raise FormatError("key record: length fields do not match the file (truncated?)")
    body = data[PREFIX_LEN : PREFIX_LEN + mlen]
    sig = data[PREFIX_LEN + mlen : PREFIX_LEN + mlen + 64]
    manifest = parse_manifest(body, "key record", max_depth=1)
    check_key_manifest(manifest)
    rec = KeyRecord(manifest, body, sig)
    pub = rec.device_public()
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
    """What the producer knows about a segment before its bytes are sealed.

    ``meta`` is sealed (encrypted under the data key) in the manifest. ``batch`` (the id of a
    batch of small records) and ``evicted`` (the telemetry seqs an ``event`` record says the
    device overwrote: ``{"stream": ..., "seqs": [...]}``) stay in clear: the device needs the
    first to recover without its key, a keyless verifier the second to accept the gap.
    """

    stream: str
    content_type: str
    start_utc: float
    end_utc: float
    start_mono_ns: int
    end_mono_ns: int
    clock: ClockState
    meta: dict[str, Any]
    batch: str | None = None
    evicted: dict[str, Any] | None = None


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


def _clock_json(clock: ClockState) -> dict[str, object]:
    out = clock.to_json()
    off = out.get("offset_s")
    if isinstance(off, float) and not math.isfinite(off):
        out["offset_s"] = None  # JSON has no NaN; an unknown offset is null
    return out


def _meta_bytes(meta: dict[str, Any], label: str) -> bytes:
    """The canonical JSON of ``meta``, as a verifier will read it back.

    Meta a verifier could not read (NaN, nesting beyond its bound) does not stop the evidence
    from being sealed: it is replaced by a note saying why, and logged.
    """
    try:
        data = json.dumps(
            meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()
        boundedjson.loads(data, "meta", max_bytes=MAX_MANIFEST // 3)
        return data
    except (TypeError, ValueError, FormatError) as exc:
        log.error(
            "seal: meta of %s cannot be sealed as JSON (%s); sealed a note instead", label, exc
        )
        return canonical_json({"unsealable_meta": str(exc)[:200]})


class BodyWriter:
    """A segment body sealed chunk by chunk as its plaintext arrives.

    :func:`seal_segment` uses it for a whole segment at once; a producer that must make data
    durable before the segment is complete (the fragment journal,
    :mod:`agent.storage.segjournal`) calls :meth:`frame` for each chunk as it comes, appends
    the frames itself, and ends with :func:`seal_trailer`. Either way the bytes are the same:
    every chunk but the final one holds ``chunk_size`` bytes, the final one is marked. Holds
    no plaintext.

    One pass: each chunk is hashed and encrypted as it goes by, straight into one reused frame
    buffer (length and ciphertext side by side), so a frame costs one hash update of the
    plaintext, one of the frame and one write, and no allocation.
    """

    def __init__(self, key: DataKey, cipher: str, chunk_size: int) -> None:
        self.key = key
        self.cipher = cipher
        self.chunk_size = chunk_size
        self.salt = os.urandom(16)
        self._aead = aead_for(cipher, segment_key(key.secret, self.salt))
        self.plain_hash = hashlib.sha256()
        self.body_hash = hashlib.sha256()
        self.plain_len = 0
        self.body_len = 0
        self.chunks = 0
        self.finished = False
        self._frame = memoryview(bytearray(FRAME_HEADER + chunk_size + TAG_LEN))

    @staticmethod
    def prefix() -> bytes:
        """The file's first bytes (magic and version), before the first frame."""
        return _prefix(SEG_MAGIC, VERSION)

    def _seal(self, chunk: bytes | memoryview, last: bool) -> memoryview:
        """The next frame, in the reused buffer: valid until the next call."""
        if self.finished:
            raise FormatError("segment body: a chunk after the final one")
        size = len(chunk)
        if size > self.chunk_size or (not last and size != self.chunk_size):
            raise FormatError(
                f"segment body: chunk of {size} bytes (chunk size {self.chunk_size}, "
                "only the final chunk may be shorter)"
            )
        n = size + TAG_LEN
        frame = self._frame[: FRAME_HEADER + n]
        _U32.pack_into(frame, 0, n)
        self._aead.encrypt_into(chunk_nonce(self.chunks, last), chunk, None, frame[FRAME_HEADER:])
        self.plain_hash.update(chunk)
        self.body_hash.update(frame)
        self.plain_len += size
        self.body_len += FRAME_HEADER + n
        self.chunks += 1
        self.finished = last
        return frame

    def frame(self, chunk: bytes | memoryview, *, last: bool = False) -> bytes:
        """The frame (u32 length + ciphertext) of the next chunk."""
        return bytes(self._seal(chunk, last))

    def write(self, out: BinaryIO, chunk: bytes | memoryview, *, last: bool = False) -> None:
        """Encrypt the next chunk and write its frame to ``out`` (one write, no copy)."""
        out.write(self._seal(chunk, last))


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
    device_pub: bytes | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Encrypt ``pieces`` chunk by chunk into ``out``; return (manifest, manifest bytes).

    Memory stays bounded by two chunks whatever the segment's size. Plaintext goes only to
    the hash and the cipher, never to ``out``; ``header.meta`` is sealed under the data key.
    The manifest is checked by the verifier's own rules before it is signed. ``out`` must
    take the bytes it is given before its ``write`` returns (a file does): frames come from
    one reused buffer.
    """
    body = BodyWriter(key, cipher, chunk_size)
    out.write(body.prefix())
    pending: bytes | memoryview | None = None
    for chunk in rechunk(pieces, chunk_size):
        if pending is not None:
            body.write(out, pending)
        pending = chunk
    body.write(out, pending if pending is not None else b"", last=True)
    return seal_trailer(
        out,
        body,
        header=header,
        link=link,
        device_id=device_id,
        boot_id=boot_id,
        signing_key=signing_key,
        sealed_utc=sealed_utc,
        device_pub=device_pub,
    )


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
    device_pub: bytes | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Write the manifest and signature after a finished :class:`BodyWriter` body.

    ``header.meta`` is sealed under the data key here, at the end, since a journaled
    segment's meta is only known when it ends. ``device_pub``: the raw public half of
    ``signing_key``, when the caller holds it (deriving it costs a scalar multiplication).
    """
    if not body.finished:
        raise FormatError("segment body: the final chunk is missing")
    dpk = device_pub if device_pub is not None else raw_public(signing_key.public_key())
    sealed_meta = aead_for(body.cipher, meta_key(body.key.secret, body.salt)).encrypt(
        META_NONCE, _meta_bytes(header.meta, f"{header.stream}#{link.seq}"), None
    )
    # A monotonic span is never negative: producers that derive one from wall-clock times
    # (a batch over a clock step) are clamped rather than refused, so no evidence is dropped.
    start_mono = max(0, header.start_mono_ns)
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
        "start_mono_ns": start_mono,
        "end_mono_ns": max(start_mono, header.end_mono_ns),
        "clock": _clock_json(header.clock),
        "content_type": header.content_type,
        "plain_len": body.plain_len,
        "plain_sha256": body.plain_hash.hexdigest(),
        "cipher": body.cipher,
        "key_id": body.key.key_id,
        "salt": body.salt.hex(),
        "chunk_size": body.chunk_size,
        "chunks": body.chunks,
        "body_len": body.body_len,
        "body_sha256": body.body_hash.hexdigest(),
        "device_pub": dpk.hex(),
        "signer": fingerprint(dpk),
        "sealed_utc": format_utc(sealed_utc),
        "batch": header.batch,
        "evicted": header.evicted,
        "sealed_meta": sealed_meta.hex(),
    }
    mbytes = canonical_json(manifest)
    if len(mbytes) > MAX_MANIFEST:
        raise FormatError(f"manifest of {len(mbytes)} bytes exceeds {MAX_MANIFEST}")
    check_segment_manifest(manifest, f"sealing {header.stream}#{link.seq}")
    sig = signing_key.sign(segment_context(VERSION) + mbytes)
    out.write(mbytes + sig + struct.pack(">I", len(mbytes)))
    return manifest, mbytes


@dataclass(frozen=True)
class SegmentInfo:
    """A segment's parsed trailer: every manifest field checked, the signature not yet."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    size: int

    @property
    def version(self) -> int:
        return int(self.manifest["v"])

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
    def content_type(self) -> str:
        return str(self.manifest["content_type"])

    @property
    def batch(self) -> str | None:
        """The batch of small records this segment seals (in clear, for the device)."""
        if self.version == 1:
            value = self.manifest["meta"].get("batch_id")
            return value if isinstance(value, str) else None
        batch = self.manifest["batch"]
        return None if batch is None else str(batch)

    @property
    def evicted(self) -> tuple[str, list[int]] | None:
        """(stream, seqs) the device says it overwrote, when this is such an event record."""
        if self.version == 1:
            meta = self.manifest["meta"]
            if self.stream != "event" or meta.get("type") != "telemetry_evicted":
                return None
            value: object = {"stream": meta.get("stream"), "seqs": meta.get("seqs")}
        else:
            value = self.manifest["evicted"]
            if value is None:
                return None
        return check_evicted(value, self.label)

    @property
    def manifest_hash(self) -> str:
        """What the next segment of the stream carries as ``prev``."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.device}/{self.stream}#{self.seq}"


def _check_prefix(prefix: bytes, magic: bytes, what: str, versions: tuple[int, ...]) -> int:
    if prefix[:6] != magic:
        raise FormatError(f"{what}: not an edge-agent {what} (bad magic {prefix[:6]!r})")
    (version,) = struct.unpack(">H", prefix[6:8])
    if version not in versions:
        known = " and ".join(str(v) for v in versions)
        raise FormatError(f"{what}: format version {version} is not supported (only {known})")
    return int(version)


def read_segment_info(f: BinaryIO) -> SegmentInfo:
    """Parse a segment's prefix and trailer and check every manifest field by value.

    The signature, the body and the sealed meta are checked by :func:`verify_segment`,
    :func:`decrypt_segment` and :func:`open_meta`.
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size < PREFIX_LEN + TRAILER_FIXED + 2:
        raise FormatError(f"segment: too short ({size} bytes): truncated")
    f.seek(0)
    version = _check_prefix(f.read(PREFIX_LEN), SEG_MAGIC, "segment", SEGMENT_VERSIONS)
    f.seek(size - 4)
    (mlen,) = struct.unpack(">I", f.read(4))
    if mlen > MAX_MANIFEST or PREFIX_LEN + mlen + TRAILER_FIXED > size:
        raise FormatError("segment: trailer length is impossible: truncated or not a segment")
    f.seek(size - TRAILER_FIXED - mlen)
    body = f.read(mlen)
    sig = f.read(64)
    manifest = parse_manifest(body, "segment", max_depth=MANIFEST_DEPTH[version])
    if manifest.get("v") != version:
        raise FormatError(
            f"segment: manifest version {manifest.get('v')!r} in a version {version} file"
        )
    check_segment_manifest(manifest)
    info = SegmentInfo(manifest, body, sig, size)
    if PREFIX_LEN + manifest["body_len"] + mlen + TRAILER_FIXED != size:
        _check_manifest_signature(info)
        raise FormatError(
            f"segment {info.label}: body is {size - PREFIX_LEN - mlen - TRAILER_FIXED} bytes, "
            f"manifest says {manifest['body_len']}: truncated or padded"
        )
    info.evicted  # noqa: B018 -- a malformed eviction record (version 1 meta) is a format error
    return info


def _check_manifest_signature(info: SegmentInfo) -> None:
    """Tell an altered manifest apart from a truncated file."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(info.manifest["device_pub"]))
        pub.verify(info.signature, segment_context(info.version) + info.manifest_bytes)
    except (ValueError, InvalidSignature):
        raise VerificationError(
            f"segment {info.label}: bad signature (manifest or signature altered)"
        ) from None


def _read_into(readinto: Callable[[memoryview], int | None], view: memoryview) -> int:
    """Fill ``view`` from a file; fewer bytes only at its end."""
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _frames(f: BinaryIO, info: SegmentInfo) -> Iterator[memoryview]:
    """Each of the ``chunks`` frames (u32 length + ciphertext, as stored), each of exactly the
    length a plaintext of ``plain_len`` cut at ``chunk_size`` gives.

    One read per frame into one reused buffer: a frame is valid until the next is read.
    """
    f.seek(PREFIX_LEN)
    chunks = int(info.manifest["chunks"])
    full, last = frame_sizes(info.manifest)
    buf = memoryview(bytearray(FRAME_HEADER + (full if chunks > 1 else last)))
    readinto = cast(io.BufferedIOBase, f).readinto
    for index in range(chunks):
        want = last if index == chunks - 1 else full
        frame = buf[: FRAME_HEADER + want]
        got = _read_into(readinto, frame)
        if got < FRAME_HEADER:
            raise VerificationError(f"{info.label}: body truncated")
        (n,) = _U32.unpack_from(frame)
        if n != want:
            raise VerificationError(
                f"{info.label}: chunk {index} frame is {n} bytes, not {want} (chunks must be "
                "cut at chunk_size)"
            )
        if got < FRAME_HEADER + want:
            raise VerificationError(f"{info.label}: body truncated")
        yield frame


class DecryptFailed(VerificationError):
    """The body is the one the device signed, but it does not decrypt to the signed
    plaintext: the wrong key, or chunks the device itself sealed wrongly."""


def check_signature(info: SegmentInfo, trusted: Ed25519PublicKey | None = None) -> None:
    """The manifest's signature, by ``device_pub`` (which must be ``trusted`` when pinned)."""
    pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(info.manifest["device_pub"]))
    if trusted is not None and raw_public(trusted) != raw_public(pub):
        raise VerificationError(
            f"{info.label}: signed by {info.manifest['signer']}, not by the pinned device key "
            f"{fingerprint(raw_public(trusted))}"
        )
    try:
        pub.verify(info.signature, segment_context(info.version) + info.manifest_bytes)
    except InvalidSignature:
        raise VerificationError(
            f"{info.label}: bad signature (manifest or signature altered)"
        ) from None


def _check_body_hash(info: SegmentInfo, body: Any) -> None:
    if not hmac.compare_digest(body.hexdigest(), info.manifest["body_sha256"]):
        raise VerificationError(f"{info.label}: body altered (SHA-256 of the body differs)")


def verify_body(f: BinaryIO, info: SegmentInfo) -> None:
    """Every frame's length and the body hash (no key needed); the signature is
    :func:`check_signature`'s."""
    h = hashlib.sha256()
    for frame in _frames(f, info):
        h.update(frame)
    _check_body_hash(info, h)


def verify_segment(f: BinaryIO, info: SegmentInfo, trusted: Ed25519PublicKey | None = None) -> None:
    """Check the signature, every frame's length and the body hash (no key needed)."""
    check_signature(info, trusted)
    verify_body(f, info)


def _chunk_failed(info: SegmentInfo, index: int) -> DecryptFailed:
    return DecryptFailed(
        f"{info.label}: chunk {index} fails authentication (altered, reordered or "
        "truncated, or the wrong key)"
    )


def _check_plain(info: SegmentInfo, plain_len: int, plain: Any) -> None:
    if plain_len != info.manifest["plain_len"] or not hmac.compare_digest(
        plain.hexdigest(), info.manifest["plain_sha256"]
    ):
        raise DecryptFailed(f"{info.label}: plaintext length or SHA-256 differs from manifest")


def decrypt_segment(
    f: BinaryIO, info: SegmentInfo, data_key: bytes, sink: Callable[[bytes], object]
) -> None:
    """Decrypt into ``sink`` chunk by chunk, checking order, the final mark and the plain hash.

    Callers should :func:`verify_segment` first (or use :func:`verify_decrypt_segment`, both
    in one read); this raises VerificationError on any mismatch, after which what reached
    ``sink`` must be discarded.
    """
    aead = aead_for(
        info.manifest["cipher"], segment_key(data_key, bytes.fromhex(info.manifest["salt"]))
    )
    chunks = int(info.manifest["chunks"])
    h = hashlib.sha256()
    n = 0
    for index, frame in enumerate(_frames(f, info)):
        try:
            pt = aead.decrypt(chunk_nonce(index, index == chunks - 1), frame[FRAME_HEADER:], None)
        except InvalidTag:
            raise _chunk_failed(info, index) from None
        h.update(pt)
        n += len(pt)
        sink(pt)
    _check_plain(info, n, h)


def verify_decrypt_body(
    f: BinaryIO, info: SegmentInfo, data_key: bytes, sink: Callable[[bytes], object]
) -> None:
    """:func:`verify_body` and :func:`decrypt_segment` in one read of the body: each frame is
    hashed, decrypted, and its plaintext hashed and given to ``sink`` as it goes by.

    The body is judged first: a body that is not the signed one raises the VerificationError
    :func:`verify_body` would, whatever the key or ``sink`` said about its chunks on the way
    (the frames after a failure are only hashed). Only a body that is the signed one can raise
    :class:`DecryptFailed` (a chunk fails authentication, the plaintext differs from its hash)
    or what ``sink`` raised. After any error, what reached ``sink`` must be discarded.
    """
    aead = aead_for(
        info.manifest["cipher"], segment_key(data_key, bytes.fromhex(info.manifest["salt"]))
    )
    chunks = int(info.manifest["chunks"])
    body = hashlib.sha256()
    plain = hashlib.sha256()
    n = 0
    failure: Exception | None = None
    for index, frame in enumerate(_frames(f, info)):
        body.update(frame)
        if failure is not None:
            continue
        try:
            pt = aead.decrypt(chunk_nonce(index, index == chunks - 1), frame[FRAME_HEADER:], None)
        except InvalidTag:
            failure = _chunk_failed(info, index)
            continue
        plain.update(pt)
        n += len(pt)
        try:
            sink(pt)
        except Exception as exc:  # judged after the body: see above
            failure = exc
    _check_body_hash(info, body)
    if failure is not None:
        raise failure
    _check_plain(info, n, plain)


def verify_decrypt_segment(
    f: BinaryIO,
    info: SegmentInfo,
    data_key: bytes,
    sink: Callable[[bytes], object],
    trusted: Ed25519PublicKey | None = None,
) -> None:
    """:func:`verify_segment` and :func:`decrypt_segment` together, the body read once
    (:func:`verify_decrypt_body`)."""
    check_signature(info, trusted)
    verify_decrypt_body(f, info, data_key, sink)


def open_meta(info: SegmentInfo, data_key: bytes | None) -> dict[str, Any]:
    """The segment's ``meta`` (officer, position, marks, record count, ...).

    Version 2 seals it under the segment's data key (``data_key``: the key record's key,
    unwrapped with the platform key); version 1 carried it in clear (``data_key`` unused).
    Check the signature (:func:`verify_segment`) first. Raises VerificationError when the
    sealed meta is altered or the key is wrong or missing, FormatError when what it holds is
    not a canonical JSON object.
    """
    if info.version == 1:
        return dict(info.manifest["meta"])
    if data_key is None:
        raise VerificationError(f"{info.label}: meta is sealed; reading it needs the platform key")
    aead = aead_for(
        info.manifest["cipher"], meta_key(data_key, bytes.fromhex(info.manifest["salt"]))
    )
    try:
        plain = aead.decrypt(META_NONCE, bytes.fromhex(info.manifest["sealed_meta"]), None)
    except InvalidTag:
        raise VerificationError(
            f"{info.label}: sealed meta fails authentication (altered, or the wrong key)"
        ) from None
    meta: dict[str, Any] = boundedjson.loads(plain, f"{info.label}: meta", max_bytes=MAX_MANIFEST)
    if canonical_json(meta) != plain:
        raise FormatError(f"{info.label}: meta is not in canonical form")
    return meta
