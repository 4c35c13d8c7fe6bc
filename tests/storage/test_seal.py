"""Round trips and tampering of the sealed format, byte by byte."""

from __future__ import annotations

import io
import os
import struct

import pytest

from agent.errors import FormatError, VerificationError
from agent.model import ClockSource, ClockState
from agent.storage.seal import (
    PREFIX_LEN,
    ChainLink,
    DecryptFailed,
    SegmentHeader,
    decrypt_segment,
    parse_key_record,
    read_segment_info,
    verify_decrypt_segment,
    verify_segment,
)
from tests.fixtures.keys import KeySet, make_sealer

CHUNK = 1024


def _header(stream: str = "video") -> SegmentHeader:
    return SegmentHeader(
        stream=stream,
        content_type="video/mp4",
        start_utc=1_790_000_000.0,
        end_utc=1_790_000_030.0,
        start_mono_ns=5,
        end_mono_ns=30_000_000_005,
        clock=ClockState(ClockSource.GNSS, 0.012),
        meta={"officer": "A1"},
    )


def _seal(keyset: KeySet, data: bytes, cipher: str = "aes-256-gcm") -> tuple[bytes, bytes]:
    sealer = make_sealer(keyset, cipher=cipher, chunk_size=CHUNK)
    key = sealer.current_key()
    out = io.BytesIO()
    # Feed in odd-sized pieces: the sealer must rechunk.
    pieces = [data[i : i + 333] for i in range(0, len(data), 333)]
    sealer.seal(out, _header(), ChainLink(0, None), pieces, key)
    return out.getvalue(), key.record


def _open(keyset: KeySet, blob: bytes, record: bytes) -> bytes:
    f = io.BytesIO(blob)
    info = read_segment_info(f)
    verify_segment(f, info)
    dk = parse_key_record(record).unwrap(keyset.platform_private)
    out = bytearray()
    decrypt_segment(f, info, dk, out.extend)
    return bytes(out)


