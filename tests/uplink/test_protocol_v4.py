"""Protocol 4's compact forms, pure: compact segments rebuild the sealed bytes exactly, compact
acknowledgements are bound to the device's own hashes, and every decoder refuses malformed
input with a FormatError only (docs/protocol.md, "Compact segments")."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FormatError, VerificationError
from agent.storage.keys import init_device_keys
from agent.storage.seal import read_segment_info
from agent.uplink import compact
from agent.uplink.settings import UplinkSettings
from tests.uplink.harness import Device, make_platform


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Five sealed GPS-sized segments of one stream, as the device's spool holds them."""
    tmp = tmp_path_factory.mktemp("v4")
    platform = make_platform(tmp / "platform")
    init_device_keys(tmp / "dev" / "keys")
    dev = Device("trk-7", tmp / "dev", None, platform, 0, UplinkSettings())  # type: ignore[arg-type]
    spool = dev.open_spool()
    try:
        for i in range(5):
            dev.put(spool, "gps", bytes(range(256)) * 2 + i.to_bytes(2, "big") * 30)
    finally:
        spool.close()
    return [dev.expected[("gps", i)] for i in range(5)]


def _base(data: bytes, seq: int) -> compact.Base:
    return compact.Base(seq, compact.split_segment(data)[1])


def test_compact_segments_rebuild_the_sealed_bytes(sealed: list[bytes]) -> None:
    first = compact.encode_segment(sealed[0], 0, None)
    assert first is not None and compact.is_compact(first)
    assert compact.decode_segment(first, None) == sealed[0]
    for seq in range(1, 5):
        base = _base(sealed[seq - 1], seq - 1)
        payload = compact.encode_segment(sealed[seq], seq, base)
        assert payload is not None
        assert compact.decode_segment(payload, base) == sealed[seq]
        # The manifest (~1 KB) shrinks to what differs from the base's: the fresh hashes,
        # salt, sealed meta, times; prev and body_sha256 are not sent at all.
        _body, manifest, _sig = compact.split_segment(sealed[seq])
        assert len(payload) < len(sealed[seq]) - len(manifest) + 200, len(payload)
        head = compact.read_head(payload)
        assert (head.seq, head.base_seq) == (seq, seq - 1)
        assert head.base_check == base.hash[:4]
        # Still the same segment for any verifier.
        info = read_segment_info(io.BytesIO(compact.decode_segment(payload, base)))
        assert info.seq == seq


def test_a_wrong_base_is_refused(sealed: list[bytes]) -> None:
    base = _base(sealed[1], 1)
    payload = compact.encode_segment(sealed[2], 2, base)
    assert payload is not None
    with pytest.raises(FormatError, match="base was not given"):
        compact.decode_segment(payload, None)
    with pytest.raises(FormatError, match="differs"):
        compact.decode_segment(payload, _base(sealed[0], 1))  # seq 1, another manifest
    with pytest.raises(FormatError, match="differs"):
        compact.decode_segment(payload, _base(sealed[1], 0))
    # A base that is not earlier than the segment is not one the device would name.
    assert compact.encode_segment(sealed[2], 3, base) is None  # not its seq


def test_what_cannot_be_rebuilt_exactly_goes_as_a_chunk() -> None:
    assert compact.encode_segment(b"EASEG\x00\x00\x01" + b"x" * 200, 0, None) is None
    assert compact.encode_segment(b"not a segment", 0, None) is None


