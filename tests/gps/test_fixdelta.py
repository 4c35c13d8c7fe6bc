"""Delta-coded GPS batches (agent.gps.fixdelta): exact round trips, extremes, hostile input."""

from __future__ import annotations

import contextlib
import math
import random
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

T0 = 1_750_000_000.0

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


@settings(max_examples=150, deadline=None)
@given(tracks())
def test_round_trip_is_exact(records: list[bytes]) -> None:
    coded = fixdelta.encode_batch(records)
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
def test_extremes(
    a: tuple[float | None, float | None], b: tuple[float | None, float | None]
) -> None:
    records = [
        encode_fix(Fix(time=T0, mode=FixMode.FIX_3D, lat=a[0], lon=a[1], track=359.99)),
        encode_fix(Fix(time=T0 + 1, mode=FixMode.FIX_3D, lat=b[0], lon=b[1], track=0.0)),
        encode_fix(Fix(time=0.0, mode=FixMode.NO_FIX)),  # time back to 1970
        encode_fix(Fix(time=4294967295.999, mode=FixMode.FIX_2D, lat=b[0], lon=b[1])),
    ]
    assert fixdelta.decode_batch(fixdelta.encode_batch(records)) == records


def test_a_turn_through_north_is_small() -> None:
    records = [
        encode_fix(Fix(time=T0, mode=FixMode.FIX_3D, lat=1.0, lon=1.0, track=359.5)),
        encode_fix(Fix(time=T0 + 1, mode=FixMode.FIX_3D, lat=1.0, lon=1.0, track=0.5)),
    ]
    coded = fixdelta.encode_batch(records)
    # version, count, first fix, then mask + one varint for the 1-degree turn (100 -> 2 bytes)
    assert len(coded) == 1 + 1 + SIZE + 1 + 2
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
    coded = fixdelta.encode_batch(records)
    plain = len(records) * (2 + SIZE)  # the u16-prefixed application/x-edge-fix batch
    assert fixdelta.decode_batch(coded) == records
    # Each field changes every second while driving; the changes are small.
    assert len(coded) / len(records) <= 10, len(coded) / len(records)
    assert len(coded) < plain / 3


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"\x02\x01" + b"\x20" * SIZE, "version"),
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
    coded = fixdelta.encode_batch(records)
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


@settings(max_examples=150, deadline=None)
@given(tracks(), st.data())
def test_mutated_batches_raise_only_format_error(records: list[bytes], data: st.DataObject) -> None:
    coded = bytearray(fixdelta.encode_batch(records))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(coded) - 1))
        coded[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(FormatError):
        for rec in fixdelta.decode_batch(bytes(coded)):
            decode_fix(rec)


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