def _open_one_read(keyset: KeySet, blob: bytes, record: bytes) -> bytes:
    """The platform's way: signature, then body hash and decryption in one read."""
    f = io.BytesIO(blob)
    info = read_segment_info(f)
    dk = parse_key_record(record).unwrap(keyset.platform_private)
    out = bytearray()
    verify_decrypt_segment(f, info, dk, out.extend)
    return bytes(out)


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_round_trip(keyset: KeySet, cipher: str, size: int) -> None:
    data = os.urandom(size)
    blob, record = _seal(keyset, data, cipher)
    assert _open(keyset, blob, record) == data
    assert _open_one_read(keyset, blob, record) == data
    info = read_segment_info(io.BytesIO(blob))
    m = info.manifest
    assert (m["device"], m["stream"], m["seq"], m["prev"]) == ("dev-1", "video", 0, None)
    assert m["plain_len"] == size and m["cipher"] == cipher
    assert m["clock"] == {"source": "gnss", "offset_s": 0.012}
    assert m["chunks"] == max(1, -(-size // CHUNK))
    assert m["start_utc"] == "2026-09-21T14:13:20.000Z"
    # Plaintext never appears in the sealed bytes.
    if size >= 16:
        assert data[:16] not in blob


def test_device_cannot_read_back_without_platform_key(keyset: KeySet) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    _blob, record = _seal(keyset, b"secret evidence" * 100)
    with pytest.raises(VerificationError, match="not to the given key"):
        parse_key_record(record).unwrap(X25519PrivateKey.generate())


def _flip(blob: bytes, pos: int) -> bytes:
    b = bytearray(blob)
    b[pos] ^= 0x01
    return bytes(b)


def _trailer(blob: bytes) -> tuple[int, int]:
    (mlen,) = struct.unpack(">I", blob[-4:])
    sig_at = len(blob) - 68
    return sig_at - mlen, sig_at


REGIONS = {
    # region: (offset from start, or negative from the manifest/signature), error, message
    "magic": ("start", 0, FormatError, "not an edge-agent"),
    "version": ("start", 7, FormatError, "version"),
    "frame length": ("start", PREFIX_LEN + 2, VerificationError, "cut at chunk_size"),
    "body": ("start", PREFIX_LEN + 100, VerificationError, "body altered"),
    "last chunk tag": ("manifest", -1, VerificationError, "body altered"),
    "manifest": ("manifest", 20, (FormatError, VerificationError), "manifest|signature"),
    "signature": ("signature", 10, VerificationError, "bad signature"),
    "length": ("end", -1, FormatError, "truncated|impossible|JSON|canonical"),
}


@pytest.mark.parametrize("reads", ["two reads", "one read"])
@pytest.mark.parametrize("region", sorted(REGIONS))
def test_bit_flip_is_detected_and_named(keyset: KeySet, region: str, reads: str) -> None:
    """The same error by name whether the body is hashed and decrypted in one read or two:
    a flipped body byte is "body altered" even though its chunk also fails authentication."""
    blob, record = _seal(keyset, os.urandom(3 * CHUNK))
    man_at, sig_at = _trailer(blob)
    base, offset, exc, msg = REGIONS[region]
    pos = {"start": 0, "manifest": man_at, "signature": sig_at, "end": len(blob)}[base] + offset
    opener = _open if reads == "two reads" else _open_one_read
    with pytest.raises(exc, match=msg):
        opener(keyset, _flip(blob, pos), record)


def test_manifest_edit_breaks_signature(keyset: KeySet) -> None:
    blob, record = _seal(keyset, b"x" * 5000)
    man_at, sig_at = _trailer(blob)
    manifest = blob[man_at:sig_at]
    edited = manifest.replace(
        b'"start_utc":"2026-09-21T14:13:20.000Z"', b'"start_utc":"2026-09-21T14:13:21.000Z"'
    )
    assert edited != manifest
    with pytest.raises(VerificationError, match="bad signature"):
        _open(keyset, blob[:man_at] + edited + blob[sig_at:], record)


def test_truncation_is_detected(keyset: KeySet) -> None:
    blob, record = _seal(keyset, os.urandom(5000))
    for cut in (1, 68, 500, len(blob) - 9):
        with pytest.raises((FormatError, VerificationError)):
            _open(keyset, blob[:-cut], record)


def test_reordered_chunks_fail_even_with_a_forged_body_hash(keyset: KeySet) -> None:
    """Swapping two chunks changes the body hash; and AEAD nonces bind each chunk's position."""
    data = os.urandom(3 * CHUNK)
    blob, record = _seal(keyset, data)
    frame = 4 + CHUNK + 16
    a = blob[PREFIX_LEN : PREFIX_LEN + frame]
    b = blob[PREFIX_LEN + frame : PREFIX_LEN + 2 * frame]
    swapped = blob[:PREFIX_LEN] + b + a + blob[PREFIX_LEN + 2 * frame :]
    with pytest.raises(VerificationError, match="body altered"):
        _open(keyset, swapped, record)
    # Even decrypting without the body-hash check, chunk 0 no longer authenticates.
    f = io.BytesIO(swapped)
    info = read_segment_info(f)
    dk = parse_key_record(record).unwrap(keyset.platform_private)
    with pytest.raises(VerificationError, match="chunk 0 fails authentication"):
        decrypt_segment(f, info, dk, lambda _b: None)


def test_dropping_the_final_chunk_is_detected_by_decryption(keyset: KeySet) -> None:
    """The last chunk's nonce is marked: a shortened body cannot pass as complete."""
    data = os.urandom(3 * CHUNK)
    blob, record = _seal(keyset, data)
    f = io.BytesIO(blob)
    info = read_segment_info(f)
    dk = parse_key_record(record).unwrap(keyset.platform_private)
    # Pretend the manifest said 2 chunks: chunk 1 was encrypted as "not last".
    forged = info.__class__(
        {**info.manifest, "plain_len": 2 * CHUNK, "chunks": 2, "body_len": 2 * (4 + CHUNK + 16)},
        info.manifest_bytes,
        info.signature,
        info.size,
    )
    with pytest.raises(VerificationError, match="chunk 1 fails authentication"):
        decrypt_segment(f, forged, dk, lambda _b: None)


def test_key_record_tampering(keyset: KeySet) -> None:
    _blob, record = _seal(keyset, b"abc")
    with pytest.raises(VerificationError, match="bad signature"):
        parse_key_record(record.replace(b'"boot":"boot-a"', b'"boot":"boot-b"'))
    with pytest.raises(FormatError):
        parse_key_record(record[:-3])
    with pytest.raises(FormatError, match="not an edge-agent"):
        parse_key_record(b"X" + record[1:])


def test_other_versions_are_rejected(keyset: KeySet) -> None:
    blob, _ = _seal(keyset, b"abc")
    v3 = blob[:6] + struct.pack(">H", 3) + blob[8:]
    with pytest.raises(FormatError, match="version 3 is not supported"):
        read_segment_info(io.BytesIO(v3))
    # A version 2 manifest in a file whose prefix says version 1 is refused too.
    v1 = blob[:6] + struct.pack(">H", 1) + blob[8:]
    with pytest.raises(FormatError, match="manifest version 2 in a version 1 file"):
        read_segment_info(io.BytesIO(v1))


def test_pinned_device_key(keyset: KeySet) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    blob, _ = _seal(keyset, b"abc")
    f = io.BytesIO(blob)
    info = read_segment_info(f)
    verify_segment(f, info, keyset.signing_key.public_key())
    with pytest.raises(VerificationError, match="not by the pinned device key"):
        verify_segment(f, info, Ed25519PrivateKey.generate().public_key())


def test_one_read_judges_the_body_before_what_the_sink_said(keyset: KeySet) -> None:
    """A sink that refuses the first chunk does not hide an altered body further on: the body
    is hashed to its end and named first; with the body intact, the sink's own error stands."""
    blob, record = _seal(keyset, os.urandom(3 * CHUNK))
    dk = parse_key_record(record).unwrap(keyset.platform_private)

    def refuse(_data: bytes) -> None:
        raise FormatError("the content is not what its meta says")

    altered = _flip(blob, PREFIX_LEN + 2 * (4 + CHUNK + 16) + 50)  # in the third chunk
    f = io.BytesIO(altered)
    with pytest.raises(VerificationError, match="body altered"):
        verify_decrypt_segment(f, read_segment_info(f), dk, refuse)
    f = io.BytesIO(blob)
    with pytest.raises(FormatError, match="not what its meta says"):
        verify_decrypt_segment(f, read_segment_info(f), dk, refuse)


def test_one_read_with_the_wrong_key_is_a_decryption_failure_not_an_altered_body(
    keyset: KeySet,
) -> None:
    blob, _record = _seal(keyset, os.urandom(2 * CHUNK))
    f = io.BytesIO(blob)
    info = read_segment_info(f)
    with pytest.raises(DecryptFailed, match="chunk 0 fails authentication"):
        verify_decrypt_segment(f, info, os.urandom(32), lambda _b: None)
    verify_segment(f, info)  # the body itself is the signed one
