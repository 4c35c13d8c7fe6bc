"""Replayed drives: every event at the right fix and time, none doubled at a jittery edge,
coverage, and events recorded in order with capture times while the link is down."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.fleet.plan import Plan, parse_plan
from agent.fleet.rules import FleetEvent, Inputs, RuleEngine, RuleSettings
from agent.labs.drive import Drive
from agent.model import Alarm, FixMode, Severity, format_utc
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet
from tests.fleet import drives
from tests.fleet.harness import drive_into_spool, load_drive, make_service, run_drive, sealed_events

RULES = RuleSettings(
    hysteresis_m=drives.H, dwell_fixes=drives.K, idle_s=drives.IDLE_S, stopped_s=drives.STOPPED_S
)


def _observed(pairs: list[tuple[int, FleetEvent]]) -> list[dict[str, Any]]:
    out = []
    for i, ev in pairs:
        d: dict[str, Any] = {
            "kind": ev.kind,
            "subject": ev.subject,
            "fix": i,
            "time": format_utc(ev.time),
        }
        if "crossed_at" in ev.details:
            d["crossed_at"] = ev.details["crossed_at"]
        if ev.kind == "area_enter" and ev.details.get("initial"):
            d["initial"] = True
        out.append(d)
    return out


def _engine_pairs(name: str, rules: RuleSettings = RULES) -> list[tuple[int, FleetEvent]]:
    drive = load_drive(name)
    engine = RuleEngine(parse_plan(drive.plan), rules)
    pairs = []
    for i, fix in enumerate(drive.fixes):
        pairs.extend((i, ev) for ev in engine.feed(fix, drive.inputs_at(fix.time)))
    return pairs


@pytest.mark.parametrize("name", sorted(drives.DRIVES))
def test_data_files_are_what_the_drives_build(name: str) -> None:
    for fname, data in drives.files(drives.DRIVES[name]()).items():
        assert (drives.DATA / fname).read_bytes() == data, f"regenerate {fname}"


@pytest.mark.parametrize("name", sorted(drives.DRIVES))
def test_replay_reads_every_epoch(name: str) -> None:
    drive = load_drive(name)
    built = drives.DRIVES[name]()
    assert [f.time for f in drive.fixes] == [s.t for s in built.drive.samples]


def test_work_day_every_event_at_the_right_fix_and_time() -> None:
    expected = load_drive("work_day").events
    assert len(expected) == 19
    assert _observed(_engine_pairs("work_day")) == expected


def test_jittery_edge_fires_once_per_crossing() -> None:
    drive = load_drive("jitter_edge")
    observed = _observed(_engine_pairs("jitter_edge"))
    assert observed == drive.events
    assert [e["kind"] for e in observed] == ["area_enter", "area_exit"]
    # The same drive without hysteresis or dwell flaps at every wiggle: the test has teeth.
    naive = _engine_pairs("jitter_edge", RuleSettings(hysteresis_m=0.0, dwell_fixes=1))
    assert len(naive) >= 30


def test_half_route_with_the_brush_on_is_half_covered(tmp_path: Path, spool: Spool) -> None:
    drive = load_drive("half_route")
    svc = make_service(spool, tmp_path / "fleet", drive.plan)
    run_drive(svc, drive)
    (cov,) = svc.cmd_coverage({"route": "sweep-7"})["coverage"]
    assert cov["pieces"] == 100
    assert cov["covered_pieces"] == 50
    assert cov["share"] == 0.5
    assert cov["covered_m"] == 500.0
    assert cov["shift"] == "2025-06-05"
    # brush on for the whole drive: all of it
    svc2 = make_service(spool, tmp_path / "fleet2", drive.plan)
    drive.inputs = [(drive.inputs[0][0], {"ignition": True, "brush": True})]
    run_drive(svc2, drive)
    assert svc2.cmd_coverage({})["coverage"][0]["share"] == 1.0


def test_work_day_coverage_and_shift_end_report() -> None:
    drive = load_drive("work_day")
    engine = RuleEngine(parse_plan(drive.plan), RULES)
    for fix in drive.fixes:
        engine.feed(fix, drive.inputs_at(fix.time))
    (rep,) = engine.coverage_report("r1")
    assert rep.share == 1.0  # brush on all the way east, off on the way back
    # A fix after 07:00 (shift end) closes the shift with a route_coverage event.
    last = drive.fixes[-1]
    later = type(last)(
        **{**{k: getattr(last, k) for k in last.__slots__}, "time": last.time + 3600}
    )
    (ev,) = [e for e in engine.feed(later) if e.kind == "route_coverage"]
    assert ev.subject == "r1" and ev.details["share"] == 1.0 and ev.time == later.time


class FlakyLink:
    """The live lane as the forwarder sees it: alarms wait while the link is down and go out,
    in order, when it is back. Records at which fix each alarm was raised and sent."""

    def __init__(self) -> None:
        self.up = True
        self.fix = 0
        self.waiting: list[tuple[Alarm, int]] = []
        self.delivered: list[tuple[Alarm, int, int]] = []  # (alarm, raised at, sent at)

    def report_alarm(self, alarm: Alarm) -> None:
        self.waiting.append((alarm, self.fix))
        self.flush()

    def flush(self) -> None:
        if self.up:
            self.delivered.extend((a, raised, self.fix) for a, raised in self.waiting)
            self.waiting.clear()


def test_link_down_for_the_middle_third(tmp_path: Path, spool: Spool, keyset: KeySet) -> None:
    drive = load_drive("work_day")
    n = len(drive.fixes)
    lo, hi = n // 3, 2 * n // 3
    link = FlakyLink()

    def on_fix(i: int, fix: object) -> None:
        link.fix = i
        link.up = not (lo <= i < hi)
        link.flush()

    wall0 = time.time()
    records = drive_into_spool(
        spool,
        tmp_path / "fleet",
        "work_day",
        alarm=link.report_alarm,
        platform_private=keyset.platform_private,
        on_fix=on_fix,
    )
    link.fix = n
    link.up = True
    link.flush()
    expected = drive.events
    # Every event is in the spool, sealed, in order, with the capture time of its fix.
    assert [(r["type"], r["subject"], r["time"]) for r in records] == [
        ("fleet_" + e["kind"], e["subject"], e["time"]) for e in expected
    ]
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs)
    assert all(abs(r["t"] - wall0) > 3600 * 24 for r in records)  # not the wall clock
    # Every alarm went out, in order, stamped with its capture time, not its sending time.
    assert [(a.kind, a.time) for a, _, _ in link.delivered] == [
        (r["type"], r["t"]) for r in records
    ]
    late = [(a, raised, sent) for a, raised, sent in link.delivered if raised != sent]
    middle = [e for e in expected if lo <= e["fix"] < hi]  # decided while the link was down
    assert len(middle) >= 2, "the drive must have events in its middle third"
    assert [a.kind for a, _, _ in late] == ["fleet_" + e["kind"] for e in middle]
    assert all(sent == hi for _, _, sent in late)
    assert [a.time for a, _, _ in late] == [drive.fixes[e["fix"]].time for e in middle]
    severities = {a.kind: a.severity for a, _, _ in link.delivered}
    assert severities["fleet_off_assigned"] is Severity.WARNING
    assert severities["fleet_area_enter"] is Severity.INFO


def test_events_without_a_platform_key_are_returned_as_pairs(tmp_path: Path, spool: Spool) -> None:
    pairs = drive_into_spool(spool, tmp_path / "fleet", "jitter_edge")
    assert [ev.kind for _, ev in pairs] == ["area_enter", "area_exit"]  # type: ignore[union-attr]


def test_sealed_records_carry_the_event_fields(
    tmp_path: Path, spool: Spool, keyset: KeySet
) -> None:
    drive_into_spool(spool, tmp_path / "fleet", "jitter_edge")
    recs = sealed_events(spool, keyset.platform_private)
    assert [r["type"] for r in recs] == ["fleet_area_enter", "fleet_area_exit"]
    enter = recs[0]
    assert {"time", "t", "subject", "lat", "lon", "speed_kmh", "crossed_at"} <= set(enter)


def test_parked_with_the_ignition_off_is_stopped_not_idle() -> None:
    d = Drive(drives.LAT0, drives.LON0, t0=drives.T0)
    d.go(100, 0, speed_mps=10.0).stay(400)
    engine = RuleEngine(Plan(), RULES)
    kinds = [e.kind for f in d.fixes() for e in engine.feed(f, Inputs(ignition=False))]
    assert kinds == ["stopped"]
    engine = RuleEngine(Plan(), RULES)
    kinds = [e.kind for f in d.fixes() for e in engine.feed(f, Inputs(ignition=True))]
    assert kinds == ["idle", "stopped"]


def test_a_new_plan_keeps_the_vehicles_own_state() -> None:
    """Idle with the ignition on, then a new plan: the idle and the stop it was in carry over,
    so moving off ends them (and nothing fires twice)."""
    d = Drive(drives.LAT0, drives.LON0, t0=drives.T0)
    d.stay(400)
    engine = RuleEngine(Plan(), RULES)
    kinds = [e.kind for f in d.fixes() for e in engine.feed(f, Inputs(ignition=True))]
    assert kinds == ["idle", "stopped"]
    last = d.fixes()[-1]
    again = Drive(drives.LAT0, drives.LON0, t0=last.time + 1)
    again.go(100, 0, speed_mps=10.0)
    replaced = RuleEngine(Plan(), RULES)
    replaced.adopt(engine)
    kinds = [e.kind for f in again.fixes() for e in replaced.feed(f, Inputs(ignition=True))]
    assert kinds == ["idle_end", "stopped_end"]


def test_poor_fixes_neither_fire_nor_confirm() -> None:
    drive = load_drive("jitter_edge")
    engine = RuleEngine(parse_plan(drive.plan), RULES)
    kinds = []
    for f in drive.fixes:
        kinds += [e.kind for e in engine.feed(f)]
        # every fix is followed by bad ones: no position, poor HDOP, a jump, not later
        for bad in (
            replace(f, mode=FixMode.NO_FIX, lat=None, lon=None),
            replace(f, time=f.time + 0.5, hdop=20.0),
            replace(f, time=f.time + 0.5, lat=(f.lat or 0) + 0.1),
            replace(f, time=f.time - 5),
        ):
            assert engine.feed(bad) == []
    assert kinds == ["area_enter", "area_exit"]
    assert engine.rejected == 4 * len(drive.fixes)


def test_a_small_circle_can_still_be_entered() -> None:
    d = Drive(drives.LAT0, drives.LON0, t0=drives.T0)
    d.go(0, 100, speed_mps=2.0)  # through a bin collection point of radius 8 m at y = 50
    lat, lon = d.proj.to_latlon(0, 50)
    plan = parse_plan({"areas": [{"id": "bin", "circle": {"lat": lat, "lon": lon, "radius_m": 8}}]})
    engine = RuleEngine(plan, RULES)  # hysteresis 10 m, capped at 4 m for this circle
    kinds = [e.kind for f in d.fixes() for e in engine.feed(f)]
    assert kinds == ["area_enter", "area_exit"]
