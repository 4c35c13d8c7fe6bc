"""How the review page writes times, ages and sizes (never raising for a value out of range:
a device can send any number)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

MALFORMED = "malformed"


def parse_utc(text: object) -> float | None:
    """An ISO 8601 time (UTC when it names no zone) as seconds; None when it is not one."""
    if not isinstance(text, str) or not text or len(text) > 40:
        return None
    try:
        t = datetime.fromisoformat(text)
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        value = t.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return value if math.isfinite(value) else None


def _dt(t: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(t, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def fmt_utc(t: float | None) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmmZ``; ``-`` for None, ``malformed`` for a time out of range."""
    if t is None:
        return "-"
    if not math.isfinite(t):
        return MALFORMED
    ms = round(t * 1000)
    d = _dt(ms // 1000)
    if d is None:
        return MALFORMED
    return d.strftime("%Y-%m-%d %H:%M:%S") + f".{ms % 1000:03d}Z"


def hms(t: float | None) -> str:
    if t is None:
        return "-"
    d = _dt(t) if math.isfinite(t) else None
    return d.strftime("%H:%M:%S") if d is not None else MALFORMED


def local_input(t: float | None) -> str:
    """A value for ``<input type=datetime-local step=1>`` (UTC), or ""."""
    if t is None or not math.isfinite(t):
        return ""
    d = _dt(math.floor(t))
    return d.strftime("%Y-%m-%dT%H:%M:%S") if d is not None else ""


def age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def size(n: float | None) -> str:
    if n is None or not math.isfinite(n):
        return MALFORMED
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover
