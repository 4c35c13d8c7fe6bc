"""The loop guard (agent/loops/guard.py), the one rule of every long-lived thread (issue 21):
an exception costs an iteration, never the thread; one log with the traceback and one alarm
per outage; a doubling, capped backoff that the stop ends at once; the outage cleared by the
next success; and a thread that ends anyway makes its part dead for the watchdog."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.gps.clock import ClockMonitor
from agent.labs.waiting import wait_for
from agent.loops.guard import FAILING_ALARM, RECOVERED_ALARM, Guard
from agent.model import Alarm
from agent.runtime.alarms import StateAlarms
from agent.runtime.heartbeat import Heartbeat
from agent.runtime.liveness import Parts, of_threads
from agent.runtime.systemd import Notifier

log = logging.getLogger("tests.loop_guard")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Flaky:
    """A loop body that raises the given exceptions in turn, then works."""

    def __init__(self, *faults: BaseException) -> None:
        self.faults = list(faults)
        self.calls = 0
        self.done = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.faults:
            raise self.faults.pop(0)
        self.done += 1


def _ioerror() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_loop_goes_on_reports_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = threading.Event()
    alarms: list[Alarm] = []
    body = Flaky(_ioerror(), _ioerror(), _ioerror())
    guard = Guard("worker", stop, log, alarm=alarms.append, backoff_min_s=0.01)
    t = threading.Thread(target=guard.run, args=(body,), name="worker")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        t.start()
        try:
            wait_for(lambda: body.done >= 3, 20, "the loop to work again")
            assert t.is_alive()
        finally:
            stop.set()
            t.join(10)
    assert not t.is_alive()
    assert body.calls >= 6
    assert [a.kind for a in alarms] == [FAILING_ALARM, RECOVERED_ALARM]
    assert alarms[0].details == {
        "thread": "worker",
        "error": "OSError: [Errno 28] No space left on device",
    }
    assert alarms[1].details["failures"] == 3
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1  # once per outage, not once per failure
    assert "recovered after 3 failure(s)" in caplog.text
    assert guard.outages == 1 and guard.failures == 3 and not guard.failing


def test_each_outage_has_its_alarm_and_a_new_kind_its_own_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    alarms: list[Alarm] = []
    guard = Guard(
        "worker", threading.Event(), log, alarm=alarms.append, backoff_min_s=0, monotonic=clock
    )
    with caplog.at_level(logging.ERROR, logger=log.name):
        guard.attempt(Flaky(_ioerror()))
        guard.attempt(Flaky(KeyError("bug")))  # another kind in the same outage
        guard.attempt(Flaky(_ioerror()))  # a repeat: no traceback, no line
        guard.attempt(Flaky())
        clock.t += 120
        guard.attempt(Flaky(_ioerror()))  # a second outage, minutes later
    assert [a.kind for a in alarms] == [FAILING_ALARM, RECOVERED_ALARM, FAILING_ALARM]
    tracebacks = [r.exc_info[0] for r in caplog.records if r.exc_info]
    assert tracebacks == [OSError, KeyError, OSError]
    assert len([r for r in caplog.records if "backing off" in r.getMessage()]) == 3
    assert guard.outages == 2 and guard.failing


def test_a_flapping_loop_raises_one_alarm_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    alarms: list[Alarm] = []
    guard = Guard(
        "worker", threading.Event(), log, alarm=alarms.append, backoff_min_s=0, monotonic=clock
    )
    with caplog.at_level(logging.ERROR, logger=log.name):
        for _ in range(50):  # fails, works, fails...: 50 outages in 50 s
            guard.attempt(Flaky(_ioerror()))
            guard.attempt(Flaky())
            clock.t += 1
    assert guard.outages == 50
    assert [a.kind for a in alarms] == [FAILING_ALARM, RECOVERED_ALARM]
    assert len([r for r in caplog.records if r.exc_info]) == 1
    # an outage that began inside the minute and lasts raises its alarm once it is over
    guard.attempt(Flaky(_ioerror()))
    clock.t += 15
    guard.attempt(Flaky(_ioerror()))
    assert [a.kind for a in alarms][-1] == FAILING_ALARM and len(alarms) == 3


def test_the_backoff_doubles_is_capped_and_resets() -> None:
    clock = Clock()
    guard = Guard(
        "worker", threading.Event(), log, backoff_min_s=0.5, backoff_max_s=3.0, monotonic=clock
    )
    waits = []
    for _ in range(6):
        guard.attempt(Flaky(_ioerror()), pause=False)
        start = clock.t
        while not guard.ready():
            clock.t += 0.25
        waits.append(clock.t - start)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert guard.attempt(Flaky())
    guard.attempt(Flaky(_ioerror()), pause=False)
    assert not guard.ready()
    clock.t += 0.5
    assert guard.ready()  # back to the shortest pause after a success


def test_the_stop_ends_a_backoff_at_once() -> None:
    stop = threading.Event()
    body = Flaky(_ioerror())
    guard = Guard("worker", stop, log, backoff_min_s=3600, backoff_max_s=3600)
    t = threading.Thread(target=guard.run, args=(body,), name="worker")
    t.start()
    wait_for(lambda: guard.failing, 10, "the first failure")
    stop.set()
    t.join(10)
    assert not t.is_alive()  # an hour's backoff did not hold the thread
    assert body.calls == 1


def test_an_alarm_sink_that_raises_does_not_end_the_loop() -> None:
    def sink(alarm: Alarm) -> None:
        raise RuntimeError("the live lane is broken")

    guard = Guard("worker", threading.Event(), log, alarm=sink, backoff_min_s=0)
    assert not guard.attempt(Flaky(_ioerror()))
    assert guard.attempt(Flaky())


def test_the_with_form_contains_an_exception_but_not_a_systemexit() -> None:
    guard = Guard("worker", threading.Event(), log, backoff_min_s=0)
    with guard:
        raise ValueError("a bug")
    assert guard.failing
    with guard:
        pass
    assert not guard.failing
    with pytest.raises(SystemExit), guard:
        raise SystemExit(3)


# ------------------------------------------------------------------ liveness (issue 16)


class NotifySocket:
    """systemd's side of sd_notify."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)

    def drain(self) -> list[str]:
        out: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                out += self.sock.recv(4096).decode().split("\n")
        return out


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[NotifySocket, Notifier]]:
    path = tmp_path / "notify.sock"
    ns = NotifySocket(path)
    try:
        yield ns, Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "600000"})
    finally:
        ns.sock.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_guarded_thread_that_ends_anyway_makes_its_part_dead(
    tmp_path: Path, notify: tuple[NotifySocket, Notifier]
) -> None:
    """A failing loop stays alive and its part with it (the watchdog is fed); a SystemExit
    passes the guard, the thread ends, the part is dead and the watchdog is no longer fed."""
    ns, notifier = notify
    stop = threading.Event()
    body = Flaky(_ioerror(), _ioerror())
    guard = Guard("worker", stop, log, backoff_min_s=0.01)
    t = threading.Thread(target=guard.run, args=(body,), name="worker")
    parts = Parts(stop)
    parts.add(of_threads("worker part", lambda: [t]))
    beat = Heartbeat(
        parts=parts,
        stop=stop,
        notifier=notifier,
        status=lambda: {"dead": parts.dead()},
        status_file=tmp_path / "status.json",
        alarms=StateAlarms(
            lambda a: None, ClockMonitor(), evidence_quota_bytes=1 << 40, storage_alarm_pct=90
        ),
        heartbeat_s=60,
    )
    t.start()
    try:
        wait_for(lambda: body.done >= 1, 10, "the loop past its failures")
        beat.tick()
        assert parts.dead() == [] and "WATCHDOG=1" in ns.drain()
        body.faults.append(SystemExit("past every handler"))
        t.join(10)
        assert not t.is_alive()
        beat.tick()
        assert parts.dead() == ["worker part"]
        assert "WATCHDOG=1" not in ns.drain()
    finally:
        stop.set()
        t.join(10)


