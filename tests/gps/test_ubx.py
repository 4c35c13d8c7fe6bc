"""u-blox UBX: NAV-PVT/NAV-SAT decoding, validity rules, and UBX mixed with NMEA on one port."""

from __future__ import annotations

import calendar
import random

import pytest
from pyubx2 import UBXReader

from agent.gps.receiver import ReceiverReader
from agent.gps.ubx import UbxReader, frame_ok
from agent.model import FixMode

from .corpus import CORPUS
from .receivers import make_receiver, simulate
from .ubxframes import frame, itow_of, nav_eoe, nav_pvt, nav_sat

T0 = calendar.timegm((2025, 6, 5, 10, 1, 2))
ZED = CORPUS / "ublox-zed-f9r.log"


def fixes_of(*frames: bytes) -> list:
    r = UbxReader("t")
    out = []
    for f in frames:
        out += r.frame(f)
    return out + r.flush()


def _frames(data: bytes, cls: int, msg_id: int) -> list[bytes]:
    out, i = [], 0
    while (j := data.find(b"\xb5\x62" + bytes([cls, msg_id]), i)) >= 0:
        n = data[j + 4] | data[j + 5] << 8
        if frame_ok(data[j : j + 8 + n]):
            out.append(data[j : j + 8 + n])
        i = j + 2
    return out


@pytest.mark.skipif(not ZED.is_file(), reason="corpus missing")
def test_nav_pvt_fields_equal_pyubx2_on_a_real_receiver() -> None:
    """Every NAV-PVT of the u-blox ZED-F9R log: our fields are pyubx2's (the reference)."""
    frames = _frames(ZED.read_bytes(), 0x01, 0x07)
    assert len(frames) == 30
    for f in frames:
        msg = UBXReader.parse(f)
        (fix,) = fixes_of(f)
        t = calendar.timegm((msg.year, msg.month, msg.day, msg.hour, msg.min, msg.second))
        assert fix.time == pytest.approx(round(t + msg.nano * 1e-9, 3))
        assert fix.lat == pytest.approx(msg.lat, abs=1e-9)
        assert fix.lon == pytest.approx(msg.lon, abs=1e-9)
        assert fix.alt == pytest.approx(msg.hMSL / 1000)
        assert fix.speed == pytest.approx(msg.gSpeed / 1000)
        assert fix.track == pytest.approx(msg.headMot)
        assert fix.sats_used == msg.numSV
        assert fix.time_acc == pytest.approx(msg.tAcc * 1e-9)
        assert fix.time_resolved is bool(msg.fullyResolved)
        assert fix.time_confirmed is bool(msg.confirmedDate and msg.confirmedTime)
        assert fix.quality == (4 if msg.carrSoln == 2 else 5 if msg.carrSoln == 1 else 2)


@pytest.mark.skipif(not ZED.is_file(), reason="corpus missing")
def test_nav_sat_systems_equal_pyubx2() -> None:
    gnss = {0: "gps", 1: "sbas", 2: "galileo", 3: "beidou", 5: "qzss", 6: "glonass"}
    data = ZED.read_bytes()
    pvt, sat = _frames(data, 0x01, 0x07)[0], _frames(data, 0x01, 0x35)[0]
    msg = UBXReader.parse(sat)
    used = {
        gnss[getattr(msg, f"gnssId_{i:02d}")]
        for i in range(1, msg.numSvs + 1)
        if getattr(msg, f"svUsed_{i:02d}")
    }
    (fix,) = fixes_of(pvt, sat) if itow_of(pvt) == itow_of(sat) else pytest.fail("epochs")
    assert set(fix.systems) == used and {"beidou", "galileo", "gps"} <= used
    assert fix.sats_visible == msg.numSvs


def test_time_needs_valid_date_and_time() -> None:
    assert fixes_of(nav_pvt(T0, 39.9, 116.4, valid=0x01)) == []  # validTime missing
    assert fixes_of(nav_pvt(T0, 39.9, 116.4, valid=0x02)) == []  # validDate missing
    (fix,) = fixes_of(nav_pvt(T0, 39.9, 116.4, valid=0x03))
    assert fix.time == T0 and fix.time_resolved is False and fix.has_position


