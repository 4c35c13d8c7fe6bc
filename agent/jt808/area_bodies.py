"""The bodies of 0x8600-0x8607 (areas and routes set and deleted by the platform). Pure.

Layouts (JT/T 808-2019 tables 76-85; 2013 lacks the night speed and the name):

* **0x8600 circles / 0x8602 rectangles**: setting type BYTE (0 replace all, 1 add, 2 modify),
  count BYTE, then per area: id DWORD, attribute WORD, centre lat/lon DWORD + radius DWORD
  (circle) or top-left lat/lon + bottom-right lat/lon DWORD (rectangle); start and end time
  BCD[6] if attribute bit 0; max speed WORD (km/h) and overspeed duration BYTE (s) if bit 1,
  then (2019) night max speed WORD if bit 1; (2019) name length WORD + name.
* **0x8604 polygon** (one per message): id, attribute, times if bit 0, max speed and duration
  if bit 1, vertex count WORD, vertices (lat, lon DWORD), (2019) night max speed if bit 1,
  (2019) name length + name.
* **0x8606 route**: id, attribute WORD, times if bit 0, point count WORD, then per point:
  point id DWORD, segment id DWORD, lat, lon DWORD, segment width BYTE (m), segment
  attribute BYTE, too-long and too-short thresholds WORD (s) if its bit 0, max speed WORD and
  duration BYTE if its bit 1, (2019) night max speed WORD if its bit 1; (2019) name.
* **0x8601/0x8603/0x8605/0x8607 delete**: count BYTE (0 = all of that kind), ids DWORD.

Area attribute bits: 0 by time, 1 speed limit, 2/3 alarm to the driver/platform on entry,
4/5 on exit, 6 south latitude, 7 west longitude (areas); segment attribute bits 2/3 south /
west. Coordinates are micro-degrees, unsigned on the wire; the sign comes from those bits.
Times are ``YYMMDDhhmmss`` GMT+8; a date of ``000000`` means every day at those hours.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import FormatError
from agent.jt808.body import Reader, Writer, bcd_encode, gbk

A_BY_TIME = 1 << 0
A_SPEED_LIMIT = 1 << 1
A_ENTRY_DRIVER = 1 << 2
A_ENTRY_PLATFORM = 1 << 3
A_EXIT_DRIVER = 1 << 4
A_EXIT_PLATFORM = 1 << 5
A_SOUTH = 1 << 6
A_WEST = 1 << 7
S_DRIVING_TIME = 1 << 0
S_SPEED_LIMIT = 1 << 1
S_SOUTH = 1 << 2
S_WEST = 1 << 3

SET_REPLACE, SET_ADD, SET_MODIFY = 0, 1, 2
MAX_NAME = 200
#: Most vertices or route points accepted in one message (sub-packaged bodies are bounded too).
MAX_POINTS = 5000


@dataclass(frozen=True, slots=True)
class Limit:
    max_kmh: int
    duration_s: int
    night_kmh: int | None = None  # 2019


@dataclass(frozen=True, slots=True)
class CircleArea:
    id: int
    attribute: int
    lat_e6: int
    lon_e6: int
    radius_m: int
    times: tuple[str, str] | None = None
    limit: Limit | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class RectArea:
    id: int
    attribute: int
    top_left: tuple[int, int]  # (lat_e6, lon_e6)
    bottom_right: tuple[int, int]
    times: tuple[str, str] | None = None
    limit: Limit | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class PolygonArea:
    id: int
    attribute: int
    points: tuple[tuple[int, int], ...]
    times: tuple[str, str] | None = None
    limit: Limit | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class RoutePoint:
    point_id: int
    segment_id: int
    lat_e6: int
    lon_e6: int
    width_m: int
    attribute: int
    thresholds: tuple[int, int] | None = None  # (too long, too short) seconds
    limit: Limit | None = None


@dataclass(frozen=True, slots=True)
class RouteLine:
    id: int
    attribute: int
    points: tuple[RoutePoint, ...]
    times: tuple[str, str] | None = None
    name: str = ""


# --------------------------------------------------------------------------- helpers


def _signed(v: int, negative: bool) -> int:
    return -v if negative else v


def _times(r: Reader, attribute: int) -> tuple[str, str] | None:
    if not attribute & A_BY_TIME:
        return None
    return r.bcd(6, "start time"), r.bcd(6, "end time")


def _limit(r: Reader, attribute: int, v2019: bool, night_now: bool) -> Limit | None:
    if not attribute & A_SPEED_LIMIT:
        return None
    kmh = r.u16("max speed")
    dur = r.u8("overspeed duration")
    night = r.u16("night max speed") if v2019 and night_now else None
    return Limit(kmh, dur, night)


def _name(r: Reader, v2019: bool) -> str:
    if not v2019:
        return ""
    n = r.u16("name length")
    if n > MAX_NAME:
        raise FormatError(f"{r.what}: name of {n} bytes (at most {MAX_NAME})")
    return r.take(n, "name").decode("gbk", errors="replace")


def _w_times(w: Writer, attribute: int, times: tuple[str, str] | None) -> None:
    if attribute & A_BY_TIME:
        if times is None:
            raise FormatError("attribute bit 0 set without start and end times")
        w.raw(bcd_encode(times[0], 6)).raw(bcd_encode(times[1], 6))


def _w_limit(w: Writer, attribute: int, limit: Limit | None, v2019: bool, night: bool) -> None:
    if attribute & A_SPEED_LIMIT:
        if limit is None:
            raise FormatError("attribute bit 1 set without a speed limit")
        w.u16(limit.max_kmh).u8(limit.duration_s)
        if v2019 and night:
            w.u16(limit.night_kmh or 0)


def _w_name(w: Writer, name: str, v2019: bool) -> None:
    if v2019:
        b = gbk(name, "name")
        w.u16(len(b)).raw(b)


# --------------------------------------------------------------------------- circles, rects


def decode_circles(body: bytes, v2019: bool) -> tuple[int, list[CircleArea]]:
    r = Reader(body, "0x8600 circular areas")
    action = r.u8("setting type")
    n = r.u8("area count")
    out = []
    for _ in range(n):
        aid = r.u32("area id")
        attr = r.u16("area attribute")
        lat = r.u32("centre latitude")
        lon = r.u32("centre longitude")
        radius = r.u32("radius")
        times = _times(r, attr)
        limit = _limit(r, attr, v2019, True)
        name = _name(r, v2019)
        out.append(
            CircleArea(
                aid,
                attr,
                _signed(lat, bool(attr & A_SOUTH)),
                _signed(lon, bool(attr & A_WEST)),
                radius,
                times,
                limit,
                name,
            )
        )
    r.end()
    return action, out


def encode_circles(action: int, areas: list[CircleArea], v2019: bool = True) -> bytes:
    w = Writer().u8(action).u8(len(areas), "area count")
    for a in areas:
        w.u32(a.id).u16(a.attribute).u32(abs(a.lat_e6)).u32(abs(a.lon_e6)).u32(a.radius_m)
        _w_times(w, a.attribute, a.times)
        _w_limit(w, a.attribute, a.limit, v2019, True)
        _w_name(w, a.name, v2019)
    return w.bytes()


def decode_rects(body: bytes, v2019: bool) -> tuple[int, list[RectArea]]:
    r = Reader(body, "0x8602 rectangular areas")
    action = r.u8("setting type")
    n = r.u8("area count")
    out = []
    for _ in range(n):
        aid = r.u32("area id")
        attr = r.u16("area attribute")
        s, west = bool(attr & A_SOUTH), bool(attr & A_WEST)
        tl = (_signed(r.u32("top-left latitude"), s), _signed(r.u32("top-left longitude"), west))
        br = (
            _signed(r.u32("bottom-right latitude"), s),
            _signed(r.u32("bottom-right longitude"), west),
        )
        times = _times(r, attr)
        limit = _limit(r, attr, v2019, True)
        name = _name(r, v2019)
        out.append(RectArea(aid, attr, tl, br, times, limit, name))
    r.end()
    return action, out


def encode_rects(action: int, areas: list[RectArea], v2019: bool = True) -> bytes:
    w = Writer().u8(action).u8(len(areas), "area count")
    for a in areas:
        w.u32(a.id).u16(a.attribute)
        for lat, lon in (a.top_left, a.bottom_right):
            w.u32(abs(lat)).u32(abs(lon))
        _w_times(w, a.attribute, a.times)
        _w_limit(w, a.attribute, a.limit, v2019, True)
        _w_name(w, a.name, v2019)
    return w.bytes()


# --------------------------------------------------------------------------- polygon


def decode_polygon(body: bytes, v2019: bool) -> PolygonArea:
    r = Reader(body, "0x8604 polygon area")
    aid = r.u32("area id")
    attr = r.u16("area attribute")
    times = _times(r, attr)
    limit = _limit(r, attr, v2019, False)  # the 2019 night speed comes after the vertices
    n = r.u16("vertex count")
    if n > MAX_POINTS:
        raise FormatError(f"0x8604 polygon area: {n} vertices (at most {MAX_POINTS})")
    s, west = bool(attr & A_SOUTH), bool(attr & A_WEST)
    pts = tuple(
        (_signed(r.u32(f"vertex {i} latitude"), s), _signed(r.u32(f"vertex {i} longitude"), west))
        for i in range(n)
    )
    if v2019 and limit is not None:
        limit = Limit(limit.max_kmh, limit.duration_s, r.u16("night max speed"))
    name = _name(r, v2019)
    r.end()
    return PolygonArea(aid, attr, pts, times, limit, name)


def encode_polygon(a: PolygonArea, v2019: bool = True) -> bytes:
    w = Writer().u32(a.id).u16(a.attribute)
    _w_times(w, a.attribute, a.times)
    _w_limit(w, a.attribute, a.limit, v2019, False)
    w.u16(len(a.points), "vertex count")
    for lat, lon in a.points:
        w.u32(abs(lat)).u32(abs(lon))
    if v2019 and a.attribute & A_SPEED_LIMIT:
        w.u16((a.limit.night_kmh if a.limit else None) or 0)
    _w_name(w, a.name, v2019)
    return w.bytes()


# --------------------------------------------------------------------------- route


def decode_route(body: bytes, v2019: bool) -> RouteLine:
    r = Reader(body, "0x8606 route")
    rid = r.u32("route id")
    attr = r.u16("route attribute")
    times = _times(r, attr)
    n = r.u16("point count")
    if n > MAX_POINTS:
        raise FormatError(f"0x8606 route: {n} points (at most {MAX_POINTS})")
    pts = []
    for i in range(n):
        pid = r.u32(f"point {i} id")
        sid = r.u32(f"point {i} segment id")
        lat = r.u32(f"point {i} latitude")
        lon = r.u32(f"point {i} longitude")
        width = r.u8(f"point {i} segment width")
        sattr = r.u8(f"point {i} segment attribute")
        thresholds = None
        if sattr & S_DRIVING_TIME:
            thresholds = (r.u16(f"point {i} too-long threshold"), r.u16(f"point {i} too-short"))
        limit = None
        if sattr & S_SPEED_LIMIT:
            kmh = r.u16(f"point {i} max speed")
            dur = r.u8(f"point {i} overspeed duration")
            night = r.u16(f"point {i} night max speed") if v2019 else None
            limit = Limit(kmh, dur, night)
        pts.append(
            RoutePoint(
                pid,
                sid,
                _signed(lat, bool(sattr & S_SOUTH)),
                _signed(lon, bool(sattr & S_WEST)),
                width,
                sattr,
                thresholds,
                limit,
            )
        )
    name = _name(r, v2019)
    r.end()
    return RouteLine(rid, attr, tuple(pts), times, name)


def encode_route(rt: RouteLine, v2019: bool = True) -> bytes:
    w = Writer().u32(rt.id).u16(rt.attribute)
    _w_times(w, rt.attribute, rt.times)
    w.u16(len(rt.points), "point count")
    for p in rt.points:
        w.u32(p.point_id).u32(p.segment_id).u32(abs(p.lat_e6)).u32(abs(p.lon_e6))
        w.u8(p.width_m, "segment width").u8(p.attribute)
        if p.attribute & S_DRIVING_TIME:
            th = p.thresholds or (0, 0)
            w.u16(th[0]).u16(th[1])
        if p.attribute & S_SPEED_LIMIT:
            lim = p.limit or Limit(0, 0)
            w.u16(lim.max_kmh).u8(lim.duration_s)
            if v2019:
                w.u16(lim.night_kmh or 0)
    _w_name(w, rt.name, v2019)
    return w.bytes()


# --------------------------------------------------------------------------- delete


def decode_delete(body: bytes, what: str) -> list[int]:
    """Ids to delete; an empty list (count 0) means every area of that kind."""
    r = Reader(body, what)
    n = r.u8("count")
    ids = [r.u32(f"id {i}") for i in range(n)]
    r.end()
    return ids


def encode_delete(ids: list[int]) -> bytes:
    w = Writer().u8(len(ids), "count")
    for i in ids:
        w.u32(i)
    return w.bytes()
