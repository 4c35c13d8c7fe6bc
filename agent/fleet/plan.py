"""The fleet plan: work areas and routes with their schedules and limits, validated. Pure.

The same JSON shape comes from the platform's ``fleet.set_areas`` command and from the
``areas_file`` TOML (``[[areas]]`` / ``[[routes]]`` tables)::

    {"areas": [
        {"id": "depot", "name": "Depot North",
         "circle": {"lat": 52.1, "lon": 5.1, "radius_m": 120}},
        {"id": "d3", "polygon": [[52.0, 5.0], [52.0, 5.01], [52.01, 5.01]],
         "assigned": true, "speed_limit_kmh": 30,
         "schedule": {"days": ["mon", "tue"], "start": "06:00", "end": "14:00"}}],
     "routes": [
        {"id": "r12", "points": [[52.0, 5.0], [52.005, 5.002]], "corridor_m": 15,
         "equipment": ["brush"], "speed_limit_kmh": 20, "schedule": {...}}]}

Every problem raises :class:`~agent.errors.ConfigError` naming the item and the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError
from agent.fleet.schedule import Schedule
from agent.fleet.shapes import Circle, LatLon, Polygon, Polyline

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
MAX_AREAS = 5_000
MAX_ROUTES = 1_000
EQUIPMENT = ("brush", "pump", "lift")
MAX_SPEED_LIMIT_KMH = 200.0
_AREA_FIELDS = {"id", "name", "circle", "polygon", "assigned", "speed_limit_kmh", "schedule"}
_ROUTE_FIELDS = {
    "id",
    "name",
    "points",
    "corridor_m",
    "assigned",
    "speed_limit_kmh",
    "schedule",
    "equipment",
}


@dataclass(frozen=True, slots=True)
class Area:
    id: str
    name: str
    shape: Circle | Polygon
    assigned: bool = False
    speed_limit_kmh: float | None = None
    schedule: Schedule | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.name:
            out["name"] = self.name
        if isinstance(self.shape, Circle):
            out["circle"] = self.shape.to_json()
        else:
            out["polygon"] = self.shape.to_json()
        if self.assigned:
            out["assigned"] = True
        if self.speed_limit_kmh is not None:
            out["speed_limit_kmh"] = self.speed_limit_kmh
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_json()
        return out


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    name: str
    line: Polyline
    assigned: bool = True
    speed_limit_kmh: float | None = None
    schedule: Schedule | None = None
    #: Which work equipment counts for coverage (empty: any of brush, pump, lift).
    equipment: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "points": self.line.to_json(),
            "corridor_m": self.line.corridor_m,
        }
        if self.name:
            out["name"] = self.name
        if not self.assigned:
            out["assigned"] = False
        if self.speed_limit_kmh is not None:
            out["speed_limit_kmh"] = self.speed_limit_kmh
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_json()
        if self.equipment:
            out["equipment"] = list(self.equipment)
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    areas: tuple[Area, ...] = ()
    routes: tuple[Route, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "areas": [a.to_json() for a in self.areas],
            "routes": [r.to_json() for r in self.routes],
        }

    @property
    def version(self) -> str:
        """A short content hash: the platform can tell which plan a device runs."""
        canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canon).hexdigest()[:16]

    def merged(self, other: Plan, remove: Sequence[str] = ()) -> Plan:
        """This plan with ``other``'s items added or replaced by id, and ``remove`` dropped."""
        gone = set(remove)
        areas = {a.id: a for a in self.areas if a.id not in gone}
        areas.update({a.id: a for a in other.areas})
        routes = {r.id: r for r in self.routes if r.id not in gone}
        routes.update({r.id: r for r in other.routes})
        if len(areas) > MAX_AREAS or len(routes) > MAX_ROUTES:
            raise ConfigError(f"at most {MAX_AREAS} areas and {MAX_ROUTES} routes in a plan")
        return Plan(tuple(areas.values()), tuple(routes.values()))


def _id(what: str, item: Mapping[str, Any]) -> str:
    v = item.get("id")
    if not isinstance(v, str) or not ID_RE.match(v):
        raise ConfigError(f"{what}: id must be 1-64 of [A-Za-z0-9_.:-], got {v!r}")
    return v


def _opt_str(what: str, v: object) -> str:
    if v is None:
        return ""
    if not isinstance(v, str) or len(v) > 200:
        raise ConfigError(f"{what}: must be a string of at most 200 characters")
    return v


def _opt_bool(what: str, v: object, default: bool) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"{what}: must be true or false, got {v!r}")
    return v


