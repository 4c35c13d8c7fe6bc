"""The test drives: NMEA logs through areas and along routes, with their expected events.

``python -m tests.fleet.drives`` writes, for each drive, into ``tests/fleet/data/``:
``NAME.nmea`` (the log), ``NAME.plan.json`` (the areas and routes), ``NAME.inputs.json`` (the
vehicle inputs over time) and ``NAME.events.json`` (the events the device must decide).

The expected events are **not** produced by the rule engine. They come from an oracle written
here, in the drive's own exact metres: "the first fix from which ``dwell`` consecutive fixes lie
at least ``h`` metres inside the circle" etc., with the shapes' geometry done by hand (a circle
is a centre and a radius, a route here is an axis-parallel segment). A test checks the files
on disk are what this module builds, so a change to a drive shows up in review.
"""

from __future__ import annotations

import calendar
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.labs.drive import Drive, Sample
from agent.model import format_utc

DATA = Path(__file__).parent / "data"
LAT0, LON0 = 52.0900, 5.1200
T0 = calendar.timegm((2025, 6, 5, 6, 0, 0))  # Thursday 06:00 UTC
H = 10.0  # hysteresis_m
K = 3  # dwell_fixes
#: The fleet settings every drive runs with (besides the defaults).
IDLE_S, STOPPED_S = 120.0, 180.0
SETTINGS = {
    "hysteresis_m": H,
    "dwell_fixes": K,
    "idle_min": IDLE_S / 60,
    "stopped_min": STOPPED_S / 60,
}


@dataclass
class Built:
    name: str
    drive: Drive
    plan: dict[str, Any]
    #: (from time, inputs) steps; the inputs at a fix are those of the last step <= its time
    inputs: list[tuple[float, dict[str, bool]]]
    events: list[dict[str, Any]] = field(default_factory=list)

    def inputs_at(self, t: float) -> dict[str, bool]:
        cur: dict[str, bool] = {}
        for since, state in self.inputs:
            if since <= t:
                cur = state
        return cur


def _confirm(
    samples: Sequence[Sample], pred: Callable[[Sample], bool], start: int
) -> tuple[int, int]:
    """(first fix of the run, confirming fix): the first K consecutive fixes from ``start``
    that satisfy ``pred``."""
    run = 0
    for i in range(start, len(samples)):
        if pred(samples[i]):
            run += 1
            if run == K:
                return i - K + 1, i
        else:
            run = 0
    raise AssertionError("the drive never confirms this")


def _ev(
    kind: str, subject: str, s: Sequence[Sample], fix: int, crossed: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": kind,
        "subject": subject,
        "fix": fix,
        "time": format_utc(s[fix].t),
    }
    if crossed is not None:
        out["crossed_at"] = format_utc(s[crossed].t)
    return out


def _ll(d: Drive, x: float, y: float) -> list[float]:
    la, lo = d.proj.to_latlon(x, y)
    return [round(la, 9), round(lo, 9)]


