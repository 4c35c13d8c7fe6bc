"""Terminal parameters on the reporting strategy; alarm and status bits from the agent's state."""

from __future__ import annotations

import calendar
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from agent.gps.settings import StrategySettings
from agent.jt808 import messages as m
from agent.jt808.location import (
    ALARM_AREA,
    ALARM_DEVIATION,
    ALARM_GNSS_FAULT,
    ALARM_OVERSPEED,
    ALARM_ROUTE,
    ALARM_SOS,
    ALARM_STOPPED,
    AlarmState,
    AreaRef,
    build_location,
    in_window,
    parse_fleet_id,
    status_bits,
)
from agent.jt808.params import ParamStore
from agent.model import Alarm, Fix, FixMode

BASE = StrategySettings(interval_s=30, distance_m=200, heading_deg=30, stopped_interval_s=300)
T0 = calendar.timegm((2025, 6, 5, 6, 0, 0))


def dword(v: int) -> bytes:
    return struct.pack(">I", v)


def test_defaults_come_from_the_config(tmp_path: Path) -> None:
    p = ParamStore(tmp_path, BASE, 45.0)
    answer = dict(p.answer())
    assert answer[0x0001] == dword(45)
    assert answer[0x0020] == dword(2)  # time and distance
    assert answer[0x0029] == dword(30) and answer[0x002C] == dword(200)
    assert answer[0x0027] == dword(300) and answer[0x0030] == dword(30)
    assert p.strategy() == BASE
    assert p.origin == "config"


def test_set_maps_onto_the_strategy_and_persists(tmp_path: Path) -> None:
    p = ParamStore(tmp_path, BASE, 60.0)
    res = p.apply([(0x0029, dword(10)), (0x0030, dword(45)), (0x0001, dword(20))])
    assert res.result == m.OK and res.applied == {0x0029: 10, 0x0030: 45, 0x0001: 20}
    s = p.strategy()
    assert (s.interval_s, s.heading_deg, s.distance_m, s.max_hdop) == (10, 45, 200, BASE.max_hdop)
    assert p.heartbeat_s == 20
    # time only; then distance only
    p.apply([(0x0020, dword(0))])
    assert p.strategy().distance_m == 0
    p.apply([(0x0020, dword(1)), (0x002C, dword(500))])
    s = p.strategy()
    assert s.distance_m == 500 and s.interval_s == 86400 and s.stopped_interval_s == 86400
    # kept across a restart, and wins over the config
    again = ParamStore(tmp_path, BASE, 60.0)
    assert again.origin == "platform" and again.values == p.values
    assert json.loads((tmp_path / "params.json").read_text())["params"]["0x002c"] == 500


def test_unsupported_ids_are_named_and_the_rest_applied(tmp_path: Path) -> None:
    p = ParamStore(tmp_path, BASE, 60.0)
    # 0x0013 main server address, 0x002E sleep distance: not supported here
    res = p.apply([(0x0013, b"www.baidu.com"), (0x0029, dword(15)), (0x002E, dword(100))])
    assert res.result == m.NOT_SUPPORTED
    assert res.unsupported == [0x0013, 0x002E] and res.applied == {0x0029: 15}
    assert p.strategy().interval_s == 15


def test_bad_values_apply_nothing(tmp_path: Path) -> None:
    p = ParamStore(tmp_path, BASE, 60.0)
    before = dict(p.values)
    for items in (
        [(0x0029, dword(10)), (0x0030, dword(180))],  # corner angle must be < 180
        [(0x0029, b"\x00\x0a")],  # a WORD where a DWORD belongs
        [(0x0021, dword(1))],  # by driver login: not on this terminal
        [(0x0029, dword(0))],
    ):
        res = p.apply(items)
        assert res.result == m.FAILURE and res.reason
        assert p.values == before
    assert not (tmp_path / "params.json").exists()


def test_query_some(tmp_path: Path) -> None:
    p = ParamStore(tmp_path, BASE, 60.0)
    assert [i for i, _ in p.answer([0x0029, 0x0013, 0x0001])] == [0x0029, 0x0001]  # as asked


def test_a_damaged_params_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text('{"format": 1, "params": {"0x0029": -4}}')
    p = ParamStore(tmp_path, BASE, 60.0)
    assert p.origin == "config" and p.strategy() == BASE
    assert list(tmp_path.glob("params.json.bad-*"))


# --------------------------------------------------------------------------- location


def fix(**kw: object) -> Fix:
    base: dict[str, object] = dict(
        time=T0, mode=FixMode.FIX_3D, lat=22.5, lon=113.9, alt=12.4, speed=10.0, track=359.6,
        sats_used=9,
    )  # fmt: skip
    base.update(kw)
    return Fix(**base)  # type: ignore[arg-type]


def test_location_fields() -> None:
    loc = build_location(fix(), alarm=0, status=status_bits(fix(), True), items=[])
    assert (loc.lat_e6, loc.lon_e6) == (22_500_000, 113_900_000)
    assert loc.altitude_m == 12 and loc.speed_dkmh == 360 and loc.direction == 0
    assert loc.time_bcd == "250605140000"  # GMT+8
    assert loc.status == 0b11 | 1 << 18  # ACC, positioned, GPS
    south = build_location(fix(lat=-33.9, lon=-70.6, alt=-20.0), alarm=0, status=0, items=[])
    body = m.encode_location(south)
    back = m.decode_location(body)
    assert (back.lat_e6, back.lon_e6) == (-33_900_000, -70_600_000)
    assert back.status & 0b1100 == 0b1100  # south, west
    assert back.altitude_m == 0  # WORD: below sea level is sent as 0


