"""The review page's pages: what each shows, gathered from the store and handed to its template.

No HTML is written here: each builder collects plain values (and the geometry of
:mod:`agent.web.review_svg`) and renders ``templates/<page>.html``, where Jinja2 escapes every
value. Each device on the overview and each part of a device's page is built on its own:
data that cannot be read is shown as *malformed* beside the rest, and the page stays up.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import boundedjson
from agent.errors import FormatError
from agent.gps.fixdelta import batch_records
from agent.gps.wire import SIZE as FIX_SIZE
from agent.gps.wire import decode_fix
from agent.storage.recovered import RECOVERED_CONTENT_TYPE
from agent.web import fmt
from agent.web.evidence import DeviceReview, SegmentView
from agent.web.httpbase import Request, Response, WebError
from agent.web.liveview import Alarm, BacklogItem, LiveView
from agent.web.review_svg import gap_text, grid_map, stream_order, tile_map, timeline
from agent.web.storeview import StoreView
from agent.web.templating import Templates
from agent.web.track import read_track

log = logging.getLogger(__name__)

DEFAULT_RANGE_S = 86400.0
MAX_JSON_SHOWN = 20000
RANGE_RE_TEXT = r"^\d{4}-\d{2}-\d{2}[T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?$"


def parse_when(text: str, what: str) -> float | None:
    """A time from the range form: ``YYYY-MM-DDTHH:MM[:SS[.fff]]`` (UTC) or ISO 8601."""
    text = text.strip()
    if not text:
        return None
    if len(text) > 40 or not re.match(RANGE_RE_TEXT, text):
        raise WebError(400, f"{what}: not a time (use YYYY-MM-DDTHH:MM:SS, UTC)")
    t = fmt.parse_utc(text.replace(" ", "T"))
    if t is None:
        raise WebError(400, f"{what}: not a time (use YYYY-MM-DDTHH:MM:SS, UTC)")
    return t


def json_text(value: object, *, indent: int | None = None) -> str:
    """``value`` as JSON text, or "malformed" for what cannot be written back."""
    try:
        return json.dumps(value, indent=indent, sort_keys=True)[:MAX_JSON_SHOWN]
    except (ValueError, TypeError, RecursionError):
        return fmt.MALFORMED


# --------------------------------------------------------------------------- overview


@dataclass
class DeviceRow:
    device: str
    state: str = "unknown"
    seen: float | None = None
    seen_age: str = "-"
    waiting: int | None = 0
    backlog: list[BacklogItem] = field(default_factory=list)
    alarms: int = 0
    alarm: Alarm | None = None
    counts: dict[str, int] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)


def _state(live: LiveView) -> str:
    online = live.online
    return "unknown" if online is None else ("online" if online else "offline")


class ReviewPages:
    """Builds the three kinds of page from a :class:`StoreView`."""

    def __init__(
        self, view: StoreView, clock: Callable[[], float], tile_url: str | None = None
    ) -> None:
        self.view = view
        self._clock = clock
        self.tile_url = tile_url
        self.templates = Templates()

    def _page(self, name: str, **context: Any) -> Response:
        return Response(200, self.templates.render(name, **context))

    # ------------------------------------------------------------------ overview

    def devices_page(self) -> Response:
        now = self._clock()
        rows = []
        for dev in self.view.devices():
            try:
                rows.append(self._device_row(dev, now))
            except Exception as exc:  # one device's data never takes the overview down
                log.exception("review: the overview row of %s failed", dev)
                rows.append(DeviceRow(dev, malformed=[f"its data cannot be read ({exc})"[:200]]))
        return self._page("devices.html", rows=rows)

    def _device_row(self, dev: str, now: float) -> DeviceRow:
        row = DeviceRow(dev)
        live = self.view.live(dev)
        row.state = _state(live)
        row.seen = live.last_seen or self.view.last_arrival(dev)
        row.seen_age = fmt.age(now - row.seen) if row.seen else "-"
        row.backlog = live.backlog()
        row.waiting = live.waiting()
        alarms = live.alarm_list(1)
        row.alarms = len(live.alarms)
        row.alarm = alarms[0] if alarms else None
        try:
            review = self.view.review(dev)
            row.counts = review.counts()
        except WebError as exc:
            row.malformed.append(f"evidence: {exc}")
        row.malformed.extend(live.malformed)
        return row

    # ------------------------------------------------------------------ one device

    def device_page(self, device: str, req: Request) -> Response:
        review = self.view.review(device)
        start = parse_when(req.query.get("from", ""), "from")
        end = parse_when(req.query.get("to", ""), "to")
        span = review.span
        if end is None:
            end = span[1]
        if start is None and span[0] is not None:
            # By default the last day with data (a device's months would not fit one page).
            start = max(span[0], (end or span[0]) - DEFAULT_RANGE_S)
        if start is not None and end is not None and end < start:
            raise WebError(400, "the range ends before it starts")
        track = read_track(self.view, device, start, end)
        track_map = None
        if track.points:
            track_map = tile_map(track, self.tile_url) if self.tile_url else grid_map(track)
        return self._page(
            "device.html",
            device=device,
            review=review,
            counts=review.counts(),
            live=self._live(device),
            start=start,
            end=end,
            timeline=timeline(review, start, end)
            if start is not None and end is not None
            else None,
            gaps=[gap_text(g) for gl in review.gaps.values() for g in gl],
            track=track,
            track_map=track_map,
            stills=[s for s in review.streams.get("still", []) if _in_range(s, start, end)],
            talk=self._talk(review, start, end),
            tables=self._tables(review, start, end),
            notes=review.problems + review.notes,
        )

    def _live(self, device: str) -> dict[str, Any]:
        """The device section: each part read on its own (malformed parts say so)."""
        try:
            live = self.view.live(device)
            seen = live.last_seen or self.view.last_arrival(device)
            return {
                "state": _state(live),
                "boot": live.boot,
                "seen": seen,
                "seen_age": fmt.age(self._clock() - seen) if seen else "-",
                "backlog": live.backlog(),
                "heartbeat": (
                    (live.status.received, live.heartbeat()) if live.status is not None else None
                ),
                "fix": live.live_fix(),
                "alarms": live.alarm_list(20),
                "malformed": live.malformed,
            }
        except Exception as exc:
            log.exception("review: the live state of %s failed", device)
            return {"error": f"its live state cannot be read ({exc})"[:200]}

    def _talk(
        self, review: DeviceReview, start: float | None, end: float | None
    ) -> list[dict[str, Any]]:
        """Push-to-talk messages (sealed into the audio stream with ``meta.talk``)."""
        rows = []
        for s in review.streams.get("audio", []):
            if s.meta.get("talk") is not True or not _in_range(s, start, end):
                continue
            dur = s.meta.get("duration_s")
            rows.append(
                {
                    "seg": s,
                    "direction": (
                        "officer → control room"
                        if s.meta.get("direction") == "out"
                        else "control room → officer"
                    ),
                    "message": str(s.meta.get("message_id", ""))[:100],
                    "length": (
                        f"{dur:.1f} s"
                        if isinstance(dur, int | float) and not isinstance(dur, bool)
                        else ""
                    ),
                }
            )
        return rows

    def _tables(
        self, review: DeviceReview, start: float | None, end: float | None
    ) -> list[tuple[str, list[tuple[SegmentView, str]]]]:
        out = []
        for stream in stream_order(review.streams):
            rows = [
                (s, _detail(stream, s, review))
                for s in review.streams[stream]
                if _in_range(s, start, end)
            ]
            if rows:
                out.append((stream, rows))
        return out

    # ------------------------------------------------------------------ one segment

    def segment_page(self, device: str, stream: str, seq: int) -> Response:
        review = self.view.review(device)
        s = review.segment(stream, seq)
        if s is None:
            raise WebError(404, f"{stream} #{seq} is not in the store")
        segs = review.streams[stream]
        i = segs.index(s)
        manifest = {k: v for k, v in s.manifest.items() if k != "meta"}
        note = _sealed_meta(s, manifest, self.view.platform_key is not None)
        return self._page(
            "segment.html",
            device=device,
            s=s,
            prev=segs[i - 1].seq if i > 0 else None,
            next=segs[i + 1].seq if i + 1 < len(segs) else None,
            content=self._content(device, s),
            manifest=[
                (k, v if isinstance(v, str) else json_text(v)) for k, v in sorted(manifest.items())
            ],
            meta=json_text(s.meta, indent=1),
            meta_note=note,
        )

    def _content(self, device: str, s: SegmentView) -> dict[str, Any]:
        """What the segment page shows of the content: a player, a picture, text or fixes."""
        if not s.verified:
            return {"kind": "failed"}
        if s.content_type == RECOVERED_CONTENT_TYPE and s.recovered is None:
            why = next((p for p in s.problems if p.startswith("recovered:")), "")
            return {"kind": "error", "message": why.removeprefix("recovered: ") or "not opened"}
        ct = s.media_type
        if ct == "video/mp4":
            return {"kind": "video"}
        if ct.startswith("audio/"):
            return {"kind": "audio"}
        if ct.startswith("image/"):
            return {"kind": "image"}
        try:
            data = self.view.plaintext(device, s.stream, s.seq)
        except WebError as exc:
            return {"kind": "error", "message": str(exc)}
        if ct == "application/json":
            try:
                obj = boundedjson.loads(data, "content", max_depth=32, want=None)
                text = json_text(obj, indent=1)
            except FormatError:
                text = data[:MAX_JSON_SHOWN].decode("utf-8", "replace")
            return {"kind": "json", "text": text}
        if ct in ("application/x-edge-fix", "application/x-edge-fix-delta"):
            return _fixes(data, ct)
        return {"kind": "bytes", "size": len(data), "type": ct}


def _fixes(data: bytes, content_type: str = "application/x-edge-fix") -> dict[str, Any]:
    try:
        records = batch_records(content_type, data)
    except FormatError as exc:
        return {"kind": "error", "message": str(exc)}
    rows = []
    for rec in records:
        if len(rec) != FIX_SIZE:
            continue
        try:
            f = decode_fix(rec)
        except FormatError:
            continue
        rows.append(
            (
                f.time,
                f.lat,
                f.lon,
                "" if f.speed is None else f"{f.speed * 3.6:.1f}",
                "" if f.sats_used is None else f.sats_used,
            )
        )
    return {"kind": "fixes", "rows": rows}


def _in_range(s: SegmentView, start: float | None, end: float | None) -> bool:
    if start is not None and s.end is not None and s.end < start:
        return False
    return not (end is not None and s.start is not None and s.start > end)


def _detail(stream: str, s: SegmentView, review: DeviceReview) -> str:
    """One line about a segment's content for the tables."""
    m = s.meta
    if stream == "event":
        for e in review.events:
            if e.seq == s.seq:
                return e.summary
        kind = m.get("type", "")
        return kind[:64] if isinstance(kind, str) else fmt.MALFORMED
    if s.recovered is not None:
        return s.recovered.summary
    if s.content_type == RECOVERED_CONTENT_TYPE:
        return "recovered part (needs the platform key to open)"
    if s.content_type == "video/mp4":
        bits = [
            f"{str(m.get('width', '?'))[:8]}x{str(m.get('height', '?'))[:8]}",
            f"{str(m.get('duration_s', '?'))[:12]} s",
        ]
        if isinstance(m.get("audio"), dict):
            bits.append("with audio")
        if isinstance(m.get("marks"), list) and m["marks"]:
            bits.append(f"{len(m['marks'])} mark(s)")
        return ", ".join(bits)
    if "records" in m:
        return f"{str(m['records'])[:20]} records ({s.content_type})"
    return s.content_type


def _sealed_meta(s: SegmentView, manifest: dict[str, Any], keyed: bool) -> str:
    """A version 2 segment's meta is sealed (``sealed_meta``, hex): only the platform key
    reads it. Its manifest row says so instead of showing kilobytes of hex; the note returned
    says why no meta is shown when it cannot be read ("" when it is shown)."""
    sealed = manifest.get("sealed_meta")
    if not isinstance(sealed, str):
        return ""
    manifest["sealed_meta"] = f"sealed ({len(sealed) // 2} bytes): shown decrypted under meta"
    if s.meta:
        return ""
    if keyed:
        return "its sealed meta cannot be read with the platform key"
    return "sealed: only the platform key reads it (open the review page with --platform-key)"
