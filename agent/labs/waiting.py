"""``wait_for``: the one way the tests, the benchmarks, the rigs and the demo wait for something.

It polls a condition until it holds and fails, naming what it waited for, once ``timeout``
seconds have passed: a bound that keeps a broken run from hanging, never a timing. The pause
between polls is an :class:`threading.Event` wait. Given the process that is meant to make
the condition true (``proc``), it fails at once when that process has exited, with its exit
code.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any


class TimedOut(AssertionError):
    """A condition did not hold within its bound (an AssertionError: a failed test says so)."""


def wait_for(
    cond: Callable[[], object],
    timeout: float,
    what: str,
    *,
    proc: subprocess.Popen[Any] | None = None,
    step: float = 0.05,
) -> None:
    """Return once ``cond()`` is true; raise :class:`TimedOut` after ``timeout`` seconds, or
    at once when ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise TimedOut(f"the process exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}")
        pause.wait(step)
