"""Liveness as deploy/edge-agent.service expects it: a part with ANY thread ended is dead, the
systemd watchdog is no longer fed and the status names the part; the push-to-talk threads are
watched and joined; one shutdown deadline inside TimeoutStopSec; the spool closed only once no
part runs. The watchdog is read on a real notify socket (a Unix datagram socket, as systemd's).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.config.schema import AgentConfig
from agent.errors import AgentError
from agent.gps.clock import ClockMonitor
from agent.gps.replay import ReplaySource
from agent.gps.service import GpsService
from agent.labs.nmea import truck_log
from agent.labs.waiting import wait_for
from agent.model import Fix
from agent.runtime.alarms import StateAlarms
from agent.runtime.app import Agent
from agent.runtime.heartbeat import Heartbeat
from agent.runtime.liveness import SHUTDOWN_S, Parts, of_threads
from agent.runtime.local_control import send
from agent.runtime.status_text import format_status
from agent.runtime.systemd import Notifier
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "edge-agent.service"


def _unit_seconds(key: str) -> float:
    m = re.search(rf"^{key}=(\d+)s$", UNIT.read_text(), re.M)
    assert m, f"{key}= not in {UNIT}"
    return float(m.group(1))


class NotifySocket:
    """systemd's side of sd_notify: what the agent sent, message by message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)

    def drain(self) -> list[str]:
        out: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                out += self.sock.recv(4096).decode().split("\n")
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    # A 0.6 s watchdog: the heartbeat pings every 0.2 s.
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield ns
    finally:
        ns.close()


