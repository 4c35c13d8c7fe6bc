"""The loop guard: a long-lived thread survives any exception from I/O or from its own logic.

Every long-lived loop runs each iteration under one :class:`Guard`::

    guard = Guard("gps-consumer", stop, log, alarm=alarm)
    while not stop.is_set():
        with guard:
            one_iteration()

or, the same, ``guard.run(one_iteration)``. An iteration that raises an ``Exception``:

1. is **reported once per outage**: the first failure is logged with its traceback and raises
   one alarm (``thread_failing``, with the thread's name and the error); a failure of another
   kind in the same outage is logged with its traceback too (a new bug is never hidden behind
   a known one), repeats only at debug level and in a summary once a minute. A loop that flaps
   (fails, works, fails again) raises at most one alarm and one traceback per kind a minute;
   an outage that began within that minute raises its alarm once the minute is over;
2. is **waited out**: a pause that doubles from ``backoff_min_s`` up to ``backoff_max_s``, and
   ends at once when ``stop`` is set;
3. and the loop **goes on**. The first iteration that succeeds ends the outage: it is logged
   (with how many failures it lasted) and, if the outage raised an alarm, a
   ``thread_recovered`` alarm says so.

What the failed iteration could not store stays where it was (the journal, the spool, the
queue): retrying it is the loop's own business, the guard only keeps the thread alive.

A ``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) is not
contained: the thread ends, its part is dead (agent/runtime/liveness.py) and the health thread
stops feeding the systemd watchdog, which restarts the agent.

A loop that must not pause (the GPS consumer keeps feeding the clock monitor and the live lane
while the disk is full) asks :meth:`Guard.ready` before a step and calls :meth:`Guard.attempt`
with ``pause=False``: the backoff then delays the next attempt instead of the thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType

from agent import wallclock
from agent.model import Alarm, Severity

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
QUIET_S = 60.0  # at most one alarm, and one traceback per kind, in this long
FAILING_ALARM = "thread_failing"
RECOVERED_ALARM = "thread_recovered"


def _kind(exc: BaseException) -> str:
    """The exception's type and where it was raised (one bug, one kind)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
    return f"{type(exc).__name__} at {where}"


class Guard:
    """Contains the failures of one long-lived loop (see the module's docstring).

    Used from the loop's own thread; the figures (``failures``, ``outages``, ``failing``) may
    be read from any thread.
    """

    def __init__(
        self,
        name: str,
        stop: threading.Event,
        logger: logging.Logger,
        *,
        alarm: Callable[[Alarm], None] | None = None,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.stop = stop
        self.log = logger
        self.alarm = alarm
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._monotonic = monotonic
        self.failures = 0  # in all
        self.outages = 0  # in all
        self.last_error = ""
        self._wait = backoff_min_s
        self._retry_at = 0.0
        self._outage_failures = 0
        self._outage_since = 0.0
        self._outage_alarmed = False
        self._alarmed_at = -QUIET_S
        self._traceback_at: dict[str, float] = {}  # kind -> when its traceback was logged
        self._summary_at = 0.0

    # ---------------------------------------------------------------- state

    @property
    def failing(self) -> bool:
        """True during an outage (from a failure until the next success)."""
        return self._outage_failures > 0

    def ready(self) -> bool:
        """True unless a failure's backoff is still running (for loops that do not pause)."""
        return self._monotonic() >= self._retry_at

    # ---------------------------------------------------------------- running

    def run(self, step: Callable[[], object]) -> None:
        """Thread body: ``step()`` until ``stop``, each call guarded."""
        while not self.stop.is_set():
            self.attempt(step)

    def attempt(self, step: Callable[[], object], *, pause: bool = True) -> bool:
        """One guarded iteration: True when ``step()`` returned; on an ``Exception`` it is
        reported, the backoff starts (waited out here unless ``pause=False``) and False."""
        try:
            step()
        except Exception as exc:
            self.failed(exc)
            if pause:
                self.pause()
            return False
        self.succeeded()
        return True

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            self.succeeded()
            return False
        if not isinstance(exc, Exception):
            return False  # SystemExit, KeyboardInterrupt: the thread ends (liveness)
        self.failed(exc)
        self.pause()
        return True

    # ---------------------------------------------------------------- outcomes

    def succeeded(self) -> None:
        """An iteration went through: an outage, if any, is over."""
        if self._outage_failures:
            took = self._monotonic() - self._outage_since
            self.log.warning(
                "%s: recovered after %d failure(s) in %.0f s",
                self.name,
                self._outage_failures,
                took,
            )
            if self._outage_alarmed:
                self._raise(
                    Alarm(
                        RECOVERED_ALARM,
                        f"{self.name}: working again after {self._outage_failures} failure(s)",
                        Severity.INFO,
                        wallclock.now(),
                        {"thread": self.name, "failures": self._outage_failures, "seconds": took},
                    )
                )
        self._outage_failures = 0
        self._outage_alarmed = False
        self._wait = self.backoff_min_s
        self._retry_at = 0.0

    def failed(self, exc: BaseException) -> None:
        """Report ``exc`` and start the next backoff. The first failure of an outage is logged
        as an error, with its traceback unless that kind had one in the last minute; one alarm
        per outage, at most one a minute (a loop that flaps does not flood the live lane: an
        outage that starts within the minute raises its alarm once the minute is over)."""
        now = self._monotonic()
        self.failures += 1
        kind = _kind(exc)
        text = (str(exc)[:300] or type(exc).__name__).replace("\n", " ")
        self.last_error = f"{type(exc).__name__}: {text}"
        first = self._outage_failures == 0
        self._outage_failures += 1
        if first:
            self.outages += 1
            self._outage_since = now
            self._summary_at = now
        traceback_due = now - self._traceback_at.get(kind, -QUIET_S) >= QUIET_S
        if traceback_due:
            self._traceback_at[kind] = now
        if first or traceback_due:
            self.log.error(
                "%s: %s (%s); backing off, the thread goes on",
                self.name,
                self.last_error,
                "failing" if first else "another failure in the same outage",
                exc_info=(type(exc), exc, exc.__traceback__) if traceback_due else None,
            )
        elif now - self._summary_at >= QUIET_S:
            self._summary_at = now
            self.log.error(
                "%s: still failing (%s; %d failures in %.0f s)",
                self.name,
                self.last_error,
                self._outage_failures,
                now - self._outage_since,
            )
        else:
            self.log.debug("%s: failed again: %s", self.name, self.last_error)
        if not self._outage_alarmed and now - self._alarmed_at >= QUIET_S:
            self._outage_alarmed = True
            self._alarmed_at = now
            self._raise(
                Alarm(
                    FAILING_ALARM,
                    f"{self.name}: {self.last_error}",
                    Severity.WARNING,
                    wallclock.now(),
                    {"thread": self.name, "error": self.last_error},
                )
            )
        self._retry_at = now + self._wait
        self._wait = min(self.backoff_max_s, self._wait * 2)

    def retry_now(self) -> None:
        """End the running backoff (a last attempt at the stop)."""
        self._retry_at = 0.0

    def pause(self) -> None:
        """Wait out the running backoff (at once on ``stop``)."""
        left = self._retry_at - self._monotonic()
        if left > 0:
            self.stop.wait(left)

    def _raise(self, alarm: Alarm) -> None:
        if self.alarm is None:
            return
        try:
            self.alarm(alarm)
        except Exception as exc:  # an alarm sink must not take the loop with it
            self.log.error("%s: could not raise alarm %s: %s", self.name, alarm.kind, exc)
