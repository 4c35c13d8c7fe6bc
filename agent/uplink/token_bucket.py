"""The backfill's bytes/s cap (``uplink.bandwidth_bps``)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Bytes/s cap with a burst of one second (or one chunk, if larger). 0 = unlimited."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._last = clock()

    def delay(self, n: int) -> float:
        """Seconds to wait before ``n`` bytes may go; 0 means go now (and takes them)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        cap = max(float(self.rate), float(n))
        self._tokens = min(cap, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate
