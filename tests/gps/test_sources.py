"""Sources with real parts: a pty serial port at 9600 baud, gpsd fed by gpsfake, replay."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import ConfigError, SourceError
from agent.gps.gpsd_source import GpsdSource
from agent.gps.replay import ReplaySource, read_fixes
from agent.gps.serial_source import SerialSource
from agent.gps.settings import GpsSettings
from agent.gps.source import LinkState, SourceThread, open_source
from agent.labs.nmea import truck_log
from agent.labs.waiting import wait_for
from agent.model import Fix

from .conftest import GpsFake, PtySerial, free_port

ROOT = Path(__file__).resolve().parents[2]


def key(f: Fix) -> tuple[str, int, float | None, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 6)

    return (f.iso_time(), int(f.mode), r(f.lat), r(f.lon))


class Collector:
    def __init__(self) -> None:
        self.fixes: list[Fix] = []
        self.lock = threading.Lock()

    def __call__(self, fix: Fix) -> None:
        with self.lock:
            self.fixes.append(fix)

    def count(self) -> int:
        with self.lock:
            return len(self.fixes)


def run_in_thread(source: object, stop: threading.Event, sink: Collector) -> threading.Thread:
    t = threading.Thread(target=source.run, args=(stop, sink), daemon=True)  # type: ignore[attr-defined]
    t.start()
    return t


def test_serial_pty_and_gpsd_give_the_same_fixes(
    tmp_path: Path, pty_serial: PtySerial, gpsfake_factory: Callable[..., GpsFake]
) -> None:
    log = tmp_path / "truck.log"
    log.write_bytes(truck_log(12))
    expected = [key(f) for f in read_fixes(log)]
    assert len(expected) == 12

    # Serial: the log written into a pty at 9600-baud pace.
    stop = threading.Event()
    serial_fixes = Collector()
    serial_src = SerialSource(str(pty_serial.link), 9600, stale_after_s=30)
    t1 = run_in_thread(serial_src, stop, serial_fixes)
    writer = threading.Thread(target=pty_serial.write_paced, args=(log.read_bytes(), stop))
    writer.start()

    # gpsd: the same log through gpsfake, played once the source watches.
    fake = gpsfake_factory(log, cycle=0.005, held=True)
    gpsd_fixes = Collector()
    gpsd_src = GpsdSource(port=fake.port, stale_after_s=30)
    t2 = run_in_thread(gpsd_src, stop, gpsd_fixes)
    wait_for(lambda: gpsd_src.connects >= 1, 60, "the source's watch on gpsd")
    fake.play()

    wait_for(lambda: serial_fixes.count() >= 12, 60, "12 fixes over the pty")
    wait_for(lambda: gpsd_fixes.count() >= 10, 60, "fixes from gpsd")
    writer.join()
    stop.set()
    t1.join(10)
    t2.join(10)
    assert not t1.is_alive() and not t2.is_alive()

    assert [key(f) for f in serial_fixes.fixes] == expected
    got = [key(f) for f in gpsd_fixes.fixes]
    # gpsd may leave out the first epoch (it learns the cycle first): every fix it reports
    # must be one of ours, identical, and it must report all the others.
    assert set(got) <= set(expected)
    assert got == expected[len(expected) - len(got) :]
    assert len(got) >= len(expected) - 1


def test_serial_port_vanishes_and_reappears(
    tmp_path: Path, pty_serial: PtySerial, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.gps.serial_source")
    data = truck_log(8, header=False)
    first, second = data[: len(data) // 2], data[len(data) // 2 :]
    stop = threading.Event()
    sink = Collector()
    src = SerialSource(str(pty_serial.link), 9600, reconnect_max_s=0.2, stale_after_s=30)
    t = run_in_thread(src, stop, sink)
    pty_serial.write_paced(first, stop)
    wait_for(lambda: sink.count() >= 3, 30, "fixes before unplugging")
    pty_serial.vanish()
    wait_for(lambda: src.link.state is LinkState.DOWN, 30, "the source to notice")
    stop.wait(0.5)  # several reopen attempts fail while the port is gone
    pty_serial.reappear()
    wait_for(lambda: src.reopens >= 1, 30, "the port to be reopened")
    pty_serial.write_paced(second, stop)
    wait_for(lambda: sink.count() >= 7, 30, "fixes after plugging back")
    stop.set()
    t.join(10)
    assert not t.is_alive()
    times = [f.time for f in sink.fixes]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert src.reopens == 1
    # Logged once per state change, not once per failed attempt.
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]


def test_gpsd_killed_and_restarted_the_source_reconnects(
    tmp_path: Path, gpsfake_factory: Callable[..., GpsFake]
) -> None:
    log = tmp_path / "truck.log"
    log.write_bytes(truck_log(30))
    port = free_port()
    fake = gpsfake_factory(log, port=port, cycle=0.01, once=False)  # loops the log
    stop = threading.Event()
    sink = Collector()
    src = GpsdSource(port=port, reconnect_max_s=0.3, stale_after_s=5)
    t = run_in_thread(src, stop, sink)
    wait_for(lambda: sink.count() >= 3, 60, "fixes from the first gpsd")
    fake.kill()
    wait_for(lambda: src.link.state is LinkState.DOWN, 30, "the source to notice gpsd died")
    before = sink.count()
    gpsfake_factory(log, port=port, cycle=0.01, once=False)
    wait_for(lambda: sink.count() >= before + 3, 60, "fixes from the restarted gpsd")
    stop.set()
    t.join(10)
    assert not t.is_alive()
    assert src.connects >= 2
    assert all(f.alt is not None for f in sink.fixes if f.mode == 3), "altMSL must be read"


def test_gpsd_source_contains_gpsd_py3_globals(
    gpsfake_factory: Callable[..., GpsFake], tmp_path: Path
) -> None:
    import gpsd  # the process-wide module: must stay untouched

    log = tmp_path / "truck.log"
    log.write_bytes(truck_log(5))
    fake = gpsfake_factory(log, cycle=0.01, held=True)
    stop = threading.Event()
    sink = Collector()
    src = GpsdSource(port=fake.port)
    t = run_in_thread(src, stop, sink)
    wait_for(lambda: src.connects >= 1, 60, "the source's watch on gpsd")
    fake.play()
    wait_for(lambda: sink.count() >= 1, 60, "a fix")
    stop.set()
    t.join(10)
    assert gpsd.gpsd_socket is None and gpsd.gpsd_stream is None


def test_replay_paced_stops_at_once_and_fast_replay_delivers_all(tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    log.write_bytes(truck_log(600))  # ten minutes of driving
    stop = threading.Event()
    sink = Collector()
    src = ReplaySource(log, speed=1.0)
    t = run_in_thread(src, stop, sink)
    wait_for(lambda: sink.count() >= 1, 10, "the first fix")
    stop.set()
    t.join(10)
    assert not t.is_alive() and sink.count() < 600
    fast = Collector()
    ReplaySource(log, speed=0).run(threading.Event(), fast)
    assert fast.count() == 600


def test_source_thread_queue_is_bounded_and_drops_oldest(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_bytes(truck_log(50))
    stop = threading.Event()
    pump = SourceThread(ReplaySource(log, speed=0), stop, maxsize=10)
    pump.start()
    pump.join(10)
    assert pump.queue.qsize() == 10 and pump.dropped == 40
    assert pump.queue.get().iso_time().endswith("10:00:40.000Z")


def test_factory(tmp_path: Path) -> None:
    assert isinstance(open_source(GpsSettings(source="serial")), SerialSource)
    assert isinstance(open_source(GpsSettings(source="gpsd", gpsd_port=2948)), GpsdSource)
    assert isinstance(
        open_source(GpsSettings(source="replay", replay_file=tmp_path / "x.log")), ReplaySource
    )
    with pytest.raises(ConfigError):
        open_source(GpsSettings(source="replay"))
    with pytest.raises(ConfigError):
        open_source(GpsSettings(source="none"))
    with pytest.raises(SourceError):
        ReplaySource(tmp_path / "missing.log").run(threading.Event(), lambda f: None)


def test_cli_replay_json(tmp_path: Path) -> None:
    import json

    log = tmp_path / "truck.log"
    log.write_bytes(truck_log(5))
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "gps", "replay", str(log), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    objs = [json.loads(line) for line in out]
    assert len(objs) == 5
    assert objs[0]["time"] == "2025-06-05T10:00:00.000Z"
    for o in objs:
        assert {"time", "mode", "lat", "lon", "alt", "speed", "track"} <= set(o)
        assert o["mode"] == 3


def test_gps_only_process_imports_neither_cv2_nor_numpy() -> None:
    code = (
        "import sys\n"
        "import agent.gps.source, agent.gps.replay, agent.gps.serial_source, "
        "agent.gps.gpsd_source, agent.gps.strategy, agent.gps.clock, agent.gps.wire, "
        "agent.gps.cli, agent.gps.settings, agent.model\n"
        "bad = sorted(m for m in ('cv2', 'numpy', 'av', 'sounddevice') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert out == "", f"GPS path imported {out}"
