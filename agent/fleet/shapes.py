"""Work areas (circles, polygons) and routes (polylines with a corridor), in local metres. Pure.

Every shape keeps its own **local equirectangular projection** centred on itself::

    x = (lon - lon0) * k_lon      k_lon = R * cos(lat0) * pi / 180   (metres per degree east)
    y = (lat - lat0) * k_lat      k_lat = R * pi / 180               (metres per degree north)

so a distance check costs two subtractions and two multiplications, no trigonometry. Over a
shape a few kilometres wide the error is far below GNSS noise (a 5 km polygon: < 1 m).
Shapes wider than :data:`MAX_EXTENT_M` are refused, which also keeps them away from the poles
and the antimeridian.

``signed_distance_m(lat, lon)`` is negative inside (an area, or a route's corridor), positive
outside, in metres from the boundary. The rule engine's hysteresis works on that number.

Bad input raises :class:`~agent.errors.ConfigError` with a reason a platform engineer can act
on ("area 'd3': polygon edges 2 and 5 cross").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import ConfigError

EARTH_RADIUS_M = 6_371_008.8
K_LAT = EARTH_RADIUS_M * math.pi / 180.0
#: A circle's radius must be within this range (metres).
MIN_RADIUS_M = 1.0
MAX_RADIUS_M = 50_000.0
#: No shape may be wider than this (metres): a city district, not a country.
MAX_EXTENT_M = 100_000.0
MAX_VERTICES = 5_000
#: A route corridor's half-width (metres either side of the centre line).
MIN_CORRIDOR_M = 1.0
MAX_CORRIDOR_M = 1_000.0
#: The nearest a polygon vertex may be to the next one (metres) before it counts as doubled.
MIN_EDGE_M = 0.01
LatLon = tuple[float, float]


@dataclass(frozen=True, slots=True)
class BBox:
    """A bounding box in degrees."""

    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    def grow_m(self, margin_m: float) -> BBox:
        """The box grown by ``margin_m`` metres on every side."""
        dlat = margin_m / K_LAT
        widest = max(abs(self.min_lat), abs(self.max_lat)) + dlat
        cos_lat = max(math.cos(math.radians(min(widest, 89.0))), 1e-6)
        dlon = margin_m / (K_LAT * cos_lat)
        return BBox(
            self.min_lat - dlat, self.min_lon - dlon, self.max_lat + dlat, self.max_lon + dlon
        )

    def contains(self, lat: float, lon: float) -> bool:
        return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon


class Projection:
    """A local equirectangular projection around (lat0, lon0), in metres."""

    __slots__ = ("k_lon", "lat0", "lon0")

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0 = lat0
        self.lon0 = lon0
        self.k_lon = K_LAT * math.cos(math.radians(lat0))

    def to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.lon0) * self.k_lon, (lat - self.lat0) * K_LAT

    def to_latlon(self, x: float, y: float) -> LatLon:
        return self.lat0 + y / K_LAT, self.lon0 + x / self.k_lon


# --------------------------------------------------------------------------- validation


def check_point(what: str, lat: object, lon: object) -> LatLon:
    """A (lat, lon) pair in degrees, finite and within range, or ConfigError."""
    for name, v in (("lat", lat), ("lon", lon)):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{what}: {name} must be a number, got {v!r}")
        if not math.isfinite(v):
            raise ConfigError(f"{what}: {name} must be finite, got {v!r}")
    assert isinstance(lat, int | float) and isinstance(lon, int | float)
    if not -85.0 <= lat <= 85.0:
        raise ConfigError(f"{what}: lat must be -85..85 degrees, got {lat}")
    if not -180.0 <= lon <= 180.0:
        raise ConfigError(f"{what}: lon must be -180..180 degrees, got {lon}")
    return float(lat), float(lon)


def _bbox(points: Sequence[LatLon]) -> BBox:
    lats = [p[0] for p in points]
    lons = [p[1] for p in points]
    return BBox(min(lats), min(lons), max(lats), max(lons))


def _check_extent(what: str, box: BBox) -> None:
    if box.max_lon - box.min_lon > 180.0:
        raise ConfigError(f"{what}: crosses the antimeridian or spans half the globe")
    mid = (box.min_lat + box.max_lat) / 2
    w = (box.max_lon - box.min_lon) * K_LAT * math.cos(math.radians(mid))
    h = (box.max_lat - box.min_lat) * K_LAT
    if max(w, h) > MAX_EXTENT_M:
        raise ConfigError(
            f"{what}: {max(w, h) / 1000:.0f} km wide; a shape may be at most "
            f"{MAX_EXTENT_M / 1000:.0f} km wide"
        )


def _cross(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> float:
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def segments_intersect(
    p1: tuple[float, float],
    p2: tuple[float, float],
    q1: tuple[float, float],
    q2: tuple[float, float],
) -> bool:
    """True when the closed segments p1-p2 and q1-q2 share a point."""
    d1 = _cross(q1[0], q1[1], q2[0], q2[1], p1[0], p1[1])
    d2 = _cross(q1[0], q1[1], q2[0], q2[1], p2[0], p2[1])
    d3 = _cross(p1[0], p1[1], p2[0], p2[1], q1[0], q1[1])
    d4 = _cross(p1[0], p1[1], p2[0], p2[1], q2[0], q2[1])
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True

    def on_seg(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> bool:
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(
            a[1], b[1]
        )

    return (
        (d1 == 0 and on_seg(q1, q2, p1))
        or (d2 == 0 and on_seg(q1, q2, p2))
        or (d3 == 0 and on_seg(p1, p2, q1))
        or (d4 == 0 and on_seg(p1, p2, q2))
    )


def _seg_dist2(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    dx, dy = bx - ax, by - ay
    ll = dx * dx + dy * dy
    if ll == 0.0:
        ex, ey = px - ax, py - ay
        return ex * ex + ey * ey
    t = ((px - ax) * dx + (py - ay) * dy) / ll
    t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
    ex, ey = px - (ax + t * dx), py - (ay + t * dy)
    return ex * ex + ey * ey


# --------------------------------------------------------------------------- shapes


class Circle:
    """A circle: centre and radius in metres."""

    __slots__ = ("bbox", "lat", "lon", "proj", "radius_m")

    def __init__(self, lat: float, lon: float, radius_m: float, what: str = "circle") -> None:
        lat, lon = check_point(f"{what}: centre", lat, lon)
        if isinstance(radius_m, bool) or not isinstance(radius_m, int | float):
            raise ConfigError(f"{what}: radius_m must be a number, got {radius_m!r}")
        if not math.isfinite(radius_m) or not MIN_RADIUS_M <= radius_m <= MAX_RADIUS_M:
            raise ConfigError(
                f"{what}: radius_m must be {MIN_RADIUS_M:.0f}..{MAX_RADIUS_M:.0f} m, got {radius_m}"
            )
        self.lat, self.lon, self.radius_m = lat, lon, float(radius_m)
        self.proj = Projection(lat, lon)
        self.bbox = BBox(lat, lon, lat, lon).grow_m(self.radius_m)

    def signed_distance_m(self, lat: float, lon: float) -> float:
        p = self.proj
        x = (lon - p.lon0) * p.k_lon
        y = (lat - p.lat0) * K_LAT
        return math.sqrt(x * x + y * y) - self.radius_m

    def to_json(self) -> dict[str, object]:
        return {"lat": self.lat, "lon": self.lon, "radius_m": self.radius_m}


class Polygon:
    """A simple polygon (no self-intersection), at least 3 distinct vertices, non-zero area."""

    __slots__ = ("area_m2", "bbox", "points", "proj", "xs", "ys")

    def __init__(self, points: Sequence[LatLon], what: str = "polygon") -> None:
        pts = [check_point(f"{what}: point {i}", p[0], p[1]) for i, p in enumerate(points)]
        if len(pts) > 1 and pts[0] == pts[-1]:
            pts.pop()  # a closed ring (GeoJSON style) repeats its first point
        if len(pts) < 3:
            raise ConfigError(f"{what}: a polygon needs at least 3 points, got {len(pts)}")
        if len(pts) > MAX_VERTICES:
            raise ConfigError(f"{what}: at most {MAX_VERTICES} points, got {len(pts)}")
        box = _bbox(pts)
        _check_extent(what, box)
        self.proj = Projection((box.min_lat + box.max_lat) / 2, (box.min_lon + box.max_lon) / 2)
        xy = [self.proj.to_xy(la, lo) for la, lo in pts]
        n = len(xy)
        for i in range(n):
            a, b = xy[i], xy[(i + 1) % n]
            if math.hypot(b[0] - a[0], b[1] - a[1]) < MIN_EDGE_M:
                raise ConfigError(f"{what}: points {i} and {(i + 1) % n} are the same place")
        (x0, y0), (x1, y1) = xy[0], xy[1]
        base = math.hypot(x1 - x0, y1 - y0)
        if all(abs((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / base < 0.01 for x, y in xy):
            raise ConfigError(f"{what}: the polygon encloses no area (points in a line)")
        crossing = _self_intersection(xy)
        if crossing is not None:
            i, j = crossing
            raise ConfigError(f"{what}: self-intersecting polygon (edges {i} and {j} cross)")
        area2 = sum(xy[i][0] * xy[(i + 1) % n][1] - xy[(i + 1) % n][0] * xy[i][1] for i in range(n))
        if abs(area2) / 2 < 1.0:
            raise ConfigError(f"{what}: the polygon encloses less than 1 square metre")
        self.area_m2 = abs(area2) / 2
        self.points = tuple(pts)
        self.xs = tuple(p[0] for p in xy)
        self.ys = tuple(p[1] for p in xy)
        self.bbox = box

    def signed_distance_m(self, lat: float, lon: float) -> float:
        p = self.proj
        x = (lon - p.lon0) * p.k_lon
        y = (lat - p.lat0) * K_LAT
        xs, ys = self.xs, self.ys
        n = len(xs)
        inside = False
        best = math.inf
        j = n - 1
        for i in range(n):
            xi, yi, xj, yj = xs[i], ys[i], xs[j], ys[j]
            if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
                inside = not inside
            d2 = _seg_dist2(x, y, xj, yj, xi, yi)
            if d2 < best:
                best = d2
            j = i
        d = math.sqrt(best)
        return -d if inside else d

    def to_json(self) -> list[list[float]]:
        return [[la, lo] for la, lo in self.points]


def _self_intersection(xy: Sequence[tuple[float, float]]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges that touch, or None. O(n^2) with a box prefilter."""
    n = len(xy)
    edges = [(xy[i], xy[(i + 1) % n]) for i in range(n)]
    boxes = [(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])) for a, b in edges]
    order = sorted(range(n), key=lambda k: boxes[k][0])
    for oi, i in enumerate(order):
        bi = boxes[i]
        for j in order[oi + 1 :]:
            bj = boxes[j]
            if bj[0] > bi[2]:
                break
            if bj[1] > bi[3] or bj[3] < bi[1]:
                continue
            lo, hi = min(i, j), max(i, j)
            if hi - lo == 1 or (lo == 0 and hi == n - 1):
                # Adjacent edges share a vertex; they cross only when they fold back on
                # each other (collinear, overlapping beyond the shared vertex).
                a, b = edges[lo] if hi - lo == 1 else edges[hi]
                d = edges[hi][1] if hi - lo == 1 else edges[lo][1]
                ux, uy, vx, vy = a[0] - b[0], a[1] - b[1], d[0] - b[0], d[1] - b[1]
                collinear = abs(ux * vy - uy * vx) <= 1e-9 * math.hypot(ux, uy) * math.hypot(vx, vy)
                if collinear and ux * vx + uy * vy > 0:
                    return lo, hi
                continue
            if segments_intersect(edges[i][0], edges[i][1], edges[j][0], edges[j][1]):
                return lo, hi
    return None


