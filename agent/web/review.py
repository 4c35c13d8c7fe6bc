"""The platform's review page over the ingest store: ``edge-agent ingest --web HOST:PORT`` or
``edge-agent review --store DIR --web HOST:PORT --token T``.

Read-only, behind a token (``Authorization: Bearer T``, or ``?token=T`` once, which sets an
HttpOnly cookie). Pages:

    /                               devices: online/offline, last seen, backlog, alarms
    /d/<device>?from=..&to=..       live state, per-stream timeline, track, stills, segments
    /d/<device>/s/<stream>/<seq>    one segment: verification, manifest, player or content
    /d/<device>/m/<stream>/<seq>    its verified plaintext (Range requests for <video>)
    /static/<name>                  the package's CSS and JS

Every id in a path is matched by a strict pattern (:mod:`agent.web.storeview`); nothing else
reaches the file system. The only outside address a page may name is the operator's own map
tile server (``tile_url``), and only in ``<image>`` elements (see the Content-Security-Policy).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import ConfigError, FormatError
from agent.gps.wire import SIZE as FIX_SIZE
from agent.gps.wire import decode_fix
from agent.storage.records import unpack_records
from agent.web.httpbase import (
    Request,
    Response,
    WebError,
    WebServer,
    bearer,
    byte_range,
    error_page,
    esc,
    page,
    redirect,
    secret_matches,
    session_value,
    static_file,
)
from agent.web.storeview import (
    DeviceReview,
    GapView,
    LiveView,
    SegmentView,
    StoreView,
    Track,
    check_seq,
    check_stream,
    fmt_utc,
    parse_utc,
)

log = logging.getLogger(__name__)

COOKIE = "edge_review"
MIN_TOKEN = 16
STREAM_ORDER = ("video", "audio", "still", "event", "gps")
# Plaintext served inline, by the manifest's content type; anything else is not served.
MEDIA_TYPES = {
    "video/mp4": "video/mp4",
    "audio/mp4": "audio/mp4",
    "audio/ogg": "audio/ogg",
    "image/jpeg": "image/jpeg",
    "image/png": "image/png",
    "application/json": "application/json",
}
ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("devices", re.compile(r"^/$")),
    ("device", re.compile(r"^/d/(?P<dev>[^/]{1,64})$")),
    (
        "segment",
        re.compile(r"^/d/(?P<dev>[^/]{1,64})/s/(?P<stream>[^/]{1,32})/(?P<seq>[^/]{1,12})$"),
    ),
    ("media", re.compile(r"^/d/(?P<dev>[^/]{1,64})/m/(?P<stream>[^/]{1,32})/(?P<seq>[^/]{1,12})$")),
    ("static", re.compile(r"^/static/(?P<name>[^/]{1,64})$")),
]
TILE_VARS_RE = re.compile(r"\{[zxy]\}")
MAX_MARKERS = 20000
DEFAULT_RANGE_S = 86400.0
MAP_W, MAP_H = 800, 500
TL_W = 1000


def check_tile_url(url: str | None) -> str | None:
    """An operator's tile server: http(s) with {z}, {x} and {y}, or None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"tile url {url!r}: must be an http(s) address")
    if not all(v in url for v in ("{z}", "{x}", "{y}")):
        raise ConfigError(f"tile url {url!r}: must contain {{z}}, {{x}} and {{y}}")
    if any(c in url for c in "\"'<> \\"):
        raise ConfigError(f"tile url {url!r}: contains characters an address may not")
    return url


def parse_when(text: str, what: str) -> float | None:
    """A time from the range form: ``YYYY-MM-DDTHH:MM[:SS[.fff]]`` (UTC) or ISO 8601."""
    text = text.strip()
    if not text:
        return None
    if len(text) > 40 or not re.match(
        r"^\d{4}-\d{2}-\d{2}[T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?$", text
    ):
        raise WebError(400, f"{what}: not a time (use YYYY-MM-DDTHH:MM:SS, UTC)")
    t = parse_utc(text.replace(" ", "T"))
    if t is None:
        raise WebError(400, f"{what}: not a time (use YYYY-MM-DDTHH:MM:SS, UTC)")
    return t


