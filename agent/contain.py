"""One way to contain a message: whatever one input does, its handler's thread goes on.

Every thread that handles input from outside (an MQTT message, a socket request) follows the
same rules, in the ingest receiver, its live-state recorder, ``talk listen``, the device's
command channel and its local control socket:

1. each message is handled inside ``try/except Exception``: a handler that raises anything
   (a ``RecursionError`` from a crafted document, an ``OverflowError``, a bug) costs that
   message, never the thread;
2. the message is answered or logged, and acknowledged to the broker (PUBACK, in a
   ``finally``), so a poison message never holds one of the broker's receive-maximum slots and
   is not redelivered forever;
3. a failure is reported once per kind with its traceback (:class:`Failures`); repeats are
   counted and summarised, so one device cannot flood the log;
4. a loop that fails outside any one message backs off and goes on (the one loop guard,
   :class:`agent.loops.guard.Guard`);
5. a thread that dies anyway is noticed: the device's health loop withholds the systemd
   watchdog, and ``edge-agent ingest`` exits non-zero (:func:`dead`), so systemd restarts it.

And one way to survive what a thread reads from: every loop that opens something that can
vanish (a serial port, a camera, the microphone, gpsd, a modem, a battery gauge, chronyd, a
TCP server, an MQTT broker) waits and reports through :class:`Reconnect`:

6. the pause after a failed attempt doubles from ``min_s`` up to ``max_s`` (tenacity's
   ``wait_exponential``, plus up to ``jitter_s`` at random so that a fleet does not come back
   in step); every pause is tenacity's ``sleep_using_event`` on the one stop event and a retry
   loop ends with tenacity's ``stop_when_event_set``: shutdown never waits for a backoff;
7. an outage is reported once (log, and the loop's alarm or event record), its end once, with
   how long it lasted and how many attempts it took; the pauses then start afresh.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from agent import wallclock
from agent.loops.guard import Guard
from agent.model import Alarm, Severity

if TYPE_CHECKING:
    import tenacity

SUMMARY_EVERY_S = 60.0

T = TypeVar("T")
Why = BaseException | str


class Failures:
    """Reports the failures of one handler: each kind once in full, then counts.

    A *kind* is the exception's type and where it was raised, so a new bug is never hidden
    behind a familiar one. Thread-safe.
    """

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self.log = logger
        self.total = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._summary_at = 0.0

    def __call__(self, what: str, exc: BaseException) -> None:
        """``what`` failed with ``exc``: log it (fully the first time), count it."""
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
        kind = f"{type(exc).__name__} at {where}"
        now = time.monotonic()
        with self._lock:
            self.total += 1
            n = self._seen.get(kind, 0) + 1
            self._seen[kind] = n
            summary = n > 1 and now - self._summary_at >= SUMMARY_EVERY_S
            if summary:
                self._summary_at = now
        text = str(exc)[:300] or type(exc).__name__
        if n == 1:
            self.log.error(
                "%s: %s failed (%s); the message is dropped, the thread goes on",
                self.name,
                what[:200],
                text,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        elif summary:
            self.log.error(
                "%s: %s failed again (%s; %d times so far)", self.name, what[:200], text, n
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._seen)


def put_newest(q: queue.Queue[T], item: T) -> int:
    """Put ``item`` without ever blocking: when ``q`` is full its oldest items make room (the
    newest fix or input event is the one that matters). Returns how many were dropped."""
    dropped = 0
    while True:
        try:
            q.put_nowait(item)
            return dropped
        except queue.Full:
            try:
                q.get_nowait()
                dropped += 1
            except queue.Empty:
                pass


def dead(threads: Iterable[threading.Thread | None]) -> list[str]:
    """Names of the threads that were started and have ended."""
    return [t.name for t in threads if t is not None and t.ident is not None and not t.is_alive()]


class Reconnect:
    """How one loop that (re)opens something waits between attempts and reports outages.

    Three ways to use it, one state:

    * blocking: :meth:`call` runs ``opener`` under ``tenacity.Retrying`` until it returns (its
      result) or the stop event is set (None);
    * a loop of its own: :meth:`failed` after a failed attempt, then :meth:`wait`;
    * a loop that must come back within ``timeout`` (a polled source): :meth:`due`.

    :meth:`restored` after a success (for a stream: once it delivers, not merely opens) ends
    the outage. Reports: ``on_lost(why)`` at an outage's first failure (default: one warning),
    ``on_retry(why)`` at each later one (default: debug; ``reason`` still holds the previous
    failure's), ``on_restored(gap_s, attempts)`` at
    its end (default: one info line). Counters (one writer, the loop's thread): ``failures``
    in this outage, ``losses`` (outages), ``pause_s`` (the pause the last failure set).
    """

    def __init__(
        self,
        name: str,
        stop: threading.Event,
        logger: logging.Logger,
        *,
        min_s: float,
        max_s: float,
        jitter_s: float = 0.0,
        on_lost: Callable[[Why], None] | None = None,
        on_retry: Callable[[Why], None] | None = None,
        on_restored: Callable[[float, int], None] | None = None,
    ) -> None:
        import tenacity

        self.name = name
        self.stop = stop
        self.log = logger
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        wait: Any = tenacity.wait_exponential(multiplier=min_s, min=min_s, max=self.max_s)
        if jitter_s > 0:
            wait = wait + tenacity.wait_random(0, jitter_s)
        self._wait_strategy = wait
        self._sleep = tenacity.sleep_using_event(stop)
        self._on_lost = on_lost
        self._on_retry = on_retry
        self._on_restored = on_restored
        self.failures = 0
        self.losses = 0
        self.down = False
        self.reason = ""
        self.pause_s = 0.0
        self._down_at = 0.0
        self._retry_at = 0.0

    def failed(self, why: Why) -> float:
        """One failed attempt: the first of an outage is reported. Returns the pause before
        the next attempt (doubling with each failure of this outage)."""
        import tenacity

        self.failures += 1
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = self.failures
        self.pause_s = float(self._wait_strategy(state))
        self._retry_at = time.monotonic() + self.pause_s
        text = str(why) or type(why).__name__
        if not self.down:
            self.down, self.losses, self._down_at = True, self.losses + 1, time.monotonic()
            self.reason = text
            if self._on_lost is not None:
                self._on_lost(why)
            else:
                self.log.warning("%s: lost (%s); retrying with backoff", self.name, text)
            return self.pause_s
        if self._on_retry is not None:
            self._on_retry(why)  # ``reason`` is still the previous one here
        else:
            self.log.debug("%s: still down (%s, attempt %d)", self.name, text, self.failures)
        self.reason = text
        return self.pause_s

    def restored(self) -> bool:
        """A success: the end of an outage is reported (True), and the pauses start afresh."""
        attempts, self.failures, self._retry_at = self.failures, 0, 0.0
        if not self.down:
            return False
        self.down = False
        gap = time.monotonic() - self._down_at
        if self._on_restored is not None:
            self._on_restored(gap, attempts)
        else:
            self.log.info("%s: back after %.1f s (%d attempts)", self.name, gap, attempts)
        return True

    def wait(self) -> bool:
        """Wait out the pause the last failure set (at once on the stop event); True when
        stopping."""
        left = self._retry_at - time.monotonic()
        if left > 0:
            self._sleep(left)
        return self.stop.is_set()

    def due(self, timeout: float) -> bool:
        """For a loop that must come back within ``timeout`` s: True when the next attempt is
        due, else wait (at most ``timeout``, ending on the stop event) and False."""
        left = self._retry_at - time.monotonic()
        if left <= 0:
            return True
        self._sleep(min(timeout, left))
        return False

    def call(self, opener: Callable[[], T], errors: tuple[type[BaseException], ...]) -> T | None:
        """``opener()`` until it returns (its result), retrying on ``errors`` with the pauses
        above; None once the stop event is set. Other exceptions propagate."""
        import tenacity

        if self.stop.is_set():
            return None
        retrying = tenacity.Retrying(
            stop=tenacity.stop_when_event_set(self.stop),
            wait=lambda rs: self.pause_s,
            sleep=self._sleep,
            retry=tenacity.retry_if_exception_type(errors),
            after=self._after,
            reraise=False,
        )

        def attempt() -> T | None:
            return None if self.stop.is_set() else opener()

        try:
            return retrying(attempt)
        except tenacity.RetryError:
            return None

    def _after(self, rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        self.failed(exc if exc is not None else "?")


class OneThread:
    """What owns one thread (``self.thread``, made by the subclass): start it, join it (a thread
    never started is not waited for), and whether it runs."""

    thread: threading.Thread

    def start(self) -> None:
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)


class Poller(OneThread):
    """The thread of a monitor that reads something every so often (the battery, the modem):
    :meth:`poll_round` returns the pause before the next round (longer after failed reads,
    from the monitor's :class:`Reconnect`); :meth:`raise_alarm` hands an alarm on, and a sink
    that fails is logged, never the thread's end. Subclasses implement :meth:`poll_round` and
    may :meth:`closed` (after the thread: close the source, save counters)."""

    def __init__(
        self,
        name: str,
        stop: threading.Event,
        alarm: Callable[[Alarm], None],
        logger: logging.Logger,
    ) -> None:
        self.stop = stop
        self.alarm = alarm
        self._name = name
        self._logger = logger
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        self.closed()

    def closed(self) -> None:
        """After the thread has ended (or was never started)."""

    def poll_round(self) -> float:
        """One round; the pause before the next (seconds)."""
        raise NotImplementedError

    def _run(self) -> None:
        # Under the one loop guard: a round that raises is reported once, waited out, and
        # the monitor goes on.
        Guard(self._name, self.stop, self._logger, alarm=self.alarm).run(self._round)

    def _round(self) -> None:
        self.stop.wait(self.poll_round())

    def raise_alarm(
        self, kind: str, message: str, severity: Severity, details: dict[str, Any]
    ) -> None:
        try:
            self.alarm(Alarm(kind, message, severity, wallclock.now(), dict(details)))
        except Exception:
            self._logger.exception("%s: raising alarm %s failed", self._name, kind)
