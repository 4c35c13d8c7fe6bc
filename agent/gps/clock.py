"""GNSS time versus the system clock: how far a segment's timestamps can be trusted.

A Raspberry Pi has no real-time clock: after a cold boot without network its clock may say
1970 or the last shutdown. :class:`ClockMonitor` compares the time of good GNSS fixes with
the system clock at the moment each fix was received and produces a
:class:`~agent.model.ClockState` (``source`` and ``offset_s`` = GNSS - system) for the sealer.

Where chrony keeps the clock (:mod:`agent.gps.chrony`, given as ``reference``), its state
comes first whenever it is synchronised: it knows the reference (pps, gnss, ntp) and bounds
its error, where the fixes' measurement carries the receiver's serial latency. The fixes'
measurement is the fallback (chrony absent, stopped or not synchronised).

Integration point::

    clock = ClockMonitor(reference=chrony.state)   # reference optional
    clock.observe(fix)            # in the GPS consumer, as each fix arrives
    seal(segment, clock=clock.state())

Impossible dates are never used or reported: a GNSS time before :data:`EARLIEST_VALID`
(receivers hit by the GPS week-number rollover report 1999, 2000 or 2004 dates; gpsd even
moves some 1024 weeks into the future) or later than :data:`LATEST_VALID` is rejected.
The offset includes the serial latency of the receiver (typically 0.1-0.5 s); the median of
the last few samples is used, so one late sentence does not move it.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from agent import wallclock
from agent.model import ClockSource, ClockState, Fix

log = logging.getLogger(__name__)

#: No fix can be older than the software that reads it (2024-01-01T00:00:00Z).
EARLIEST_VALID = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))
#: ...nor later than one GPS week-number era (1024 weeks) after that.
LATEST_VALID = EARLIEST_VALID + 1024 * 7 * 86400


def plausible_time(t: float) -> bool:
    """True when ``t`` (UTC seconds) is a date a receiver can really report today."""
    return EARLIEST_VALID <= t < LATEST_VALID


class ClockMonitor:
    """Tracks GNSS-minus-system offset. ``now`` is injectable for tests (no real waiting)."""

    def __init__(
        self,
        *,
        now: Callable[[], float] = wallclock.now,
        monotonic: Callable[[], float] = time.monotonic,
        samples: int = 15,
        step_s: float = 1.0,
        max_age_s: float = 3600.0,
        warn_offset_s: float = 2.0,
        reference: Callable[[], ClockState | None] | None = None,
    ) -> None:
        #: chrony's clock state (``ChronyMonitor.state``), or None where chrony is not used.
        self.reference = reference
        self._now = now
        self._monotonic = monotonic
        # A step of the system clock shows as a jump of (wall - monotonic); the offsets
        # measured before it no longer describe the clock, so they are dropped at once.
        self.step_s = step_s
        self._wall_minus_mono: float | None = None
        self.steps = 0
        self._offsets: deque[float] = deque(maxlen=samples)
        self._last_sample_at: float | None = None  # system time of the last sample
        self.max_age_s = max_age_s
        self.warn_offset_s = warn_offset_s
        self._warned = False
        self.rejected = 0
        self._receiver_time: tuple[float | None, bool | None] = (None, None)

    def observe(self, fix: Fix, received_at: float | None = None) -> ClockState:
        """Take one fix (received at ``received_at``, system time; default: now)."""
        now = self._now() if received_at is None else received_at
        if not fix.has_position or not plausible_time(fix.time) or not self._time_usable(fix):
            if fix.has_position:
                self.rejected += 1
            return self.state()
        self._check_step()
        offset = fix.time - now
        self._offsets.append(offset)
        self._last_sample_at = now
        state = self.measured_state()
        big = state.offset_s is not None and abs(state.offset_s) > self.warn_offset_s
        if big and not self._warned:
            log.warning("system clock differs from GNSS time by %.1f s", state.offset_s)
        elif not big and self._warned:
            log.info("system clock agrees with GNSS time again")
        self._warned = big
        return state

    def _time_usable(self, fix: Fix) -> bool:
        """The receiver's own word on its time (u-blox NAV-PVT): a UTC time that is not fully
        resolved may be off by whole seconds and is not a sample; the accuracy estimate and
        confirmation of the last sample go into the state."""
        if fix.time_resolved is False:
            return False
        self._receiver_time = (fix.time_acc, fix.time_confirmed)
        return True

    def _check_step(self) -> None:
        wm = self._now() - self._monotonic()
        prev, self._wall_minus_mono = self._wall_minus_mono, wm
        if prev is not None and abs(wm - prev) > self.step_s:
            self.steps += 1
            self._offsets.clear()
            log.warning("system clock stepped by %+.1f s: measuring its offset afresh", wm - prev)

    def state(self) -> ClockState:
        """The clock state to put on a segment sealed now: chrony's while it is synchronised,
        else the fixes' measurement, else chrony's "not synchronised", else none."""
        ref = self.reference() if self.reference is not None else None
        if ref is not None and ref.synced:
            return ref
        measured = self.measured_state()
        if measured.source is not ClockSource.NONE or ref is None:
            return measured
        return ref

    def measured_state(self) -> ClockState:
        """GNSS fix times against their arrival (median of the recent samples)."""
        self._check_step()
        if not self._offsets or self._last_sample_at is None:
            return ClockState(ClockSource.NONE, None)
        age = self._now() - self._last_sample_at
        if age < 0 or age > self.max_age_s:
            # The system clock was stepped backwards, or GNSS has been silent too long for the
            # old offset to describe the clock now.
            return ClockState(ClockSource.NONE, None)
        acc, confirmed = self._receiver_time
        return ClockState(
            ClockSource.GNSS,
            round(_median(self._offsets), 3),
            via="fixes",
            time_acc_s=acc,
            time_confirmed=confirmed,
        )

    def gnss_now(self) -> float | None:
        """The current time by GNSS (system time corrected by the offset), if known."""
        st = self.state()
        return None if st.offset_s is None else self._now() + st.offset_s


def _median(values: Iterable[float]) -> float:
    """``statistics.median`` (the mean of the middle two of an even count), without importing
    statistics, fractions and decimal (~0.4 MB resident) into every tracker (docs/scale.md)."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("no median of no values")
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2
