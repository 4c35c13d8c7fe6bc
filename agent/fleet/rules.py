"""The fleet rule engine: fix by fix, with the vehicle's inputs, which events happened. Pure.

``RuleEngine(plan, settings, clock).feed(fix, inputs) -> list[FleetEvent]``. No I/O, no wall
clock: every event carries the capture time of the fix that decided it (``time``), so a truck
out of coverage for an hour reports its events later with their true times.

Events (``kind``):

=================  ===========================================================================
``area_enter``     inside an area (``initial`` when the first fixes already were inside)
``area_exit``      left an area
``off_assigned``   during an assigned area's shift, outside every assigned area in shift
``on_assigned``    back inside one (during the shift)
``route_left``     left the corridor of an assigned route in its shift, after being on it
``route_back``     back in the corridor after ``route_left``
``speeding``       speed above the lowest limit of the areas / route corridors the truck is in
                   (+ ``speed_margin_kmh``) for ``dwell_fixes`` fixes; ``speeding_end`` when at
                   or under the limit for ``dwell_fixes`` fixes, or out of every limited shape
``stopped``        not moving (speed < ``moving_mps``) for ``stopped_s``; ``stopped_end``
``idle``           ignition on and not moving for ``idle_s``; ``idle_end``
``route_coverage`` a route's shift ended: the share driven with the equipment on
=================  ===========================================================================

**Hysteresis.** ``d`` is the signed distance to a boundary (negative inside). A shape counts
as entered only after ``dwell_fixes`` consecutive fixes with ``d <= -hysteresis_m`` and as
left after ``dwell_fixes`` consecutive fixes with ``d >= +hysteresis_m``; a fix in the band
between resets the run. So a truck parked on an edge, its fixes wandering +-5 m, never fires;
a real crossing fires once, at the fix that confirms it, with ``crossed_at`` = the first fix
of the confirming run. Moving again after a stop likewise needs ``dwell_fixes`` moving fixes.

**Index.** Only shapes the grid returns for a fix (within ``hysteresis_m`` + 1 m of their
bounding box) and shapes not yet settled outside are measured; a shape the grid does not
return is more than ``hysteresis_m`` away, i.e. "outside beyond the band".

**Fix quality.** Fixes without a position, with HDOP above ``max_hdop``, not later than the
last accepted fix, or implying more than ``max_speed_mps`` from it (a jump; three such fixes
in a row are believed) are ignored: they neither fire nor confirm anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agent.fleet.coverage import CoverageReport, RouteCoverage
from agent.fleet.index import BruteIndex, GridIndex
from agent.fleet.plan import Plan
from agent.fleet.rule_settings import RuleSettings
from agent.fleet.schedule import LocalClock, Schedule, shift_id
from agent.fleet.shapes import K_LAT, Circle, Polygon, Polyline
from agent.model import Fix, Severity, format_utc

UNKNOWN, INSIDE, OUTSIDE = 0, 1, 2
JUMP_CONFIRMATIONS = 3
#: Coverage of this many shifts per route is kept for ``fleet.coverage``.
KEEP_SHIFTS = 7

SEVERITY: dict[str, Severity] = {
    "area_enter": Severity.INFO,
    "area_exit": Severity.INFO,
    "off_assigned": Severity.WARNING,
    "on_assigned": Severity.INFO,
    "route_left": Severity.WARNING,
    "route_back": Severity.INFO,
    "speeding": Severity.WARNING,
    "speeding_end": Severity.INFO,
    "stopped": Severity.INFO,
    "stopped_end": Severity.INFO,
    "idle": Severity.WARNING,
    "idle_end": Severity.INFO,
    "route_coverage": Severity.INFO,
}


@dataclass(frozen=True, slots=True)
class Inputs:
    """The vehicle's debounced inputs at one moment. ``ignition`` None: not wired / unknown."""

    ignition: bool | None = None
    brush: bool = False
    pump: bool = False
    lift: bool = False

    def equipment_on(self, names: tuple[str, ...] = ()) -> bool:
        if not names:
            return self.brush or self.pump or self.lift
        return any(getattr(self, n) for n in names)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"brush": self.brush, "pump": self.pump, "lift": self.lift}
        if self.ignition is not None:
            out["ignition"] = self.ignition
        return out


@dataclass(frozen=True, slots=True)
class FleetEvent:
    kind: str
    time: float  # capture time (UTC s) of the fix that decided the event
    subject: str = ""  # area or route id; "" for the vehicle's own events
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        return SEVERITY.get(self.kind, Severity.INFO)

    def to_record(self) -> dict[str, Any]:
        """The event record's details (``spool.put_event("fleet_" + kind, record)``)."""
        return {
            "time": format_utc(self.time),
            "t": self.time,
            "subject": self.subject,
            **self.details,
        }


