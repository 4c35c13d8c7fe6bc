"""Issue 21: the GPS consumer survives a full disk (a real one: a small tmpfs, root only).

Found by the chaos suite (seed 4242): the journal's header write in ``RecordLog._open_batch``
raised ENOSPC into ``GpsService.handle`` and the ``gps-consumer`` thread died. Now the fix the
disk refuses stays queued and is stored once space returns, the clock monitor keeps its GNSS
reference and the live lane its positions all along, and the outage raises one alarm.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import wallclock
from agent.gps.clock import ClockMonitor
from agent.gps.fixdelta import batch_records
from agent.gps.service import GpsService
from agent.gps.settings import GpsSettings, StrategySettings
from agent.gps.source import Emit
from agent.gps.wire import decode_fix
from agent.labs.waiting import wait_for
from agent.loops.guard import FAILING_ALARM, RECOVERED_ALARM
from agent.model import Alarm, ClockSource, Fix, FixMode
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.full_disk import fill, small_tmpfs
from tests.fixtures.keys import KeySet, make_sealer
from tests.storage.helpers import decrypt_stream


class FedSource:
    """A GNSS receiver behind the FixSource interface, its epochs given by the test."""

    name = "fed"

    def __init__(self) -> None:
        self.epochs: queue.Queue[Fix] = queue.Queue()

    def run(self, stop: threading.Event, emit: Emit) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Empty):
                emit(self.epochs.get(timeout=0.05))


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny") as mnt:
        yield mnt


def _fix(i: int) -> Fix:
    # ~1 m apart, a fresh time each: every one is a good fix the strategy keeps
    return Fix(wallclock.now(), FixMode.FIX_3D, lat=52.0 + i * 1e-5, lon=4.0, speed=1.5, hdop=0.9)


def test_the_consumer_keeps_a_refused_fix_and_stores_it_once_space_returns(
    tiny_fs: Path, keyset: KeySet
) -> None:
    settings = SpoolSettings(dir=tiny_fs / "spool", reserve_mb=0)
    spool = Spool(settings, make_sealer(keyset))
    spool.put_event("start", {})  # this epoch's key record is on the disk
    stop = threading.Event()
    alarms: list[Alarm] = []
    live: list[Fix] = []
    source = FedSource()
    clock = ClockMonitor()
    gps = GpsService(
        GpsSettings(strategy=StrategySettings(keep_interval_s=0)),
        spool,
        stop,
        clock=clock,
        source=source,
        live=live.append,
        alarm=alarms.append,
    )
    filler = fill(tiny_fs)
    try:
        gps.start()
        # the first fix meets the full disk where the chaos run met it: the journal's header
        source.epochs.put(_fix(0))
        wait_for(lambda: gps.fixes_seen == 1 and gps.unstored() == 1, 20, "a refused fix")
        assert not (settings.dir / "journal" / "gps.part").exists()  # nothing half-made
        # more fixes during the outage: the thread, the clock and the live lane go on
        for i in range(1, 6):
            source.epochs.put(_fix(i))
            wait_for(lambda i=i: gps.fixes_seen == i + 1, 20, "the next fix handled")
            time.sleep(0.3)  # a few of the store's retries meet the full disk
        assert gps.is_alive()
        # All six wait in memory, but for what a retry could store in a page the file system
        # gave back meanwhile (a fresh-clone CI run once stored one: 5 waited); the first fix
        # is refused above, and the end checks every fix once, in order.
        assert 1 <= gps.unstored() <= 6
        assert clock.state().source is ClockSource.GNSS
        assert len(live) >= 1
        failing = [a for a in alarms if a.kind == FAILING_ALARM]
        assert len(failing) == 1, alarms  # one outage, one alarm
        assert failing[0].details["thread"] == "gps-store"
        assert "No space left" in failing[0].message
        # space returns: the queued fixes are stored, the outage ends
        filler.unlink()
        wait_for(lambda: len(alarms) == 2, 30, "the queued fixes stored")
        assert gps.unstored() == 0
        assert [a.kind for a in alarms] == [FAILING_ALARM, RECOVERED_ALARM]
        source.epochs.put(_fix(6))
        wait_for(lambda: gps.fixes_seen == 7 and gps.unstored() == 0, 20, "a fix after")
    finally:
        stop.set()
        gps.join(10)
        filler.unlink(missing_ok=True)
    assert not gps.is_alive()
    # sealed at the stop: every fix once, in order, the refused one first
    lats = [
        round(decode_fix(r).lat or 0.0, 6)
        for s in decrypt_stream(spool, keyset.platform_private, "gps")
        for r in batch_records(s.manifest["content_type"], s.data)
    ]
    spool.close()
    assert lats == [round(52.0 + i * 1e-5, 6) for i in range(7)]


def test_a_fix_that_makes_an_observer_raise_costs_no_fix_and_not_the_thread(
    tmp_path: Path, keyset: KeySet
) -> None:
    """A bug in the consumer's own logic (here an observer, e.g. the JT/T 808 terminal, raising
    on one fix): the thread goes on, the fix is still stored, one alarm for the outage."""
    spool = Spool(SpoolSettings(dir=tmp_path / "spool", reserve_mb=0), make_sealer(keyset))
    stop = threading.Event()
    alarms: list[Alarm] = []
    source = FedSource()
    observed: list[Fix] = []

    def observer(fix: Fix) -> None:
        observed.append(fix)
        if len(observed) == 2:
            raise ValueError("an observer's bug")

    gps = GpsService(
        GpsSettings(strategy=StrategySettings(keep_interval_s=0)),
        spool,
        stop,
        clock=ClockMonitor(),
        source=source,
        observers=[observer],
        alarm=alarms.append,
    )
    try:
        gps.start()
        for i in range(4):
            source.epochs.put(_fix(i))
            wait_for(lambda i=i: gps.fixes_seen == i + 1, 20, "the fix handled")
            time.sleep(0.05)  # distinct fix times
        wait_for(lambda: len(alarms) == 2, 20, "the outage to end")
        assert gps.is_alive()
    finally:
        stop.set()
        gps.join(10)
    assert [a.kind for a in alarms] == [FAILING_ALARM, RECOVERED_ALARM]
    assert alarms[0].details["thread"] == "gps-consumer"
    lats = [
        round(decode_fix(r).lat or 0.0, 6)
        for s in decrypt_stream(spool, keyset.platform_private, "gps")
        for r in batch_records(s.manifest["content_type"], s.data)
    ]
    spool.close()
    assert lats == [round(52.0 + i * 1e-5, 6) for i in range(4)]