def _opt_limit(what: str, v: object) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 1 <= v <= MAX_SPEED_LIMIT_KMH:
        raise ConfigError(f"{what}: must be a number 1..{MAX_SPEED_LIMIT_KMH:.0f}, got {v!r}")
    return float(v)


def _points(what: str, v: object) -> list[LatLon]:
    if not isinstance(v, list | tuple):
        raise ConfigError(f"{what}: must be a list of [lat, lon] points, got {type(v).__name__}")
    out: list[LatLon] = []
    for i, p in enumerate(v):
        if not isinstance(p, list | tuple) or len(p) != 2:
            raise ConfigError(f"{what}: point {i} must be [lat, lon], got {p!r}")
        out.append((p[0], p[1]))
    return out


def parse_area(item: object, index: int = 0) -> Area:
    if not isinstance(item, Mapping):
        raise ConfigError(f"areas[{index}]: must be an object")
    what = f"areas[{index}]"
    aid = _id(what, item)
    what = f"area {aid!r}"
    unknown = sorted(set(item) - _AREA_FIELDS)
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(unknown)}")
    shape: Circle | Polygon
    if ("circle" in item) == ("polygon" in item):
        raise ConfigError(f"{what}: give exactly one of circle or polygon")
    if "circle" in item:
        c = item["circle"]
        if not isinstance(c, Mapping) or set(c) != {"lat", "lon", "radius_m"}:
            raise ConfigError(f"{what}: circle must be {{lat, lon, radius_m}}")
        shape = Circle(c["lat"], c["lon"], c["radius_m"], what)
    else:
        shape = Polygon(_points(f"{what}: polygon", item["polygon"]), what)
    sched = item.get("schedule")
    return Area(
        id=aid,
        name=_opt_str(f"{what}: name", item.get("name")),
        shape=shape,
        assigned=_opt_bool(f"{what}: assigned", item.get("assigned"), False),
        speed_limit_kmh=_opt_limit(f"{what}: speed_limit_kmh", item.get("speed_limit_kmh")),
        schedule=None if sched is None else Schedule.parse(sched, f"{what}: schedule"),
    )


def parse_route(item: object, index: int = 0) -> Route:
    if not isinstance(item, Mapping):
        raise ConfigError(f"routes[{index}]: must be an object")
    rid = _id(f"routes[{index}]", item)
    what = f"route {rid!r}"
    unknown = sorted(set(item) - _ROUTE_FIELDS)
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(unknown)}")
    if "points" not in item:
        raise ConfigError(f"{what}: points are required")
    line = Polyline(_points(f"{what}: points", item["points"]), item.get("corridor_m", 15.0), what)
    eq = item.get("equipment", [])
    if not isinstance(eq, list | tuple) or any(e not in EQUIPMENT for e in eq):
        raise ConfigError(f"{what}: equipment must be a list of {', '.join(EQUIPMENT)}")
    sched = item.get("schedule")
    return Route(
        id=rid,
        name=_opt_str(f"{what}: name", item.get("name")),
        line=line,
        assigned=_opt_bool(f"{what}: assigned", item.get("assigned"), True),
        speed_limit_kmh=_opt_limit(f"{what}: speed_limit_kmh", item.get("speed_limit_kmh")),
        schedule=None if sched is None else Schedule.parse(sched, f"{what}: schedule"),
        equipment=tuple(dict.fromkeys(eq)),
    )


def parse_plan(data: object) -> Plan:
    """Validate ``{"areas": [...], "routes": [...]}`` into a Plan; ConfigError on a fault."""
    if not isinstance(data, Mapping):
        raise ConfigError("plan: must be an object with areas and routes")
    areas_raw = data.get("areas", [])
    routes_raw = data.get("routes", [])
    if not isinstance(areas_raw, list | tuple) or not isinstance(routes_raw, list | tuple):
        raise ConfigError("plan: areas and routes must be lists")
    if len(areas_raw) > MAX_AREAS:
        raise ConfigError(f"plan: at most {MAX_AREAS} areas, got {len(areas_raw)}")
    if len(routes_raw) > MAX_ROUTES:
        raise ConfigError(f"plan: at most {MAX_ROUTES} routes, got {len(routes_raw)}")
    areas = [parse_area(a, i) for i, a in enumerate(areas_raw)]
    routes = [parse_route(r, i) for i, r in enumerate(routes_raw)]
    seen: set[str] = set()
    for kind, ids in (("area", [a.id for a in areas]), ("route", [r.id for r in routes])):
        for i in ids:
            if i in seen:
                raise ConfigError(f"{kind} {i!r}: duplicate id")
            seen.add(i)
    return Plan(tuple(areas), tuple(routes))
