"""The truck drives of tests/fleet replayed through the fleet part and the terminal, to the
reference platform over real TCP through a proxy that cuts the link for the middle third:
every report arrives, live while the link is up, the outage's in 0x0704 blind-area batches
oldest first, the live ones not waiting behind that backlog, none twice; and a SIGKILL in the
middle of the backlog loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.gps.settings import StrategySettings
from agent.jt808 import messages as m
from agent.jt808.body import bcd_time
from agent.jt808.location import ALARM_DEVIATION, ALARM_OVERSPEED, STATUS_ACC
from agent.labs.jt808_platform import CutProxy, ReferencePlatform
from agent.labs.waiting import wait_for
from agent.storage.spool import Spool
from tests.fleet.harness import load_drive, make_service
from tests.jt808.conftest import Rig, wait

REPO = Path(__file__).resolve().parents[2]
STRATEGY = StrategySettings(interval_s=10, distance_m=150, heading_deg=30, stopped_interval_s=60)


@pytest.mark.parametrize("name", ["work_day", "jitter_edge", "half_route"])
def test_drive_with_the_link_cut_in_the_middle(
    name: str, rig: Rig, platform: ReferencePlatform, tmp_path: Path, spool: Spool
) -> None:
    drive = load_drive(name)
    proxy = CutProxy(("127.0.0.1", platform.port))
    now = {"t": drive.fixes[0].time}
    terminals: list[object] = []
    fleet = make_service(
        spool,
        tmp_path / "fleet",
        drive.plan,
        alarm=lambda a: terminals[0].on_alarm(a),  # type: ignore[attr-defined]
    )
    t = rig.terminal(
        proxy.address,
        fleet=fleet,
        inputs=lambda: drive.inputs_at(now["t"]),
        strategy=STRATEGY,
        backlog_bytes_per_s=400,  # slow enough that live reports meet the backlog
        batch_max=3,
    )
    terminals.append(t)
    try:
        assert wait(lambda: t.client.stats.authenticated)
        n = len(drive.fixes)
        lo, hi = n // 3, 2 * n // 3

        def feed(a: int, b: int, pause: float = 0.0) -> None:
            for f in drive.fixes[a:b]:
                now["t"] = f.time
                fleet.on_fix(f, drive.inputs_at(f.time))
                t.on_fix(f)
                if pause:
                    time.sleep(pause)

        feed(0, lo)
        assert wait(lambda: len(t.queue) == 0)  # everything so far answered
        before = t.reports
        proxy.cut()
        assert wait(lambda: not t.client.stats.authenticated)
        feed(lo, hi)
        during = t.reports - before
        assert len(t.queue) == during > 0  # stored, not sent
        proxy.restore()
        assert wait(lambda: t.client.stats.sessions == 2)
        feed(hi, n, pause=0.01)
        assert wait(lambda: len(t.queue) == 0, 60)
    finally:
        proxy.close()
    got = platform.locations()
    # every report arrived, none twice (and the platform only gets what the terminal made)
    assert len(got) == t.reports and platform.duplicates() == []
    cut_from, cut_to = drive.fixes[lo].time, drive.fixes[hi].time
    times = {bcd_time(f.time).hex(): f.time for f in drive.fixes}
    outage = [r for r in got if cut_from <= times[r.location.time_bcd] < cut_to]
    around = [r for r in got if r not in outage]
    assert len(outage) == during
    # the outage's reports came in blind-area batches, oldest first
    assert {(r.kind, r.batch_type) for r in outage} == {("batch", m.BATCH_BLIND_AREA)}
    assert [r.location.time_bcd for r in outage] == sorted(r.location.time_bcd for r in outage)
    # the others live, each as soon as it was made: the first after the outage arrived
    # before the backlog was through
    assert {r.kind for r in around} == {"live"}
    after = [r for r in around if times[r.location.time_bcd] >= cut_to]
    assert after and after[0].index < outage[-1].index
    # every fleet event's fix was reported at once (the strategy's alarm rule)
    reported = {times[r.location.time_bcd] for r in got}
    assert {drive.fixes[e["fix"]].time for e in drive.events} <= reported
    # the agent's state is in the bits: ignition -> ACC; work_day's speeding and deviation
    assert all(
        r.location.status & STATUS_ACC
        for r in got
        if drive.inputs_at(times[r.location.time_bcd]).ignition
    )
    if name == "work_day":
        assert any(r.location.alarm & ALARM_OVERSPEED for r in got)
        assert any(r.location.alarm & ALARM_DEVIATION for r in got)
        assert any(r.location.item(0x11) == b"\x00" for r in got)  # speeding in a plain area


def _proc(state: Path, server: str, mode: str, rate: int) -> subprocess.Popen[str]:
    args = [str(state), server, "work_day", mode, str(rate)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.jt808.terminal_proc", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _line(proc: subprocess.Popen[str], prefix: str, timeout: float = 30.0) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return int(line.split()[1])
    raise AssertionError(f"no {prefix!r} line")


def test_sigkill_in_the_middle_of_the_backlog_loses_nothing(
    tmp_path: Path, platform: ReferencePlatform
) -> None:
    state = tmp_path / "terminal"
    proxy = CutProxy(("127.0.0.1", platform.port))
    procs: list[subprocess.Popen[str]] = []
    try:
        proxy.cut()  # out of coverage: every report of the drive is stored
        a = _proc(state, proxy.address, "feed", 300)
        procs.append(a)
        stored = _line(a, "stored")
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        assert stored > 40
        proxy.restore()
        b = _proc(state, proxy.address, "drain", 300)  # ~300 B/s: a few batches a second
        procs.append(b)
        wait_for(lambda: len(platform.received) >= stored // 3, 60, "a third of the backlog")
        os.kill(b.pid, signal.SIGKILL)  # in the middle of the backlog
        b.wait()
        partial = len(platform.received)
        assert partial < stored
        c = _proc(state, proxy.address, "drain", 100_000)
        procs.append(c)
        wait_for(lambda: len({r.key for r in platform.received}) >= stored, 60, "the backlog")
        while _line(c, "left") != 0:
            pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        proxy.close()
    got = platform.locations()
    keys = {r.key for r in got}
    assert len(keys) == stored  # every report, and only reports the terminal made
    assert all(r.kind == "batch" and r.batch_type == m.BATCH_BLIND_AREA for r in got)
    # a duplicate is possible only for a batch the platform had when the kill came (its
    # answer not yet recorded): at most the batches in flight then
    from agent.jt808.client import BATCH_WINDOW

    assert len(got) - len(keys) <= 4 * BATCH_WINDOW
    assert len(platform.registrations) == 1  # the kept code survived the kills


def test_replayed_fixes_carry_their_capture_times_not_the_sending_time(
    rig: Rig, platform: ReferencePlatform
) -> None:
    drive = load_drive("half_route")
    t = rig.terminal(platform.address, start=False, strategy=STRATEGY)
    for f in drive.fixes[:50]:
        t.on_fix(replace(f))
    t.start()
    assert wait(lambda: len(t.queue) == 0)
    first = platform.locations()[0].location
    assert first.time == drive.fixes[0].time  # 2025-06-05, whatever the wall clock says
