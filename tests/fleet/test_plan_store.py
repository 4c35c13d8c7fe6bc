"""Shapes and plans: refusals with reasons (through the signed command channel), geometry,
the grid index, schedules, persistence across a reload, the areas file."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config.fields import load_dataclass
from agent.errors import ConfigError
from agent.fleet.index import GridIndex
from agent.fleet.plan import parse_plan
from agent.fleet.schedule import LocalClock, Schedule
from agent.fleet.service import FleetService
from agent.fleet.settings import FleetSettings
from agent.fleet.shapes import Circle, Polygon, Polyline, Projection
from agent.fleet.store import PLAN_FILE
from agent.gps.strategy import distance_m
from agent.storage.spool import Spool
from agent.uplink.control import CommandChannel, SeenIds, sign_command
from tests.fleet.harness import load_drive, make_service

NOW = 1_800_000_000.0
P = Projection(52.09, 5.12)


def ll(x: float, y: float) -> list[float]:
    return list(P.to_latlon(x, y))


def square(size: float = 100.0) -> list[list[float]]:
    return [ll(0, 0), ll(size, 0), ll(size, size), ll(0, size)]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def channel_for(svc: FleetService, tmp_path: Path, key: Ed25519PrivateKey) -> CommandChannel:
    ch = CommandChannel(
        "truck-1", key.public_key(), SeenIds(tmp_path / "seen.json"), clock=lambda: NOW
    )
    for name, handler in svc.command_handlers().items():
        ch.register(name, handler)
    return ch


def send(ch: CommandChannel, key: Ed25519PrivateKey, cmd: str, args: dict[str, Any]) -> Any:
    return ch.handle(sign_command(key, "truck-1", cmd, args, now=NOW))


BAD = [
    (
        {"areas": [{"id": "bow", "polygon": [ll(0, 0), ll(100, 100), ll(100, 0), ll(0, 100)]}]},
        "self-intersecting polygon",
    ),
    ({"areas": [{"id": "empty", "polygon": []}]}, "at least 3 points, got 0"),
    ({"areas": [{"id": "two", "polygon": [ll(0, 0), ll(1, 1)]}]}, "at least 3 points, got 2"),
    (
        {"areas": [{"id": "line", "polygon": [ll(0, 0), ll(50, 0), ll(100, 0)]}]},
        "encloses no area",
    ),
    (
        {"areas": [{"id": "huge", "circle": {"lat": 52.0, "lon": 5.0, "radius_m": 5e6}}]},
        "radius_m must be 1..50000 m",
    ),
    (
        {"areas": [{"id": "dot", "circle": {"lat": 52.0, "lon": 5.0, "radius_m": 0}}]},
        "radius_m must be 1..50000 m",
    ),
    (
        {"areas": [{"id": "north", "circle": {"lat": 95.0, "lon": 5.0, "radius_m": 10}}]},
        "lat must be -85..85",
    ),
    (
        {"areas": [{"id": "far", "polygon": [[52.0, 5.0], [52.0, 7.0], [53.0, 6.0]]}]},
        "km wide",
    ),
    ({"areas": [{"id": "x", "polygon": [["a", 5.0], [1, 2], [3, 4]]}]}, "lat must be a number"),
    ({"areas": [{"id": "bad id!", "circle": {}}]}, "id must be"),
    ({"areas": [{"id": "c", "circle": {"lat": 52.0, "lon": 5.0}}]}, "circle must be"),
    ({"areas": [{"id": "c", "square": 1}]}, "unknown field(s) square"),
    ({"routes": [{"id": "r", "points": [ll(0, 0)]}]}, "at least 2 points, got 1"),
    ({"routes": [{"id": "r", "points": [ll(0, 0), ll(10, 0)], "corridor_m": 5000}]}, "corridor_m"),
    (
        {"routes": [{"id": "r", "points": [ll(0, 0), ll(9, 0)], "equipment": ["mop"]}]},
        "equipment",
    ),
    (
        {
            "areas": [{"id": "a", "circle": {"lat": 52.0, "lon": 5.0, "radius_m": 10}}],
            "routes": [{"id": "a", "points": [ll(0, 0), ll(10, 0)]}],
        },
        "duplicate id",
    ),
    (
        {
            "areas": [
                {
                    "id": "a",
                    "circle": {"lat": 52.0, "lon": 5.0, "radius_m": 10},
                    "schedule": {"start": "25:00"},
                }
            ]
        },
        "must be a time HH:MM",
    ),
]


@pytest.mark.parametrize(("args", "reason"), BAD)
def test_bad_shapes_are_refused_with_a_reason(
    tmp_path: Path, spool: Spool, key: Ed25519PrivateKey, args: dict[str, Any], reason: str
) -> None:
    svc = make_service(spool, tmp_path / "fleet")
    ch = channel_for(svc, tmp_path, key)
    good = {"areas": [{"id": "ok", "circle": {"lat": 52.0, "lon": 5.0, "radius_m": 50}}]}
    assert send(ch, key, "fleet.set_areas", good)["ok"]
    before = (tmp_path / "fleet" / PLAN_FILE).read_bytes()
    answer = send(ch, key, "fleet.set_areas", args)
    assert answer["ok"] is False
    assert reason in answer["reason"], answer["reason"]
    assert answer["reason"].startswith("fleet.set_areas: ")
    # the plan in force and on disk is untouched
    assert (tmp_path / "fleet" / PLAN_FILE).read_bytes() == before
    assert [a.id for a in svc.plan.areas] == ["ok"]


def test_refusals_name_the_item(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"area 'bow': self-intersecting polygon \(edges"):
        parse_plan(BAD[0][0])


def test_plan_survives_a_reload(tmp_path: Path, spool: Spool, key: Ed25519PrivateKey) -> None:
    drive = load_drive("work_day")
    svc = make_service(spool, tmp_path / "fleet")
    ch = channel_for(svc, tmp_path, key)
    answer = send(ch, key, "fleet.set_areas", drive.plan)
    assert answer["ok"], answer
    version = answer["result"]["version"]
    assert answer["result"] == {"version": version, "areas": 2, "routes": 1}
    # a new process: same state dir, no areas file
    again = make_service(spool, tmp_path / "fleet")
    assert again.store.origin == "platform"
    assert again.plan.version == version
    got = send(channel_for(again, tmp_path / "x", key), key, "fleet.get_areas", {"full": True})
    assert got["result"]["areas"] == ["market", "district-3"]
    assert got["result"]["routes"] == ["r1"]
    assert parse_plan(got["result"]["plan"]).version == version
    # the stored file is the validated plan, atomically replaced (no temp files left)
    assert sorted(p.name for p in (tmp_path / "fleet").iterdir()) == [PLAN_FILE]
    doc = json.loads((tmp_path / "fleet" / PLAN_FILE).read_text())
    assert doc["version"] == version and doc["format"] == 1


def test_merge_and_remove(tmp_path: Path, spool: Spool) -> None:
    svc = make_service(spool, tmp_path / "fleet", load_drive("work_day").plan)
    extra = {"id": "depot", "circle": {"lat": 52.1, "lon": 5.1, "radius_m": 80}}
    res = svc.cmd_set_areas({"areas": [extra], "replace": False, "remove": ["market"]})
    assert res["areas"] == 2 and res["routes"] == 1
    assert sorted(a.id for a in svc.plan.areas) == ["depot", "district-3"]
    svc.cmd_set_areas({"areas": [], "routes": []})
    assert svc.plan.areas == () and svc.plan.routes == ()


def test_new_plan_keeps_the_state_of_unchanged_areas(tmp_path: Path, spool: Spool) -> None:
    drive = load_drive("jitter_edge")
    svc = make_service(spool, tmp_path / "fleet", drive.plan)
    fixes = drive.fixes
    mid = next(i for i, f in enumerate(fixes) if svc.on_fix(f) and i > 0)
    assert svc.engine.inside() == ["yard"]
    extra = {"id": "depot", "circle": {"lat": 52.2, "lon": 5.2, "radius_m": 80}}
    svc.cmd_set_areas({"areas": [extra], "replace": False})
    kinds = [e.kind for f in fixes[mid + 1 :] for e in svc.on_fix(f)]
    assert kinds == ["area_exit"]  # no second area_enter for the unchanged yard


def test_areas_file_and_corrupt_plan(tmp_path: Path, spool: Spool) -> None:
    areas = tmp_path / "areas.toml"
    areas.write_text(
        "[[areas]]\n"
        'id = "depot"\n'
        "circle = { lat = 52.1, lon = 5.1, radius_m = 120.0 }\n"
        "[[routes]]\n"
        'id = "r9"\n'
        "points = [[52.0, 5.0], [52.001, 5.0]]\n"
        "corridor_m = 12.0\n"
        'schedule = { days = ["mon", "fri"], start = "22:00", end = "06:00" }\n'
    )
    svc = make_service(spool, tmp_path / "fleet", areas_file=areas)
    assert svc.store.origin == "areas_file"
    assert [a.id for a in svc.plan.areas] == ["depot"]
    assert svc.plan.routes[0].schedule == Schedule(frozenset({0, 4}), 22 * 60, 6 * 60)
    # a platform plan wins over the file, across a restart
    svc.cmd_set_areas({"areas": [{"id": "d", "circle": {"lat": 52, "lon": 5, "radius_m": 9}}]})
    assert make_service(spool, tmp_path / "fleet", areas_file=areas).store.origin == "platform"
    # a damaged plan file is moved aside; the device falls back to the file
    (tmp_path / "fleet" / PLAN_FILE).write_text("{not json")
    svc = make_service(spool, tmp_path / "fleet", areas_file=areas)
    assert svc.store.origin == "areas_file"
    assert any(p.name.startswith("plan.json.bad-") for p in (tmp_path / "fleet").iterdir())
    bad = tmp_path / "bad.toml"
    bad.write_text('[[areas]]\nid = "x"\npolygon = []\n')
    with pytest.raises(ConfigError, match=r"fleet.areas_file: .*at least 3 points"):
        make_service(spool, tmp_path / "fleet3", areas_file=bad)


def test_settings_from_toml_name_the_field() -> None:
    s = load_dataclass(
        FleetSettings,
        {"enabled": True, "state_dir": "/tmp/x", "inputs": {"source": "serial"}},
        "fleet",
    )
    assert s.inputs.source == "serial" and s.rule_settings().idle_s == 300.0
    with pytest.raises(ConfigError, match=r"fleet.inputs.source: must be one of"):
        load_dataclass(FleetSettings, {"inputs": {"source": "can"}}, "fleet")
    with pytest.raises(ConfigError, match=r"fleet.hysteresis_m: must be 0..500"):
        load_dataclass(FleetSettings, {"hysteresis_m": 1000}, "fleet")


# --------------------------------------------------------------------------- geometry


def test_circle_distance_agrees_with_haversine() -> None:
    c = Circle(52.09, 5.12, 1000.0)
    rnd = random.Random(1)
    for _ in range(200):
        lat = 52.09 + rnd.uniform(-0.03, 0.03)
        lon = 5.12 + rnd.uniform(-0.05, 0.05)
        exact = distance_m(52.09, 5.12, lat, lon) - 1000.0
        assert abs(c.signed_distance_m(lat, lon) - exact) < 0.5 + abs(exact) * 1e-3


def test_polygon_and_route_distances() -> None:
    sq = Polygon([tuple(p) for p in square(100)])  # type: ignore[misc]
    assert sq.signed_distance_m(*P.to_latlon(50, 50)) == pytest.approx(-50, abs=0.01)
    assert sq.signed_distance_m(*P.to_latlon(50, 130)) == pytest.approx(30, abs=0.01)
    assert sq.signed_distance_m(*P.to_latlon(130, 140)) == pytest.approx(50, abs=0.01)
    # concave (an L): the notch is outside
    ell = Polygon(
        [tuple(ll(*p)) for p in [(0, 0), (100, 0), (100, 40), (40, 40), (40, 100), (0, 100)]]
    )  # type: ignore[misc]
    assert ell.signed_distance_m(*P.to_latlon(70, 70)) == pytest.approx(30, abs=0.01)
    assert ell.signed_distance_m(*P.to_latlon(20, 70)) == pytest.approx(-20, abs=0.01)
    # a closed ring (first point repeated) is accepted
    assert len(Polygon([tuple(p) for p in [*square(10), square(10)[0]]]).points) == 4  # type: ignore[misc]
    r = Polyline([tuple(ll(0, 0)), tuple(ll(100, 0)), tuple(ll(100, 100))], 15)  # type: ignore[misc]
    d, s = r.locate(*P.to_latlon(105, 50))
    assert d == pytest.approx(5, abs=0.01) and s == pytest.approx(150, abs=0.05)
    assert r.signed_distance_m(*P.to_latlon(50, 40)) == pytest.approx(25, abs=0.01)
    assert r.length_m == pytest.approx(200, abs=0.05)


def test_grid_returns_every_shape_within_the_margin() -> None:
    rnd = random.Random(3)
    shapes: list[Circle | Polygon] = []
    for _ in range(300):
        x, y = rnd.uniform(0, 5000), rnd.uniform(0, 5000)
        if rnd.random() < 0.5:
            shapes.append(Circle(*P.to_latlon(x, y), rnd.uniform(5, 200)))
        else:
            n = rnd.randint(3, 8)
            pts = [
                P.to_latlon(x + r * math.sin(a), y + r * math.cos(a))
                for k in range(n)
                for a in [(k + rnd.uniform(0.1, 0.9)) * 2 * math.pi / n]
                for r in [rnd.uniform(20, 300)]
            ]
            shapes.append(Polygon(pts))
    grid = GridIndex([s.bbox for s in shapes], margin_m=11.0, cell_m=100.0)
    for _ in range(2000):
        lat, lon = P.to_latlon(rnd.uniform(-200, 5200), rnd.uniform(-200, 5200))
        cands = set(grid.query(lat, lon))
        near = {i for i, s in enumerate(shapes) if s.signed_distance_m(lat, lon) <= 11.0}
        assert near <= cands
        assert len(cands) < 40


def test_schedule_and_local_time() -> None:
    night = Schedule.parse({"days": ["fri"], "start": "22:00", "end": "06:00"})
    ams = LocalClock("Europe/Amsterdam")
    # Friday 2025-06-06 21:30 UTC = 23:30 CEST: in Friday's night shift
    assert night.shift_of(ams.local(1749245400.0)).isoformat() == "2025-06-06"  # type: ignore[union-attr]
    # Saturday 03:00 CEST still Friday's shift; Saturday 07:00 not
    assert night.shift_of(ams.local(1749258000.0)).isoformat() == "2025-06-06"  # type: ignore[union-attr]
    assert night.shift_of(ams.local(1749272400.0)) is None
    # a fixed offset where no tz database is installed
    plus2 = LocalClock(utc_offset_min=120)
    assert night.shift_of(plus2.local(1749245400.0)) is not None
    day = Schedule.parse({"days": [4], "start": "06:00", "end": "14:00"})  # 4 = Thursday
    assert day.days == frozenset({3})
    assert day.to_json() == {"days": ["thu"], "start": "06:00", "end": "14:00"}
    with pytest.raises(ConfigError, match="not a day"):
        Schedule.parse({"days": ["someday"]})
    with pytest.raises(ConfigError, match="unknown zone"):
        LocalClock("Mars/Olympus")