class _Edge:
    """Hysteresis state of one boundary."""

    __slots__ = ("pending", "run", "run_start", "state")

    def __init__(self) -> None:
        self.state = UNKNOWN
        self.pending = UNKNOWN
        self.run = 0
        self.run_start = 0.0

    def update(self, d: float, t: float, h: float, k: int) -> tuple[int, int, float] | None:
        want = INSIDE if d <= -h else OUTSIDE if d >= h else UNKNOWN
        if want == UNKNOWN or want == self.state:
            self.run = 0
            self.pending = UNKNOWN
            return None
        if want == self.pending:
            self.run += 1
        else:
            self.pending = want
            self.run = 1
            self.run_start = t
        if self.run < k:
            return None
        old = self.state
        self.state = want
        self.run = 0
        self.pending = UNKNOWN
        return old, want, self.run_start

    @property
    def settled_out(self) -> bool:
        return self.state == OUTSIDE and self.run == 0


class VehicleRules:
    """The rules on the vehicle's own motion (not on a place): speeding over the limit of where
    it is, stopped, idling with the ignition on. Carried over when a new plan is installed."""

    def __init__(self, settings: RuleSettings) -> None:
        self.s = settings
        self._speeding = False
        self._speed_run = 0
        self._speed_max = 0.0
        self._speed_since = 0.0
        self._stop_since: float | None = None
        self._moving_run = 0
        self._stopped_fired = False
        self._idle_since: float | None = None
        self._idle_fired = False

    def carry(self, old: VehicleRules) -> None:
        """Take over ``old``'s state (a new plan: the vehicle is where it was), keeping these
        settings."""
        state = {k: v for k, v in vars(old).items() if k != "s"}
        vars(self).update(state)

    def speed_rule(
        self, speed: float, t: float, here: dict[str, Any], lim: tuple[float, str] | None
    ) -> list[FleetEvent]:
        """``speeding`` after ``dwell_fixes`` fixes over the tightest limit (plus the margin)
        of the areas and routes the vehicle is in (``lim``: that limit and its item's id);
        ``speeding_end`` after as many at or under it."""
        kmh = speed * 3.6
        k = self.s.dwell_fixes
        if not self._speeding:
            if lim is not None and kmh > lim[0] + self.s.speed_margin_kmh:
                if self._speed_run == 0:
                    self._speed_since = t
                self._speed_run += 1
                self._speed_max = max(self._speed_max, kmh)
                if self._speed_run >= k:
                    self._speeding = True
                    self._speed_run = 0
                    info = {"limit_kmh": lim[0], "since": format_utc(self._speed_since), **here}
                    return [FleetEvent("speeding", t, lim[1], info)]
            else:
                self._speed_run = 0
                self._speed_max = 0.0
            return []
        self._speed_max = max(self._speed_max, kmh)
        if lim is None or kmh <= lim[0]:
            self._speed_run += 1
            if lim is None or self._speed_run >= k:
                self._speeding = False
                self._speed_run = 0
                info = {
                    "max_kmh": round(self._speed_max, 1),
                    "duration_s": round(t - self._speed_since, 3),
                    **here,
                }
                self._speed_max = 0.0
                return [FleetEvent("speeding_end", t, lim[1] if lim else "", info)]
        else:
            self._speed_run = 0
        return []

    def stop_rules(
        self, speed: float, t: float, inputs: Inputs, here: dict[str, Any]
    ) -> list[FleetEvent]:
        """``stopped`` after ``stopped_s`` below ``moving_mps``; ``idle`` after ``idle_s``
        stopped with the ignition on; each ended once the vehicle moves on."""
        s = self.s
        out: list[FleetEvent] = []
        if speed < s.moving_mps:
            self._moving_run = 0
            if self._stop_since is None:
                self._stop_since = t
        elif self._stop_since is not None:
            self._moving_run += 1
            if self._moving_run >= s.dwell_fixes:
                out.extend(self._end_idle(t, here, "moving"))
                if self._stopped_fired:
                    info = {"since": format_utc(self._stop_since), **here}
                    info["duration_s"] = round(t - self._stop_since, 3)
                    out.append(FleetEvent("stopped_end", t, "", info))
                self._stop_since = None
                self._stopped_fired = False
                self._moving_run = 0
        if self._stop_since is not None and inputs.ignition is True:
            if self._idle_since is None:
                self._idle_since = t
        else:
            out.extend(self._end_idle(t, here, "ignition_off" if self._stop_since else "moving"))
        stop = self._stop_since
        if stop is not None and not self._stopped_fired and t - stop >= s.stopped_s:
            self._stopped_fired = True
            out.append(FleetEvent("stopped", t, "", {"since": format_utc(stop), **here}))
        idle = self._idle_since
        if idle is not None and not self._idle_fired and t - idle >= s.idle_s:
            self._idle_fired = True
            out.append(FleetEvent("idle", t, "", {"since": format_utc(idle), **here}))
        return out

    def _end_idle(self, t: float, here: dict[str, Any], why: str) -> list[FleetEvent]:
        since, fired = self._idle_since, self._idle_fired
        self._idle_since = None
        self._idle_fired = False
        if since is None or not fired:
            return []
        info = {"since": format_utc(since), "duration_s": round(t - since, 3), "why": why, **here}
        return [FleetEvent("idle_end", t, "", info)]