def work_day() -> Built:
    """East along route r1 through the 30 km/h market circle, north off the route, a long
    stop with the engine running, back onto the route and home westward with the brush off."""
    d = Drive(LAT0, LON0, t0=T0)
    d.go(1000, 0, speed_mps=10.0)  # fixes at x = 0, 10, ..., 1000 (t = 0..100 s)
    d.go(1000, 200, speed_mps=10.0)  # north, off the route
    d.stay(240)  # 4 minutes, engine on
    d.go(1000, 0, speed_mps=10.0)
    d.go(0, 0, speed_mps=10.0)
    s = d.samples
    cx, cy, r = 503.0, 4.0, 100.0  # market: circle, 30 km/h
    plan = {
        "areas": [
            {
                "id": "market",
                "name": "Market square",
                "circle": {"lat": _ll(d, cx, cy)[0], "lon": _ll(d, cx, cy)[1], "radius_m": r},
                "speed_limit_kmh": 30,
            },
            {
                "id": "district-3",
                "assigned": True,
                "schedule": {"days": ["thu"], "start": "06:00", "end": "07:00"},
                "polygon": [
                    _ll(d, -50, -50),
                    _ll(d, 1050, -50),
                    _ll(d, 1050, 103),
                    _ll(d, -50, 103),
                ],
            },
        ],
        "routes": [
            {
                "id": "r1",
                "name": "Main street",
                "points": [_ll(d, 0, 0), _ll(d, 1000, 0)],
                "corridor_m": 15,
                "equipment": ["brush"],
                "schedule": {"days": ["thu"], "start": "06:00", "end": "07:00"},
            }
        ],
    }
    t_home = s[next(i for i, x in enumerate(s) if x.y == 0 and i > 200 and x.x < 1000)].t
    inputs = [(T0 - 10, {"ignition": True, "brush": True}), (t_home, {"ignition": True})]

    def circ(p: Sample) -> float:
        return math.hypot(p.x - cx, p.y - cy) - r

    def poly(p: Sample) -> float:  # the district's rectangle, signed (inside negative)
        dx = max(-50 - p.x, p.x - 1050)
        dy = max(-50 - p.y, p.y - 103)
        if dx <= 0 and dy <= 0:
            return max(dx, dy)
        return math.hypot(max(dx, 0), max(dy, 0))

    def route(p: Sample) -> float:
        along = min(max(p.x, 0), 1000)
        return math.hypot(p.x - along, p.y) - 15

    hr = min(H, 15 / 2)  # a corridor's hysteresis is at most half its width either side

    ev: list[dict[str, Any]] = []
    # district-3 (assigned, in shift): inside from the first fix -> entered (initial)
    a, b = _confirm(s, lambda p: poly(p) <= -H, 0)
    ev.append({**_ev("area_enter", "district-3", s, b, a), "initial": True})
    # market: in, speeding (36 km/h > 30 + 3) from the first fix inside, out
    a, b = _confirm(s, lambda p: circ(p) <= -H, 0)
    ev.append(_ev("area_enter", "market", s, b, a))
    ev.append(_ev("speeding", "market", s, b + K - 1))
    a2, b2 = _confirm(s, lambda p: circ(p) >= H, b + 1)
    ev.append(_ev("area_exit", "market", s, b2, a2))
    ev.append(_ev("speeding_end", "", s, b2))  # no limit any more: ends at once
    # north: off the route corridor, then out of the district (outside every assigned area)
    on_route = _confirm(s, lambda p: route(p) <= -hr, 0)[1]
    a, b = _confirm(s, lambda p: route(p) >= hr, on_route + 1)
    ev.append(_ev("route_left", "r1", s, b, a))
    a, b = _confirm(s, lambda p: poly(p) >= H, 0)
    ev.append(_ev("area_exit", "district-3", s, b, a))
    ev.append(_ev("off_assigned", "district-3", s, b))
    # the stop: speed 0 from the first fix of stay(); idle (ignition on) after 2 min,
    # stopped after 3 min
    stop0 = next(i for i, p in enumerate(s) if p.speed == 0 and i > 0)
    idle_fix = next(i for i in range(stop0, len(s)) if s[i].t - s[stop0].t >= IDLE_S)
    stop_fix = next(i for i in range(stop0, len(s)) if s[i].t - s[stop0].t >= STOPPED_S)
    ev.append(_ev("idle", "", s, idle_fix))
    ev.append(_ev("stopped", "", s, stop_fix))
    moving = _confirm(s, lambda p: p.speed >= 1.0, stop0)[1]
    ev.append(_ev("idle_end", "", s, moving))
    ev.append(_ev("stopped_end", "", s, moving))
    # back south: into the district first (y <= 93), then onto the route corridor (y <= 5)
    a, b = _confirm(s, lambda p: poly(p) <= -H, moving)
    ev.append(_ev("area_enter", "district-3", s, b, a))
    ev.append(_ev("on_assigned", "district-3", s, b))
    a, b = _confirm(s, lambda p: route(p) <= -hr, moving)
    ev.append(_ev("route_back", "r1", s, b, a))
    # westward through the market again (speed limit again)
    a, b = _confirm(s, lambda p: circ(p) <= -H, moving)
    ev.append(_ev("area_enter", "market", s, b, a))
    ev.append(_ev("speeding", "market", s, b + K - 1))
    a2, b2 = _confirm(s, lambda p: circ(p) >= H, b + 1)
    ev.append(_ev("area_exit", "market", s, b2, a2))
    ev.append(_ev("speeding_end", "", s, b2))
    ev.sort(key=lambda e: e["fix"])  # several at one fix keep the order written above
    return Built("work_day", d, plan, inputs, ev)


