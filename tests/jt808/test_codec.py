"""The JT/T 808 frame: escaping, check code, 2019 and 2013 headers, sub-packages, the stream
reader that resynchronises on 0x7e, and GMT+8 times."""

from __future__ import annotations

import calendar
import contextlib
import functools
import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FormatError
from agent.jt808.body import bcd_time, parse_bcd_time
from agent.jt808.codec import (
    MAX_BODY,
    MAX_ESCAPED,
    Frame,
    FrameReader,
    Reassembler,
    bcc,
    decode_frame,
    encode_frame,
    encode_message,
    escape,
    split_body,
    unescape,
)

phones_2019 = st.text("0123456789", min_size=1, max_size=20)
phones_2013 = st.text("0123456789", min_size=1, max_size=12)


# --------------------------------------------------------------------------- escaping


def test_escaping_as_traccar_frame_tests() -> None:
    # traccar/traccar src/test/java/org/traccar/protocol/Jt808FrameDecoderTest.java (testDecode)
    # and Jt808FrameEncoderTest.java (testDecode): 7e 30 7d02 08 7d01 55 7e <-> 30 7e 08 7d 55
    assert unescape(bytes.fromhex("307d02087d0155")) == bytes.fromhex("307e087d55")
    assert escape(bytes.fromhex("307e087d55")) == bytes.fromhex("307d02087d0155")


def test_garbage_before_the_first_flag_is_skipped_as_traccar_frame_test() -> None:
    # traccar Jt808FrameDecoderTest.testDecode: "24247e307d02087d01557e" -> "7e307e087d557e"
    reader = FrameReader()
    assert reader.feed(bytes.fromhex("24247e307d02087d01557e")) == [bytes.fromhex("307d02087d0155")]
    assert reader.dropped_bytes == 2


@given(st.binary(max_size=300))
def test_escape_round_trip(data: bytes) -> None:
    e = escape(data)
    assert b"\x7e" not in e
    assert unescape(e) == data


@pytest.mark.parametrize("bad", ["7d", "7d03", "307d00", "7d7d01"])
def test_broken_escapes_are_refused(bad: str) -> None:
    with pytest.raises(FormatError):
        unescape(bytes.fromhex(bad))


@given(st.binary(max_size=2000))
def test_bcc_is_the_xor_of_every_byte(data: bytes) -> None:
    assert bcc(data) == functools.reduce(operator.xor, data, 0)


# --------------------------------------------------------------------------- frames


@settings(max_examples=300)
@given(
    msg_id=st.integers(0, 0xFFFF),
    body=st.binary(max_size=MAX_BODY),
    serial=st.integers(0, 0xFFFF),
    v2019=st.booleans(),
    data=st.data(),
)
def test_frame_round_trip(
    msg_id: int, body: bytes, serial: int, v2019: bool, data: st.DataObject
) -> None:
    phone = data.draw(phones_2019 if v2019 else phones_2013)
    package = data.draw(
        st.none()
        | st.integers(1, 0xFFFF).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n)))
    )
    version = data.draw(st.integers(0, 255)) if v2019 else None
    raw = encode_frame(msg_id, body, phone=phone, serial=serial, version=version, package=package)
    assert raw[0] == 0x7E and raw[-1] == 0x7E and b"\x7e" not in raw[1:-1]
    f = decode_frame(raw)
    h = f.header
    width = 20 if v2019 else 12
    assert (h.msg_id, h.serial, h.version, h.package, f.body) == (
        msg_id,
        serial,
        version,
        package,
        body,
    )
    assert h.phone == phone.rjust(width, "0")
    assert h.body_length == len(body)
    # what the stream reader returns decodes to the same
    (chunk,) = FrameReader().feed(raw)
    assert decode_frame(chunk) == f


def test_2019_header_layout() -> None:
    raw = encode_frame(0x0200, b"\x01\x02", phone="13800000001", serial=7)
    unescaped = unescape(raw[1:-1])
    # id, properties (bit 14 version flag, length 2), version 1, BCD[10] phone, serial
    assert unescaped[:4] == bytes.fromhex("02004002")
    assert unescaped[4] == 1
    assert unescaped[5:15] == bytes.fromhex("00000000013800000001")
    assert unescaped[15:17] == b"\x00\x07"


def test_a_damaged_frame_is_refused_strictly_and_noted_leniently() -> None:
    raw = bytearray(encode_frame(0x0002, b"", phone="1", serial=1))
    raw[-2] ^= 0x55  # the check code
    with pytest.raises(FormatError, match="check code"):
        decode_frame(bytes(raw))
    f = decode_frame(bytes(raw), strict=False)
    assert f.problems and "check code" in f.problems[0]


