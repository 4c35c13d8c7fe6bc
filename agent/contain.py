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
4. a loop that fails outside any one message backs off and goes on (:func:`run_forever`);
5. a thread that dies anyway is noticed: the device's health loop withholds the systemd
   watchdog, and ``edge-agent ingest`` exits non-zero (:func:`dead`), so systemd restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
SUMMARY_EVERY_S = 60.0


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


def run_forever(
    name: str,
    step: Callable[[], None],
    stop: threading.Event,
    logger: logging.Logger,
    *,
    backoff_min_s: float = BACKOFF_MIN_S,
    backoff_max_s: float = BACKOFF_MAX_S,
) -> None:
    """Thread body: call ``step()`` until ``stop``; an exception escaping it is reported once
    per kind, waited out (doubling from ``backoff_min_s`` to ``backoff_max_s``) and the loop
    goes on."""
    failures = Failures(name, logger)
    wait = backoff_min_s
    while not stop.is_set():
        try:
            step()
            wait = backoff_min_s
        except Exception as exc:
            failures("its loop", exc)
            stop.wait(wait)
            wait = min(backoff_max_s, wait * 2)


def dead(threads: Iterable[threading.Thread | None]) -> list[str]:
    """Names of the threads that were started and have ended."""
    return [t.name for t in threads if t is not None and t.ident is not None and not t.is_alive()]