class Polyline:
    """A route's centre line with a corridor of ``corridor_m`` metres either side."""

    __slots__ = ("bbox", "corridor_m", "cum", "length_m", "points", "proj", "xs", "ys")

    def __init__(self, points: Sequence[LatLon], corridor_m: float, what: str = "route") -> None:
        pts = [check_point(f"{what}: point {i}", p[0], p[1]) for i, p in enumerate(points)]
        if len(pts) < 2:
            raise ConfigError(f"{what}: a route needs at least 2 points, got {len(pts)}")
        if len(pts) > MAX_VERTICES:
            raise ConfigError(f"{what}: at most {MAX_VERTICES} points, got {len(pts)}")
        if isinstance(corridor_m, bool) or not isinstance(corridor_m, int | float):
            raise ConfigError(f"{what}: corridor_m must be a number, got {corridor_m!r}")
        if not math.isfinite(corridor_m) or not MIN_CORRIDOR_M <= corridor_m <= MAX_CORRIDOR_M:
            raise ConfigError(
                f"{what}: corridor_m must be {MIN_CORRIDOR_M:.0f}..{MAX_CORRIDOR_M:.0f} m, "
                f"got {corridor_m}"
            )
        box = _bbox(pts)
        _check_extent(what, box)
        self.proj = Projection((box.min_lat + box.max_lat) / 2, (box.min_lon + box.max_lon) / 2)
        xy = [self.proj.to_xy(la, lo) for la, lo in pts]
        cum = [0.0]
        for i in range(1, len(xy)):
            cum.append(cum[-1] + math.hypot(xy[i][0] - xy[i - 1][0], xy[i][1] - xy[i - 1][1]))
        if cum[-1] < 1.0:
            raise ConfigError(f"{what}: the route is shorter than 1 m")
        self.points = tuple(pts)
        self.xs = tuple(p[0] for p in xy)
        self.ys = tuple(p[1] for p in xy)
        self.cum = tuple(cum)
        self.length_m = cum[-1]
        self.corridor_m = float(corridor_m)
        self.bbox = box.grow_m(self.corridor_m)

    def locate(self, lat: float, lon: float) -> tuple[float, float]:
        """(distance from the centre line, position along the route), both in metres."""
        p = self.proj
        x = (lon - p.lon0) * p.k_lon
        y = (lat - p.lat0) * K_LAT
        xs, ys, cum = self.xs, self.ys, self.cum
        best, best_s = math.inf, 0.0
        for i in range(len(xs) - 1):
            ax, ay, bx, by = xs[i], ys[i], xs[i + 1], ys[i + 1]
            dx, dy = bx - ax, by - ay
            ll = dx * dx + dy * dy
            t = 0.0 if ll == 0.0 else ((x - ax) * dx + (y - ay) * dy) / ll
            t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
            ex, ey = x - (ax + t * dx), y - (ay + t * dy)
            d2 = ex * ex + ey * ey
            if d2 < best:
                best = d2
                best_s = cum[i] + t * (cum[i + 1] - cum[i])
        return math.sqrt(best), best_s

    def signed_distance_m(self, lat: float, lon: float) -> float:
        """Negative inside the corridor, positive outside (metres from the corridor's edge)."""
        return self.locate(lat, lon)[0] - self.corridor_m

    def to_json(self) -> list[list[float]]:
        return [[la, lo] for la, lo in self.points]
