"""Areas and routes from the JT/T 808 platform (0x8600-0x8607) in the fleet plan store, over
real TCP: installed, merged, replaced, deleted, refused whole; long ones in packages; and
their entry/exit alarms in the reports."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent.fleet.service import FleetService
from agent.jt808 import area_bodies as ab
from agent.jt808 import messages as m
from agent.jt808.location import ALARM_AREA
from agent.labs.drive import Drive
from agent.labs.jt808_platform import ReferencePlatform
from agent.model import Alarm
from agent.storage.spool import Spool
from tests.fleet.harness import fleet_settings
from tests.jt808.conftest import T0, Rig, wait

LAT0, LON0 = 22.540000, 113.950000  # Shenzhen
ENTRY_EXIT = ab.A_ENTRY_PLATFORM | ab.A_EXIT_PLATFORM


def e6(v: float) -> int:
    return round(v * 1e6)


@pytest.fixture
def fleet(tmp_path: Path, spool: Spool) -> FleetService:
    svc = FleetService(
        fleet_settings(tmp_path / "fleet"), spool, threading.Event(), alarm=lambda a: None
    )
    svc.cmd_set_areas(
        {"areas": [{"id": "market", "circle": {"lat": LAT0, "lon": LON0, "radius_m": 50}}]}
    )
    return svc


def result(platform: ReferencePlatform, msg_id: int, body: bytes) -> int:
    return m.decode_general_response(platform.request(msg_id, body).body).result


def ids(fleet: FleetService) -> list[str]:
    p = fleet.plan
    return sorted([a.id for a in p.areas] + [r.id for r in p.routes])


def square(n: int, side_m: float = 200.0) -> list[tuple[int, int]]:
    """A polygon of ``n`` vertices on a square (so it never self-intersects)."""
    d = side_m / 111_195
    pts = []
    per = n // 4
    for k in range(4):
        for j in range(per):
            f = j / per
            lat, lon = [
                (LAT0 + f * d, LON0),
                (LAT0 + d, LON0 + f * d),
                (LAT0 + d - f * d, LON0 + d),
                (LAT0, LON0 + d - f * d),
            ][k]
            pts.append((e6(lat), e6(lon)))
    return pts


def test_areas_set_merged_replaced_and_deleted(
    rig: Rig, platform: ReferencePlatform, fleet: FleetService
) -> None:
    t = rig.terminal(platform.address, fleet=fleet)
    assert wait(lambda: t.client.stats.authenticated)
    c1 = ab.CircleArea(17, ENTRY_EXIT | ab.A_SPEED_LIMIT, e6(LAT0), e6(LON0 + 0.01), 120,
                       None, ab.Limit(30, 10, 20), "depot")  # fmt: skip
    c2 = ab.CircleArea(18, 0, e6(LAT0 + 0.01), e6(LON0), 80)
    assert result(platform, 0x8600, ab.encode_circles(ab.SET_ADD, [c1, c2])) == m.OK
    assert ids(fleet) == ["jt808.circle.17", "jt808.circle.18", "market"]
    depot = next(a for a in fleet.plan.areas if a.id == "jt808.circle.17")
    assert depot.name == "depot" and depot.speed_limit_kmh == 30
    assert depot.shape.radius_m == 120  # type: ignore[union-attr]
    rect = ab.RectArea(
        5, ab.A_ENTRY_PLATFORM, (e6(LAT0 + 0.002), e6(LON0)), (e6(LAT0), e6(LON0 + 0.002))
    )
    assert result(platform, 0x8602, ab.encode_rects(ab.SET_ADD, [rect])) == m.OK
    # type 0 replaces every circle this platform set; the MQTT platform's "market" stays
    assert result(platform, 0x8600, ab.encode_circles(ab.SET_REPLACE, [c2])) == m.OK
    assert ids(fleet) == ["jt808.circle.18", "jt808.rect.5", "market"]
    # the attributes are kept beside the plan, across restarts
    kept = json.loads((t.dir / "areas.json").read_text())["areas"]
    assert set(kept) == {"jt808.circle.18", "jt808.rect.5"}
    assert kept["jt808.rect.5"]["attribute"] == ab.A_ENTRY_PLATFORM
    # delete one rectangle, then every circle (count 0)
    assert result(platform, 0x8603, ab.encode_delete([5])) == m.OK
    assert result(platform, 0x8601, ab.encode_delete([])) == m.OK
    assert ids(fleet) == ["market"]
    assert json.loads((t.dir / "areas.json").read_text())["areas"] == {}


def test_routes(rig: Rig, platform: ReferencePlatform, fleet: FleetService) -> None:
    t = rig.terminal(platform.address, fleet=fleet)
    assert wait(lambda: t.client.stats.authenticated)
    lim = ab.Limit(40, 10, 30)
    pts = [
        ab.RoutePoint(1, 1, e6(LAT0), e6(LON0), 20, ab.S_SPEED_LIMIT, None, lim),
        ab.RoutePoint(2, 2, e6(LAT0 + 0.005), e6(LON0), 30, ab.S_SPEED_LIMIT, None, lim),
    ]
    rt = ab.RouteLine(3, ENTRY_EXIT, tuple(pts), None, "Shennan Rd")
    assert result(platform, 0x8606, ab.encode_route(rt)) == m.OK
    (route,) = fleet.plan.routes
    assert route.id == "jt808.route.3" and route.assigned and route.speed_limit_kmh == 40
    assert route.line.corridor_m == 15.0  # half the widest segment
    # different limits per segment: the plan has one per route -> not supported, unchanged
    pts2 = [
        pts[0],
        ab.RoutePoint(
            2, 2, e6(LAT0 + 0.005), e6(LON0), 30, ab.S_SPEED_LIMIT, None, ab.Limit(60, 10)
        ),
    ]
    assert (
        result(platform, 0x8606, ab.encode_route(ab.RouteLine(4, 0, tuple(pts2))))
        == m.NOT_SUPPORTED
    )
    assert ids(fleet) == ["jt808.route.3", "market"]
    assert result(platform, 0x8607, ab.encode_delete([3])) == m.OK
    assert fleet.plan.routes == ()


def test_refused_whole_plan_on_disk_untouched(
    rig: Rig, platform: ReferencePlatform, fleet: FleetService
) -> None:
    t = rig.terminal(platform.address, fleet=fleet)
    assert wait(lambda: t.client.stats.authenticated)
    plan_file = fleet.store.path
    before = plan_file.read_bytes()
    bow = [(e6(LAT0), e6(LON0)), (e6(LAT0 + 0.001), e6(LON0 + 0.001)),
           (e6(LAT0), e6(LON0 + 0.001)), (e6(LAT0 + 0.001), e6(LON0))]  # fmt: skip
    assert (
        result(platform, 0x8604, ab.encode_polygon(ab.PolygonArea(9, 0, tuple(bow)))) == m.FAILURE
    )
    huge = ab.CircleArea(1, 0, e6(LAT0), e6(LON0), 90_000)  # beyond the plan's 50 km
    assert result(platform, 0x8600, ab.encode_circles(ab.SET_ADD, [huge])) == m.FAILURE
    assert plan_file.read_bytes() == before
    assert (
        not (t.dir / "areas.json").exists()
        or json.loads((t.dir / "areas.json").read_text())["areas"] == {}
    )
    # a body that does not parse: "message error"
    assert result(platform, 0x8604, b"\x00\x00\x00\x09\x00") == m.MESSAGE_ERROR


def test_a_long_polygon_in_packages_with_one_lost_and_asked_for(
    rig: Rig, platform: ReferencePlatform, fleet: FleetService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.jt808.client.REASSEMBLY_TIMEOUT_S", 0.5)
    t = rig.terminal(platform.address, fleet=fleet)
    assert wait(lambda: t.client.stats.authenticated)
    poly = ab.PolygonArea(77, ENTRY_EXIT, tuple(square(400)), None, None, "district 7")
    body = ab.encode_polygon(poly)
    assert len(body) > 3 * 1023  # four packages
    serial = platform.send(0x8604, body, skip_packages=(2,))  # package 2 lost on the way
    assert wait(lambda: serial in platform.answers, 10)  # asked for with 0x0005, resent
    assert m.decode_general_response(platform.answers[serial].body).result == m.OK
    area = next(a for a in fleet.plan.areas if a.id == "jt808.polygon.77")
    assert len(area.shape.points) == 400  # type: ignore[union-attr]


def test_no_fleet_part_means_not_supported(rig: Rig, platform: ReferencePlatform) -> None:
    t = rig.terminal(platform.address)
    assert wait(lambda: t.client.stats.authenticated)
    c = ab.CircleArea(1, 0, e6(LAT0), e6(LON0), 100)
    assert result(platform, 0x8600, ab.encode_circles(ab.SET_ADD, [c])) == m.NOT_SUPPORTED


def test_entering_an_808_area_is_reported_with_its_alarm(
    rig: Rig, platform: ReferencePlatform, tmp_path: Path, spool: Spool
) -> None:
    """A truck driving through a circle the 808 platform set: the report of the entry carries
    alarm bit 20 and item 0x12 (circle, id, in), the exit's (out); a circle without the alarm
    attribute raises nothing."""
    holder: list[object] = []
    fleet = FleetService(
        fleet_settings(tmp_path / "f2"),
        spool,
        threading.Event(),
        alarm=lambda a: holder[0].on_alarm(a),  # type: ignore[attr-defined]
    )
    t = rig.terminal(platform.address, fleet=fleet)
    holder.append(t)
    assert wait(lambda: t.client.stats.authenticated)
    d = Drive(LAT0, LON0, t0=T0)
    d.go(0, 600, speed_mps=10.0)
    lat, lon = d.proj.to_latlon(0, 300)
    quiet_lat, quiet_lon = d.proj.to_latlon(500, 500)  # off the path
    circles = [ab.CircleArea(21, ENTRY_EXIT, e6(lat), e6(lon), 60),
               ab.CircleArea(22, 0, e6(quiet_lat), e6(quiet_lon), 60)]  # fmt: skip
    assert result(platform, 0x8600, ab.encode_circles(ab.SET_ADD, circles)) == m.OK
    events: list[str] = []
    for f in d.fixes():
        events += [e.kind for e in fleet.on_fix(f)]
        t.on_fix(f)
    assert events == ["area_enter", "area_exit"]
    assert wait(
        lambda: any(r.location.item(0x12) for r in platform.locations()) and len(t.queue) == 0
    )
    flagged = [r.location for r in platform.locations() if r.location.item(0x12)]
    assert [x.item(0x12) for x in flagged] == [
        bytes([1, 0, 0, 0, 21, 0]),  # circle 21, in
        bytes([1, 0, 0, 0, 21, 1]),  # circle 21, out
    ]
    assert all(x.alarm & ALARM_AREA for x in flagged)
    # the bit went away once a report carrying it was answered (reports built before that
    # answer still carry it, as the standard has it)
    last = d.fixes()[-1]
    t.on_fix(
        type(last)(**{**{k: getattr(last, k) for k in last.__slots__}, "time": last.time + 10})
    )
    n = len(platform.received)
    assert wait(lambda: len(platform.received) == n + 1)
    assert platform.locations()[-1].location.alarm & ALARM_AREA == 0
    t.on_alarm(Alarm("fleet_area_enter", "x", details={"subject": "jt808.circle.22"}))
    assert t.alarms.active & ALARM_AREA == 0