def _drive(tmp_path: Path, epochs: int = 300) -> Path:
    g = time.gmtime(time.time() - 60)
    path = tmp_path / "drive.nmea"
    path.write_bytes(
        truck_log(epochs, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    )
    return path


def _config(tmp_path: Path, keyset: KeySet, extra: str = "") -> AgentConfig:
    return parse_config(
        f"""
[device]
id = "live-1"
profile = "tracker"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp_path / "spool"}"
reserve_mb = 0
[gps]
source = "replay"
replay_file = "{_drive(tmp_path)}"
replay_speed = 1
replay_loop = true
[health]
status_file = "{tmp_path / "run" / "status.json"}"
control_socket = "{tmp_path / "run" / "control.sock"}"
{extra}
"""
    )


def test_the_deadlines_fit_the_unit_file() -> None:
    """One shutdown deadline well inside TimeoutStopSec (the interpreter's exit and the last
    fsync need the rest), and at least three watchdog pings per WatchdogSec."""
    assert _unit_seconds("TimeoutStopSec") >= SHUTDOWN_S + 5
    watchdog_s = _unit_seconds("WatchdogSec")
    notifier = Notifier(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
    )
    beat = Heartbeat(
        parts=Parts(threading.Event()),
        stop=threading.Event(),
        notifier=notifier,
        status=dict,
        status_file=Path("/nonexistent/status.json"),
        alarms=StateAlarms(
            lambda a: None, ClockMonitor(), evidence_quota_bytes=1, storage_alarm_pct=90
        ),
        heartbeat_s=60,
    )
    assert beat.tick_s <= watchdog_s / 3


# The threads are killed on purpose: pytest is told not to warn about it.
KILLS_A_THREAD = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@KILLS_A_THREAD
def test_one_dead_thread_of_a_part_stops_the_watchdog(
    tmp_path: Path, keyset: KeySet, notify: NotifySocket
) -> None:
    """The GPS part has two threads (the source's reader and the consumer). The consumer dies
    (an observer escapes every handler) while the reader still reads: the part is dead."""
    from tests.fixtures.keys import make_sealer

    stop = threading.Event()
    cfg = _config(tmp_path, keyset)
    spool = Spool(cfg.spool, make_sealer(keyset))
    seen: list[Fix] = []

    def observer(fix: Fix) -> None:
        seen.append(fix)
        if len(seen) == 3:
            raise SystemExit("a bug past every handler")

    gps = GpsService(
        cfg.gps,
        spool,
        stop,
        clock=ClockMonitor(),
        source=ReplaySource(cfg.gps.replay_file or Path(), speed=20, loop=True),
        observers=[observer],
    )
    parts = Parts(stop)
    parts.add(of_threads("gps", gps.threads))
    reports: list[dict[str, Any]] = []
    beat = Heartbeat(
        parts=parts,
        stop=stop,
        notifier=Notifier(),
        status=lambda: {"dead": parts.dead()},
        status_file=tmp_path / "status.json",
        alarms=StateAlarms(
            lambda a: None, ClockMonitor(), evidence_quota_bytes=1 << 40, storage_alarm_pct=90
        ),
        heartbeat_s=0,
        report=reports.append,
    )
    try:
        beat.tick()
        assert "WATCHDOG=1" in notify.drain()  # before: fed
        gps.start()
        wait_for(lambda: len(seen) >= 3 and not gps.is_alive(), 20, "the consumer's end")
        assert gps.pump.is_alive()  # the reader still runs: one thread of two ended
        beat.tick()
        beat.tick()
        assert "WATCHDOG=1" not in notify.drain()
        assert parts.dead() == ["gps"]
        assert json.loads((tmp_path / "status.json").read_text())["dead"] == ["gps"]
        assert reports[0]["dead"] == [] and reports[-1]["dead"] == ["gps"]
    finally:
        stop.set()
        gps.join(10)
        spool.close()


@KILLS_A_THREAD
def test_a_dead_part_of_the_running_agent_is_named_and_unfed(
    tmp_path: Path, keyset: KeySet, notify: NotifySocket
) -> None:
    """The control socket's thread ends (a handler's SystemExit passes its containment): the
    agent stops feeding the watchdog, and its status file and `status` say which part."""
    agent = Agent(_config(tmp_path, keyset))
    agent.local.register("die", lambda args: (_ for _ in ()).throw(SystemExit(3)))
    agent.start()
    try:
        wait_for(lambda: "WATCHDOG=1" in notify.drain(), 20, "a watchdog ping")
        assert agent.status()["dead"] == []
        with contextlib.suppress(AgentError):
            send(agent.cfg.health.control_socket, "die")
        wait_for(lambda: agent.status()["dead"] == ["local control"], 20, "the part's death")
        wait_for(
            lambda: json.loads(agent.cfg.health.status_file.read_text())["dead"],
            20,
            "the status file to name it",
        )
        notify.drain()
        time.sleep(1.0)  # five ticks of the 0.2 s heartbeat
        assert "WATCHDOG=1" not in notify.drain()
        figures = json.loads(agent.cfg.health.status_file.read_text())
        assert "DEAD: local control" in format_status(figures, now=time.time())
    finally:
        agent.shutdown()


def test_shutdown_joins_every_part_and_then_closes_the_spool(
    tmp_path: Path, keyset: KeySet
) -> None:
    agent = Agent(_config(tmp_path, keyset))
    agent.start()
    wait_for(lambda: agent.gps is not None and agent.gps.fixes_seen > 0, 20, "fixes")
    names = agent.parts.names()
    assert {"gps", "health", "power", "local control"} <= set(names)
    assert names.index("gps") < names.index("health")  # the spool's writers first
    agent.shutdown()
    assert agent.parts.running() == []
    with pytest.raises(sqlite3.ProgrammingError):
        agent.spool.backlog()  # closed


def test_shutdown_keeps_one_deadline_and_the_spool_open_under_a_stuck_part(
    tmp_path: Path, keyset: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    """A part that ignores the stop (a thread blocked elsewhere) cannot hold the shutdown past
    its deadline, and the spool is not closed under it."""
    agent = Agent(_config(tmp_path, keyset))
    agent.start()
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, args=(120,), name="stuck", daemon=True)
    stuck.start()
    agent.parts.add(of_threads("stuck", lambda: [stuck]))
    try:
        t0 = time.monotonic()
        agent.shutdown(deadline_s=2.0)
        elapsed = time.monotonic() - t0
        assert elapsed < 30, elapsed  # bounded by the deadline, not by the stuck thread's 120 s
        assert agent.parts.running() == ["stuck"]
        assert "still running 2 s after the stop: stuck" in caplog.text
        assert isinstance(agent.spool.backlog(), dict)  # still open
    finally:
        release.set()
        stuck.join(10)
        agent.spool.close()


def test_push_to_talk_threads_are_watched_and_joined(tmp_path: Path, keyset: KeySet) -> None:
    """A press-to-talk box on a serial line (pyserial's loop://): its thread is a part."""
    cfg = parse_config(
        f"""
[device]
id = "live-2"
profile = "bodycam"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp_path / "spool"}"
reserve_mb = 0
[talk]
enabled = true
ptt_port = "loop://"
[health]
status_file = "{tmp_path / "run" / "status.json"}"
control_socket = "{tmp_path / "run" / "control.sock"}"
"""
    )
    agent = Agent(cfg)
    agent.start()
    try:
        assert "ptt serial" in agent.parts.names() and "talk" in agent.parts.names()
        assert agent.parts.dead() == []
    finally:
        agent.shutdown()
    assert agent.parts.running() == []
