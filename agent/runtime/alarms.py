"""The alarms of the running agent: where they go, and the ones the root raises itself.

:class:`Alarms` logs every alarm and hands it to its sinks (the uplink's live lane, the JT/T
808 terminal). :class:`StateAlarms` watches the status figures and raises an alarm on each
change of state: the evidence storage nearly full, the GNSS receiver lost or back, the system
clock untrusted or trusted again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import wallclock
from agent.model import Alarm, Severity

if TYPE_CHECKING:
    from agent.gps.clock import ClockMonitor

log = logging.getLogger(__name__)


class Alarms:
    """Every alarm is logged; when the uplink runs it also goes out on the live lane."""

    def __init__(self) -> None:
        self._sinks: list[Callable[[Alarm], None]] = []

    def add_sink(self, sink: Callable[[Alarm], None]) -> None:
        self._sinks.append(sink)

    def raise_(self, alarm: Alarm) -> None:
        log.warning("alarm %s: %s", alarm.kind, alarm.message)
        for sink in self._sinks:
            sink(alarm)


class StateAlarms:
    """An alarm on each change: storage nearly full, receiver lost/restored, clock
    untrusted/trusted. :meth:`check` is given each round's status figures."""

    def __init__(
        self,
        raise_: Callable[[Alarm], None],
        clock: ClockMonitor,
        *,
        evidence_quota_bytes: int,
        storage_alarm_pct: float,
    ) -> None:
        self._raise = raise_
        self.clock = clock
        self._storage_limit = evidence_quota_bytes * storage_alarm_pct / 100
        self._storage_pct = storage_alarm_pct
        self._storage_full = False
        self._gps_lost = False
        self._clock_untrusted = False
        self._clock_was_trusted = False

    def check(self, status: dict[str, Any]) -> None:
        self._storage(status.get("storage") or {})
        self._receiver(status.get("gps"))
        self._clock()

    def _storage(self, usage: dict[str, Any]) -> None:
        full = usage.get("evidence", 0) >= self._storage_limit
        if full and not self._storage_full:
            self._raise(
                Alarm(
                    "storage_nearly_full",
                    f"evidence storage above {self._storage_pct:.0f}% of its quota",
                    Severity.WARNING,
                    wallclock.now(),
                    {"usage": usage},
                )
            )
        self._storage_full = full

    def _receiver(self, gps: dict[str, Any] | None) -> None:
        if gps is None:
            return
        lost = gps.get("state") == "lost"
        if lost != self._gps_lost:
            self._raise(
                Alarm(
                    "receiver_lost" if lost else "receiver_restored",
                    "GNSS receiver lost: no positions" if lost else "GNSS receiver back",
                    Severity.WARNING if lost else Severity.INFO,
                    wallclock.now(),
                )
            )
        self._gps_lost = lost

    def _clock(self) -> None:
        clock = self.clock.state()
        limit = self.clock.warn_offset_s
        untrusted = (self._clock_was_trusted and clock.offset_s is None) or (
            clock.offset_s is not None and abs(clock.offset_s) > limit
        )
        if clock.offset_s is not None and abs(clock.offset_s) <= limit:
            self._clock_was_trusted = True
        if untrusted != self._clock_untrusted:
            why = (
                f"system clock differs from GNSS time by {clock.offset_s:+.1f} s"
                if clock.offset_s is not None
                else "no time reference any more"
            )
            self._raise(
                Alarm(
                    "clock_untrusted" if untrusted else "clock_trusted",
                    why if untrusted else "system clock agrees with GNSS time again",
                    Severity.WARNING if untrusted else Severity.INFO,
                    wallclock.now(),
                    clock.to_json(),
                )
            )
        self._clock_untrusted = untrusted
