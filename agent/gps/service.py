"""The GPS path of a running agent: source -> clock -> strategy -> live lane and GPS segments.

Every fix the strategy keeps is appended, encrypted and durable, to the ``gps`` record log and
sealed into a GPS segment every ``spool.batch_s``, delta-coded (``application/x-edge-fix-delta``,
agent.gps.fixdelta: a fix costs ~8 bytes instead of 30); every fix it reports also goes to
the live lane at once. The clock monitor turns good fixes into the clock state that every
sealed segment carries.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent import wallclock
from agent.errors import AgentError
from agent.gps import fixdelta, wire
from agent.gps.clock import ClockMonitor
from agent.gps.settings import GpsSettings
from agent.gps.source import FixSource, LinkState, SourceThread, open_source
from agent.gps.strategy import ReportingStrategy
from agent.gps.wire import encode_fix
from agent.model import Fix
from agent.storage.records import RecordLog
from agent.storage.spool import Spool

if TYPE_CHECKING:
    from agent.fleet.service import FleetService

log = logging.getLogger(__name__)

FIX_CONTENT_TYPE = fixdelta.CONTENT_TYPE
POLL_S = 0.5


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
        if link is not None and link.state is LinkState.DOWN:
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
        """One fix through the clock, the strategy, the live lane and the record log."""
        self.fixes_seen += 1
        self.clock.observe(fix)
        fleet = self.fleet
        events = fleet.on_fix(fix) if fleet is not None else []
        # A fleet event (area entered, speeding, ...) sends the position at once; with the
        # ignition off the parked (stopped) interval applies.
        decision = self.strategy.decide(
            fix, alarm=bool(events), parked=fleet is not None and fleet.parked
        )
        for observe in self._observers:
            observe(fix)
        if fix.has_position and decision.reason not in ("impossible-date", "no-fix"):
            with self._lock:
                self._latest = fix
        if decision.keep:
            self.records.append(encode_fix(fix), t=fix.time)
            self.fixes_kept += 1
        if decision.report_live and self._live is not None:
            self._live(fix)
            self.fixes_reported += 1

    def _consume(self) -> None:
        failing = ""
        try:
            while not (self.stop.is_set() and self.pump.queue.empty()):
                try:
                    fix = self.pump.queue.get(timeout=POLL_S)
                except queue.Empty:
                    fix = None
                try:
                    if fix is not None:
                        self.handle(fix)
                    if self.records.due():
                        self.records.roll()
                    failing = ""
                except (AgentError, OSError) as exc:
                    # A full disk must not stop positions: the fixes stay in the encrypted
                    # journal and the batch is sealed when space returns (a journal that cannot
                    # be opened or appended to on a full disk is an OSError: the fix is lost,
                    # the thread is not).
                    if str(exc) != failing:
                        log.error("gps: %s (retrying)", exc)
                    failing = str(exc)
                    self.stop.wait(1.0)
        finally:
            try:
                self.records.close()
            except AgentError as exc:
                log.error("gps: could not seal the last batch of fixes: %s", exc)
