"""The shared loop mechanisms of agent/contain.py, each on its own: the reconnect helper's
pauses and reports, the poller under the one loop guard, the one-thread owner, the drop-oldest
put. (Their users are tested with the real things: serial ports, gpsd, mmcli, PulseAudio.)"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from agent.contain import OneThread, Poller, Reconnect, Why, put_newest
from agent.labs.waiting import wait_for
from agent.loops.guard import FAILING_ALARM, RECOVERED_ALARM
from agent.model import Alarm

log = logging.getLogger("tests.contain")


def test_reconnect_doubles_its_pause_to_the_cap_and_reports_an_outage_once() -> None:
    stop = threading.Event()
    lost: list[str] = []
    retried: list[str] = []
    restored: list[int] = []
    r = Reconnect(
        "thing",
        stop,
        log,
        min_s=0.5,
        max_s=3.0,
        on_lost=lambda why: lost.append(str(why)),
        on_retry=lambda why: retried.append(str(why)),
        on_restored=lambda gap_s, attempts: restored.append(attempts),
    )
    pauses = [r.failed(OSError(f"gone {i}")) for i in range(6)]
    assert pauses == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert lost == ["gone 0"] and len(retried) == 5 and r.down and r.losses == 1
    assert r.restored() is True and restored == [6]
    assert r.restored() is False and restored == [6]  # its end reported once
    assert r.failed("again") == 0.5  # a new outage starts the pauses afresh
    assert r.losses == 2


def test_reconnect_waits_end_at_once_on_the_stop() -> None:
    stop = threading.Event()
    r = Reconnect("thing", stop, log, min_s=60.0, max_s=60.0)
    r.failed("gone")
    threading.Timer(0.05, stop.set).start()
    done = threading.Event()

    def waiter() -> None:
        assert r.wait() is True
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    t.join(10)
    assert done.is_set() and not t.is_alive()


def test_reconnect_call_retries_the_given_errors_until_the_opener_returns() -> None:
    stop = threading.Event()
    r = Reconnect("thing", stop, log, min_s=0.01, max_s=0.02)
    attempts: list[int] = []

    def opener() -> str:
        attempts.append(1)
        if len(attempts) < 4:
            raise OSError("not yet")
        return "open"

    assert r.call(opener, (OSError,)) == "open"
    assert len(attempts) == 4 and r.failures == 3 and r.down
    stop.set()
    assert r.call(opener, (OSError,)) is None  # stopping: no attempt at all
    assert len(attempts) == 4


class _Flaky(Poller):
    """Fails its first rounds with a bug, then reads fine."""

    def __init__(self, stop: threading.Event, alarms: list[Alarm], failing: int) -> None:
        super().__init__("flaky", stop, alarms.append, log)
        self.failing = failing
        self.rounds = 0
        self.good = 0
        self.closed_calls = 0

    def poll_round(self) -> float:
        self.rounds += 1
        if self.rounds <= self.failing:
            raise ZeroDivisionError("a bug in the reading")
        self.good += 1
        return 0.01

    def closed(self) -> None:
        self.closed_calls += 1


def test_a_poller_whose_round_raises_goes_on_and_reports_once() -> None:
    stop = threading.Event()
    alarms: list[Alarm] = []
    p = _Flaky(stop, alarms, failing=2)
    p.start()
    try:
        wait_for(lambda: p.good >= 3, 20, "good rounds after the failing ones")
        assert p.is_alive()
    finally:
        stop.set()
        p.join(5)
    assert not p.is_alive() and p.closed_calls == 1
    kinds = [a.kind for a in alarms]
    assert kinds == [FAILING_ALARM, RECOVERED_ALARM], kinds


def test_one_thread_joins_a_thread_never_started() -> None:
    class Owner(OneThread):
        def __init__(self) -> None:
            self.thread = threading.Thread(target=lambda: None)

    o = Owner()
    o.join(0.1)  # not started: nothing to wait for, no RuntimeError
    assert not o.is_alive()
    o.start()
    o.join(5)
    assert not o.is_alive() and o.thread.ident is not None


def test_put_newest_drops_the_oldest_and_says_how_many() -> None:
    q: queue.Queue[int] = queue.Queue(maxsize=3)
    assert [put_newest(q, i) for i in range(3)] == [0, 0, 0]
    assert put_newest(q, 3) == 1
    assert put_newest(q, 4) == 1
    assert [q.get_nowait() for _ in range(3)] == [2, 3, 4]


def test_why_is_text_or_an_exception() -> None:
    whys: list[Why] = ["text", OSError("os")]
    stop = threading.Event()
    seen: list[Any] = []
    r = Reconnect("thing", stop, log, min_s=0.1, max_s=0.1, on_lost=seen.append)
    for w in whys:
        r.failed(w)
    assert seen == ["text"] and r.reason == "os"