def test_nano_may_be_negative_and_rounds_as_gpsd() -> None:
    (a,) = fixes_of(nav_pvt(T0 + 1, 39.9, 116.4, nano=-400))  # 10:01:02.9999996
    assert a.iso_time() == "2025-06-05T10:01:03.000Z"
    (b,) = fixes_of(nav_pvt(T0, 39.9, 116.4, nano=123_499_999))
    assert b.iso_time() == "2025-06-05T10:01:02.123Z"
    (c,) = fixes_of(nav_pvt(T0, 39.9, 116.4, nano=123_500_000))
    assert c.iso_time() == "2025-06-05T10:01:02.124Z"


@pytest.mark.parametrize(
    ("fix_type", "fix_ok", "invalid_llh", "mode"),
    [
        (3, True, False, FixMode.FIX_3D),
        (4, True, False, FixMode.FIX_3D),  # GNSS + dead reckoning
        (2, True, False, FixMode.FIX_2D),
        (1, True, False, FixMode.FIX_2D),  # dead reckoning only, as gpsd
        (3, False, False, FixMode.NO_FIX),  # outside the receiver's masks (gnssFixOK)
        (5, True, False, FixMode.NO_FIX),  # time only
        (0, True, False, FixMode.NO_FIX),
        (3, True, True, FixMode.NO_FIX),  # invalidLlh
    ],
)
def test_position_validity(fix_type: int, fix_ok: bool, invalid_llh: bool, mode: FixMode) -> None:
    (fix,) = fixes_of(
        nav_pvt(T0, 39.9, 116.4, fix_type=fix_type, fix_ok=fix_ok, invalid_llh=invalid_llh)
    )
    assert fix.mode == mode
    assert fix.has_position == (mode != FixMode.NO_FIX)
    assert fix.time == T0  # a no-fix epoch still carries its (valid) time


def test_time_quality_travels_with_the_fix() -> None:
    (a,) = fixes_of(nav_pvt(T0, 1.0, 2.0, t_acc_ns=1_500, confirmed=None))
    assert a.time_acc == pytest.approx(1.5e-6) and a.time_confirmed is None
    (b,) = fixes_of(nav_pvt(T0, 1.0, 2.0, confirmed=False))
    assert b.time_confirmed is False and b.time_resolved is True


def test_an_epoch_ends_at_eoe_or_at_the_next_epoch() -> None:
    pvt = nav_pvt(T0, 39.9, 116.4)
    sat = nav_sat(itow_of(pvt), [(0, 5, True), (3, 12, True), (3, 14, False), (2, 3, False)])
    r = UbxReader("t")
    assert r.frame(pvt) + r.frame(sat) == []
    (fix,) = r.frame(nav_eoe(itow_of(pvt)))
    assert fix.systems == ("beidou", "gps") and fix.sats_visible == 4
    pvt2 = nav_pvt(T0 + 1, 39.9, 116.4)
    assert r.frame(pvt2) == []
    (fix2,) = r.frame(nav_pvt(T0 + 2, 39.9, 116.4))
    assert fix2.time == T0 + 1


def test_bad_frames_are_counted_never_decoded() -> None:
    good = nav_pvt(T0, 39.9, 116.4)
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    r = UbxReader("t")
    assert r.frame(bad) + r.flush() == [] and r.stats.bad_checksum == 1
    short = frame(0x01, 0x07, bytes(40))  # a NAV-PVT too short for its fields
    assert r.frame(short) + r.flush() == [] and r.stats.bad_fields == 1
    impossible = nav_pvt(T0, 95.0, 116.4)  # latitude beyond the pole
    (fix,) = r.frame(impossible) + r.flush()
    assert not fix.has_position and r.stats.bad_fields == 2