def jitter_edge() -> Built:
    """Up to a circle's edge, +-5 m across it 20 times, deep inside; back to the edge, 20 more
    wiggles, out. GPS jitter at an edge: exactly one entry and one exit."""
    d = Drive(LAT0, LON0, t0=T0)
    cx, cy, r = 0.0, 300.0, 200.0  # the edge is at y = 100 on the approach
    d.go(0, 90, speed_mps=10.0)
    for k in range(20):
        d.at(0, 105 if k % 2 == 0 else 95)
    d.go(0, 300, speed_mps=10.0)
    d.go(0, 100, speed_mps=10.0)
    for k in range(20):
        d.at(0, 95 if k % 2 == 0 else 105)
    d.go(0, 0, speed_mps=10.0)
    s = d.samples
    plan = {
        "areas": [
            {
                "id": "yard",
                "circle": {"lat": _ll(d, cx, cy)[0], "lon": _ll(d, cx, cy)[1], "radius_m": r},
            }
        ],
        "routes": [],
    }

    def circ(p: Sample) -> float:
        return math.hypot(p.x - cx, p.y - cy) - r

    a, b = _confirm(s, lambda p: circ(p) <= -H, 0)
    a2, b2 = _confirm(s, lambda p: circ(p) >= H, b + 1)
    ev = [_ev("area_enter", "yard", s, b, a), _ev("area_exit", "yard", s, b2, a2)]
    crossings = sum(1 for i in range(1, len(s)) if (circ(s[i]) <= 0) != (circ(s[i - 1]) <= 0))
    assert crossings >= 38, crossings
    return Built("jitter_edge", d, plan, [(T0 - 10, {"ignition": True})], ev)


def half_route() -> Built:
    """A straight 1,000 m route driven end to end, brush on for exactly the first 500 m."""
    d = Drive(LAT0, LON0, t0=T0)
    d.go(1000, 0, speed_mps=8.0)  # fixes every 8 m: 0, 8, ..., 496 (brush on), 504, ...
    plan = {
        "areas": [],
        "routes": [
            {
                "id": "sweep-7",
                "points": [_ll(d, 0, 0), _ll(d, 1000, 0)],
                "corridor_m": 10,
                "equipment": ["brush"],
            }
        ],
    }
    t_off = next(p.t for p in d.samples if p.x > 500)
    inputs = [(T0 - 10, {"ignition": True, "brush": True}), (t_off, {"ignition": True})]
    return Built("half_route", d, plan, inputs, [])


DRIVES: dict[str, Callable[[], Built]] = {
    "work_day": work_day,
    "jitter_edge": jitter_edge,
    "half_route": half_route,
}


def files(b: Built) -> dict[str, bytes]:
    def js(obj: object) -> bytes:
        return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()

    return {
        f"{b.name}.nmea": b.drive.nmea(),
        f"{b.name}.plan.json": js(b.plan),
        f"{b.name}.inputs.json": js([[t, st] for t, st in b.inputs]),
        f"{b.name}.events.json": js(b.events),
    }


def main() -> None:
    DATA.mkdir(exist_ok=True)
    for make in DRIVES.values():
        for name, data in files(make()).items():
            (DATA / name).write_bytes(data)
            print(DATA / name)


if __name__ == "__main__":
    main()
