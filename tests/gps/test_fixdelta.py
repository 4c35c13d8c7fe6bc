"""Delta-coded GPS batches (agent.gps.fixdelta): exact round trips of both versions (drawn
tracks, extremes, every receiver of the corpus), the worked example of docs/format.md, and
hostile input (random, truncated, mutated, extended) refused with FormatError only."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FormatError, SpoolError
from agent.gps import fixdelta, wire
from agent.gps.wire import SIZE, decode_fix, encode_fix
from agent.model import ClockState, Fix, FixMode
from agent.storage.records import RecordLog
from agent.storage.seal import SegmentHeader, decrypt_segment, parse_key_record, read_segment_info
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer
from tests.gps.corpus import CORPUS, corpus_logs, replay_fixes

T0 = 1_750_000_000.0
Encoder = Callable[[list[bytes]], bytes]
ENCODERS: dict[str, Encoder] = {"v2": fixdelta.encode_batch, "v1": fixdelta.encode_batch_v1}
encoders = pytest.mark.parametrize("encode", list(ENCODERS.values()), ids=list(ENCODERS))

optional_float = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def fixes(draw: st.DrawFn) -> Fix:
    """Any fix encode_fix takes: poles, the antimeridian, missing fields, any time."""
    has_pos = draw(st.booleans())
    lat = draw(
        st.one_of(
            st.sampled_from([90.0, -90.0, 0.0, 89.9999999, -89.9999999]),
            st.floats(-90, 90),
        )
    )
    lon = draw(
        st.one_of(
            st.sampled_from([180.0, -180.0, 179.9999999, -179.9999999, 0.0]),
            st.floats(-180, 180),
        )
    )
    return Fix(
        time=draw(
            st.one_of(
                st.sampled_from([0.0, 4294967295.999, T0]),
                st.floats(0, 4294967295.999),
            )
        ),
        mode=draw(st.sampled_from(list(FixMode))),
        lat=lat if has_pos else None,
        lon=lon if has_pos else None,
        alt=draw(st.one_of(st.none(), st.floats(-1e8, 1e8), st.sampled_from([-2e7, 2e7]))),
        speed=draw(st.one_of(st.none(), st.floats(0, 700))),
        track=draw(st.one_of(st.none(), st.floats(0, 360), st.sampled_from([0.0, 359.99]))),
        quality=draw(st.one_of(st.none(), st.integers(0, 70))),
        sats_used=draw(st.one_of(st.none(), st.integers(0, 300))),
        sats_visible=draw(st.one_of(st.none(), st.integers(0, 300))),
        hdop=draw(st.one_of(st.none(), st.floats(0, 700))),
    )


@st.composite
def tracks(draw: st.DrawFn) -> list[bytes]:
    """A drive: small steps (the common case) mixed with jumps, time steps that vary, go
    backwards or repeat, fields that appear and vanish, and arbitrary fixes."""
    n = draw(st.integers(1, 80))
    base = draw(fixes())
    t = base.time
    lat = base.lat if base.lat is not None else 52.0
    lon = base.lon if base.lon is not None else 179.9999
    out = []
    for _ in range(n):
        kind = draw(st.sampled_from(["step", "step", "step", "any", "same"]))
        if kind == "any":
            f = draw(fixes())
        else:
            if kind == "step":
                t += draw(st.sampled_from([1.0, 1.0, 0.999, 1.001, 0.0, -1.0, 3600.0, 0.1]))
                lat = max(-90.0, min(90.0, lat + draw(st.floats(-1e-3, 1e-3))))
                lon = lon + draw(st.floats(-1e-3, 1e-3))
                lon = lon - 360.0 if lon > 180.0 else lon + 360.0 if lon < -180.0 else lon
            t = min(max(t, 0.0), 4294967295.0)
            f = Fix(
                time=t,
                mode=FixMode.FIX_3D,
                lat=lat,
                lon=lon,
                alt=draw(st.one_of(st.none(), st.floats(-100, 9000))),
                speed=draw(st.one_of(st.none(), st.floats(0, 40))),
                track=draw(st.one_of(st.none(), st.floats(0, 360))),
                sats_used=draw(st.one_of(st.none(), st.integers(0, 40))),
                hdop=draw(st.one_of(st.none(), st.floats(0.5, 20))),
            )
        out.append(encode_fix(f))
    return out


@encoders
@settings(max_examples=100, deadline=None)
@given(records=tracks())
def test_round_trip_is_exact(encode: Encoder, records: list[bytes]) -> None:
    coded = encode(records)
    assert fixdelta.decode_batch(coded) == records
    assert fixdelta.batch_records(fixdelta.CONTENT_TYPE, coded) == records
    # ... and the fixes read back are those of the plain records, field for field.
    assert [decode_fix(r) for r in fixdelta.decode_batch(coded)] == [decode_fix(r) for r in records]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((90.0, 0.0), (-90.0, 0.0)),  # pole to pole
        ((0.0, 179.9999999), (0.0, -179.9999999)),  # across the antimeridian
        ((0.0, 180.0), (0.0, -180.0)),
        ((0.0, -180.0), (0.0, 180.0)),
        ((None, None), (89.9999999, -180.0)),  # no position, then a position
        ((-90.0, 180.0), (None, None)),
    ],
)
@encoders
def test_extremes(
    encode: Encoder, a: tuple[float | None, float | None], b: tuple[float | None, float | None]
) -> None:
    records = [
        encode_fix(Fix(time=T0, mode=FixMode.FIX_3D, lat=a[0], lon=a[1], track=359.99)),
        encode_fix(Fix(time=T0 + 1, mode=FixMode.FIX_3D, lat=b[0], lon=b[1], track=0.0)),
        encode_fix(Fix(time=0.0, mode=FixMode.NO_FIX)),  # time back to 1970
        encode_fix(Fix(time=4294967295.999, mode=FixMode.FIX_2D, lat=b[0], lon=b[1])),
    ]
    assert fixdelta.decode_batch(encode(records)) == records


def test_a_turn_through_north_is_small() -> None:
    records = [
        encode_fix(Fix(time=T0, mode=FixMode.FIX_3D, lat=1.0, lon=1.0, track=359.5)),
        encode_fix(Fix(time=T0 + 1, mode=FixMode.FIX_3D, lat=1.0, lon=1.0, track=0.5)),
        encode_fix(Fix(time=T0 + 2, mode=FixMode.FIX_3D, lat=1.0, lon=1.0, track=359.5)),
    ]
    coded = fixdelta.encode_batch_v1(records)
    # version, count, first fix, then mask + one varint for each 1-degree turn (100 -> 2 bytes)
    assert len(coded) == 1 + 1 + SIZE + 2 * (1 + 2)
    assert fixdelta.decode_batch(coded) == records
    coded = fixdelta.encode_batch(records)
    # Version 2: the course's unit is 100 (1 degree), so each turn is a few bits. Fix 1: kind
    # plain as assumed before it (1), lat/lon/alt/speed u = 0 with k = 1 (00 each), course +1
    # unit (u = zigzag(1) = 2: 10 0); fix 2: plain again (1), four u = 0 with k = 0 (0 each),
    # course -1 unit (u = 1, k = 1: 0 1); then 5 zero bits.
    bits = "1" + "00" * 4 + "100" + "1" + "0" * 4 + "01" + "00000"
    assert coded[2 + SIZE :] == bytes([0x10, 100]) + int(bits, 2).to_bytes(3, "big")
    assert fixdelta.decode_batch(coded) == records


def _drive(n: int, seed: int = 7) -> list[bytes]:
    """A truck in town at 1 Hz: 8-12 m/s along a street, receiver noise of a few cm."""
    rnd = random.Random(seed)
    lat, lon, course, speed = 22.54, 113.95, 80.0, 10.0
    out = []
    for i in range(n):
        speed = max(0.0, min(14.0, speed + rnd.uniform(-0.4, 0.4)))
        course = (course + rnd.uniform(-2, 2)) % 360
        d = speed / 111_195.0
        lat += d * math.cos(math.radians(course)) + rnd.gauss(0, 2e-7)
        lon += d * math.sin(math.radians(course)) / math.cos(math.radians(lat))
        out.append(
            encode_fix(
                Fix(
                    time=T0 + i,
                    mode=FixMode.FIX_3D,
                    lat=lat,
                    lon=lon,
                    alt=12.0 + rnd.uniform(-0.2, 0.2),
                    speed=speed,
                    track=course,
                    quality=1,
                    sats_used=14 + (i // 97) % 3,
                    sats_visible=22,
                    hdop=0.8 + ((i // 41) % 3) / 10,
                )
            )
        )
    return out


def test_a_moving_truck_costs_a_third_of_the_plain_records() -> None:
    records = _drive(300)
    coded = fixdelta.encode_batch_v1(records)
    plain = len(records) * (2 + SIZE)  # the u16-prefixed application/x-edge-fix batch
    assert fixdelta.decode_batch(coded) == records
    # Each field changes every second while driving; the changes are small.
    assert len(coded) / len(records) <= 10, len(coded) / len(records)
    assert len(coded) < plain / 3


def test_version_2_codes_a_drive_in_fewer_bytes_than_version_1() -> None:
    """A minute's segment (60 fixes at 1 Hz) of the drive: version 1 costs ~9 bytes a fix,
    version 2 under 6 (the receiver noise of _drive sets the floor: a few bits a field)."""
    for n in (60, 300):
        records = _drive(n)
        v1, v2 = fixdelta.encode_batch_v1(records), fixdelta.encode_batch(records)
        assert fixdelta.decode_batch(v2) == records
        assert len(v2) / n < 6, len(v2) / n
        assert len(v2) < 0.7 * len(v1), (len(v1), len(v2))


def test_a_parked_receiver_costs_a_bit_a_fix() -> None:
    """A receiver holding its position (static hold): every fix is as predicted."""
    fix = Fix(time=T0, mode=FixMode.FIX_3D, lat=48.1, lon=11.5, alt=520.0, speed=0.0, hdop=1.0)
    records = [encode_fix(dataclasses.replace(fix, time=T0 + i / 10)) for i in range(600)]
    coded = fixdelta.encode_batch(records)
    assert fixdelta.decode_batch(coded) == records
    # 10 Hz: version, count (2 bytes), first fix, unit flags; the second fix's step (100 ms,
    # not the 1000 ms assumed) in at most 8 bytes; then 598 fixes of one bit each (two bits
    # for the first of them).
    assert len(coded) <= 1 + 2 + SIZE + 1 + 8 + (598 + 7) // 8, len(coded)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus missing: {CORPUS}")
def test_every_receiver_of_the_corpus_round_trips() -> None:
    """The fixes our readers make of 50 real receivers' logs (1-10 Hz, parked, walking,
    driving, missing fields, no position), in minute-long batches: exact in both versions,
    and version 2 smaller in all."""
    total = {"v1": 0, "v2": 0}
    receivers = 0
    for log in corpus_logs():
        records = [encode_fix(f) for f in replay_fixes(log)]
        receivers += bool(records)
        for i in range(0, len(records), 60):
            batch = records[i : i + 60]
            for name, encode in ENCODERS.items():
                coded = encode(batch)
                assert fixdelta.decode_batch(coded) == batch, (log.name, name, i)
                total[name] += len(coded)
    assert receivers >= 45
    assert total["v2"] < 0.95 * total["v1"], total


def test_the_example_of_docs_format_md() -> None:
    """docs/format.md's worked example of version 2, byte for byte."""
    t, lons = T0, (13.405, 13.405148, 13.4052962, 13.4054444)
    alts, hdops = (34.5, 34.5, 34.6, 34.6), (0.9, 0.9, 1.0, 1.0)
    records = [
        encode_fix(
            Fix(
                time=t + i,
                mode=FixMode.FIX_3D,
                lat=52.52,
                lon=lons[i],
                alt=alts[i],
                speed=10.0,
                track=90.0,
                quality=1,
                sats_used=12,
                sats_visible=20,
                hdop=hdops[i],
            )
        )
        for i in range(4)
    ]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "format.md").read_text()
    example = doc[doc.index("**Example.**") : doc.index("### Version 1")]
    hexes = re.findall(r"^((?:[0-9a-f]{2} )*[0-9a-f]{2}) {2,}", example, re.M)
    hexes += re.findall(r"^((?:[0-9a-f]{2} ){20,}[0-9a-f]{2})$", example, re.M)
    coded = fixdelta.encode_batch(records)
    expected = bytes.fromhex(" ".join(hexes[:1] + hexes[-1:] + hexes[1:-1]))
    assert coded == expected, (coded.hex(" "), expected.hex(" "))
    assert fixdelta.decode_batch(expected) == records
    assert len(fixdelta.encode_batch_v1(records)) == 44


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"\x03\x01" + b"\x20" * SIZE, "version"),
        (b"\x01\x00", "fixes"),
        (b"\x01" + b"\xff" * 11, "varint"),
        (b"\x01\x02", "truncated"),
    ],
)
def test_malformed_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        fixdelta.decode_batch(data)