class RuleEngine:
    """Feeds fixes through the rules; not thread-safe (the caller holds a lock)."""

    def __init__(
        self,
        plan: Plan,
        settings: RuleSettings | None = None,
        clock: LocalClock | None = None,
        *,
        brute_force: bool = False,
    ) -> None:
        self.plan = plan
        self.s = s = settings or RuleSettings()
        self.clock = clock or LocalClock()
        self._areas = plan.areas
        self._routes = plan.routes
        self._na = len(plan.areas)
        self._shapes: list[Circle | Polygon | Polyline] = [a.shape for a in plan.areas] + [
            r.line for r in plan.routes
        ]
        self._hyst = [effective_hysteresis(sh, s.hysteresis_m) for sh in self._shapes]
        boxes = [sh.bbox for sh in self._shapes]
        self.index: GridIndex | BruteIndex = (
            BruteIndex(len(boxes))
            if brute_force
            else GridIndex(boxes, margin_m=s.hysteresis_m + 1.0, cell_m=s.cell_m)
        )
        self._edges: dict[int, _Edge] = {}
        self._watch: set[int] = set()  # shapes not settled outside: measured every fix
        self._inside: set[int] = set()
        self._assigned_areas = [i for i, a in enumerate(plan.areas) if a.assigned]
        self._assigned_routes = [j for j, r in enumerate(plan.routes) if r.assigned]
        # state
        self.accepted = 0
        self.rejected = 0
        self._last: Fix | None = None
        self._suspects = 0
        self._minute = -1
        self._area_shift: dict[int, str | None] = {}
        self._route_shift: dict[int, str | None] = {}
        self._route_on: dict[int, str] = {}  # route -> shift in which it was on the corridor
        self._route_left: set[int] = set()
        self.coverage: dict[tuple[str, str], RouteCoverage] = {}
        self._open_cov: dict[int, str] = {}  # route -> shift whose coverage is open
        self._off: bool = False
        self.vehicle = VehicleRules(s)  # speeding, stopped, idle: the vehicle's own state

    # ------------------------------------------------------------------ quality
    def _accept(self, fix: Fix) -> bool:
        if not fix.has_position:
            return False
        if fix.hdop is not None and fix.hdop > self.s.max_hdop:
            return False
        last = self._last
        if last is None:
            return True
        if fix.time <= last.time:
            return False
        if _dist_m(last, fix) / (fix.time - last.time) > self.s.max_speed_mps:
            self._suspects += 1
            if self._suspects < JUMP_CONFIRMATIONS:
                return False
        self._suspects = 0
        return True

    # ------------------------------------------------------------------ schedules
    def _shift(self, sched: Schedule | None, t: float) -> str | None:
        local = self.clock.local(t)
        if sched is None:
            return shift_id(local.date())
        d = sched.shift_of(local)
        return None if d is None else shift_id(d)

    def _refresh_shifts(self, t: float) -> None:
        minute = math.floor(t / 60.0)
        if minute == self._minute:
            return
        self._minute = minute
        self._area_shift = {
            i: self._shift(self._areas[i].schedule, t) for i in self._assigned_areas
        }
        self._route_shift = {
            j: self._shift(self._routes[j].schedule, t) for j in self._assigned_routes
        }

    # ------------------------------------------------------------------ feed
    def feed(self, fix: Fix, inputs: Inputs | None = None) -> list[FleetEvent]:
        if not self._accept(fix):
            self.rejected += 1
            return []
        inputs = inputs or Inputs()
        prev = self._last
        self._last = fix
        self.accepted += 1
        assert fix.lat is not None and fix.lon is not None
        lat, lon, t = fix.lat, fix.lon, fix.time
        if fix.speed is not None:
            speed = fix.speed
        elif prev is not None:
            speed = _dist_m(prev, fix) / (t - prev.time)
        else:
            speed = 0.0
        self._refresh_shifts(t)
        s = self.s
        k = s.dwell_fixes
        hyst = self._hyst
        here = {"lat": round(lat, 7), "lon": round(lon, 7), "speed_kmh": round(speed * 3.6, 1)}
        out: list[FleetEvent] = []
        out.extend(self._coverage_closed(t))
        cands = set(self.index.query(lat, lon))
        todo = cands | self._watch
        na = self._na
        shapes = self._shapes
        for i in sorted(todo):
            shape = shapes[i]
            along = -1.0
            if i not in cands:  # the grid says: more than hysteresis_m away
                d = math.inf
            elif i >= na:
                assert isinstance(shape, Polyline)
                dc, along = shape.locate(lat, lon)
                d = dc - shape.corridor_m
            else:
                d = shape.signed_distance_m(lat, lon)
            edge = self._edges.get(i)
            if edge is None:
                edge = self._edges[i] = _Edge()
            tr = edge.update(d, t, hyst[i], k)
            if edge.settled_out:
                self._watch.discard(i)
            else:
                self._watch.add(i)
            if i >= na:
                self._route_fix(i - na, d, along, t, inputs)
            if tr is None:
                continue
            old, new, since = tr
            if new == INSIDE:
                self._inside.add(i)
            else:
                self._inside.discard(i)
            if i < na:
                out.extend(self._area_transition(i, old, new, since, t, here))
            else:
                out.extend(self._route_transition(i - na, old, new, since, t, here))
        out.extend(self._assigned_rule(t, here))
        out.extend(self.vehicle.speed_rule(speed, t, here, self._limit()))
        out.extend(self.vehicle.stop_rules(speed, t, inputs, here))
        return out

    # ------------------------------------------------------------------ areas and routes
    def _area_transition(
        self, i: int, old: int, new: int, since: float, t: float, here: dict[str, Any]
    ) -> list[FleetEvent]:
        area = self._areas[i]
        info = {"name": area.name, "crossed_at": format_utc(since), **here}
        if new == INSIDE:
            return [FleetEvent("area_enter", t, area.id, {**info, "initial": old == UNKNOWN})]
        if old == INSIDE:
            return [FleetEvent("area_exit", t, area.id, info)]
        return []

    def _route_transition(
        self, j: int, old: int, new: int, since: float, t: float, here: dict[str, Any]
    ) -> list[FleetEvent]:
        route = self._routes[j]
        shift = self._route_shift.get(j)
        if shift is None:  # not assigned, or not in its shift: tracked, not reported
            return []
        info = {"name": route.name, "shift": shift, "crossed_at": format_utc(since), **here}
        if new == INSIDE:
            back = j in self._route_left and self._route_on.get(j) == shift
            self._route_on[j] = shift
            self._route_left.discard(j)
            return [FleetEvent("route_back", t, route.id, info)] if back else []
        if old == INSIDE and self._route_on.get(j) == shift:
            self._route_left.add(j)
            return [FleetEvent("route_left", t, route.id, info)]
        return []

    def _route_fix(self, j: int, d: float, along: float, t: float, inputs: Inputs) -> None:
        shift = self._route_shift.get(j)
        if shift is None:
            return
        route = self._routes[j]
        key = (route.id, shift)
        cov = self.coverage.get(key)
        if cov is None:
            cov = self.coverage[key] = RouteCoverage(
                route.id, shift, route.line.length_m, piece_m=self.s.piece_m
            )
            self._open_cov[j] = shift
        if along < 0:
            cov.gap()
        else:
            cov.observe(along, t, d <= 0 and inputs.equipment_on(route.equipment))

    def _coverage_closed(self, t: float) -> list[FleetEvent]:
        out: list[FleetEvent] = []
        for j, shift in list(self._open_cov.items()):
            if self._route_shift.get(j) == shift:
                continue
            del self._open_cov[j]
            route = self._routes[j]
            rep = self.coverage[(route.id, shift)].report()
            out.append(
                FleetEvent("route_coverage", t, route.id, {"name": route.name, **rep.to_json()})
            )
            kept = sorted(k for k in self.coverage if k[0] == route.id)
            for old in kept[:-KEEP_SHIFTS]:
                del self.coverage[old]
        return out

    def _assigned_rule(self, t: float, here: dict[str, Any]) -> list[FleetEvent]:
        in_shift = [i for i in self._assigned_areas if self._area_shift.get(i) is not None]
        if not in_shift:
            self._off = False
            return []
        inside = any(i in self._inside for i in in_shift)
        known = self.accepted >= self.s.dwell_fixes and all(
            (e := self._edges.get(i)) is None or e.state != UNKNOWN for i in in_shift
        )
        ids = [self._areas[i].id for i in in_shift]
        shift = self._area_shift[in_shift[0]]
        if not self._off and not inside and known:
            self._off = True
            return [FleetEvent("off_assigned", t, ids[0], {"areas": ids, "shift": shift, **here})]
        if self._off and inside:
            self._off = False
            return [FleetEvent("on_assigned", t, ids[0], {"areas": ids, "shift": shift, **here})]
        return []

    # ------------------------------------------------------------------ speed and stops
    def _limit(self) -> tuple[float, str] | None:
        best: tuple[float, str] | None = None
        for i in self._inside:
            item = self._areas[i] if i < self._na else self._routes[i - self._na]
            lim = item.speed_limit_kmh
            if lim is not None and (best is None or lim < best[0]):
                best = (lim, item.id)
        return best

    # ------------------------------------------------------------------ plan changes
    _CARRIED = ("accepted", "rejected", "_last", "_suspects", "_off")

    def _item(self, i: int) -> tuple[str, dict[str, Any]]:
        if i < self._na:
            return "a:" + self._areas[i].id, self._areas[i].to_json()
        r = self._routes[i - self._na]
        return "r:" + r.id, r.to_json()

    def adopt(self, old: RuleEngine) -> None:
        """Carry the state of the engine this one replaces (a new plan was installed).

        The vehicle's own state (stopped, idle, speeding, the last fix) carries over; so does
        each area's and route's boundary state and coverage, **if** the item is unchanged
        (same id, same geometry and settings). A changed or new item starts unknown: being
        inside it is reported as ``area_enter`` with ``initial``.
        """
        for name in self._CARRIED:
            setattr(self, name, getattr(old, name))
        self.vehicle.carry(old.vehicle)
        old_items = {old._item(i)[0]: i for i in range(len(old._shapes))}
        kept_routes: set[str] = set()
        for i in range(len(self._shapes)):
            key, body = self._item(i)
            oi = old_items.get(key)
            if oi is None or old._item(oi)[1] != body:
                continue
            edge = old._edges.get(oi)
            if edge is not None:
                self._edges[i] = edge
            if oi in old._watch:
                self._watch.add(i)
            if oi in old._inside:
                self._inside.add(i)
            if i >= self._na:
                j, oj = i - self._na, oi - old._na
                kept_routes.add(self._routes[j].id)
                if oj in old._route_on:
                    self._route_on[j] = old._route_on[oj]
                if oj in old._route_left:
                    self._route_left.add(j)
                if oj in old._open_cov:
                    self._open_cov[j] = old._open_cov[oj]
        for key2, cov in old.coverage.items():
            if key2[0] in kept_routes:
                self.coverage[key2] = cov

    # ------------------------------------------------------------------ reports
    def coverage_report(self, route_id: str | None = None) -> list[CoverageReport]:
        return [c.report() for (rid, _), c in self.coverage.items() if route_id in (None, rid)]

    @property
    def last_fix(self) -> Fix | None:
        """The last accepted fix."""
        return self._last

    def inside(self) -> list[str]:
        """Ids of the areas and route corridors the vehicle is in now."""
        return sorted(
            self._areas[i].id if i < self._na else self._routes[i - self._na].id
            for i in self._inside
        )


def effective_hysteresis(shape: Circle | Polygon | Polyline, h: float) -> float:
    """``h``, but at most half the shape's size, so a small shape can still be entered: half a
    circle's radius, half a corridor's width either side, a quarter of the square root of a
    polygon's area (half the inradius of a square)."""
    if isinstance(shape, Circle):
        return min(h, shape.radius_m / 2)
    if isinstance(shape, Polyline):
        return min(h, shape.corridor_m / 2)
    return min(h, math.sqrt(shape.area_m2) / 4)


def _dist_m(a: Fix, b: Fix) -> float:
    assert a.lat is not None and a.lon is not None and b.lat is not None and b.lon is not None
    dy = (b.lat - a.lat) * K_LAT
    dx = (b.lon - a.lon) * K_LAT * math.cos(math.radians((a.lat + b.lat) / 2))
    return math.hypot(dx, dy)
