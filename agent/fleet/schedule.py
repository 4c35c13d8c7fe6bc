"""Shift hours: which days, from when to when, in the district's local time. Pure.

A schedule in a command or the areas file::

    {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "06:00", "end": "14:30"}

``days`` are the days a shift **starts** (``mon``..``sun``, or 1..7 with 1 = Monday; omitted =
every day). A shift whose ``end`` is not after its ``start`` runs past midnight (``22:00`` to
``06:00``); ``start == end`` is a 24-hour shift. Times are local: :class:`LocalClock` turns a
fix's UTC time into local time with a zoneinfo zone (``Europe/Amsterdam``, summer time
included) or, where no tz database is installed, a fixed UTC offset in minutes.

A shift instance is named by the local date it started on (``2025-06-05``): coverage is kept per
(route, shift).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.errors import ConfigError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)\Z")
MINUTES_PER_DAY = 24 * 60


class LocalClock:
    """UTC seconds -> local wall time, by zone name or fixed offset."""

    __slots__ = ("tz",)

    def __init__(self, zone: str = "", utc_offset_min: int = 0) -> None:
        if zone:
            try:
                self.tz: tzinfo = ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigError(f"timezone: unknown zone {zone!r} ({exc})") from None
        else:
            if not -14 * 60 <= utc_offset_min <= 14 * 60:
                raise ConfigError(f"utc_offset_min: must be -840..840, got {utc_offset_min}")
            self.tz = timezone(timedelta(minutes=utc_offset_min))

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, tz=UTC).astimezone(self.tz)


def _parse_hhmm(what: str, v: object) -> int:
    if not isinstance(v, str) or not (m := _HHMM.match(v)):
        raise ConfigError(f"{what}: must be a time HH:MM, got {v!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


@dataclass(frozen=True, slots=True)
class Schedule:
    """Shift days (0 = Monday) and local start/end in minutes after midnight."""

    days: frozenset[int]
    start_min: int
    end_min: int

    @classmethod
    def parse(cls, data: object, what: str = "schedule") -> Schedule:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{what}: must be a table/object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"days", "start", "end"})
        if unknown:
            raise ConfigError(f"{what}: unknown field(s) {', '.join(unknown)}")
        raw_days = data.get("days", list(DAY_NAMES))
        if not isinstance(raw_days, list | tuple) or not raw_days:
            raise ConfigError(f"{what}.days: must be a non-empty list of days")
        days: set[int] = set()
        for d in raw_days:
            if isinstance(d, str) and d.lower()[:3] in DAY_NAMES:
                days.add(DAY_NAMES.index(d.lower()[:3]))
            elif isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7:
                days.add(d - 1)
            else:
                raise ConfigError(f"{what}.days: {d!r} is not a day (mon..sun or 1..7)")
        start = _parse_hhmm(f"{what}.start", data.get("start", "00:00"))
        end = _parse_hhmm(f"{what}.end", data.get("end", "00:00"))
        return cls(frozenset(days), start, end)

    def to_json(self) -> dict[str, object]:
        return {
            "days": [DAY_NAMES[d] for d in sorted(self.days)],
            "start": f"{self.start_min // 60:02d}:{self.start_min % 60:02d}",
            "end": f"{self.end_min // 60:02d}:{self.end_min % 60:02d}",
        }

    def shift_of(self, local: datetime) -> date | None:
        """The local date the shift running at ``local`` started on, or None (off shift)."""
        minute = local.hour * 60 + local.minute
        today = local.date()
        yesterday = today - timedelta(days=1)
        s, e = self.start_min, self.end_min
        if s == e:  # 24 hours from start
            if minute >= s and today.weekday() in self.days:
                return today
            if minute < s and yesterday.weekday() in self.days:
                return yesterday
            return None
        if s < e:
            return today if s <= minute < e and today.weekday() in self.days else None
        # past midnight
        if minute >= s and today.weekday() in self.days:
            return today
        if minute < e and yesterday.weekday() in self.days:
            return yesterday
        return None


def shift_id(d: date) -> str:
    return d.isoformat()