@pytest.mark.parametrize(
    "obj",
    [
        {"clock": {"offset_s": -0.0123, "source": "ntp", "synced": True}, "v": 2},
        {"odd": "héllo \u2603", "hex": "ABCD", "n": -5, "big": 2**62, "f": 1e-7, "x": None},
        {"t": "2026-02-28T23:59:59.999Z", "bad_t": "2026-02-30T00:00:00.000Z", "e": ""},
        {"nested": [1, {"a": [True, False]}], "prev": None, "evicted": {"stream": "gps"}},
    ],
)
def test_the_manifest_coding_gives_back_any_object(obj: dict[str, object]) -> None:
    base = {"v": 2, "t": "2026-02-28T23:58:59.000Z", "n": 7, "hex": "00"}
    base_bytes = compact.canonical(base)
    for b, bb in ((None, None), (base, hashlib.sha256(base_bytes).hexdigest())):
        coding = compact.encode_manifest(obj, b, "ab" * 32, bb)
        assert compact.decode_manifest(coding, b, "ab" * 32, bb) == compact.canonical(obj)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"EAM2\x00\x00", "magic"),
        (b"EAM1\x02\x00", "flags"),
        (b"EAM1\x01\x03\x03abcd", "earlier"),
        (b"EAM1\x01\x03", "cut short"),
        (b"EAM1\x00" + b"\xff" * 11, "64 bits"),
        (b"EAM1\x00\x01\x01\x1c" + b"s" * 64, "key index 28"),
        (b"EAM1\x00\x01\x01\x00" + b"s" * 64, "base that lacks"),
        (b"EAM1\x00\x01\x01\xd2" + b"s" * 64, "no base"),
        (b"EAM1\x00\x01\x02\x9f\x00" + b"s" * 64, "a key of 0 bytes"),
        (b"EAM1\x00\x01\x03\x92\x7f\x7f" + b"s" * 64, "out of range"),
        (b"EAM1\x00\x01\x03\xf2\x01\x80" + b"s" * 64, "printable"),
        (b"EAM1\x00\x01\x06\x32\x01\x31\x32\x01\x32" + b"s" * 64, "twice"),
        (b"EAM1\x00\x01\x05\x32\x02\x31\x32" + b"s" * 10, "cut short"),
    ],
)
def test_malformed_compact_segments(payload: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        compact.decode_segment(payload, None)


def test_a_huge_manifest_is_refused() -> None:
    many = b"".join(
        bytes([compact.STR << 5 | compact.KEY_NAMED, 2]) + f"k{i}".encode()[:2] + b"\x00"
        for i in range(10, 80)
    )
    with pytest.raises(FormatError, match=r"more than 64 fields|twice"):
        compact.decode_manifest(many, None, "", None)
    big = bytes([compact.STR << 5 | 0]) + compact._uvarint(300_000) + b"a" * 300_000
    with pytest.raises(FormatError, match="exceed"):
        compact.decode_manifest(big, None, "", None)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_compact_segments_only_raise_format_error(
    sealed: list[bytes], data: st.DataObject
) -> None:
    base = _base(sealed[2], 2)
    payload = compact.encode_segment(sealed[3], 3, base)
    assert payload is not None
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, min(len(buf) - 1, 220)))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    for candidate in (bytes(buf), bytes(buf[:cut])):
        try:
            out = compact.decode_segment(candidate, base)
        except FormatError:
            continue
        assert isinstance(out, bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_after_the_magic_only_raise_format_error(tail: bytes) -> None:
    for base in (None, compact.Base(0, b'{"v":2}')):
        with contextlib.suppress(FormatError):
            compact.decode_segment(b"EAM1" + tail, base)


# --------------------------------------------------------------------------- acknowledgements

H1, H2 = "11" * 32, "22" * 32


def _resolver(known: dict[tuple[str, int], str]):  # type: ignore[no-untyped-def]
    return lambda stream, seq: known.get((stream, seq))


def test_compact_acks_are_bound_to_the_device_and_its_hashes() -> None:
    key = Ed25519PrivateKey.generate()
    acks = [
        compact.CompactAck(compact.STORED, "gps", 7, H1),
        compact.CompactAck(compact.DUPLICATE, "event", 12345678, H2),
        compact.CompactAck(compact.PLAIN, "gps", 9),
    ]
    (msg,) = compact.encode_acks("trk-7", acks, key)
    assert compact.is_compact_ack(msg) and len(msg) < 100
    known = {("gps", 7): H1, ("event", 12345678): H2}
    assert compact.parse_acks(msg, "trk-7", key.public_key(), _resolver(known)) == acks
    # Another device, another hash, another key: nothing is believed.
    with pytest.raises(VerificationError):
        compact.parse_acks(msg, "trk-8", key.public_key(), _resolver(known))
    with pytest.raises(VerificationError):
        compact.parse_acks(msg, "trk-7", key.public_key(), _resolver({**known, ("gps", 7): H2}))
    with pytest.raises(VerificationError):
        other = Ed25519PrivateKey.generate().public_key()
        compact.parse_acks(msg, "trk-7", other, _resolver(known))
    with pytest.raises(VerificationError, match="lacks"):
        compact.parse_acks(msg, "trk-7", key.public_key(), _resolver({("gps", 7): H1}))
    # A flipped byte anywhere is never taken as genuine.
    for i in range(len(msg)):
        bad = bytearray(msg)
        bad[i] ^= 0x01
        with pytest.raises((VerificationError, FormatError)):
            compact.parse_acks(bytes(bad), "trk-7", key.public_key(), _resolver(known))


def test_many_acks_split_into_messages() -> None:
    key = Ed25519PrivateKey.generate()
    acks = [compact.CompactAck(compact.STORED, "gps", i, H1) for i in range(700)]
    msgs = compact.encode_acks("trk-7", acks, key)
    assert len(msgs) == 2
    got = [
        a for m in msgs for a in compact.parse_acks(m, "trk-7", key.public_key(), lambda s, q: H1)
    ]
    assert got == acks


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xa4", "too short"),
        (b"{" + b"\x00" * 70, "magic"),
        (b"\xa4\x00" + b"\x00" * 64, "0 entries"),
        (b"\xa4\x01\x07\x03gps\x01" + b"\x00" * 64, "unknown kind"),
        (b"\xa4\x01\x02\x03GPS\x01" + b"\x00" * 64, "stream"),
        (b"\xa4\x01\x02\x03gps\x01\x00" + b"\x00" * 64, "after the last"),
        (b"\xa4\x02\x02\x03gps\x01" + b"\x00" * 64, "cut short"),
    ],
)
def test_malformed_compact_acks(payload: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        compact.parse_acks(payload, "trk-7", None, lambda s, q: H1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_compact_ack_bytes_only_raise_format_or_verification_errors(tail: bytes) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    with contextlib.suppress(FormatError, VerificationError):
        compact.parse_acks(b"\xa4" + tail, "trk-7", key, lambda s, q: H1)


def test_the_doc_names_every_manifest_key() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert " ".join(compact.KEYS) in " ".join(text.split())
    manifest_keys = json.loads(
        b'{"batch":0,"body_len":0,"body_sha256":0,"boot":0,"chunk_size":0,"chunks":0,'
        b'"cipher":0,"clock":0,"content_type":0,"device":0,"device_pub":0,"end_mono_ns":0,'
        b'"end_utc":0,"evicted":0,"key_id":0,"kind":0,"plain_len":0,"plain_sha256":0,'
        b'"prev":0,"salt":0,"sealed_meta":0,"sealed_utc":0,"seq":0,"signer":0,'
        b'"start_mono_ns":0,"start_utc":0,"stream":0,"v":0}'
    )
    assert tuple(sorted(manifest_keys)) == compact.KEYS


def test_compact_key_records_rebuild_the_record(tmp_path: Path) -> None:
    platform = make_platform(tmp_path / "platform")
    init_device_keys(tmp_path / "dev" / "keys")
    dev = Device("trk-7", tmp_path / "dev", None, platform, 0, UplinkSettings())  # type: ignore[arg-type]
    spool = dev.open_spool()
    try:
        dev.put(spool, "gps", b"x" * 100)
        record = spool.key_record(spool.items()[0].key_id)
    finally:
        spool.close()
    payload = compact.encode_key_record(record)
    assert payload is not None and compact.is_compact_key(payload)
    assert len(payload) < len(record) * 0.7, (len(payload), len(record))
    assert compact.decode_key_record(payload) == record
    assert compact.encode_key_record(b"EAKEY\x00\x00\x02" + record[8:]) is None
    for bad in (payload[:-1], payload + b"\x00", b"EAK2" + payload[4:], b"EAK1\xff\xff\xff\xff"):
        with pytest.raises(FormatError):
            compact.decode_key_record(bad)
    # BODYHASH means nothing in a key record
    with pytest.raises(FormatError, match="no body"):
        compact.decode_key_record(b"EAK1\x01" + bytes([compact.BODYHASH << 5]) + b"s" * 64)


def test_key_acks_travel_compact() -> None:
    key = Ed25519PrivateKey.generate()
    acks = [compact.CompactAck(compact.KEY, key_id="0123456789abcdef")]
    (msg,) = compact.encode_acks("trk-7", acks, key)
    assert compact.parse_acks(msg, "trk-7", key.public_key(), lambda s, q: None) == acks
    bad = bytearray(msg)
    bad[3] ^= 1  # another key id
    with pytest.raises(VerificationError):
        compact.parse_acks(bytes(bad), "trk-7", key.public_key(), lambda s, q: None)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_compact_key_record_bytes_only_raise_format_error(tail: bytes) -> None:
    with contextlib.suppress(FormatError):
        compact.decode_key_record(b"EAK1" + tail)