def test_trailing_bytes_reserved_bits_and_bad_fields_are_refused() -> None:
    records = _drive(3)
    coded = fixdelta.encode_batch_v1(records)
    with pytest.raises(FormatError, match="after the last fix"):
        fixdelta.decode_batch(coded + b"\x00")
    first_mask = 2 + SIZE
    bad = bytearray(coded)
    bad[first_mask] |= 0x80
    with pytest.raises(FormatError, match="reserved"):
        fixdelta.decode_batch(bytes(bad))
    # A latitude pushed past the pole by a delta is not a fix.
    far = bytes([1, 2]) + records[0] + bytes([fixdelta.POS]) + b"\xff\xff\xff\xff\x0f" + b"\x00"
    with pytest.raises(FormatError):
        fixdelta.decode_batch(far)
    with pytest.raises(FormatError):
        fixdelta.encode_batch([])
    with pytest.raises(FormatError):
        fixdelta.encode_batch([b"\x20" * 27])
    with pytest.raises(FormatError, match="not a batch"):
        fixdelta.batch_records("video/mp4", coded)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_format_error(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        for rec in fixdelta.decode_batch(data):
            assert len(rec) == SIZE
            decode_fix(rec)


@encoders
@settings(max_examples=100, deadline=None)
@given(records=tracks(), data=st.data())
def test_mutated_batches_raise_only_format_error(
    encode: Encoder, records: list[bytes], data: st.DataObject
) -> None:
    coded = bytearray(encode(records))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(coded) - 1))
        coded[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(FormatError):
        for rec in fixdelta.decode_batch(bytes(coded)):
            decode_fix(rec)


def _decodes_or_refuses(data: bytes) -> list[bytes] | None:
    """The records, or None for a FormatError: nothing else may come out of the decoder."""
    try:
        out = fixdelta.decode_batch(data)
    except FormatError:
        return None
    assert 1 <= len(out) <= fixdelta.MAX_FIXES
    for rec in out:
        decode_fix(rec)
    return out


@settings(max_examples=400, deadline=None)
@given(st.integers(2, 400), st.sampled_from([b"", b"\x00", b"\x04\x0a"]), st.binary(max_size=300))
def test_version_2_random_bits_raise_only_format_error(
    count: int, units: bytes, tail: bytes
) -> None:
    """A valid head (version 2, a count, a real first fix, no units or an altitude unit, or
    random ones), then random bits: the bit reader, the Rice codes and their escapes, the
    predictions and the range checks meet arbitrary input."""
    head = bytearray([2])
    fixdelta._varint(head, count)
    _decodes_or_refuses(bytes(head) + _drive(1)[0] + units + tail)


def test_version_2_hostile_bits_are_bounded() -> None:
    """Runs of one bits (every Rice code escaping with 63-bit values, k growing with them),
    all-zero bits for the most fixes allowed, and a count far above the bits there are."""
    first = _drive(1)[0]
    for tail in (b"\x00" + b"\xff" * 4000, b"\x00" + b"\x00" * 12500, b"\x3f" + b"\xff" * 64):
        for count in (2, 1000, fixdelta.MAX_FIXES):
            head = bytearray([2])
            fixdelta._varint(head, count)
            _decodes_or_refuses(bytes(head) + first + tail)
    head = bytearray([2])
    fixdelta._varint(head, fixdelta.MAX_FIXES)
    with pytest.raises(FormatError, match="fewer bits than fixes"):
        fixdelta.decode_batch(bytes(head) + first + b"\x00" * 100)
    # 99,999 fixes as predicted (two bits to say so, then one bit each) is the most a batch
    # can say: 2.8 MB of records.
    out = fixdelta.decode_batch(bytes(head) + first + b"\x00" + b"\x3f" + b"\xff" * 12499)
    assert len(out) == fixdelta.MAX_FIXES


@pytest.mark.parametrize("n", [1, 2, 3, 60])
def test_version_2_truncated_or_extended_is_refused(n: int) -> None:
    coded = fixdelta.encode_batch(_drive(n))
    assert fixdelta.decode_batch(coded) == _drive(n)
    for cut in range(len(coded)):
        with pytest.raises(FormatError):
            fixdelta.decode_batch(coded[:cut])
    for extra in (b"\x00", b"\x80", b"\xff\xff"):
        with pytest.raises(FormatError, match="after the last fix"):
            fixdelta.decode_batch(coded + extra)


def test_version_2_malformed_head_and_padding_are_refused() -> None:
    records = _drive(5)
    coded = fixdelta.encode_batch(records)
    flags_at = 2 + SIZE
    assert coded[flags_at] == 0  # the drive's changes have no common unit
    bad = bytearray(coded)
    bad[flags_at] = 0x40
    with pytest.raises(FormatError, match="reserved unit flags"):
        fixdelta.decode_batch(bytes(bad))
    for unit in (b"\x00", b"\x01", b"\x80\x80\x80\x80\x10"):  # 0, 1, 2^32
        bad = bytearray(coded)
        bad[flags_at : flags_at + 1] = b"\x04" + unit
        with pytest.raises(FormatError, match="a unit of"):
            fixdelta.decode_batch(bytes(bad))
    padded = _parked(3)
    coded = fixdelta.encode_batch(padded)  # two fixes as predicted: "0 0", "1", 5 padding bits
    assert coded[-1] == 0b00100000
    with pytest.raises(FormatError, match="padding"):
        fixdelta.decode_batch(coded[:-1] + b"\x21")
    assert fixdelta.decode_batch(coded) == padded


def _parked(n: int) -> list[bytes]:
    fix = Fix(time=T0, mode=FixMode.FIX_3D, lat=48.1, lon=11.5, alt=520.0, speed=0.0, hdop=1.0)
    return [encode_fix(dataclasses.replace(fix, time=T0 + i)) for i in range(n)]


# ------------------------------------------------------------------ sealed and verified


def _delta_log(spool: Spool, **kw: object) -> RecordLog:
    return RecordLog(
        spool,
        "gps",
        content_type=fixdelta.CONTENT_TYPE,
        pack=fixdelta.encode_batch,
        record_type=wire.CONTENT_TYPE,
        **kw,  # type: ignore[arg-type]
    )


def test_a_sealed_delta_batch_verifies_and_reads_back(tmp_path: Path, keyset: KeySet) -> None:
    records = _drive(120)
    sp = Spool(SpoolSettings(dir=tmp_path / "sp", reserve_mb=0), make_sealer(keyset))
    try:
        log = _delta_log(sp, batch_max_records=1000)
        for r in records:
            log.append(r, durable=False)
        put = log.roll()
        assert put is not None
        with put.path.open("rb") as f:
            info = read_segment_info(f)
            assert info.content_type == fixdelta.CONTENT_TYPE
            out = bytearray()
            key = parse_key_record((tmp_path / "sp" / "keys" / f"{info.key_id}.key").read_bytes())
            decrypt_segment(f, info, key.unwrap(keyset.platform_private), out.extend)
        assert fixdelta.batch_records(info.content_type, bytes(out)) == records
        assert info.manifest["plain_len"] < len(records) * (2 + SIZE) / 3
    finally:
        sp.close()
    report = verify_paths([tmp_path / "sp"], platform_private=keyset.platform_private)
    assert report.ok, report.problems
    assert report.metas["dev-1/gps#0"] == {"records": 120}


def _seal_plain(tmp: Path, keyset: KeySet, plain: bytes, records: int) -> Path:
    sp = Spool(SpoolSettings(dir=tmp, reserve_mb=0), make_sealer(keyset))
    try:
        sp.put(
            SegmentHeader(
                "gps", fixdelta.CONTENT_TYPE, 1.7e9, 1.7e9, 0, 0, ClockState(), {"records": records}
            ),
            [plain],
            batch_id="cd" * 16,
        )
    finally:
        sp.close()
    return tmp


@pytest.mark.parametrize(
    ("plain", "records", "why"),
    [
        (fixdelta.encode_batch(_drive(5)), 6, "5 fixes, meta.records says 6"),
        (fixdelta.encode_batch(_drive(5))[:-1], 5, "truncated"),
        (fixdelta.encode_batch(_drive(5)) + b"\x00", 5, "after the last fix"),
        (b"\x01\x01" + b"\xff" * SIZE, 1, "not a wire fix"),
    ],
)
def test_verify_refuses_a_bad_delta_batch(
    tmp_path: Path, keyset: KeySet, plain: bytes, records: int, why: str
) -> None:
    d = _seal_plain(tmp_path / "sp", keyset, plain, records)
    assert verify_paths([d]).ok  # the plaintext is sealed: only the platform key can check it
    report = verify_paths([d], platform_private=keyset.platform_private)
    assert [p.kind for p in report.problems] == ["bad_content"]
    assert why in str(report.problems)


def test_a_recovered_delta_journal_names_the_record_type(tmp_path: Path, keyset: KeySet) -> None:
    """After a power cut the journal's frames (plain wire fixes) are sealed as they are: the
    recovered segment names application/x-edge-fix as its inner type, and verifies."""
    records = _drive(7)
    sp = Spool(SpoolSettings(dir=tmp_path / "sp", reserve_mb=0), make_sealer(keyset))
    log = _delta_log(sp)
    for r in records:
        log.append(r)
    sp.close()  # cut: the batch was never rolled
    sp = Spool(SpoolSettings(dir=tmp_path / "sp", reserve_mb=0), make_sealer(keyset, boot_id="b2"))
    try:
        recovered = _delta_log(sp).recovered
        assert recovered is not None
        with recovered.path.open("rb") as f:
            info = read_segment_info(f)
        assert info.content_type == "application/x-edge-journal"
    finally:
        sp.close()
    report = verify_paths([tmp_path / "sp"], platform_private=keyset.platform_private)
    assert report.ok, report.problems
    meta = report.metas["dev-1/gps#0"]
    assert meta["inner_content_type"] == wire.CONTENT_TYPE
    assert meta["records"] == 7


def test_record_log_refuses_a_coder_without_a_record_type(tmp_path: Path, keyset: KeySet) -> None:
    sp = Spool(SpoolSettings(dir=tmp_path / "sp", reserve_mb=0), make_sealer(keyset))
    try:
        with pytest.raises(SpoolError):
            RecordLog(sp, "gps", content_type=fixdelta.CONTENT_TYPE)
        with pytest.raises(SpoolError):
            RecordLog(sp, "gps", content_type="x/y", pack=fixdelta.encode_batch, record_type="x/y")
    finally:
        sp.close()
