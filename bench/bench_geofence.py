"""Geofence benchmark: one fix against 1,000 areas and 100 routes, grid index vs brute force.

A synthetic city 20 km x 20 km (seeded): 600 circles (r 30-300 m), 400 star-shaped polygons
(5-12 vertices, 50-400 m), 100 routes (20-40 vertices, 80-200 m apart, 15 m corridors); 5
areas and 10 routes are assigned with a shift. One drive of ``FIXES`` fixes (a random walk at
10 m/s plus stretches along routes and through areas) goes through
:class:`agent.fleet.rules.RuleEngine` twice per round, same fixes: with the grid index and
with ``brute_force=True`` (every shape measured for every fix). Both must produce the same
events. Rounds are interleaved; the median round counts.

* ``geofence/index_vs_brute``: microseconds per fix with the index; ratio brute / index
  (target >= 10).
* ``geofence/per_fix``: the same figure against 1 ms (target <= 1).
"""

from __future__ import annotations

import calendar
import math
import random
import statistics
import time
from typing import Any

from agent.fleet.plan import Plan, parse_plan
from agent.fleet.rules import Inputs, RuleEngine
from agent.labs.drive import Drive
from agent.model import Fix
from bench import Reporter

LAT0, LON0 = 52.09, 5.12
CITY_M = 20_000.0
AREAS = 1000
ROUTES = 100
FIXES = 600
ROUNDS = 5
SHIFT = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "05:00", "end": "15:00"}


def city(seed: int = 7) -> tuple[dict[str, Any], list[list[tuple[float, float]]]]:
    rnd = random.Random(seed)
    d = Drive(LAT0, LON0, t0=0)

    def ll(x: float, y: float) -> list[float]:
        return list(d.proj.to_latlon(x, y))

    areas: list[dict[str, Any]] = []
    for i in range(AREAS):
        cx, cy = rnd.uniform(0, CITY_M), rnd.uniform(0, CITY_M)
        item: dict[str, Any] = {"id": f"a{i}"}
        if i < 600:
            la, lo = ll(cx, cy)
            item["circle"] = {"lat": la, "lon": lo, "radius_m": rnd.uniform(30, 300)}
        else:
            n = rnd.randint(5, 12)
            # evenly spread angles (jittered): star-shaped around the centre, hence simple
            angles = [(k + rnd.uniform(0.1, 0.9)) * 2 * math.pi / n for k in range(n)]
            item["polygon"] = [
                ll(cx + r * math.sin(a), cy + r * math.cos(a))
                for a in angles
                for r in [rnd.uniform(50, 400)]
            ]
        if rnd.random() < 0.3:
            item["speed_limit_kmh"] = rnd.choice([20, 30, 50])
        if i < 5:
            item["assigned"] = True
            item["schedule"] = SHIFT
        areas.append(item)
    routes: list[dict[str, Any]] = []
    paths: list[list[tuple[float, float]]] = []
    for j in range(ROUTES):
        x, y = rnd.uniform(2000, CITY_M - 2000), rnd.uniform(2000, CITY_M - 2000)
        heading = rnd.uniform(0, 2 * math.pi)
        pts = [(x, y)]
        for _ in range(rnd.randint(20, 40) - 1):
            heading += rnd.uniform(-0.6, 0.6)
            step = rnd.uniform(80, 200)
            x = min(max(x + step * math.sin(heading), 0), CITY_M)
            y = min(max(y + step * math.cos(heading), 0), CITY_M)
            pts.append((x, y))
        paths.append(pts)
        routes.append(
            {
                "id": f"r{j}",
                "points": [ll(px, py) for px, py in pts],
                "corridor_m": 15,
                "assigned": j < 10,
                "schedule": SHIFT,
            }
        )
    return {"areas": areas, "routes": routes}, paths


def drive(paths: list[list[tuple[float, float]]], seed: int = 11) -> list[Fix]:
    rnd = random.Random(seed)
    d = Drive(LAT0, LON0, t0=calendar.timegm((2025, 6, 5, 6, 0, 0)))  # a Thursday, in shift
    d.at(CITY_M / 2, CITY_M / 2, 0.0)
    while len(d.samples) < FIXES:
        if rnd.random() < 0.5:
            path = rnd.choice(paths)
            d.go(*path[0], speed_mps=10.0)
            for p in path[1:6]:
                d.go(*p, speed_mps=10.0)
        else:
            x, y = d.pos
            d.go(
                min(max(x + rnd.uniform(-1500, 1500), 0), CITY_M),
                min(max(y + rnd.uniform(-1500, 1500), 0), CITY_M),
                speed_mps=10.0,
            )
    return d.fixes()[:FIXES]


def _run(plan: Plan, fixes: list[Fix], brute: bool) -> tuple[float, list[tuple[str, float, str]]]:
    engine = RuleEngine(plan, brute_force=brute)
    inputs = Inputs(ignition=True, brush=True)
    events: list[tuple[str, float, str]] = []
    t0 = time.perf_counter()
    for f in fixes:
        for ev in engine.feed(f, inputs):
            events.append((ev.kind, ev.time, ev.subject))
    return (time.perf_counter() - t0) / len(fixes) * 1e6, events


def run(report: Reporter) -> None:
    spec, paths = city()
    plan = parse_plan(spec)
    fixes = drive(paths)
    idx_us: list[float] = []
    brute_us: list[float] = []
    events_idx: list[tuple[str, float, str]] = []
    for _ in range(ROUNDS):
        us, events_idx = _run(plan, fixes, brute=False)
        idx_us.append(us)
        us, events_brute = _run(plan, fixes, brute=True)
        brute_us.append(us)
        if events_brute != events_idx:
            raise AssertionError("index and brute force disagree on the events")
    idx, brute = statistics.median(idx_us), statistics.median(brute_us)
    engine = RuleEngine(plan)
    cands = [len(engine.index.query(f.lat or 0.0, f.lon or 0.0)) for f in fixes]
    report.info(
        "geofence",
        "setup",
        len(plan.areas) + len(plan.routes),
        "shapes",
        f"{len(fixes)} fixes, {len(events_idx)} events (identical both ways), "
        f"{statistics.mean(cands):.1f} candidates per fix on average",
    )
    report.figure(
        "geofence",
        "index_vs_brute",
        idx,
        "µs per fix",
        ratio=brute / idx,
        baseline=f"brute force over every shape {brute:.0f} µs per fix",
        target=10,
    )
    report.figure(
        "geofence",
        "per_fix",
        idx,
        "µs per fix",
        ratio=idx / 1000.0,
        baseline="1 ms per fix",
        target=1,
        higher_is_better=False,
    )
