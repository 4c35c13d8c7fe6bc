"""Pure parts: reporting strategy, clock monitor, wire encoding."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FormatError
from agent.gps.clock import EARLIEST_VALID, ClockMonitor, plausible_time
from agent.gps.settings import StrategySettings
from agent.gps.strategy import ReportingStrategy, distance_m
from agent.gps.wire import SIZE, decode_fix, encode_fix
from agent.model import ClockSource, Fix, FixMode

T0 = EARLIEST_VALID + 86400 * 400  # a plausible date
M_PER_DEG_LAT = 111_195.0


def fix(
    t: float,
    north_m: float = 0.0,
    *,
    speed: float | None = 10.0,
    track: float | None = 0.0,
    hdop: float | None = 1.0,
    mode: FixMode = FixMode.FIX_3D,
    east_m: float = 0.0,
) -> Fix:
    lat = 52.0 + north_m / M_PER_DEG_LAT
    lon = 5.0 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(52.0)))
    return Fix(time=T0 + t, mode=mode, lat=lat, lon=lon, speed=speed, track=track, hdop=hdop)


S = StrategySettings(
    interval_s=30,
    distance_m=200,
    heading_deg=30,
    stopped_interval_s=300,
    stopped_speed_mps=1.0,
    max_hdop=5.0,
    max_speed_mps=70,
    keep_interval_s=1.0,
)


def reasons(fixes: list[Fix], **kw: object) -> list[str]:
    strat = ReportingStrategy(S)
    return [strat.decide(f, **kw).reason for f in fixes]  # type: ignore[arg-type]


def test_first_then_interval_while_moving_slowly() -> None:
    # 5 m/s north: 150 m in 30 s, under the 200 m distance: the interval fires.
    fixes = [fix(t, 5.0 * t, speed=5.0) for t in range(0, 61)]
    strat = ReportingStrategy(S)
    decided = [(f.time - T0, strat.decide(f)) for f in fixes]
    live = [(t, d.reason) for t, d in decided if d.report_live]
    assert live == [(0, "first"), (30, "interval"), (60, "interval")]


def test_distance() -> None:
    strat = ReportingStrategy(S)
    out = [strat.decide(fix(t, 20.0 * t, speed=20.0)) for t in range(0, 25)]
    live = [i for i, d in enumerate(out) if d.report_live]
    assert live == [0, 10, 20] and out[10].reason == "distance"


def test_heading_change_draws_the_corner() -> None:
    strat = ReportingStrategy(S)
    seq = [fix(0, 0, track=0), fix(1, 10, track=0), fix(2, 20, track=10), fix(3, 30, track=45)]
    out = [strat.decide(f) for f in seq]
    assert [d.reason for d in out] == ["first", "kept", "kept", "heading"]


def test_heading_ignored_when_slow() -> None:
    strat = ReportingStrategy(S)
    out = [strat.decide(fix(t, 0, speed=0.5, track=(t * 90) % 360)) for t in range(0, 10)]
    assert [d.report_live for d in out] == [True] + [False] * 9


def test_stopped_interval_is_slower() -> None:
    strat = ReportingStrategy(S)
    out = [(t, strat.decide(fix(t, 0, speed=0.0))) for t in range(0, 601, 10)]
    assert [t for t, d in out if d.report_live] == [0, 300, 600]
    assert out[30][1].reason == "stopped-interval"


def test_alarm_reports_at_once_but_not_a_poor_fix() -> None:
    strat = ReportingStrategy(S)
    strat.decide(fix(0, 0))
    assert strat.decide(fix(1, 5), alarm=True) == strat.decide(fix(1.5, 7), alarm=True).__class__(
        True, True, "alarm"
    )
    poor = strat.decide(fix(2, 10, hdop=9.9), alarm=True)
    assert not poor.report_live and poor.reason == "hdop"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (fix(1, 10, mode=FixMode.NO_FIX), "no-fix"),
        (fix(1, 10, hdop=7.5), "hdop"),
        (fix(1, 5000), "jump"),
        (fix(0, 10), "time-not-advancing"),
        (Fix(time=946684800.0, mode=FixMode.FIX_3D, lat=52.0, lon=5.0), "impossible-date"),
    ],
)
def test_poor_fixes_are_neither_reported_nor_kept(bad: Fix, reason: str) -> None:
    strat = ReportingStrategy(S)
    strat.decide(fix(0, 0))
    d = strat.decide(bad)
    assert (d.report_live, d.keep, d.reason) == (False, False, reason)


def test_a_single_jump_is_rejected_but_a_real_relocation_is_accepted() -> None:
    strat = ReportingStrategy(S)
    strat.decide(fix(0, 0))
    assert strat.decide(fix(1, 50_000)).reason == "jump"  # one wild fix
    assert strat.decide(fix(2, 20)).report_live is False  # back to normal, accepted
    assert strat.last_good is not None and strat.last_good.time == T0 + 2
    # Three consistent fixes 50 km away (e.g. a bad anchor, or a long outage): accepted.
    out = [strat.decide(fix(t, 50_000 + 10 * t)).reason for t in (3, 4, 5)]
    assert out[:2] == ["jump", "jump"] and out[2] in ("distance", "heading", "interval", "kept")


def test_keep_decimates_10hz_to_1hz() -> None:
    strat = ReportingStrategy(S)
    kept = [strat.decide(fix(i / 10, i / 10, speed=1.0)).keep for i in range(0, 50)]
    assert sum(kept) == 5


def test_distance_m() -> None:
    assert distance_m(52.0, 5.0, 53.0, 5.0) == pytest.approx(M_PER_DEG_LAT, rel=1e-3)


# ------------------------------------------------------------------------------ clock
class FakeNow:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_clock_offset_from_gnss() -> None:
    now = FakeNow(1000.0)  # a Pi booted without RTC or network: 1970
    clock = ClockMonitor(now=now, monotonic=now)
    assert clock.state().source == ClockSource.NONE
    for i in range(5):
        now.t = 1000.0 + i
        st_ = clock.observe(fix(i, 0))
    assert st_.source == ClockSource.GNSS
    assert st_.offset_s == pytest.approx(T0 - 1000.0)
    assert clock.gnss_now() == pytest.approx(T0 + 4)


def test_clock_ignores_impossible_dates_and_no_fix() -> None:
    now = FakeNow(T0)
    clock = ClockMonitor(now=now, monotonic=now)
    clock.observe(Fix(time=946684800.0, mode=FixMode.FIX_3D, lat=1.0, lon=1.0))  # 2000: WKRO
    clock.observe(Fix(time=T0 + 3, mode=FixMode.NO_FIX))
    assert clock.state() == clock.state().__class__(ClockSource.NONE, None)
    assert clock.rejected == 1
    assert not plausible_time(946684800.0) and plausible_time(T0)


def test_clock_median_resists_one_late_sentence_and_expires() -> None:
    now = FakeNow(T0)
    clock = ClockMonitor(now=now, monotonic=now, max_age_s=60)
    for i in range(9):
        now.t = T0 + i + (5.0 if i == 4 else 0.3)  # one fix received 5 s late
        clock.observe(fix(i, 0))
    assert clock.state().offset_s == pytest.approx(-0.3)
    now.t += 61
    assert clock.state().source == ClockSource.NONE


# ------------------------------------------------------------------------------- wire
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    t=st.floats(min_value=0, max_value=4e9),
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    alt=st.none() | st.floats(min_value=-1000, max_value=20000),
    speed=st.none() | st.floats(min_value=0, max_value=600),
    track=st.none() | st.floats(min_value=0, max_value=359.99),
    hdop=st.none() | st.floats(min_value=0, max_value=99),
    used=st.none() | st.integers(0, 254),
    quality=st.none() | st.integers(0, 8),
)
def test_wire_round_trip(
    t: float,
    lat: float,
    lon: float,
    alt: float | None,
    speed: float | None,
    track: float | None,
    hdop: float | None,
    used: int | None,
    quality: int | None,
) -> None:
    f = Fix(
        time=t,
        mode=FixMode.FIX_3D,
        lat=lat,
        lon=lon,
        alt=alt,
        speed=speed,
        track=track,
        hdop=hdop,
        sats_used=used,
        quality=quality,
    )
    data = encode_fix(f)
    assert len(data) == SIZE == 28
    g = decode_fix(data)
    assert g.iso_time() == f.iso_time()
    assert g.mode == f.mode and g.quality == quality and g.sats_used == used
    assert g.lat == pytest.approx(lat, abs=1e-7) and g.lon == pytest.approx(lon, abs=1e-7)
    for a, b, tol in ((g.alt, alt, 0.01), (g.speed, speed, 0.01), (g.hdop, hdop, 0.01)):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a == pytest.approx(b, abs=tol)
    if track is not None:
        assert g.track is not None and min(abs(g.track - track), 360 - abs(g.track - track)) < 0.01


def test_wire_no_fix_and_errors() -> None:
    g = decode_fix(encode_fix(Fix(time=T0, mode=FixMode.NO_FIX)))
    assert g.mode == FixMode.NO_FIX and g.lat is None and g.alt is None
    with pytest.raises(FormatError):
        decode_fix(b"\x00" * 27)
    with pytest.raises(FormatError):
        decode_fix(b"\xe0" + b"\x00" * 27)  # version 7


@given(st.binary(min_size=28, max_size=28))
def test_wire_decode_random_raises_only_format_error(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        decode_fix(data)


def test_clock_step_drops_old_offsets_at_once() -> None:
    """A step of the system clock (NTP, an operator) must not leave the old offset in force."""
    wall, mono = FakeNow(T0), FakeNow(500.0)
    clock = ClockMonitor(now=wall, monotonic=mono)
    for i in range(10):
        wall.t, mono.t = T0 + i + 0.2, 500.0 + i
        clock.observe(fix(i, 0))
    assert clock.state().offset_s == pytest.approx(-0.2)
    wall.t += 3600  # the system clock jumps an hour ahead; monotonic time does not
    assert clock.state().source == ClockSource.NONE  # no stale offset is claimed
    assert clock.steps == 1
    wall.t, mono.t = wall.t + 1, mono.t + 1
    st_ = clock.observe(fix(10, 0))
    assert st_.offset_s == pytest.approx(-3600.2)
