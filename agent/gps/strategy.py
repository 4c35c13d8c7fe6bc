"""The reporting strategy of a fleet tracker: which fixes go live, which are kept. Pure.

Integration point::

    strategy = ReportingStrategy(cfg.gps.strategy)
    d = strategy.decide(fix)                 # or strategy.decide(fix, alarm=True)
    if d.report_live: live_lane.put_latest(fix)        # newest first, never queued behind bulk
    if d.keep:        gps_segment.append(fix)          # sealed GPS segments, for backfill

Like JT/T 808 terminal parameters (time / distance reporting, corner supplement) and
Teltonika's data acquisition (period, distance, angle, moving/stopped), a good fix is reported

* ``first``: the first good fix;
* ``alarm``: at once when the caller says an alarm is raised;
* ``heading``: when the course turned by more than ``heading_deg`` since the last report
  (above ``heading_min_speed_mps``: corners are drawn, a parked truck's course noise is not);
* ``distance``: after ``distance_m`` metres from the last report;
* ``interval``: after ``interval_s`` seconds while moving, ``stopped-interval``:
  ``stopped_interval_s`` while stopped (speed under ``stopped_speed_mps``).

A poor fix is neither reported as a position nor kept: ``no-fix``, ``impossible-date``
(before :data:`agent.gps.clock.EARLIEST_VALID`), ``time-not-advancing``, ``hdop`` (above
``max_hdop``), ``jump`` (implies more than ``max_speed_mps`` from the last good fix; three
mutually consistent fixes at the new place are accepted, so one bad anchor cannot lock the
tracker out). Good fixes are kept at most once per ``keep_interval_s`` (every reported fix is
kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.gps.clock import plausible_time
from agent.gps.settings import StrategySettings
from agent.model import Fix

EARTH_RADIUS_M = 6_371_008.8
#: Consistent fixes needed to accept a position that "jumped" from the last good one.
JUMP_CONFIRMATIONS = 3


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one fix. ``reason`` names the rule that fired (or the fault)."""

    report_live: bool
    keep: bool
    reason: str


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def heading_change(a: float, b: float) -> float:
    """Smallest angle between two courses, 0..180 degrees."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


class ReportingStrategy:
    """Decides, fix by fix, what goes to the live lane and what is kept. Not thread-safe."""

    def __init__(self, settings: StrategySettings | None = None) -> None:
        self.s = settings or StrategySettings()
        self.last_good: Fix | None = None
        self.last_reported: Fix | None = None
        self.last_kept: Fix | None = None
        self._suspects: list[Fix] = []

    def decide(self, fix: Fix, *, alarm: bool = False, parked: bool = False) -> Decision:
        """``alarm``: report now whatever the rules say; ``parked`` (ignition off): report at
        the stopped interval whatever the speed says."""
        fault = self._fault(fix)
        if fault:
            return Decision(report_live=False, keep=False, reason=fault)
        self.last_good = fix
        reason = "alarm" if alarm else self._report_reason(fix, parked)
        report = bool(reason)
        if report:
            self.last_reported = fix
        keep = report or (
            self.last_kept is None or fix.time - self.last_kept.time >= self.s.keep_interval_s
        )
        if keep:
            self.last_kept = fix
        return Decision(report_live=report, keep=keep, reason=(reason or "kept") if keep else "")

    # ------------------------------------------------------------------------ rules
    def _fault(self, fix: Fix) -> str:
        if not fix.has_position:
            return "no-fix"
        if not plausible_time(fix.time):
            return "impossible-date"
        if fix.hdop is not None and fix.hdop > self.s.max_hdop:
            return "hdop"
        prev = self.last_good
        if prev is None:
            return ""
        if fix.time <= prev.time:
            return "time-not-advancing"
        assert fix.lat is not None and fix.lon is not None
        assert prev.lat is not None and prev.lon is not None
        speed = distance_m(prev.lat, prev.lon, fix.lat, fix.lon) / (fix.time - prev.time)
        if speed <= self.s.max_speed_mps:
            self._suspects.clear()
            return ""
        # A jump: believe it only when JUMP_CONFIRMATIONS fixes agree with each other.
        if self._suspects and not self._consistent(self._suspects[-1], fix):
            self._suspects.clear()
        self._suspects.append(fix)
        if len(self._suspects) >= JUMP_CONFIRMATIONS:
            self._suspects.clear()
            return ""
        return "jump"

    def _consistent(self, a: Fix, b: Fix) -> bool:
        assert a.lat is not None and a.lon is not None and b.lat is not None and b.lon is not None
        dt = b.time - a.time
        return dt > 0 and distance_m(a.lat, a.lon, b.lat, b.lon) / dt <= self.s.max_speed_mps

    def _report_reason(self, fix: Fix, parked: bool = False) -> str:
        last = self.last_reported
        if last is None:
            return "first"
        assert fix.lat is not None and fix.lon is not None
        assert last.lat is not None and last.lon is not None
        s = self.s
        speed = fix.speed
        moving = not parked and (speed is None or speed >= s.stopped_speed_mps)
        if (
            not parked
            and s.heading_deg > 0
            and fix.track is not None
            and last.track is not None
            and speed is not None
            and speed >= s.heading_min_speed_mps
            and heading_change(fix.track, last.track) > s.heading_deg
        ):
            return "heading"
        if s.distance_m > 0 and distance_m(last.lat, last.lon, fix.lat, fix.lon) >= s.distance_m:
            return "distance"
        elapsed = fix.time - last.time
        if moving and elapsed >= s.interval_s:
            return "interval"
        if not moving and elapsed >= s.stopped_interval_s:
            return "stopped-interval"
        return ""