def _local_input(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(math.floor(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _hms(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M:%S")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class ReviewApp:
    """Builds every response of the review page (see the module docstring)."""

    def __init__(
        self,
        view: StoreView,
        token: str,
        *,
        tile_url: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
            raise ConfigError(
                f"review token: must be at least {MIN_TOKEN} characters without spaces"
            )
        self.view = view
        self.token = token
        self.tile_url = check_tile_url(tile_url)
        self._session = session_value(token, "edge-agent review session")
        import time

        self._clock = clock or time.time

    # ------------------------------------------------------------------ plumbing

    def security_headers(self) -> list[tuple[str, str]]:
        img = "'self' data:"
        if self.tile_url:
            p = urlsplit(self.tile_url)
            img += f" {p.scheme}://{p.netloc}"
        csp = (
            "default-src 'none'; script-src 'self'; style-src 'self'; "
            f"img-src {img}; media-src 'self'; connect-src 'self'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'"
        )
        return [
            ("Content-Security-Policy", csp),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "DENY"),
        ]

    def _authorized(self, req: Request) -> bool:
        if secret_matches(bearer(req), (self.token,)):
            return True
        return secret_matches(req.cookies.get(COOKIE, ""), (self._session,))

    def handle(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            return error_page(405, "the review page is read-only")
        for name, pattern in ROUTES:
            m = pattern.match(req.path)
            if m is None:
                continue
            if name == "static":
                return static_file(m.group("name"))
            if "token" in req.query:
                return self._login(req)
            if not self._authorized(req):
                return self._refuse(req)
            args = m.groupdict()
            if name == "devices":
                return self.devices_page()
            if name == "device":
                return self.device_page(args["dev"], req)
            if name == "segment":
                return self.segment_page(
                    args["dev"], check_stream(args["stream"]), check_seq(args["seq"])
                )
            return self.media(
                args["dev"], check_stream(args["stream"]), check_seq(args["seq"]), req
            )
        if not self._authorized(req) and "token" not in req.query:
            return self._refuse(req)
        return error_page(404, "there is no such page")

    def _login(self, req: Request) -> Response:
        if not secret_matches(req.query.get("token", ""), (self.token,)):
            log.warning("review: a wrong token from %s", req.client)
            return error_page(403, "that token is not valid for this review page")
        rest = {k: v for k, v in req.query.items() if k != "token"}
        target = req.path + (f"?{urlencode(rest)}" if rest else "")
        cookie = f"{COOKIE}={self._session}; HttpOnly; SameSite=Strict; Path=/"
        return redirect(target, [("Set-Cookie", cookie)])

    def _refuse(self, req: Request) -> Response:
        form = (
            '<form method=get action="/" class=login><label>token '
            "<input type=password name=token autocomplete=off required></label> "
            "<button>open</button></form>"
        )
        r = error_page(401, "this page needs the review token", form)
        r.headers.append(("WWW-Authenticate", 'Bearer realm="edge-agent review"'))
        return r

    # ------------------------------------------------------------------ devices

    def devices_page(self) -> Response:
        now = self._clock()
        rows = []
        for dev in self.view.devices():
            live = self.view.live(dev)
            review = self.view.review(dev)
            counts = review.counts()
            seen = live.last_seen or self.view.last_arrival(dev)
            online = live.online
            state = "unknown" if online is None else ("online" if online else "offline")
            backlog = live.backlog
            waiting = sum(int(b.get("count", 0)) for b in backlog.values() if isinstance(b, dict))
            alarm = live.alarms[0].payload if live.alarms else None
            alarm_cell = (
                f"{len(live.alarms)}: <b>{esc(alarm.get('kind', '?'))}</b> "
                f"{esc(str(alarm.get('message', ''))[:80])}"
                if alarm
                else "none"
            )
            health = (
                f"<span class=ok>{counts['verified']} verified</span>"
                + (
                    f", <span class=bad>{counts['failed']} failed</span>"
                    if counts["failed"]
                    else ""
                )
                + (f", <span class=gap>{counts['gaps']} gaps</span>" if counts["gaps"] else "")
            )
            rows.append(
                f"<tr data-device='{esc(dev)}'><td><a href='/d/{esc(dev)}'>{esc(dev)}</a></td>"
                f"<td><span class='pill {state}'>{state}</span></td>"
                f"<td title='{esc(fmt_utc(seen))}'>{esc(_age(now - seen) if seen else '-')}</td>"
                f"<td>{waiting} segments{self._backlog_detail(backlog)}</td>"
                f"<td>{alarm_cell}</td><td>{health}</td></tr>"
            )
        table = (
            "<table class=devices><thead><tr><th>device</th><th>state</th><th>last seen</th>"
            "<th>backlog</th><th>alarms</th><th>evidence</th></tr></thead><tbody>"
            + ("".join(rows) or "<tr><td colspan=6>the store holds no device yet</td></tr>")
            + "</tbody></table>"
        )
        body = (
            "<header><h1>edge-agent review</h1><p class=sub>devices in the store</p></header>"
            f"<main>{table}</main>"
        )
        return page("edge-agent review: devices", body)

    def _backlog_detail(self, backlog: dict[str, Any]) -> str:
        bits = []
        for stream, b in sorted(backlog.items()):
            if isinstance(b, dict):
                bits.append(
                    f"{esc(stream)} {int(b.get('count', 0))} ({_size(float(b.get('bytes', 0)))})"
                )
        return f"<br><small>{', '.join(bits)}</small>" if bits else ""

    # ------------------------------------------------------------------ one device

    def device_page(self, device: str, req: Request) -> Response:
        review = self.view.review(device)
        live = self.view.live(device)
        span = review.span
        start = parse_when(req.query.get("from", ""), "from")
        end = parse_when(req.query.get("to", ""), "to")
        if end is None:
            end = span[1]
        if start is None and span[0] is not None:
            # By default the last day with data (a device's months would not fit one page).
            start = max(span[0], (end or span[0]) - DEFAULT_RANGE_S)
        if start is not None and end is not None and end < start:
            raise WebError(400, "the range ends before it starts")
        track = self.view.track(device, start, end)
        sections = [
            self._live_section(device, live),
            self._range_form(device, start, end),
            self._timeline(review, start, end),
            self._track_section(track),
            self._stills(review, start, end),
            self._talk(review, start, end),
            self._tables(review, start, end),
        ]
        if review.problems or review.notes:
            items = "".join(f"<li>{esc(p)}</li>" for p in review.problems + review.notes)
            sections.append(f"<section><h2>notes</h2><ul>{items}</ul></section>")
        body = (
            f"<header><p class=crumbs><a href='/'>devices</a> /</p><h1>{esc(device)}</h1>"
            f"{self._counts(review)}</header><main>{''.join(sections)}"
            "<div id=tip class=tip hidden></div></main>"
        )
        return page(f"{device}: edge-agent review", body, scripts=["review.js"])

    def _counts(self, review: DeviceReview) -> str:
        c = review.counts()
        pin = "" if review.pinned else " <span class=bad>(no pinned device key)</span>"
        return (
            f"<p class=sub>{c['verified']} verified, {c['failed']} failed, "
            f"{c['gaps']} gaps{pin}</p>"
        )

    def _live_section(self, device: str, live: LiveView) -> str:
        now = self._clock()
        online = live.online
        state = "unknown" if online is None else ("online" if online else "offline")
        boot = live.state.payload.get("boot", "") if live.state else ""
        seen = live.last_seen or self.view.last_arrival(device)
        rows = [
            f"<tr><th>state</th><td><span class='pill {state}' id=device-state>{state}</span>"
            f"{' boot ' + esc(boot) if boot else ''}</td></tr>",
            f"<tr><th>last seen</th><td>{esc(fmt_utc(seen))} "
            f"({esc(_age(now - seen) if seen else '-')})</td></tr>",
        ]
        backlog = live.backlog
        rows.append(
            f"<tr><th>backlog</th><td>{'none' if not backlog else ''}"
            f"{self._backlog_detail(backlog)}</td></tr>"
        )
        if live.status is not None:
            s = live.status.payload
            bits = []
            gps = s.get("gps")
            if isinstance(gps, dict):
                bits.append(f"gps {esc(gps.get('state', '?'))}")
            up = s.get("uplink")
            if isinstance(up, dict):
                bits.append("uplink " + ("connected" if up.get("connected") else "DISCONNECTED"))
            if s.get("battery_pct") is not None:
                bits.append(f"battery {esc(s.get('battery_pct'))} %")
            if s.get("cpu_temp_c") is not None:
                bits.append(f"CPU {esc(s.get('cpu_temp_c'))} °C")
            rows.append(
                f"<tr><th>heartbeat</th><td>{esc(fmt_utc(live.status.received))}: "
                f"{', '.join(bits) or '-'}</td></tr>"
            )
        if live.fix is not None:
            f = live.fix.payload
            rows.append(
                f"<tr><th>live fix</th><td>{esc(f.get('lat', '-'))}, {esc(f.get('lon', '-'))} "
                f"at {esc(f.get('time', '-'))}</td></tr>"
            )
        alarms = "".join(
            f"<li class='sev-{esc(a.payload.get('severity', 'warning'))}'>"
            f"<b>{esc(a.payload.get('kind', '?'))}</b> "
            f"{esc(str(a.payload.get('message', ''))[:200])} "
            f"<small>{esc(a.payload.get('time', fmt_utc(a.received)))}</small></li>"
            for a in live.alarms[:20]
        )
        rows.append(
            f"<tr><th>alarms</th><td>{'<ul>' + alarms + '</ul>' if alarms else 'none'}</td></tr>"
        )
        return f"<section><h2>device</h2><table class=kv>{''.join(rows)}</table></section>"

    def _range_form(self, device: str, start: float | None, end: float | None) -> str:
        return (
            f"<section><form method=get action='/d/{esc(device)}' class=range id=range>"
            "<label>from <input type=datetime-local step=1 name=from "
            f"value='{_local_input(start)}'></label> "
            "<label>to <input type=datetime-local step=1 name=to "
            f"value='{_local_input(end + 1 if end else None)}'></label> "
            "<span class=sub>UTC</span> <button>show</button> "
            f"<a href='/d/{esc(device)}'>everything</a></form></section>"
        )

    # ------------------------------------------------------------------ timeline

    def _timeline(self, review: DeviceReview, start: float | None, end: float | None) -> str:
        if start is None or end is None:
            return "<section><h2>timeline</h2><p>no segment with a time yet</p></section>"
        t0, t1 = start, max(end, start + 1)
        scale = TL_W / (t1 - t0)
        streams = [s for s in STREAM_ORDER if s in review.streams]
        streams += sorted(s for s in review.streams if s not in STREAM_ORDER)
        row_h, label_w, top = 30, 70, 18
        height = top + row_h * len(streams) + 30
        parts = [
            f"<svg class=timeline id=timeline viewBox='0 0 {TL_W + label_w + 10} {height}' "
            "xmlns='http://www.w3.org/2000/svg' role=img>"
        ]

        def x(t: float) -> float:
            return label_w + (min(max(t, t0), t1) - t0) * scale

        for i, stream in enumerate(streams):
            y = top + i * row_h
            parts.append(
                f"<text x=4 y={y + 19} class=tl-label>{esc(stream)}</text>"
                f"<rect x={label_w} y={y + 4} width={TL_W} height={row_h - 8} class=tl-row />"
            )
            for s in review.streams[stream]:
                if s.start is None or s.end is None or s.end < t0 or s.start > t1:
                    continue
                x0 = x(s.start)
                w = max(3.0, x(s.end) - x0)
                why = "; ".join(s.problems)
                title = f"{stream} #{s.seq} {s.state} {_hms(s.start)}–{_hms(s.end)}" + (
                    f": {why}" if why else ""
                )
                parts.append(
                    f"<a href='/d/{esc(review.device)}/s/{esc(stream)}/{s.seq}'>"
                    f"<rect class='seg {s.state}' data-stream='{esc(stream)}' data-seq={s.seq} "
                    f"data-state={s.state} x={x0:.1f} y={y + 6} width={w:.1f} height={row_h - 12}>"
                    f"<title>{esc(title)}</title></rect></a>"
                )
            for g in review.gaps.get(stream, []):
                gs = g.start if g.start is not None else g.end
                ge = g.end if g.end is not None else g.start
                if gs is None or ge is None or ge < t0 or gs > t1:
                    continue
                x0 = x(min(gs, ge))
                w = max(6.0, x(max(gs, ge)) - x0)
                parts.append(
                    f"<rect class='gap{' explained' if g.reason else ''}' "
                    f"data-stream='{esc(stream)}' x={x0 - (3 if w == 6.0 else 0):.1f} "
                    f"y={y + 2} width={w:.1f} height={row_h - 4}>"
                    f"<title>{esc(self._gap_text(g))}</title></rect>"
                )
        bottom = top + row_h * len(streams)
        for e in review.events:
            if e.time is None or e.time < t0 or e.time > t1:
                continue
            xe = x(e.time)
            parts.append(
                f"<g class=mark data-type='{esc(e.type)}'>"
                f"<line x1={xe:.1f} x2={xe:.1f} y1={top - 4} "
                f"y2={bottom} /><path d='M{xe - 5:.1f},{top - 12} h10 l-5,8 z' />"
                f"<title>{esc(fmt_utc(e.time))} {esc(e.summary)}</title></g>"
            )
        for k in range(6):
            t = t0 + (t1 - t0) * k / 5
            xt = x(t)
            anchor = "start" if k == 0 else ("end" if k == 5 else "middle")
            parts.append(
                f"<line class=tick x1={xt:.1f} x2={xt:.1f} y1={bottom} y2={bottom + 5} />"
                f"<text class=tl-time x={xt:.1f} y={bottom + 18} text-anchor={anchor}>"
                f"{esc(_hms(t))}</text>"
            )
        parts.append("</svg>")
        legend = (
            "<p class=legend><span class='key verified'></span> verified "
            "<span class='key failed'></span> failed "
            "<span class='key gap'></span> chain gap "
            "<span class='key explained'></span> gap the device explained "
            "<span class='key mark'></span> event</p>"
        )
        gaps = [g for gl in review.gaps.values() for g in gl]
        gap_list = ""
        if gaps:
            gap_list = (
                "<ul class=gaps>"
                + "".join(f"<li class=gap-item>{esc(self._gap_text(g))}</li>" for g in gaps)
                + "</ul>"
            )
        return f"<section><h2>timeline</h2>{''.join(parts)}{legend}{gap_list}</section>"

    @staticmethod
    def _gap_text(g: GapView) -> str:
        if g.first < 0:
            what = f"{g.stream}: evidence refused at {fmt_utc(g.start)}"
        elif g.first == g.last:
            what = f"{g.stream}: chain gap, seq {g.first} missing"
        else:
            what = f"{g.stream}: chain gap, seq {g.first}..{g.last} missing"
        return f"{what}: {g.reason}" if g.reason else f"{what} (the device recorded no reason)"

    # ------------------------------------------------------------------ track

    def _track_section(self, track: Track) -> str:
        pts = track.points
        head = (
            f"<h2>track</h2><p class=sub id=track-count data-points={len(pts)}>{len(pts)} fixes"
            + (f", {track.without_position} without a position" if track.without_position else "")
            + (f"; from {esc(fmt_utc(pts[0].time))} to {esc(fmt_utc(pts[-1].time))}" if pts else "")
            + "</p>"
        )
        skipped = "".join(f"<li>{esc(s)}</li>" for s in track.skipped_segments)
        if skipped:
            head += f"<ul class=bad>{skipped}</ul>"
        if not pts:
            return f"<section>{head}<p>no fix in this range</p></section>"
        svg = self._tile_map(track) if self.tile_url else self._grid_map(track)
        return f"<section>{head}{svg}</section>"

    def _markers(self, track: Track, xy: list[tuple[float, float]]) -> str:
        pts = track.points
        step = max(1, math.ceil(len(pts) / MAX_MARKERS))
        line = " ".join(f"{px:.1f},{py:.1f}" for px, py in xy)
        a, b = xy[0], xy[-1]
        out = [
            f"<polyline class=route points='{line}' />",
            f"<circle class=start cx={a[0]:.1f} cy={a[1]:.1f} r=7 />",
            f"<circle class=end cx={b[0]:.1f} cy={b[1]:.1f} r=7 />",
        ]
        for i in range(0, len(pts), step):
            p, (px, py) = pts[i], xy[i]
            speed = f", {p.speed * 3.6:.0f} km/h" if p.speed is not None else ""
            label = f"{fmt_utc(p.time)}  {p.lat:.6f}, {p.lon:.6f}{speed}"
            out.append(
                f"<circle class=fix cx={px:.1f} cy={py:.1f} r=3.5 "
                f"data-time='{esc(fmt_utc(p.time))}' "
                f"data-label='{esc(label)}'><title>{esc(label)}</title></circle>"
            )
        return "".join(out)

    def _grid_map(self, track: Track) -> str:
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
        step = _nice_step(max(MAP_W, MAP_H) / scale / 8)
        grid = []
        x_left = cx - (MAP_W / 2) / scale
        y_bottom = cy - (MAP_H / 2) / scale
        gx = math.floor(x_left / step) * step
        while (px := MAP_W / 2 + (gx - cx) * scale) <= MAP_W:
            if px >= 0:
                grid.append(f"<line class=grid x1={px:.1f} x2={px:.1f} y1=0 y2={MAP_H} />")
            gx += step
        gy = math.floor(y_bottom / step) * step
        while (py := MAP_H / 2 - (gy - cy) * scale) >= 0:
            if py <= MAP_H:
                grid.append(f"<line class=grid x1=0 x2={MAP_W} y1={py:.1f} y2={py:.1f} />")
            gy += step
        bar = step * scale
        label = f"{step / 1000:g} km" if step >= 1000 else f"{step:g} m"
        scalebar = (
            f"<g class=scalebar><line x1=20 x2={20 + bar:.1f} y1={MAP_H - 20} y2={MAP_H - 20} />"
            f"<text x=20 y={MAP_H - 26}>{esc(label)} (grid)</text></g>"
            f"<text class=north x={MAP_W - 20} y=24 text-anchor=middle>N ↑</text>"
        )
        return (
            f"<svg class=map id=track viewBox='0 0 {MAP_W} {MAP_H}' data-kind=grid "
            f"xmlns='http://www.w3.org/2000/svg' role=img><rect class=paper width={MAP_W} "
            f"height={MAP_H} />{''.join(grid)}{self._markers(track, xy)}{scalebar}</svg>"
        )

    def _tile_map(self, track: Track) -> str:
        """The track over the operator's own tiles (Web Mercator, 256-pixel tiles)."""
        assert self.tile_url is not None
        pts = track.points

        def world(lat: float, lon: float, z: int) -> tuple[float, float]:
            n = 256 * 2**z
            lat = max(-85.05112878, min(85.05112878, lat))
            s = math.sin(math.radians(lat))
            return (lon + 180) / 360 * n, (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n

        z = 18
        while z > 1:
            xs, ys = zip(*(world(p.lat, p.lon, z) for p in pts), strict=True)
            if max(xs) - min(xs) <= MAP_W - 60 and max(ys) - min(ys) <= MAP_H - 60:
                break
            z -= 1
        xs, ys = zip(*(world(p.lat, p.lon, z) for p in pts), strict=True)
        ox = (max(xs) + min(xs)) / 2 - MAP_W / 2
        oy = (max(ys) + min(ys)) / 2 - MAP_H / 2
        tiles = []
        n = 2**z
        for tx in range(math.floor(ox / 256), math.floor((ox + MAP_W) / 256) + 1):
            for ty in range(math.floor(oy / 256), math.floor((oy + MAP_H) / 256) + 1):
                if not 0 <= ty < n:
                    continue
                url = (
                    self.tile_url.replace("{z}", str(z))
                    .replace("{x}", str(tx % n))
                    .replace("{y}", str(ty))
                )
                tiles.append(
                    f"<image class=tile href='{esc(url)}' x={tx * 256 - ox:.1f} "
                    f"y={ty * 256 - oy:.1f} width=256 height=256 />"
                )
        xy = [(px - ox, py - oy) for px, py in zip(xs, ys, strict=True)]
        return (
            f"<svg class=map id=track viewBox='0 0 {MAP_W} {MAP_H}' data-kind=tiles data-zoom={z} "
            f"xmlns='http://www.w3.org/2000/svg' role=img><rect class=paper width={MAP_W} "
            f"height={MAP_H} />{''.join(tiles)}{self._markers(track, xy)}</svg>"
        )

    # ------------------------------------------------------------------ stills, tables

    def _in_range(self, s: SegmentView, start: float | None, end: float | None) -> bool:
        if start is not None and s.end is not None and s.end < start:
            return False
        return not (end is not None and s.start is not None and s.start > end)

    def _stills(self, review: DeviceReview, start: float | None, end: float | None) -> str:
        figs = []
        for s in review.streams.get("still", []):
            if not self._in_range(s, start, end):
                continue
            link = f"/d/{esc(review.device)}/s/still/{s.seq}"
            if s.verified:
                img = (
                    f"<img src='/d/{esc(review.device)}/m/still/{s.seq}' "
                    f"alt='still {s.seq}' loading=lazy>"
                )
            else:
                img = "<div class='noimg failed'>failed verification</div>"
            figs.append(
                f"<figure class='still {s.state}'><a href='{link}'>{img}</a>"
                f"<figcaption>#{s.seq} {esc(fmt_utc(s.start))}</figcaption></figure>"
            )
        if not figs:
            return ""
        return (
            f"<section><h2>stills</h2><div class=gallery id=stills>{''.join(figs)}</div></section>"
        )

    def _talk(self, review: DeviceReview, start: float | None, end: float | None) -> str:
        """Push-to-talk messages (sealed into the audio stream with ``meta.talk``)."""
        rows = []
        for s in review.streams.get("audio", []):
            if not s.meta.get("talk") or not self._in_range(s, start, end):
                continue
            direction = (
                "officer → control room"
                if s.meta.get("direction") == "out"
                else ("control room → officer")
            )
            dur = s.meta.get("duration_s")
            player = (
                f"<audio controls preload=none src='/d/{esc(review.device)}/m/audio/{s.seq}'>"
                "</audio>"
                if s.verified
                else "<span class=failed>failed verification</span>"
            )
            rows.append(
                f"<tr class='talk {s.state}'><td>{esc(fmt_utc(s.start))}</td>"
                f"<td>{esc(direction)}</td><td>{esc(str(s.meta.get('message_id', '')))}</td>"
                f"<td>{esc(f'{dur:.1f} s' if isinstance(dur, int | float) else '')}</td>"
                f"<td>{player}</td></tr>"
            )
        if not rows:
            return ""
        return (
            "<section><h2>talk messages</h2><table id=talk><thead><tr><th>time</th>"
            "<th>direction</th><th>message</th><th>length</th><th>play</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>"
        )

    def _tables(self, review: DeviceReview, start: float | None, end: float | None) -> str:
        out = []
        streams = [s for s in STREAM_ORDER if s in review.streams]
        streams += sorted(s for s in review.streams if s not in STREAM_ORDER)
        for stream in streams:
            rows = []
            for s in review.streams[stream]:
                if not self._in_range(s, start, end):
                    continue
                detail = self._detail(stream, s, review)
                rows.append(
                    f"<tr class='{s.state}' data-seq={s.seq}><td>"
                    f"<a href='/d/{esc(review.device)}/s/"
                    f"{esc(stream)}/{s.seq}'>#{s.seq}</a></td><td>{esc(fmt_utc(s.start))}</td>"
                    f"<td>{esc(_hms(s.end))}</td><td><span class='pill {s.state}'>{s.state}</span>"
                    + (f"<br><small>{esc('; '.join(s.problems))}</small>" if s.problems else "")
                    + f"</td><td>{detail}</td><td>{esc(_size(s.size))}</td></tr>"
                )
            if rows:
                out.append(
                    "<details class=stream open>"
                    f"<summary>{esc(stream)}: {len(rows)} segments</summary>"
                    "<table class=segs><thead><tr><th>seq</th><th>start (UTC)</th><th>end</th>"
                    "<th>verification</th><th>content</th><th>size</th></tr></thead><tbody>"
                    + "".join(rows)
                    + "</tbody></table></details>"
                )
        return f"<section><h2>segments</h2>{''.join(out)}</section>" if out else ""

    def _detail(self, stream: str, s: SegmentView, review: DeviceReview) -> str:
        m = s.meta
        if stream == "event":
            for e in review.events:
                if e.seq == s.seq:
                    return esc(e.summary)
            return esc(m.get("type", ""))
        if s.content_type == "video/mp4":
            bits = [
                f"{m.get('width', '?')}x{m.get('height', '?')}",
                f"{m.get('duration_s', '?')} s",
            ]
            if isinstance(m.get("audio"), dict):
                bits.append("with audio")
            if m.get("marks"):
                bits.append(f"{len(m['marks'])} mark(s)")
            return esc(", ".join(bits))
        if "records" in m:
            return esc(f"{m['records']} records ({s.content_type})")
        return esc(s.content_type)

    # ------------------------------------------------------------------ one segment

    def segment_page(self, device: str, stream: str, seq: int) -> Response:
        review = self.view.review(device)
        s = review.segment(stream, seq)
        if s is None:
            raise WebError(404, f"{stream} #{seq} is not in the store")
        segs = review.streams[stream]
        i = segs.index(s)
        nav = []
        if i > 0:
            nav.append(
                f"<a rel=prev href='/d/{esc(device)}/s/{esc(stream)}/{segs[i - 1].seq}'>"
                f"◀ #{segs[i - 1].seq}</a>"
            )
        nav.append(f"<a href='/d/{esc(device)}'>{esc(device)}</a>")
        if i + 1 < len(segs):
            nav.append(
                f"<a rel=next id=next href='/d/{esc(device)}/s/{esc(stream)}/{segs[i + 1].seq}'>"
                f"#{segs[i + 1].seq} ▶</a>"
            )
        state = (
            f"<p class='verdict {s.state}' id=verdict data-state={s.state}>{s.state}"
            + (": " + esc("; ".join(s.problems)) if s.problems else "")
            + "</p>"
        )
        content = self._content(device, s)
        manifest = {k: v for k, v in s.manifest.items() if k != "meta"}
        rows = "".join(
            f"<tr><th>{esc(k)}</th>"
            f"<td>{esc(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
            for k, v in sorted(manifest.items())
        )
        meta = esc(json.dumps(s.meta, indent=1, sort_keys=True))
        body = (
            f"<header><p class=crumbs><a href='/'>devices</a> / <a href='/d/{esc(device)}'>"
            f"{esc(device)}</a> /</p><h1>{esc(stream)} #{seq}</h1>"
            f"<p class=sub>{esc(fmt_utc(s.start))} – {esc(fmt_utc(s.end))}</p></header><main>"
            f"{state}<nav class=segnav>{' · '.join(nav)}</nav>{content}"
            f"<section><h2>manifest</h2><table class=kv>{rows}</table>"
            f"<h3>meta</h3><pre>{meta}</pre></section></main>"
        )
        return page(f"{device} {stream} #{seq}", body, scripts=["review.js"])

    def _content(self, device: str, s: SegmentView) -> str:
        src = f"/d/{esc(device)}/m/{esc(s.stream)}/{s.seq}"
        if not s.verified:
            return "<p class=bad>not shown: this segment failed verification</p>"
        ct = s.content_type
        if ct == "video/mp4":
            return (
                f"<video id=player controls preload=auto playsinline src='{src}'>"
                "your browser cannot play H.264 video</video>"
            )
        if ct.startswith("audio/"):
            return f"<audio id=player controls preload=auto src='{src}'></audio>"
        if ct.startswith("image/"):
            return f"<img class=full src='{src}' alt='{esc(s.stream)} {s.seq}'>"
        try:
            data = self.view.plaintext(device, s.stream, s.seq)
        except WebError as exc:
            return f"<p class=bad>{esc(exc)}</p>"
        if ct == "application/json":
            try:
                text = json.dumps(json.loads(data), indent=1, sort_keys=True)
            except (ValueError, UnicodeDecodeError):
                text = data[:20000].decode("utf-8", "replace")
            return f"<pre class=content>{esc(text)}</pre>"
        if ct == "application/x-edge-fix":
            return self._fix_table(data)
        return f"<p>{len(data)} bytes of {esc(ct)} (not shown)</p>"

    def _fix_table(self, data: bytes) -> str:
        rows = []
        try:
            records = unpack_records(data)
        except FormatError as exc:
            return f"<p class=bad>{esc(exc)}</p>"
        for rec in records:
            if len(rec) != FIX_SIZE:
                continue
            try:
                f = decode_fix(rec)
            except FormatError:
                continue
            rows.append(
                f"<tr><td>{esc(fmt_utc(f.time))}</td><td>{esc(f.lat)}</td><td>{esc(f.lon)}</td>"
                f"<td>{'' if f.speed is None else f'{f.speed * 3.6:.1f}'}</td>"
                f"<td>{esc(f.sats_used if f.sats_used is not None else '')}</td></tr>"
            )
        return (
            "<table class=segs id=fixes><thead><tr><th>time (UTC)</th><th>lat</th><th>lon</th>"
            f"<th>km/h</th><th>sats</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )

    def media(self, device: str, stream: str, seq: int, req: Request) -> Response:
        review = self.view.review(device)
        s = review.segment(stream, seq)
        if s is None:
            raise WebError(404, f"{stream} #{seq} is not in the store")
        if not s.verified:
            raise WebError(409, "this segment failed verification; its content is not served")
        ctype = MEDIA_TYPES.get(s.content_type)
        if ctype is None:
            raise WebError(415, f"{s.content_type or 'this content'} is not served as media")
        data = self.view.plaintext(device, stream, seq)
        return byte_range(data, ctype, req, cache="private, max-age=3600")


def serve_review(
    store_dir: Path,
    host: str,
    port: int,
    token: str,
    platform_key: X25519PrivateKey | None,
    tile_url: str | None,
    stop: threading.Event,
    *,
    devices_dir: Path | None = None,
) -> WebServer:
    """Start the review page on (host, port) in its own threads; it serves until ``stop`` is
    set. Returns the running server (``.url``, ``.join()``). Raises ConfigError for a weak
    token or a bad tile URL, WebError when the address cannot be bound."""
    view = StoreView(store_dir, platform_key=platform_key, devices_dir=devices_dir)
    app = ReviewApp(view, token, tile_url=tile_url)
    server = WebServer(app, host, port, stop, "review")
    server.start()
    return server


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    if raw <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * p >= raw:
            return float(m * p)
    return float(10 * p)  # pragma: no cover


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) for --web."""
    m = re.match(r"^\[?([^\[\]]+?)\]?:(\d{1,5})$", text.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ConfigError(f"--web {text!r}: must be HOST:PORT, e.g. 127.0.0.1:8090")
    return m.group(1), int(m.group(2))