def test_body_length_must_match() -> None:
    good = unescape(encode_frame(0x0002, b"\x00\x00", phone="1", serial=1)[1:-1])
    short = good[:-3] + bytes([bcc(good[:-3])])  # one body byte less, check code recomputed
    with pytest.raises(FormatError, match="body properties say 2"):
        decode_frame(escape(short))


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_format_errors(data: bytes) -> None:
    reader = FrameReader()
    for chunk in reader.feed(data):
        with contextlib.suppress(FormatError):
            decode_frame(chunk)
    assert reader.pending <= MAX_ESCAPED


def test_reader_resynchronises_after_garbage_and_bounds_its_buffer() -> None:
    good = encode_frame(0x0002, b"", phone="1", serial=3)
    reader = FrameReader()
    # an endless run without a flag is dropped, and the next frame is read
    assert reader.feed(b"\x7e" + b"\x55" * (MAX_ESCAPED + 10)) == []
    assert reader.oversized == 1 and reader.pending == 0
    frames = reader.feed(b"junk" + good + good[:5])
    assert [decode_frame(f).serial for f in frames] == [3]
    assert reader.feed(good[5:]) != []  # the split frame completes


# --------------------------------------------------------------------------- packages


@settings(max_examples=50)
@given(st.binary(min_size=MAX_BODY + 1, max_size=6 * MAX_BODY), st.randoms())
def test_long_bodies_travel_in_packages_and_come_back_whole(body: bytes, rnd: object) -> None:
    counter = iter(range(100, 10_000))
    frames = encode_message(0x8604, body, phone="13800000001", next_serial=lambda: next(counter))
    assert len(frames) == len(split_body(body)) > 1
    assert [s for s, _ in frames] == list(range(100, 100 + len(frames)))  # a serial each
    decoded = [decode_frame(f) for _, f in frames]
    assert all(len(d.body) <= MAX_BODY for d in decoded)
    order = list(decoded)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    r = Reassembler()
    out = [r.add(d) for d in order]
    whole = [x for x in out if x is not None]
    assert len(whole) == 1
    assert whole[0].body == body
    assert whole[0].header.serial == 100  # the serial of package 1 names the message
    assert whole[0].header.package is None


def _package(n: int, count: int, body: bytes = b"x", msg_id: int = 0x8604) -> Frame:
    return decode_frame(encode_frame(msg_id, body, phone="1", serial=n, package=(count, n)))


def test_reassembly_limits() -> None:
    clock = [0.0]
    r = Reassembler(
        max_packages=8, max_bytes=100, max_messages=2, timeout_s=10, clock=lambda: clock[0]
    )
    with pytest.raises(FormatError, match="9 packages"):
        r.add(_package(1, 9))
    r.add(_package(1, 3, b"a" * 60))
    with pytest.raises(FormatError, match="more than 100 bytes"):
        r.add(_package(2, 3, b"b" * 60))
    assert r.open_messages == 0
    # a repeat is ignored; at most 2 messages open (the oldest goes)
    r.add(_package(1, 3, msg_id=0x8600))
    assert r.add(_package(1, 3, msg_id=0x8600)) is None
    clock[0] = 1
    r.add(_package(1, 4, msg_id=0x8602))
    clock[0] = 2
    r.add(_package(1, 5, msg_id=0x8606))
    assert r.open_messages == 2
    # overdue: asked for once (missing numbers), then dropped
    clock[0] = 12
    asked = sorted(r.missing())
    assert asked == [(0x8602, 1, [2, 3, 4]), (0x8606, 1, [2, 3, 4, 5])]
    assert r.missing() == []
    clock[0] = 30
    assert r.missing() == [] and r.open_messages == 0


def test_a_message_whose_first_package_never_came_is_dropped_not_asked() -> None:
    clock = [0.0]
    r = Reassembler(timeout_s=5, clock=lambda: clock[0])
    r.add(_package(2, 3))
    clock[0] = 6
    assert r.missing() == [] and r.open_messages == 0


# --------------------------------------------------------------------------- time


def test_times_are_gmt_plus_8() -> None:
    t = calendar.timegm((2025, 6, 5, 6, 0, 0))  # 06:00 UTC
    assert bcd_time(t).hex() == "250605140000"  # 14:00 in Beijing
    late = calendar.timegm((2025, 12, 31, 20, 30, 15))
    assert bcd_time(late).hex() == "260101043015"  # the next day (and year) there
    assert parse_bcd_time("260101043015") == late
    assert bcd_time(t + 0.999).hex() == "250605140000"  # whole seconds, truncated


@pytest.mark.parametrize("digits", ["000000000000", "251301000000", "250230000000", "25060524000"])
def test_impossible_bcd_times_are_none(digits: str) -> None:
    assert parse_bcd_time(digits) is None


@given(
    st.integers(calendar.timegm((2000, 1, 1, 0, 0, 0)), calendar.timegm((2099, 12, 31, 15, 0, 0)))
)
def test_bcd_time_round_trip(t: int) -> None:
    assert parse_bcd_time(bcd_time(t).hex()) == t
