"""How much backfill may wait in the socket ahead of a live message.

A live fix or alarm is published behind whatever backfill the broker has not acknowledged
yet: on a 1 Mbit/s link, 512 KiB of chunks is four seconds (chaos soak seed 6: live fixes
3.2-3.9 s old). So the bytes in the socket are bounded by time, not only by count: each
backfill publish is timed from its publish to its PUBACK together with the bytes that were
ahead of it (itself included); ``ahead / waited`` is the rate the link drained them at. The
budget is ``wait_s`` of the median of the last few such rates, between ``floor`` and ``cap``
(``uplink.window_kib``), and a chunk is at most half of it, so a live message waits about
``wait_s`` plus a round trip. On a fast link the budget is the cap, as before.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.uplink.mqtt import Sent

KIB = 1024
FLOOR = 16 * KIB  # never less in the socket (a 64 kbit/s link drains it in 2 s)
MIN_CHUNK = 8 * KIB
START = 64 * KIB  # the budget before the first measurement (half a second at 1 Mbit/s)
SAMPLES = 5


@dataclass(frozen=True)
class _Entry:
    sent: Sent
    size: int
    at: float  # published (monotonic s)
    ahead: int  # bytes in the socket when published, itself included


class SocketBudget:
    """The backfill publishes the broker has not acknowledged yet, and the byte budget for
    them. ``append((sent, size))`` as each is published (the forwarder's parts do)."""

    def __init__(
        self,
        pending: Callable[[Sent], bool],
        generation: Callable[[], int],
        *,
        wait_s: float,
        cap: int,
        floor: int = FLOOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pending = pending
        self._generation = generation
        self.wait_s = wait_s
        self.cap = cap
        self.floor = min(floor, cap)
        self._clock = clock
        self._q: deque[_Entry] = deque()
        self._bytes = 0
        self._rates: deque[float] = deque(maxlen=SAMPLES)  # bytes/s, newest last

    def append(self, entry: tuple[Sent, int]) -> None:
        sent, size = entry
        self._bytes += size
        self._q.append(_Entry(sent, size, self._clock(), self._bytes))

    def in_socket(self) -> int:
        """Bytes published and not yet acknowledged (those acknowledged are taken out, and
        timed). A publish whose connection ended is taken out untimed."""
        q = self._q
        now = self._clock()
        while q and not self._pending(q[0].sent):
            self._done(q.popleft(), now)
        if len(q) > 32:  # PUBACKs out of order: look at them all
            keep: deque[_Entry] = deque()
            for e in q:
                if self._pending(e.sent):
                    keep.append(e)
                else:
                    self._done(e, now)
            self._q = q = keep
        return self._bytes

    def _done(self, e: _Entry, now: float) -> None:
        self._bytes -= e.size
        waited = now - e.at
        # Only a publish of the current connection (acknowledged, not lost with its connection)
        # that waited measurably says something of the link; one behind little (the socket
        # near empty) says only the round trip.
        if e.sent.generation == self._generation() and waited > 0.005 and e.ahead >= self.floor:
            self.sample(e.ahead / waited)

    def sample(self, rate: float) -> None:
        """A measured drain rate (bytes/s)."""
        self._rates.append(rate)

    def budget(self) -> int:
        """Bytes of backfill allowed in the socket now."""
        if not self._rates:
            return min(self.cap, START)  # until measured: a fast link measures within ms
        rate = sorted(self._rates)[len(self._rates) // 2]  # the median (no statistics: tracker RSS)
        return max(self.floor, min(self.cap, int(rate * self.wait_s)))

    def chunk(self, largest: int) -> int:
        """The chunk size to send now: at most half the budget (a live message may land just
        behind one), at least ``MIN_CHUNK``, at most ``largest``."""
        return max(min(largest, MIN_CHUNK), min(largest, self.budget() // 2))

    def full(self) -> bool:
        return self.in_socket() >= self.budget()
