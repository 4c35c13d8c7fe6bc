"""The GPS path of a running agent: source -> clock -> strategy -> live lane and GPS segments.

Every fix the strategy keeps is appended, encrypted and durable, to the ``gps`` record log and
sealed into a GPS segment every ``spool.batch_s``, delta-coded (``application/x-edge-fix-delta``,
agent.gps.fixdelta: a truck's fix costs ~5 bytes instead of 30); every fix it reports also goes to
the live lane at once. The clock monitor turns good fixes into the clock state that every
sealed segment carries.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent import wallclock
from agent.errors import AgentError
from agent.gps import fixdelta, wire
from agent.gps.clock import ClockMonitor
from agent.gps.settings import GpsSettings
from agent.gps.source import FixSource, SourceThread, open_source
from agent.gps.strategy import ReportingStrategy
from agent.gps.wire import encode_fix
from agent.loops.guard import Guard
from agent.model import Alarm, Fix
from agent.storage.records import RecordLog
from agent.storage.spool import Spool

if TYPE_CHECKING:
    from agent.fleet.service import FleetService

log = logging.getLogger(__name__)

FIX_CONTENT_TYPE = fixdelta.CONTENT_TYPE
POLL_S = 0.5
# Fixes kept while the disk refuses them wait in memory, oldest first: an hour at 1 Hz
# (~0.5 MB); beyond that the oldest goes, counted in ``fixes_unstored_dropped``.
UNSTORED_MAX = 3600
STORE_BACKOFF_MAX_S = 10.0


class GpsService:
    """Owns the GPS threads; ``stop`` ends them, and ``join`` seals the open batch."""

    def __init__(
        self,
        settings: GpsSettings,
        spool: Spool,
        stop: threading.Event,
        *,
        clock: ClockMonitor,
        live: Callable[[Fix], None] | None = None,
        source: FixSource | None = None,
        fleet: FleetService | None = None,
        observers: Sequence[Callable[[Fix], None]] = (),
        alarm: Callable[[Alarm], None] | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.stop = stop
        self.clock = clock
        self._live = live
        # Called with every fix after the fleet rules (e.g. the JT/T 808 terminal, which runs
        # its own reporting strategy); they must not raise.
        self._observers = tuple(observers)
        self.strategy = ReportingStrategy(settings.strategy)
        self.records = RecordLog(
            spool,
            "gps",
            content_type=FIX_CONTENT_TYPE,
            pack=fixdelta.encode_batch,
            record_type=wire.CONTENT_TYPE,
        )
        self.pump = SourceThread(source or open_source(settings), stop, settings.queue_size)
        self._lock = threading.Lock()
        self._latest: Fix | None = None
        self.fixes_seen = 0
        self.fixes_kept = 0
        self.fixes_reported = 0
        self._thread = threading.Thread(target=self._consume, name="gps-consumer")
        # Surviving (agent/loops/guard.py): the consumer's own logic, and the record log's
        # storage apart from it, so a full disk never holds up the clock or the live lane.
        self._guard = Guard("gps-consumer", stop, log, alarm=alarm)
        self._store_guard = Guard(
            "gps-store", stop, log, alarm=alarm, backoff_max_s=STORE_BACKOFF_MAX_S
        )
        self._unstored: deque[tuple[bytes, float]] = deque(maxlen=UNSTORED_MAX)
        self.fixes_unstored_dropped = 0

    @property
    def latest(self) -> Fix | None:
        """The newest fix with a position (for the watermark, status and the device page)."""
        with self._lock:
            return self._latest

    @property
    def state(self) -> str:
        """``fix`` (a position in the last 10 s), ``no-fix``, or ``lost`` (source stopped)."""
        if not self.pump.is_alive() and self.pump.error is not None:
            return "lost"
        link = getattr(self.pump.source, "link", None)  # serial and gpsd sources reconnect
        if link is not None and link.down:
            return "lost"
        fix = self.latest
        if fix is None or wallclock.now() - fix.time > 10 + abs(self.clock.state().offset_s or 0):
            return "no-fix"
        return "fix"

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def threads(self) -> list[threading.Thread]:
        """The source's reader and the consumer (the composition root watches both); a
        replayed log that has played to its end (``finished``) is no longer watched."""
        return ([] if self.pump.finished else [self.pump.thread]) + [self._thread]

    def start(self) -> None:
        self.pump.start()
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.pump.join(timeout)
        self._thread.join(timeout)

    def handle(self, fix: Fix) -> None:
        """One fix through the clock, the strategy, the live lane and the record log.

        The clock monitor, the fleet rules, the observers and the live lane see every fix at
        once, whatever the disk does; a fix to keep is queued for the record log and stored
        by :meth:`store` (a fix the disk refuses stays queued and is retried)."""
        self.fixes_seen += 1
        self.clock.observe(fix)
        fleet = self.fleet
        events = fleet.on_fix(fix) if fleet is not None else []
        # A fleet event (area entered, speeding, ...) sends the position at once; with the
        # ignition off the parked (stopped) interval applies.
        decision = self.strategy.decide(
            fix, alarm=bool(events), parked=fleet is not None and fleet.parked
        )
        if decision.keep:
            if len(self._unstored) == self._unstored.maxlen:
                self.fixes_unstored_dropped += 1  # the oldest goes (counted, in the status)
            self._unstored.append((encode_fix(fix), fix.time))
            self.fixes_kept += 1
        for observe in self._observers:
            observe(fix)
        if fix.has_position and decision.reason not in ("impossible-date", "no-fix"):
            with self._lock:
                self._latest = fix
        if decision.report_live and self._live is not None:
            self._live(fix)
            self.fixes_reported += 1
        self.store()

    def unstored(self) -> int:
        """Fixes kept but not in the record log yet (the disk refused them; retried)."""
        return len(self._unstored)

    def store(self) -> None:
        """Append the queued fixes to the record log and seal a batch that is due; on a failure
        (a full disk) they stay queued, and the next attempt waits for the guard's backoff.
        Never raises: the failure is reported by the store guard (once per outage)."""
        if not self._store_guard.ready():
            return
        if self._unstored or self.records.due():
            self._store_guard.attempt(self._store_step, pause=False)

    def _store_step(self) -> None:
        while self._unstored:
            record, t = self._unstored[0]
            self.records.append(record, t=t)
            self._unstored.popleft()  # stored: durable in the journal
        if self.records.due():
            self.records.roll()

    def _consume(self) -> None:
        try:
            while not (self.stop.is_set() and self.pump.queue.empty()):
                with self._guard:
                    try:
                        fix: Fix | None = self.pump.queue.get(timeout=POLL_S)
                    except queue.Empty:
                        fix = None
                    if fix is not None:
                        self.handle(fix)
                    else:
                        self.store()
        finally:
            self._close_records()

    def _close_records(self) -> None:
        """At the stop: store what is queued and seal the last batch, if the disk lets us (a
        journal left behind is sealed at the next start; fixes still queued are named)."""
        try:
            self._store_step()
            self.records.close()
        except (AgentError, OSError) as exc:
            log.error("gps: could not seal the last batch of fixes: %s", exc)
        if self._unstored:
            log.error(
                "gps: %d fixes not stored at the stop (the disk refused them)", len(self._unstored)
            )