def test_the_health_thread_survives_a_failing_tick_and_keeps_feeding_the_watchdog(
    tmp_path: Path, notify: tuple[NotifySocket, Notifier]
) -> None:
    """The status figures raise (a part's bug) for a while: the health thread goes on, the
    watchdog keeps being fed (its ping comes first in each tick), one alarm per outage."""
    ns, notifier = notify
    stop = threading.Event()
    parts = Parts(stop)
    alarms: list[Alarm] = []
    calls = [0]

    def status() -> dict[str, object]:
        calls[0] += 1
        if calls[0] <= 3:
            raise RuntimeError("a part's status is broken")
        return {"dead": parts.dead()}

    beat = Heartbeat(
        parts=parts,
        stop=stop,
        notifier=notifier,
        status=status,
        status_file=tmp_path / "status.json",
        alarms=StateAlarms(
            lambda a: None, ClockMonitor(), evidence_quota_bytes=1 << 40, storage_alarm_pct=90
        ),
        heartbeat_s=60,
        alarm=alarms.append,
    )
    beat.tick_s = 0.05
    beat.thread.start()
    try:
        wait_for(lambda: calls[0] >= 3, 10, "the failing ticks")
        assert "WATCHDOG=1" in ns.drain()
        wait_for(lambda: len(alarms) == 2, 10, "a tick that works")
        assert (tmp_path / "status.json").exists()
        assert beat.thread.is_alive()
        assert [a.kind for a in alarms] == [FAILING_ALARM, RECOVERED_ALARM]
        assert alarms[0].details["thread"] == "health"
        ns.drain()
        wait_for(lambda: "WATCHDOG=1" in ns.drain(), 10, "the pings going on")
    finally:
        stop.set()
        beat.thread.join(10)