def test_status_bits() -> None:
    assert status_bits(fix(), None) == 0b10 | 1 << 18
    assert status_bits(fix(), False) == 0b10 | 1 << 18
    nofix = Fix(time=T0, mode=FixMode.NO_FIX)
    assert status_bits(nofix, True) == 1
    # the receiver's systems (Fix.systems, from GSA system ids / UBX) pick bits 18-21
    systems = ("gps", "beidou", "galileo")
    if "systems" in Fix.__dataclass_fields__:
        multi = fix(systems=systems)
    else:  # before the GNSS work that adds Fix.systems is merged
        multi = _WithSystems(
            **{f: getattr(fix(), f) for f in Fix.__dataclass_fields__}, systems=systems
        )
    assert status_bits(multi, True) == 0b11 | 1 << 18 | 1 << 19 | 1 << 21


@dataclass(frozen=True, slots=True)
class _WithSystems(Fix):
    """A fix that names its GNSS systems (``Fix.systems`` once the GNSS work is merged)."""

    systems: tuple[str, ...] = ()


def _alarm(kind: str, **details: object) -> Alarm:
    return Alarm(kind, kind, time=T0, details=dict(details))


def test_alarm_bits_held_and_latched() -> None:
    refs = {
        "jt808.circle.7": AreaRef("circle", 7, 1 << 3 | 1 << 5),
        "jt808.route.3": AreaRef("route", 3, 1 << 5),  # exit alarm only
        "jt808.circle.8": AreaRef("circle", 8, 0),  # no alarm to the platform
    }
    a = AlarmState()
    assert a.apply(_alarm("fleet_speeding", subject="jt808.circle.7"), refs)
    snap = a.snapshot()
    assert snap.alarm == ALARM_OVERSPEED
    assert snap.items == [(0x11, b"\x01\x00\x00\x00\x07")]
    a.apply(_alarm("fleet_speeding_end"), refs)
    a.apply(_alarm("fleet_speeding", subject="market"), refs)  # not an 808 area: type 0
    assert a.snapshot().items == [(0x11, b"\x00")]
    a.apply(_alarm("fleet_speeding_end"), refs)
    # entering 808 area 7 (alarm to platform on entry): bit 20 + 0x12 (circle, 7, in)
    a.apply(_alarm("fleet_area_enter", subject="jt808.circle.7"), refs)
    snap = a.snapshot()
    assert snap.alarm == ALARM_AREA and snap.items == [(0x12, b"\x01\x00\x00\x00\x07\x00")]
    # the bit stays until a report carrying it is answered; the item went with that report
    again = a.snapshot()
    assert again.alarm == ALARM_AREA and again.items == []
    a.acknowledged(snap.latches)
    assert a.snapshot().alarm == 0
    # no alarm for area 8, nor for an initial entry (but the position is reported at once,
    # as for every fleet event)
    assert a.apply(_alarm("fleet_area_exit", subject="jt808.circle.8"), refs)
    assert a.apply(_alarm("fleet_area_enter", subject="jt808.circle.7", initial=True), refs)
    assert a.report_now
    assert a.snapshot().alarm == 0
    assert a.apply(_alarm("fleet_idle"), refs) and a.snapshot().alarm == 0
    # route: deviation held while off any assigned route; 808 route 3 alarms its exit
    a.apply(_alarm("fleet_route_left", subject="jt808.route.3"), refs)
    snap = a.snapshot()
    assert snap.alarm == ALARM_DEVIATION | ALARM_ROUTE
    assert snap.items == [(0x12, b"\x04\x00\x00\x00\x03\x01")]
    a.apply(_alarm("fleet_route_back", subject="jt808.route.3"), refs)
    assert a.snapshot().alarm == ALARM_ROUTE  # the exit not yet answered; no entry alarm
    a.confirm(ALARM_ROUTE)
    # stopped, receiver lost
    a.apply(_alarm("fleet_stopped"), refs)
    a.apply(_alarm("receiver_lost"), refs)
    assert a.snapshot().alarm == ALARM_STOPPED | ALARM_GNSS_FAULT
    a.apply(_alarm("fleet_stopped_end"), refs)
    a.apply(_alarm("receiver_restored"), refs)
    assert a.snapshot().alarm == 0
    assert a.apply(_alarm("storage_nearly_full"), refs) is False


def test_sos_latch_survives_an_answer_to_an_older_report() -> None:
    a = AlarmState()
    a.apply(_alarm("sos"), {})
    first = a.snapshot()
    a.apply(_alarm("sos"), {})  # pressed again before the first report was answered
    a.acknowledged(first.latches)
    assert a.sos and a.snapshot().alarm == ALARM_SOS
    a.confirm(ALARM_SOS)  # 0x8203
    assert not a.sos


def test_time_windows_in_gmt8() -> None:
    t = calendar.timegm((2025, 6, 5, 1, 30, 0))  # 09:30 in Beijing
    assert in_window(("000000080000", "000000170000"), t)
    assert not in_window(("000000100000", "000000170000"), t)
    assert in_window(("000000220000", "000000100000"), t)  # past midnight
    assert in_window(("250605000000", "250606000000"), t)
    assert not in_window(("250606000000", "250607000000"), t)


def test_fleet_ids() -> None:
    assert parse_fleet_id("jt808.polygon.4294967295") == ("polygon", 4294967295)
    for bad in ("market", "jt808.square.1", "jt808.circle.x", "jt808.circle.4294967296"):
        assert parse_fleet_id(bad) is None
