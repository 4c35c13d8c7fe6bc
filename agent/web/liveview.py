"""What a device last said on its state and live topics, read defensively for the review page.

The files under ``<store>/<device>/live/`` (written by :mod:`agent.ingest.livestate`) hold
whatever a device published: one device (or one holding its certificate) can put anything
there. So every file is read with :func:`agent.boundedjson.loads` (size, depth, number
bounds), and every field the page shows is taken only when it has the type and range it
should; a field that is present but wrong is reported as malformed (``None`` plus a note in
:attr:`LiveView.malformed`) and the rest of the device's data is still shown. Nothing here
raises for bad content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import boundedjson
from agent.errors import FormatError

MAX_LIVE_BYTES = 64 * 1024
MAX_LIVE_DEPTH = 8
MAX_ALARMS = 50
MAX_ALARMS_BYTES = 4 * 1024 * 1024
# A "received" time the page accepts: 2000-01-01 .. 2100-01-01 (UTC seconds).
MIN_TIME, MAX_TIME = 946684800.0, 4102444800.0
MAX_COUNT = 10**12
SEVERITIES = frozenset({"info", "warning", "critical", "error"})
MALFORMED = "malformed"


def number(v: object) -> float | None:
    """A finite int or float (never a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def count(v: object) -> int | None:
    """A non-negative integer below 10^12, else None."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_COUNT:
        return None
    return v


def text(v: object, limit: int = 200) -> str | None:
    """A string (cut to ``limit`` characters, control characters dropped), else None."""
    if not isinstance(v, str):
        return None
    return "".join(c for c in v[:limit] if c.isprintable())


def when(v: object) -> float | None:
    """A UTC time in seconds the page can show, else None."""
    f = number(v)
    return f if f is not None and MIN_TIME <= f <= MAX_TIME else None


@dataclass(frozen=True)
class LiveMessage:
    received: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class BacklogItem:
    stream: str
    count: int | None  # None: malformed
    bytes: int | None


@dataclass(frozen=True)
class Alarm:
    kind: str
    message: str
    severity: str
    time: str


@dataclass
class LiveView:
    state: LiveMessage | None = None
    status: LiveMessage | None = None
    fix: LiveMessage | None = None
    alarms: list[LiveMessage] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # what could not be read, and why

    def _bad(self, what: str) -> None:
        if what not in self.malformed:
            self.malformed.append(what)

    @property
    def online(self) -> bool | None:
        """True/False from the retained birth/last will; None when unknown or malformed."""
        if self.state is None:
            return None
        s = self.state.payload.get("state")
        if s not in ("online", "offline"):
            self._bad("state: 'state' is not online/offline")
            return None
        return bool(s == "online")

    @property
    def boot(self) -> str:
        if self.state is None:
            return ""
        b = self.state.payload.get("boot")
        if b is None:
            return ""
        t = text(b, 64)
        if t is None:
            self._bad("state: 'boot' is not text")
            return ""
        return t

    @property
    def last_seen(self) -> float | None:
        times = [m.received for m in (self.state, self.status, self.fix) if m is not None]
        times += [a.received for a in self.alarms]
        return max(times) if times else None

    def backlog(self) -> list[BacklogItem]:
        """What the device still holds, per stream (from its last heartbeat, else its birth)."""
        for m, name in ((self.status, "status"), (self.state, "state")):
            if m is None or "backlog" not in m.payload:
                continue
            raw = m.payload["backlog"]
            if not isinstance(raw, dict):
                self._bad(f"{name}: 'backlog' is not an object")
                return []
            out = []
            for stream, b in sorted(raw.items())[:32]:
                name_ok = text(stream, 32) or "?"
                if not isinstance(b, dict):
                    self._bad(f"{name}: backlog of {name_ok!r} is not an object")
                    out.append(BacklogItem(name_ok, None, None))
                    continue
                n, size = count(b.get("count", 0)), count(b.get("bytes", 0))
                if n is None or size is None:
                    self._bad(f"{name}: backlog of {name_ok!r} has a malformed count or size")
                out.append(BacklogItem(name_ok, n, size))
            return out
        return []

    def waiting(self) -> int | None:
        """Segments waiting in total; None when any count is malformed."""
        items = self.backlog()
        if any(i.count is None for i in items):
            return None
        return sum(i.count or 0 for i in items)

    def heartbeat(self) -> list[str]:
        """The figures of the last heartbeat worth a glance, as short phrases."""
        if self.status is None:
            return []
        s = self.status.payload
        bits = []
        gps = s.get("gps")
        if isinstance(gps, dict):
            state = text(gps.get("state"), 40)
            if state is None and gps.get("state") is not None:
                self._bad("status: gps 'state' is not text")
            bits.append(f"gps {state or (MALFORMED if 'state' in gps else '?')}")
        up = s.get("uplink")
        if isinstance(up, dict):
            connected = up.get("connected") is True
            bits.append("uplink " + ("connected" if connected else "DISCONNECTED"))
        for key, label, unit in (("battery_pct", "battery", "%"), ("cpu_temp_c", "CPU", "°C")):
            if s.get(key) is None:
                continue
            v = number(s.get(key))
            if v is None:
                self._bad(f"status: {key!r} is not a number")
                bits.append(f"{label} {MALFORMED}")
            else:
                bits.append(f"{label} {v:g} {unit}")
        return bits

    def live_fix(self) -> tuple[str, str, str] | None:
        """(lat, lon, time) of the last live fix, each shown as text or 'malformed'."""
        if self.fix is None:
            return None
        f = self.fix.payload
        out = []
        for key, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0)):
            v = number(f.get(key))
            if f.get(key) is None:
                out.append("-")
            elif v is None or not lo <= v <= hi:
                self._bad(f"fix: {key!r} is not a coordinate")
                out.append(MALFORMED)
            else:
                out.append(f"{v:.6f}")
        t = f.get("time")
        out.append("-" if t is None else (text(t, 40) or MALFORMED))
        return out[0], out[1], out[2]

    def alarm_list(self, limit: int = 20) -> list[Alarm]:
        out = []
        for a in self.alarms[:limit]:
            p = a.payload
            severity = p.get("severity", "warning")
            if severity not in SEVERITIES:
                self._bad("alarm: unknown severity")
                severity = "warning"
            kind, message, t = text(p.get("kind"), 64), text(p.get("message", "")), p.get("time")
            if kind is None or message is None:
                self._bad("alarm: 'kind' or 'message' is not text")
            out.append(
                Alarm(
                    kind=kind or MALFORMED,
                    message=message if message is not None else MALFORMED,
                    severity=str(severity),
                    time=(text(t, 40) or MALFORMED) if t is not None else "",
                )
            )
        return out


def parse_line(raw: bytes, what: str) -> LiveMessage:
    """One stored live message ``{"received": <utc seconds>, "payload": {...}}``."""
    obj = boundedjson.loads(raw, what, max_bytes=MAX_LIVE_BYTES, max_depth=MAX_LIVE_DEPTH)
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise FormatError(f"{what}: no payload object")
    received = when(obj.get("received"))
    if received is None:
        raise FormatError(f"{what}: 'received' is not a time")
    return LiveMessage(received, payload)


def read_live(d: Path) -> LiveView:
    """The live view of one device's ``live/`` directory (never raises for bad content)."""
    view = LiveView()
    for name in ("state", "status", "fix"):
        path = d / f"{name}.json"
        try:
            raw = path.read_bytes() if path.is_file() else None
        except OSError as exc:
            view.malformed.append(f"{name}: unreadable ({exc.strerror})")
            continue
        if raw is None:
            continue
        try:
            setattr(view, name, parse_line(raw, name))
        except FormatError as exc:
            view.malformed.append(str(exc))
    alarms = d / "alarms.jsonl"
    if alarms.is_file():
        try:
            with alarms.open("rb") as f:
                size = f.seek(0, 2)
                start = max(0, size - MAX_ALARMS_BYTES)
                f.seek(start)
                lines = f.read().splitlines()[1 if start else 0 :][-MAX_ALARMS:]
        except OSError as exc:
            view.malformed.append(f"alarms: unreadable ({exc.strerror})")
            lines = []
        bad = 0
        for line in reversed(lines):
            try:
                view.alarms.append(parse_line(line, "alarm"))
            except FormatError:
                bad += 1
        if bad:
            view.malformed.append(f"alarms: {bad} line(s) malformed")
    return view
