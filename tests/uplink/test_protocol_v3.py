"""Protocol 3's encodings, pure: bundles of whole segments and binary live fixes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FormatError
from agent.gps.wire import SIZE, encode_fix
from agent.model import Fix, FixMode
from agent.uplink import protocol as proto

H = "ab" * 32
FIX = Fix(
    time=1_750_000_000.25,
    mode=FixMode.FIX_3D,
    lat=-33.8688197,
    lon=151.2092955,
    alt=58.0,
    speed=0.0,
    track=359.99,
    quality=1,
    sats_used=17,
    hdop=0.7,
)


def _header(seq: int, size: int, stream: str = "gps") -> proto.ChunkHeader:
    return proto.ChunkHeader(stream, seq, "boot-1", H, size, 0)


def test_bundle_round_trip() -> None:
    members = [(_header(i, 100 + i), bytes([i]) * (100 + i)) for i in range(5)]
    payload = proto.encode_bundle(members)
    assert proto.is_bundle(payload) and not proto.is_bundle(proto.encode_chunk(*members[0]))
    back = proto.decode_bundle(payload)
    assert [(h, bytes(d)) for h, d in back] == members
    assert len(payload) == 6 + sum(proto.bundle_member_size(h) for h, _ in members)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"EAB1", "shorter"),
        (b"EAB1\x00\x01", "1 segments"),
        (b"EAB1\x00\x02\x00\x00\x00\x05abc", "cut short"),
        (b"EAB1\x00\x02" + b"\x00\x00\x00\x00" * 2, "shorter than its fixed header"),
    ],
)
def test_malformed_bundles(payload: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        proto.decode_bundle(payload)


def test_a_bundle_carries_whole_segments_only() -> None:
    whole = (_header(1, 10), b"x" * 10)
    part = proto.ChunkHeader("gps", 2, "b", H, 20, 0)
    with pytest.raises(FormatError, match="whole segments"):
        proto.encode_bundle([whole, (part, b"y" * 10)])
    # Forged by hand: a member that is a chunk of a larger segment is refused on decoding.
    chunk = proto.encode_chunk(part, b"y" * 10)
    good = proto.encode_chunk(*whole)
    forged = b"EAB1\x00\x02" + b"".join(len(c).to_bytes(4, "big") + c for c in (good, chunk))
    with pytest.raises(FormatError, match="not a whole segment"):
        proto.decode_bundle(forged)
    with pytest.raises(FormatError, match="after the last member"):
        proto.decode_bundle(proto.encode_bundle([whole, whole]) + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_bundle_only_raises_format_error(tail: bytes) -> None:
    with contextlib.suppress(FormatError):
        for header, data in proto.decode_bundle(b"EAB1" + tail):
            assert header.offset == 0 and len(data) == header.size


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_bundles_only_raise_format_error(data: st.DataObject) -> None:
    payload = bytearray(proto.encode_bundle([(_header(i, 40), bytes([i]) * 40) for i in range(3)]))
    for _ in range(data.draw(st.integers(1, 6))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(FormatError):
        for header, chunk in proto.decode_bundle(bytes(payload)):
            assert header.offset == 0 and len(chunk) == header.size


# --------------------------------------------------------------------------- live fixes


def test_a_live_fix_is_its_wire_fix() -> None:
    payload = proto.encode_live_fix(FIX)
    assert payload == encode_fix(FIX) and len(payload) == SIZE
    assert proto.decode_live_fix(payload) == FIX.to_tpv()


@pytest.mark.parametrize(
    "extra",
    [
        {"inputs": {"brush": True, "pump": False, "lift": False, "ignition": False}, "in": []},
        {"inputs": {"brush": False, "pump": True, "lift": True}, "in": ["zone-1", "jt808.route.9"]},
        {"in": ["a" * 64]},
    ],
)
def test_vehicle_fields_travel_in_a_trailer(extra: dict[str, object]) -> None:
    payload = proto.encode_live_fix(FIX, extra)
    assert payload is not None
    back = proto.decode_live_fix(payload)
    want = json.loads(proto.live_fix_json(FIX, extra))
    want.setdefault("inputs", {"brush": False, "pump": False, "lift": False})
    assert back == want
    assert len(payload) <= SIZE + 2 + sum(1 + len(a) for a in extra.get("in", []))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "extra",
    [
        {"other": 1},
        {"inputs": {"brush": "yes"}},
        {"inputs": {"horn": True}},
        {"in": ["not an id!"]},
        {"in": ["x"] * 33},
        {"in": "zone"},
    ],
)
def test_what_the_trailer_cannot_carry_goes_as_json(extra: dict[str, object]) -> None:
    assert proto.encode_live_fix(FIX, extra) is None


def test_a_time_beyond_the_wire_goes_as_json() -> None:
    assert proto.encode_live_fix(Fix(time=2**33, mode=FixMode.FIX_3D, lat=1.0, lon=2.0)) is None


def test_json_live_fixes_are_still_read() -> None:
    payload = proto.live_fix_json(FIX, {"inputs": {"brush": True}, "in": []})
    assert proto.decode_live_fix(payload)["inputs"] == {"brush": True}


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "empty"),
        (b"\x21" * 27, "neither JSON nor a wire fix"),
        (encode_fix(FIX) + b"\x00", "truncated trailer"),
        (encode_fix(FIX) + b"\x20\x00", "reserved"),
        (encode_fix(FIX) + b"\x02\x00", "reserved"),  # ignition on, but not known
        (encode_fix(FIX) + b"\x00\x21", "areas"),
        (encode_fix(FIX) + b"\x00\x01\x05ab", "truncated area"),
        (encode_fix(FIX) + b"\x00\x01\x02a/", "malformed area"),
        (encode_fix(FIX) + b"\x00\x00\x00", "after the trailer"),
        (b"{not json", "JSON"),
    ],
)
def test_malformed_live_fixes(payload: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        proto.decode_live_fix(payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_decode_live_fix_only_raises_format_error(payload: bytes) -> None:
    with contextlib.suppress(FormatError):
        obj = proto.decode_live_fix(payload)
        assert isinstance(obj, dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_any_trailer_after_a_good_fix_only_raises_format_error(tail: bytes) -> None:
    with contextlib.suppress(FormatError):
        obj = proto.decode_live_fix(encode_fix(FIX) + tail)
        assert obj["lat"] == FIX.lat
