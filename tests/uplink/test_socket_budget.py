"""The backfill in the socket is bounded by the link's measured rate (a live message waits about
``uplink.live_wait_s`` behind it).

Chaos soak seed 6 (docs/reliability.md): on a 1 Mbit/s link up to 512 KiB of chunks waited in
the socket ahead of every live fix: fixes 3.2-3.9 s old.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.uplink.mqtt import Sent
from agent.uplink.socket_budget import FLOOR, MIN_CHUNK, START, SocketBudget
from bench.netem import Link, LinkProxy
from tests.uplink.harness import (
    assert_delivered,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    unique_id,
    wait_for,
)

KIB = 1024


class _Wire:
    """A link of ``rate`` bytes/s: publishes are acknowledged in order as it carries them."""

    def __init__(self, rate: float, rtt: float) -> None:
        self.rate, self.rtt = rate, rtt
        self.now = 0.0
        self.done_at: dict[int, float] = {}
        self.busy_until = 0.0
        self.generation = 1

    def clock(self) -> float:
        return self.now

    def pending(self, s: Sent) -> bool:
        return s.generation == self.generation and self.done_at[s.mid] > self.now

    def publish(self, b: SocketBudget, mid: int, size: int) -> None:
        start = max(self.now, self.busy_until)
        self.busy_until = start + size / self.rate
        self.done_at[mid] = self.busy_until + self.rtt
        b.append((Sent(mid, self.generation), size))


def _run(wire: _Wire, b: SocketBudget, seconds: float) -> list[int]:
    """Keep the socket at its budget for ``seconds``; the bytes in it at each step."""
    mid, seen = 0, []
    while wire.now < seconds:
        while not b.full():
            mid += 1
            wire.publish(b, mid, b.chunk(128 * KIB))
        seen.append(b.in_socket())
        wire.now += 0.01
    return seen


def test_the_budget_follows_a_slow_links_rate() -> None:
    wire = _Wire(rate=125_000, rtt=0.15)  # 1 Mbit/s, 150 ms
    b = SocketBudget(
        wire.pending, lambda: wire.generation, wait_s=1.0, cap=512 * KIB, clock=wire.clock
    )
    assert b.budget() == START  # nothing measured yet
    seen = _run(wire, b, 30)
    # About a second of the link (a sample counts the head publish whole though part of it
    # may be on its way: a rate a little over the link's at most), never the cap; a live
    # message published now waits behind about 1.5 s of it at most.
    assert 0.5 * 125_000 <= b.budget() <= 1.05 * 125_000, b.budget()
    assert max(seen[len(seen) // 2 :]) <= 1.6 * 125_000, max(seen)
    assert b.chunk(128 * KIB) <= b.budget() // 2


def test_a_fast_link_keeps_the_cap_and_whole_chunks() -> None:
    wire = _Wire(rate=2_500_000, rtt=0.08)  # 20 Mbit/s, 80 ms
    b = SocketBudget(
        wire.pending, lambda: wire.generation, wait_s=1.0, cap=512 * KIB, clock=wire.clock
    )
    _run(wire, b, 10)
    assert b.budget() == 512 * KIB
    assert b.chunk(128 * KIB) == 128 * KIB


def test_a_very_slow_link_keeps_the_floor() -> None:
    wire = _Wire(rate=1_000, rtt=0.5)  # 8 kbit/s
    b = SocketBudget(
        wire.pending, lambda: wire.generation, wait_s=1.0, cap=512 * KIB, clock=wire.clock
    )
    _run(wire, b, 120)
    assert b.budget() == FLOOR
    assert b.chunk(128 * KIB) == MIN_CHUNK


def test_publishes_of_an_ended_connection_are_not_measured() -> None:
    wire = _Wire(rate=125_000, rtt=0.15)
    b = SocketBudget(
        wire.pending, lambda: wire.generation, wait_s=1.0, cap=512 * KIB, clock=wire.clock
    )
    for mid in range(1, 5):
        wire.publish(b, mid, 32 * KIB)
    wire.generation = 2  # the connection ended: its publishes are gone, not acknowledged
    wire.now = 0.01
    assert b.in_socket() == 0
    assert b.budget() == START  # nothing measured from them


def test_a_backlog_on_a_slow_link_keeps_little_in_the_socket(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """A real device and platform through a 1 Mbit/s, 100 ms link: the budget comes down to
    about a second of the link while a 512 KiB segment goes through, and it all arrives."""
    proxy = LinkProxy(("127.0.0.1", broker_alive.port), Link(rtt_s=0.1, rate_bps=125_000))
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, proxy.port)
    spool = dev.open_spool()
    dev.put(spool, "video", os.urandom(512 * KIB))
    store = tmp_path / "store"
    budgets: list[int] = []
    try:
        with (
            running_ingest(store, pki, broker_alive.port, platform),
            running_uplink(dev, spool) as up,
        ):

            def sampled() -> bool:
                budgets.append(up.forwarder.socket_budget())
                return up.forwarder.stats.segments_acked >= 1

            wait_for(sampled, 120, "the segment through the slow link")
    finally:
        spool.close()
        proxy.close()
    assert_delivered(store, dev)
    assert min(budgets) <= 200 * KIB, budgets[-20:]
