"""Areas and routes from the JT/T 808 platform (0x8600-0x8607) in the fleet plan.

Each 808 area or route becomes an item of the fleet plan (``agent/fleet/plan.py``) with the id
``jt808.<kind>.<808 id>`` (808 ids are per kind), installed through the same validated,
atomic path as the MQTT platform's ``fleet.set_areas`` (:meth:`FleetService.cmd_set_areas`):
the rule engine then decides entries, exits, route deviations and speeding for them like for
any other shape, and the terminal turns those events into alarm bits and items.

============  ==============================================================================
808           fleet plan
============  ==============================================================================
circle        ``circle``: centre and radius (1..50,000 m)
rectangle     ``polygon`` of its four corners
polygon       ``polygon`` (the fleet plan's checks apply: no self-intersection, >= 3 points)
route         ``route`` through the points, ``assigned`` (so leaving it is a deviation);
              ``corridor_m`` = half the widest segment width (the plan has one corridor per
              route); one speed limit for the route: segments with different limits are
              refused as not supported
max speed     ``speed_limit_kmh`` (1..200; 0 = none); the overspeed duration and the 2019
              night speed are not used (the rule engine confirms speeding over
              ``dwell_fixes`` fixes, day and night)
by time       kept here (``<state_dir>/areas.json``): entry/exit alarms are reported only
              inside the window; the speed limit applies at all times
alarm bits    kept here: entry (bit 3) / exit (bit 5) "alarm to the platform"; the driver
              bits (2, 4) have no display to go to
============  ==============================================================================

Setting type 0 replaces every area of that kind the 808 platform set (never the MQTT
platform's items), 1 adds, 2 modifies (both replace by id). A delete with count 0 deletes every
area of that kind. A message is applied whole or not at all; the answer is 0 success,
1 failure (the plan refused it, e.g. a self-intersecting polygon: logged with the reason),
2 message error (does not parse) or 3 not supported (no fleet part on this device, a route
with different segment speed limits).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import wallclock
from agent.errors import CommandError
from agent.jt808 import area_bodies as ab
from agent.jt808.location import FLEET_PREFIX, AreaRef, fleet_id
from agent.jt808.messages import FAILURE, NOT_SUPPORTED, OK
from agent.storage.durable import write_atomic

if TYPE_CHECKING:
    from agent.fleet.service import FleetService

log = logging.getLogger(__name__)

AREAS_FILE = "areas.json"
KIND_OF_SET = {
    0x8600: "circle",
    0x8602: "rect",
    0x8604: "polygon",
    0x8606: "route",
}
KIND_OF_DELETE = {0x8601: "circle", 0x8603: "rect", 0x8605: "polygon", 0x8607: "route"}


class Unsupported(Exception):
    """An item the fleet plan cannot represent."""


def _deg(v: int) -> float:
    return v / 1e6


def _limit(limit: ab.Limit | None) -> float | None:
    if limit is None or limit.max_kmh == 0:
        return None
    return float(limit.max_kmh)


def _name(name: str) -> str:
    return name[:200]


def circle_item(a: ab.CircleArea) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": fleet_id("circle", a.id),
        "circle": {"lat": _deg(a.lat_e6), "lon": _deg(a.lon_e6), "radius_m": float(a.radius_m)},
    }
    return _common(item, a.name, a.limit)


def rect_item(a: ab.RectArea) -> dict[str, Any]:
    (lat1, lon1), (lat2, lon2) = a.top_left, a.bottom_right
    pts = [[_deg(lat1), _deg(lon1)], [_deg(lat1), _deg(lon2)], [_deg(lat2), _deg(lon2)]]
    pts.append([_deg(lat2), _deg(lon1)])
    return _common({"id": fleet_id("rect", a.id), "polygon": pts}, a.name, a.limit)


def polygon_item(a: ab.PolygonArea) -> dict[str, Any]:
    pts = [[_deg(lat), _deg(lon)] for lat, lon in a.points]
    return _common({"id": fleet_id("polygon", a.id), "polygon": pts}, a.name, a.limit)


def route_item(rt: ab.RouteLine) -> dict[str, Any]:
    limits = {p.limit.max_kmh for p in rt.points if p.limit is not None}
    limited = [p for p in rt.points if p.limit is not None]
    if len(limits) > 1 or (limited and len(limited) != len(rt.points)):
        raise Unsupported(
            f"route {rt.id}: segments with different speed limits (the plan has one per route)"
        )
    width = max((p.width_m for p in rt.points), default=0)
    item: dict[str, Any] = {
        "id": fleet_id("route", rt.id),
        "points": [[_deg(p.lat_e6), _deg(p.lon_e6)] for p in rt.points],
        "corridor_m": max(1.0, width / 2.0),
        "assigned": True,
    }
    if rt.name:
        item["name"] = _name(rt.name)
    if limits:
        kmh = limits.pop()
        if kmh:
            item["speed_limit_kmh"] = float(kmh)
    return item


def _common(item: dict[str, Any], name: str, limit: ab.Limit | None) -> dict[str, Any]:
    if name:
        item["name"] = _name(name)
    lim = _limit(limit)
    if lim is not None:
        item["speed_limit_kmh"] = lim
    return item


class AreaBook:
    """The 808 attributes (alarm bits, time windows) of the areas this platform set, kept in
    ``<state_dir>/areas.json``, and their installation in the fleet plan. Not thread-safe
    (the terminal's session thread is its only user)."""

    def __init__(self, state_dir: Path, fleet: FleetService | None) -> None:
        self.path = state_dir / AREAS_FILE
        self.fleet = fleet
        self.refs: dict[str, AreaRef] = {}
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_bytes())
            if not isinstance(doc, dict) or doc.get("format") != 1:
                raise ValueError("format must be 1")
            refs: dict[str, AreaRef] = {}
            for fid, r in doc.get("areas", {}).items():
                times = r.get("times")
                refs[str(fid)] = AreaRef(
                    str(r["kind"]),
                    int(r["id"]),
                    int(r["attribute"]),
                    (str(times[0]), str(times[1])) if times else None,
                )
            self.refs = refs
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            aside = self.path.with_name(f"{AREAS_FILE}.bad-{int(wallclock.now())}")
            log.error("jt808: %s does not load (%s); moved to %s", self.path, exc, aside.name)
            with contextlib.suppress(OSError):
                self.path.replace(aside)

    def _save(self, refs: dict[str, AreaRef]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": 1,
            "areas": {
                fid: {
                    "kind": r.kind,
                    "id": r.id,
                    "attribute": r.attribute,
                    "times": list(r.times) if r.times else None,
                }
                for fid, r in sorted(refs.items())
            },
        }
        write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())

    # ------------------------------------------------------------------ messages

    def handle(self, msg_id: int, body: bytes, v2019: bool) -> tuple[int, str]:
        """Apply one 0x8600-0x8607 body (already known to parse? no: parsed here). Returns the
        general response result and a reason for the log. FormatError propagates (message
        error)."""
        if self.fleet is None:
            return NOT_SUPPORTED, "no fleet part on this device (fleet.enabled = false)"
        if msg_id in KIND_OF_DELETE:
            kind = KIND_OF_DELETE[msg_id]
            what = f"0x{msg_id:04x} delete {kind}s"
            ids = ab.decode_delete(body, what)
            return self._delete(kind, ids)
        kind = KIND_OF_SET[msg_id]
        items: list[dict[str, Any]]
        refs: list[AreaRef]
        replace_all = False
        try:
            if msg_id == 0x8600:
                action, circles = ab.decode_circles(body, v2019)
                items = [circle_item(a) for a in circles]
                refs = [AreaRef(kind, a.id, a.attribute, a.times) for a in circles]
                replace_all = action == ab.SET_REPLACE
            elif msg_id == 0x8602:
                action, rects = ab.decode_rects(body, v2019)
                items = [rect_item(a) for a in rects]
                refs = [AreaRef(kind, a.id, a.attribute, a.times) for a in rects]
                replace_all = action == ab.SET_REPLACE
            elif msg_id == 0x8604:
                poly = ab.decode_polygon(body, v2019)
                items, refs = (
                    [polygon_item(poly)],
                    [AreaRef(kind, poly.id, poly.attribute, poly.times)],
                )
            else:
                rt = ab.decode_route(body, v2019)
                items, refs = [route_item(rt)], [AreaRef(kind, rt.id, rt.attribute, rt.times)]
        except Unsupported as exc:
            return NOT_SUPPORTED, str(exc)
        for ref in refs:
            if ref.times is not None and not _valid_window(ref.times):
                return FAILURE, f"{kind} {ref.id}: start/end times are not a valid window"
        remove = self._ids_of(kind) if replace_all else []
        return self._install(kind, items, refs, remove)

    def _ids_of(self, kind: str) -> list[str]:
        assert self.fleet is not None
        plan = self.fleet.plan
        prefix = f"{FLEET_PREFIX}{kind}."
        ids = [a.id for a in plan.areas] + [r.id for r in plan.routes]
        return [i for i in ids if i.startswith(prefix)]

    def _install(
        self, kind: str, items: list[dict[str, Any]], refs: list[AreaRef], remove: list[str]
    ) -> tuple[int, str]:
        assert self.fleet is not None
        new_refs = {k: v for k, v in self.refs.items() if k not in remove}
        for ref in refs:
            new_refs[fid_of(ref)] = ref
        args: dict[str, Any] = {"replace": False, "remove": remove}
        if kind == "route":
            args["routes"] = items
        else:
            args["areas"] = items
        try:
            # The attributes first: a cut between the two leaves attributes of an item the
            # plan does not have (ignored), never an item without its attributes.
            self._save(new_refs)
            result = self.fleet.cmd_set_areas(args)
        except CommandError as exc:
            self._save_quietly(self.refs)
            return FAILURE, str(exc)
        except OSError as exc:
            return FAILURE, f"cannot store the areas: {exc}"
        self.refs = new_refs
        return OK, f"plan {result['version']}: {len(items)} {kind}(s) set, {len(remove)} removed"

    def _save_quietly(self, refs: dict[str, AreaRef]) -> None:
        try:
            self._save(refs)
        except OSError as exc:
            log.error("jt808: cannot restore %s: %s", self.path, exc)

    def _delete(self, kind: str, ids: list[int]) -> tuple[int, str]:
        assert self.fleet is not None
        present = set(self._ids_of(kind))
        gone = sorted(present) if not ids else [fleet_id(kind, i) for i in ids]
        gone = [g for g in gone if g in present]
        new_refs = {k: v for k, v in self.refs.items() if k not in gone}
        if not gone:
            return OK, f"no {kind} to delete"
        try:
            result = self.fleet.cmd_set_areas({"replace": False, "remove": gone})
            self._save(new_refs)
        except CommandError as exc:
            return FAILURE, str(exc)
        except OSError as exc:
            return FAILURE, f"cannot store the areas: {exc}"
        self.refs = new_refs
        return OK, f"plan {result['version']}: {len(gone)} {kind}(s) deleted"


def fid_of(ref: AreaRef) -> str:
    return fleet_id(ref.kind, ref.id)


def _valid_window(times: tuple[str, str]) -> bool:
    from agent.jt808.body import parse_bcd_time

    start, end = times
    if start[:6] == "000000" and end[:6] == "000000":
        return all(int(t[6:8]) <= 23 and int(t[8:10]) <= 59 and int(t[10:12]) <= 59 for t in times)
    a, b = parse_bcd_time(start), parse_bcd_time(end)
    return a is not None and b is not None and a <= b