# ------------------------------------------------------------------ NMEA and UBX, one port
def _mixed(seconds: int) -> tuple[bytes, list[float]]:
    """A u-blox receiver in NMEA+UBX mode: per epoch UBX NAV-PVT, NAV-SAT, EOE, then NMEA."""
    rx = make_receiver(4)
    nmea, truth = simulate(rx, seconds)
    lines = nmea.splitlines(keepends=True)
    per_epoch = (len(lines) - 2) // seconds
    out, times = [b"".join(lines[:2])], []
    for i, t in enumerate(truth):
        pvt = nav_pvt(t.time_ms / 1000, t.lat, t.lon)
        out += [pvt, nav_sat(itow_of(pvt), [(0, 3, True)]), nav_eoe(itow_of(pvt))]
        out += lines[2 + i * per_epoch : 2 + (i + 1) * per_epoch]
        times.append(t.time_ms / 1000)
    return b"".join(out), times


def test_ubx_and_nmea_on_one_port_give_one_fix_per_epoch() -> None:
    data, times = _mixed(12)
    r = ReceiverReader("t")
    fixes = r.feed(data) + r.flush()
    assert [f.time for f in fixes] == times
    assert all(f.time_resolved for f in fixes)  # from NAV-PVT, not the NMEA repeat
    assert r.stats.ubx.frames == 36 and r.stats.nmea.sentences > 0


def test_protocol_switching_and_noise_mid_stream() -> None:
    """NMEA only, then NMEA+UBX, then NMEA only again, with binary noise and a broken
    frame in between: never a fix back in time, the NMEA epochs come back."""
    rx = make_receiver(9)
    rx.start = (2025, 6, 6, 0, 0, 0)  # the day after the mixed part
    nmea_a, truth_a = simulate(rx, 8)
    mixed, times_m = _mixed(6)
    rnd = random.Random(5)
    noise = bytes(rnd.randrange(256) for _ in range(300)) + b"\xb5\x62\x01\x07\xff\x00"
    broken = nav_pvt(times_m[-1] + 30, 10.0, 10.0)[:50]
    data = mixed + noise + broken + nmea_a
    r = ReceiverReader("t")
    fixes = []
    for i in range(0, len(data), 37):
        fixes += r.feed(data[i : i + 37])
    fixes += r.flush()
    times = [f.time for f in fixes if f.has_position]
    assert times == sorted(set(times))
    assert r.stats.ubx.frames >= 18 and r.stats.ubx.bad_frames + r.stats.ubx.bad_checksum >= 1
    later = [f for f in fixes if f.time_resolved is None and f.time > times_m[-1]]
    valid_a = [t for t in truth_a if t.valid]
    assert len(later) >= len(valid_a) - 3  # NMEA speaks again (its first cycles are learned)
    assert not any(f.lat == 10.0 for f in fixes)  # the truncated frame made no fix


# ------------------------------------------------------------------ the receiver's time, clock
def test_the_clock_takes_the_receivers_word_on_its_time() -> None:
    """A NAV-PVT time that is not fully resolved is no clock sample; tAcc and confirmation
    travel into the clock state the sealer records."""
    from agent.gps.clock import ClockMonitor
    from agent.model import ClockSource

    t = calendar.timegm((2026, 2, 3, 4, 5, 6))
    now = [t + 0.25]
    clock = ClockMonitor(now=lambda: now[0], monotonic=lambda: now[0])
    (unresolved,) = fixes_of(nav_pvt(t, 39.9, 116.4, valid=0x03))
    clock.observe(unresolved)
    assert clock.state().source == ClockSource.NONE and clock.rejected == 1
    (resolved,) = fixes_of(nav_pvt(t, 39.9, 116.4, t_acc_ns=35, confirmed=True))
    state = clock.observe(resolved)
    assert state.source == ClockSource.GNSS and state.offset_s == pytest.approx(-0.25)
    assert state.time_acc_s == pytest.approx(35e-9) and state.time_confirmed is True
    assert state.to_json()["time_acc_s"] == pytest.approx(35e-9)
    nmea_state = ClockMonitor(now=lambda: now[0], monotonic=lambda: now[0]).observe(
        resolved.__class__(time=t, mode=FixMode.FIX_2D, lat=1.0, lon=2.0)
    )
    assert not {"time_acc_s", "time_confirmed"} & set(nmea_state.to_json())  # NMEA: as before
