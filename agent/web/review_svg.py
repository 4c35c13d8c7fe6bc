"""The review page's drawings as geometry: the per-stream timeline and the track map.

Only numbers and text are computed here; ``templates/svg.html`` turns them into SVG (escaped
like everything else). The track is drawn either to scale on a metre grid (equirectangular
around its mean latitude, grid step 1/2/5 x 10^n m, scale bar, north up) or, with the
operator's tile server, over 256-pixel Web Mercator tiles at the largest zoom that fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.web import fmt
from agent.web.evidence import DeviceReview, GapView
from agent.web.track import Track

STREAM_ORDER = ("video", "audio", "still", "event", "gps")
MAX_MARKERS = 20000
MAP_W, MAP_H = 800, 500
TL_W = 1000
ROW_H, LABEL_W, TOP = 30, 70, 18
TILE = 256


def stream_order(streams: Iterable[str]) -> list[str]:
    streams = list(streams)
    known = [s for s in STREAM_ORDER if s in streams]
    return known + sorted(s for s in streams if s not in STREAM_ORDER)


def gap_text(g: GapView) -> str:
    if g.first < 0:
        what = f"{g.stream}: evidence refused at {fmt.fmt_utc(g.start)}"
    elif g.first == g.last:
        what = f"{g.stream}: chain gap, seq {g.first} missing"
    else:
        what = f"{g.stream}: chain gap, seq {g.first}..{g.last} missing"
    return f"{what}: {g.reason}" if g.reason else f"{what} (the device recorded no reason)"


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class TlSeg:
    x: float
    y: float
    w: float
    h: float
    stream: str
    seq: int
    state: str
    title: str


@dataclass(frozen=True)
class TlGap:
    x: float
    y: float
    w: float
    h: float
    stream: str
    explained: bool
    title: str


@dataclass(frozen=True)
class TlMark:
    x: float
    type: str
    title: str


@dataclass(frozen=True)
class TlTick:
    x: float
    label: str
    anchor: str


@dataclass
class Timeline:
    device: str
    width: float
    height: float
    top: float
    bottom: float
    rows: list[tuple[str, float]] = field(default_factory=list)  # (stream, y of its row)
    segs: list[TlSeg] = field(default_factory=list)
    gaps: list[TlGap] = field(default_factory=list)
    marks: list[TlMark] = field(default_factory=list)
    ticks: list[TlTick] = field(default_factory=list)
    label_w: float = LABEL_W
    row_w: float = TL_W
    row_h: float = ROW_H


def timeline(review: DeviceReview, start: float, end: float) -> Timeline:
    t0, t1 = start, max(end, start + 1)
    scale = TL_W / (t1 - t0)
    streams = stream_order(review.streams)
    bottom = TOP + ROW_H * len(streams)
    tl = Timeline(review.device, TL_W + LABEL_W + 10, bottom + 30, TOP, bottom)

    def x(t: float) -> float:
        return LABEL_W + (min(max(t, t0), t1) - t0) * scale

    for i, stream in enumerate(streams):
        y = TOP + i * ROW_H
        tl.rows.append((stream, y))
        for s in review.streams[stream]:
            if s.start is None or s.end is None or s.end < t0 or s.start > t1:
                continue
            x0 = x(s.start)
            why = "; ".join(s.problems)
            title = f"{stream} #{s.seq} {s.state} {fmt.hms(s.start)}–{fmt.hms(s.end)}" + (
                f": {why}" if why else ""
            )
            w = max(3.0, x(s.end) - x0)
            tl.segs.append(TlSeg(x0, y + 6, w, ROW_H - 12, stream, s.seq, s.state, title))
        for g in review.gaps.get(stream, []):
            gs = g.start if g.start is not None else g.end
            ge = g.end if g.end is not None else g.start
            if gs is None or ge is None or ge < t0 or gs > t1:
                continue
            x0 = x(min(gs, ge))
            w = max(6.0, x(max(gs, ge)) - x0)
            left = x0 - (3 if w == 6.0 else 0)
            tl.gaps.append(TlGap(left, y + 2, w, ROW_H - 4, stream, bool(g.reason), gap_text(g)))
    for e in review.events:
        if e.time is None or e.time < t0 or e.time > t1:
            continue
        tl.marks.append(TlMark(x(e.time), e.type, f"{fmt.fmt_utc(e.time)} {e.summary}"))
    for k in range(6):
        t = t0 + (t1 - t0) * k / 5
        anchor = "start" if k == 0 else ("end" if k == 5 else "middle")
        tl.ticks.append(TlTick(x(t), fmt.hms(t), anchor))
    return tl


# --------------------------------------------------------------------------- track map


@dataclass(frozen=True)
class FixMark:
    x: float
    y: float
    time: str
    label: str


@dataclass(frozen=True)
class Tile:
    href: str
    x: float
    y: float


@dataclass
class TrackMap:
    kind: str  # grid | tiles
    route: str  # "x,y x,y ..." for the polyline
    start: tuple[float, float]
    end: tuple[float, float]
    fixes: list[FixMark]
    width: int = MAP_W
    height: int = MAP_H
    zoom: int = 0
    tiles: list[Tile] = field(default_factory=list)
    grid: list[tuple[float, float, float, float]] = field(default_factory=list)
    scale_px: float = 0.0  # the scale bar's length
    scale_label: str = ""


def nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    if raw <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * p >= raw:
            return float(m * p)
    return float(10 * p)  # pragma: no cover


def _markers(track: Track, xy: list[tuple[float, float]], kind: str) -> TrackMap:
    pts = track.points
    step = max(1, math.ceil(len(pts) / MAX_MARKERS))
    fixes = []
    for i in range(0, len(pts), step):
        p, (px, py) = pts[i], xy[i]
        speed = f", {p.speed * 3.6:.0f} km/h" if p.speed is not None else ""
        when = fmt.fmt_utc(p.time)
        fixes.append(FixMark(px, py, when, f"{when}  {p.lat:.6f}, {p.lon:.6f}{speed}"))
    route = " ".join(f"{px:.1f},{py:.1f}" for px, py in xy)
    return TrackMap(kind, route, xy[0], xy[-1], fixes)


def grid_map(track: Track) -> TrackMap:
    """The track to scale on a metre grid (no map needed)."""
    pts = track.points
    lat0 = sum(p.lat for p in pts) / len(pts)
    kx = 111_320.0 * math.cos(math.radians(lat0))
    ky = 110_574.0
    mx = [(p.lon - pts[0].lon) * kx for p in pts]
    my = [(p.lat - pts[0].lat) * ky for p in pts]
    w = max(max(mx) - min(mx), 50.0)
    h = max(max(my) - min(my), 50.0)
    pad = 30
    scale = min((MAP_W - 2 * pad) / w, (MAP_H - 2 * pad) / h)  # px per metre
    cx = (max(mx) + min(mx)) / 2
    cy = (max(my) + min(my)) / 2
    xy = [
        (MAP_W / 2 + (x - cx) * scale, MAP_H / 2 - (y - cy) * scale)
        for x, y in zip(mx, my, strict=True)
    ]
    m = _markers(track, xy, "grid")
    step = nice_step(max(MAP_W, MAP_H) / scale / 8)
    gx = math.floor((cx - (MAP_W / 2) / scale) / step) * step
    while (px := MAP_W / 2 + (gx - cx) * scale) <= MAP_W:
        if px >= 0:
            m.grid.append((px, 0, px, MAP_H))
        gx += step
    gy = math.floor((cy - (MAP_H / 2) / scale) / step) * step
    while (py := MAP_H / 2 - (gy - cy) * scale) >= 0:
        if py <= MAP_H:
            m.grid.append((0, py, MAP_W, py))
        gy += step
    m.scale_px = step * scale
    m.scale_label = f"{step / 1000:g} km" if step >= 1000 else f"{step:g} m"
    return m


def _world(lat: float, lon: float, z: int) -> tuple[float, float]:
    n = TILE * 2**z
    lat = max(-85.05112878, min(85.05112878, lat))
    s = math.sin(math.radians(lat))
    return (lon + 180) / 360 * n, (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n


def tile_map(track: Track, tile_url: str) -> TrackMap:
    """The track over the operator's own tiles (Web Mercator, 256-pixel tiles)."""
    pts = track.points
    z = 18
    while z > 1:
        xs, ys = zip(*(_world(p.lat, p.lon, z) for p in pts), strict=True)
        if max(xs) - min(xs) <= MAP_W - 60 and max(ys) - min(ys) <= MAP_H - 60:
            break
        z -= 1
    xs, ys = zip(*(_world(p.lat, p.lon, z) for p in pts), strict=True)
    ox = (max(xs) + min(xs)) / 2 - MAP_W / 2
    oy = (max(ys) + min(ys)) / 2 - MAP_H / 2
    m = _markers(track, [(px - ox, py - oy) for px, py in zip(xs, ys, strict=True)], "tiles")
    m.zoom = z
    n = 2**z
    for tx in range(math.floor(ox / TILE), math.floor((ox + MAP_W) / TILE) + 1):
        for ty in range(math.floor(oy / TILE), math.floor((oy + MAP_H) / TILE) + 1):
            if not 0 <= ty < n:
                continue
            url = tile_url.replace("{z}", str(z)).replace("{x}", str(tx % n))
            m.tiles.append(Tile(url.replace("{y}", str(ty)), tx * TILE - ox, ty * TILE - oy))
    return m
