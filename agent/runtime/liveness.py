"""The running parts the root watches, and their shutdown within one deadline.

A **part** (GPS, uplink, video, push-to-talk buttons, ...) runs one or more threads. It is
**dead** as soon as *any* of them has ended or raised while the agent is not stopping: an
encoder thread that crashed while the camera thread still reads is a dead video part, not a
half-alive one. The heartbeat (:mod:`agent.runtime.heartbeat`) then stops feeding the systemd
watchdog, which is what deploy/edge-agent.service relies on (``WatchdogSec=``: systemd aborts
the agent and ``Restart=always`` starts it again), and the status figures name the part.

Shutdown joins every part, in the order they were added (the spool's writers first, the
uplink after them), against **one** deadline, :data:`SHUTDOWN_S`, inside the unit's
``TimeoutStopSec=`` (tests/runtime/test_liveness.py reads the unit file to hold that). The
joins run in a helper thread, so a part whose own ``join`` overruns cannot stretch the
deadline. The spool is closed only once no part has a thread left (:meth:`Parts.join` says
which are still running; the root then leaves the spool to SQLite's own recovery instead of
closing it under a writer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: One deadline for stopping every part (deploy/edge-agent.service: ``TimeoutStopSec=30s``;
#: the rest is for the interpreter's exit and a slow SD card's last fsync).
SHUTDOWN_S = 20.0


@dataclass(frozen=True)
class Part:
    """One watched part: a flag per thread it started (False once it has ended), and how it
    is joined.

    ``join(timeout)`` waits up to ``timeout`` seconds and then does the part's own clean-up
    (saving its state, closing its files); it may return anything.
    """

    name: str
    alive: Callable[[], Sequence[bool]]
    join: Callable[[float], object]

    def dead(self) -> bool:
        """True once any of its threads has ended (meaningful only before the stop)."""
        return not all(self.alive())

    def running(self) -> bool:
        """True while any of its threads still runs."""
        return any(self.alive())


def join_threads(threads: Sequence[threading.Thread], timeout: float) -> None:
    """Join each started thread, all within ``timeout`` seconds together."""
    deadline = time.monotonic() + timeout
    for t in threads:
        if t.ident is not None:
            t.join(max(0.0, deadline - time.monotonic()))


def of_threads(
    name: str,
    threads: Callable[[], Sequence[threading.Thread]],
    join: Callable[[float], object] | None = None,
) -> Part:
    """A part whose threads are known: each is watched; ``join`` (default: the threads, within
    the timeout) is its own join when it has clean-up to do after them."""

    def alive() -> list[bool]:
        # a thread not started yet has not ended either: it is not counted
        return [t.is_alive() for t in threads() if t.ident is not None]

    return Part(name, alive, join or (lambda timeout: join_threads(threads(), timeout)))


class Parts:
    """The parts of one agent, in start order (shutdown joins them in that order)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._parts: list[Part] = []

    def add(self, part: Part) -> Part:
        self._parts.append(part)
        return part

    def names(self) -> list[str]:
        return [p.name for p in self._parts]

    def dead(self) -> list[str]:
        """The parts with a thread that ended before the stop (empty while all is well, and
        once the agent is stopping)."""
        if self.stop.is_set():
            return []
        return [p.name for p in self._parts if p.dead()]

    def running(self) -> list[str]:
        """The parts with a thread still running."""
        return [p.name for p in self._parts if p.running()]

    def join(self, deadline_s: float = SHUTDOWN_S) -> list[str]:
        """Join every part within ``deadline_s`` in all; returns the parts still running."""
        deadline = time.monotonic() + deadline_s

        def join_all() -> None:
            for part in self._parts:
                try:
                    part.join(max(0.0, deadline - time.monotonic()))
                except Exception:  # one part's clean-up must not keep the others running
                    log.exception("%s: join failed", part.name)

        joiner = threading.Thread(target=join_all, name="shutdown", daemon=True)
        joiner.start()
        joiner.join(deadline_s)
        return self.running()
