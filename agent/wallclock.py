"""The device's wall clock: ``time.time()``, with a TEST HOOK for system clock jumps.

Every device-side module that reads wall-clock time for evidence or decisions (sealing,
segment times, command expiry, the GNSS clock monitor) calls :func:`now` instead of
``time.time()``.

TEST HOOK, never set in production: when the environment variable
``EDGE_AGENT_CLOCK_OFFSET_FILE`` names a file holding a number of seconds, that number is added
to ``time.time()``. It simulates a step of the system clock on a device while the agent runs:
an NTP or GNSS correction, or a Raspberry Pi (no real-time clock) booting with a clock hours or
years off and corrected later. The chaos suite (``tests/chaos/harness.py``) writes the file to
jump the agent's clock back and forth without touching the machine's real clock. The file is
read again on every call (no cache, no module state), so a test can change it while the agent
runs; a missing, unreadable or non-numeric file means no offset. With the variable unset (the
production case) the cost is one ``os.environ`` lookup.
"""

from __future__ import annotations

import math
import os
import time

OFFSET_FILE_ENV = "EDGE_AGENT_CLOCK_OFFSET_FILE"


def now() -> float:
    """Wall-clock time in UTC seconds: ``time.time()`` plus the test offset, if any."""
    path = os.environ.get(OFFSET_FILE_ENV)
    if not path:
        return time.time()
    try:
        with open(path, "rb") as f:
            offset = float(f.read(64).strip() or 0)
    except (OSError, ValueError):
        offset = 0.0
    if not math.isfinite(offset):
        offset = 0.0
    return time.time() + offset
