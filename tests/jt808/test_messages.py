"""Message bodies: round trips (hypothesis) and strict refusal of malformed bodies."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FormatError
from agent.jt808 import area_bodies as ab
from agent.jt808 import messages as m
from agent.jt808.codec import encode_frame
from agent.jt808.describe import describe_frame

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
coord = st.integers(-180_000_000, 180_000_000)
bcd12 = st.text("0123456789", min_size=12, max_size=12)
items = st.lists(st.tuples(u8, st.binary(max_size=255)), max_size=6).map(tuple)

locations = st.builds(
    m.Location,
    alarm=u32,
    status=u32.map(lambda s: s & ~0b1100),
    lat_e6=st.integers(-90_000_000, 90_000_000),
    lon_e6=coord,
    altitude_m=u16,
    speed_dkmh=u16,
    direction=st.integers(0, 359),
    time_bcd=bcd12,
    items=items,
)


@given(locations)
def test_location_round_trip(loc: m.Location) -> None:
    body = m.encode_location(loc)
    back = m.decode_location(body)
    status = loc.status | (4 if loc.lat_e6 < 0 else 0) | (8 if loc.lon_e6 < 0 else 0)
    assert back == m.Location(**{**_fields(loc), "status": status})
    assert len(body) == 28 + sum(2 + len(v) for _, v in loc.items)


def _fields(loc: m.Location) -> dict[str, object]:
    return {f: getattr(loc, f) for f in loc.__slots__}  # type: ignore[attr-defined]


@settings(max_examples=50)
@given(st.lists(locations, min_size=0, max_size=5), st.sampled_from([0, 1]))
def test_batch_round_trip(locs: list[m.Location], kind: int) -> None:
    bodies = [m.encode_location(x) for x in locs]
    k, back = m.decode_batch(m.encode_batch(bodies, kind))
    assert k == kind and [m.encode_location(x) for x in back] == bodies


@given(
    st.builds(
        m.Registration,
        province=u16,
        city=u16,
        manufacturer=st.text("ABCDEFGHIJ0123456789", max_size=11),
        model=st.text("abcXYZ-_ 0123", max_size=30).map(str.strip),
        terminal_id=st.text("ABC0123456789", max_size=30),
        plate_color=u8,
        plate=st.sampled_from(["", "粤B12345", "京A00001", "LSVAU033512345678"]),
    )
)
def test_registration_round_trip_2019(reg: m.Registration) -> None:
    assert m.decode_registration(m.encode_registration(reg, True), True) == reg


@given(st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=60))
def test_authentication_round_trip(code: str) -> None:
    a = m.Authentication(code, "860000000000001", "edge-agent 0.1.0")
    assert m.decode_authentication(m.encode_authentication(a, True), True) == a
    assert m.decode_authentication(m.encode_authentication(a, False), False).code == code


@given(u16, u16, st.integers(0, 4))
def test_general_response_round_trip(serial: int, msg_id: int, result: int) -> None:
    r = m.GeneralResponse(serial, msg_id, result)
    assert m.decode_general_response(m.encode_general_response(r)) == r


@given(u16, st.lists(st.integers(1, 0xFFFF), max_size=20), st.booleans())
def test_resend_request_round_trip(serial: int, numbers: list[int], v2019: bool) -> None:
    body = m.encode_resend_request(serial, numbers, v2019)
    assert m.decode_resend_request(body, v2019) == (serial, numbers)


@given(st.lists(st.tuples(u32, st.binary(max_size=20)), max_size=10))
def test_params_round_trip(params: list[tuple[int, bytes]]) -> None:
    assert m.decode_params(m.encode_params(params)) == params


limits = st.none() | st.builds(ab.Limit, u16, u8, u16)
times = st.none() | st.tuples(bcd12, bcd12)


def _attr(base: int, t: object, lim: object) -> int:
    a = base & ~0b11
    return a | (1 if t is not None else 0) | (2 if lim is not None else 0)


@settings(max_examples=100)
@given(
    st.lists(
        st.tuples(
            u32, u16, coord, coord, u32, times, limits, st.sampled_from(["", "depot", "市场"])
        ),
        max_size=4,
    ),
    st.sampled_from([0, 1, 2]),
)
def test_circles_round_trip(raw: list[tuple], action: int) -> None:  # type: ignore[type-arg]
    areas = []
    for aid, base, lat, lon, r, t, lim, name in raw:
        attr = _attr(base, t, lim) & ~(ab.A_SOUTH | ab.A_WEST)
        attr |= (ab.A_SOUTH if lat < 0 else 0) | (ab.A_WEST if lon < 0 else 0)
        areas.append(ab.CircleArea(aid, attr, lat, lon, r, t, lim, name))
    back = ab.decode_circles(ab.encode_circles(action, areas), True)
    assert back == (action, areas)


@settings(max_examples=100)
@given(
    u32,
    u16,
    times,
    limits,
    st.lists(st.tuples(st.integers(0, 90_000_000), st.integers(0, 180_000_000)), max_size=50),
)
def test_polygon_round_trip(
    aid: int, base: int, t: object, lim: ab.Limit | None, pts: list
) -> None:  # type: ignore[type-arg]
    attr = _attr(base, t, lim) & ~(ab.A_SOUTH | ab.A_WEST)
    p = ab.PolygonArea(aid, attr, tuple(pts), t, lim, "north")  # type: ignore[arg-type]
    assert ab.decode_polygon(ab.encode_polygon(p), True) == p


@settings(max_examples=100)
@given(
    u32,
    times,
    st.lists(
        st.tuples(
            u32,
            u32,
            st.integers(0, 90_000_000),
            st.integers(0, 180_000_000),
            u8,
            st.booleans(),
            st.booleans(),
        ),
        max_size=20,
    ),
)
def test_route_round_trip(rid: int, t: object, raw: list) -> None:  # type: ignore[type-arg]
    pts = []
    for pid, sid, lat, lon, width, timed, limited in raw:
        attr = (ab.S_DRIVING_TIME if timed else 0) | (ab.S_SPEED_LIMIT if limited else 0)
        pts.append(
            ab.RoutePoint(pid, sid, lat, lon, width, attr, (10, 5) if timed else None,
                          ab.Limit(40, 10, 30) if limited else None)
        )  # fmt: skip
    rt = ab.RouteLine(rid, 1 if t is not None else 0, tuple(pts), t, "r1")  # type: ignore[arg-type]
    assert ab.decode_route(ab.encode_route(rt), True) == rt


@given(st.binary(max_size=200))
def test_every_body_decoder_raises_only_format_errors(body: bytes) -> None:
    decoders = [
        lambda b: m.decode_location(b),
        lambda b: m.decode_batch(b),
        lambda b: m.decode_registration(b, True),
        lambda b: m.decode_register_response(b),
        lambda b: m.decode_authentication(b, True),
        lambda b: m.decode_params(b),
        lambda b: m.decode_param_ids(b),
        lambda b: m.decode_text(b, True),
        lambda b: m.decode_alarm_confirm(b),
        lambda b: m.decode_resend_request(b, True),
        lambda b: ab.decode_circles(b, True),
        lambda b: ab.decode_rects(b, True),
        lambda b: ab.decode_polygon(b, True),
        lambda b: ab.decode_route(b, True),
        lambda b: ab.decode_delete(b, "delete"),
    ]
    for dec in decoders:
        with contextlib.suppress(FormatError):
            dec(body)


@given(st.integers(0, 0xFFFF), st.binary(max_size=300), st.booleans())
def test_describe_never_raises(msg_id: int, body: bytes, v2019: bool) -> None:
    raw = encode_frame(msg_id, body, phone="13800000001", serial=1, version=1 if v2019 else None)
    out = describe_frame(raw)
    assert out["message_id"] == f"0x{msg_id:04x}"
    assert "body" in out or "body_hex" in out


@pytest.mark.parametrize(
    "decode, body, match",
    [
        (m.decode_location, b"\x00" * 27, "time needs 6 bytes"),
        (m.decode_location, b"\x00" * 22 + b"\x25\x06\x05\x14\x00\x00" + b"\x01", "too short"),
        (m.decode_location, b"\x00" * 22 + b"\x25\x06\x05\x14\x00\x00" + b"\x01\x04\x00", "0x01"),
        (m.decode_location, b"\x00" * 22 + b"\xff" * 6, "not BCD"),
        (m.decode_params, b"\x02\x00\x00\x00\x01\x04\x00\x00\x00\x0a", "parameter 1 id"),
        (m.decode_params, b"\x00\x99", "unexpected bytes"),
        (lambda b: m.decode_text(b, True), b"\x01", "text type"),
        (lambda b: ab.decode_polygon(b, True), b"\x00\x00\x00\x01\x00\x00\xff\xff", "vertices"),
    ],
)
def test_malformed_bodies_name_the_field(decode, body: bytes, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FormatError, match=match):
        decode(body)


def test_values_out_of_range_are_refused_when_encoding() -> None:
    with pytest.raises(FormatError, match="WORD"):
        m.encode_location(m.Location(0, 0, 0, 0, 70000, 0, 0, "250605140000"))
    with pytest.raises(FormatError, match="longer than 11"):
        m.encode_registration(m.Registration(0, 0, "M" * 12, "", "", 0, ""), True)
    with pytest.raises(FormatError, match="GBK"):
        m.encode_registration(m.Registration(0, 0, "", "", "", 0, "🚚"), True)
