"""chrony's state for each segment's clock: parsed as chronyc documents it, read from a real
chronyd (``-x``: it never sets this machine's clock) whose ``refclock SHM 0`` is fed by a real
gpsd, and every way of failing (not installed, not running, garbage, hung) as a health state.

What feeds SHM 0 here (established, docs/time.md): gpsd never writes its NTP segments for a
device on a pseudo-terminal (``ntpshm_link_activate`` returns early for ``source_pty``: "don't
talk to NTP when we're running inside the test harness"), and plain ``gpsfake`` feeds gpsd
through a pty. ``gpsfake -t`` feeds it over TCP instead (``tcp://127.0.0.1:PORT``); gpsd then
allocates SHM 0 and ships each cycle's time to it (``-n``: without waiting for a client).
chronyd and gpsd run in a private System V IPC namespace (``unshare --ipc``): SHM 0 is a
machine-wide key, and other tests' gpsd instances would otherwise write into it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.errors import FormatError
from agent.gps.chrony import (
    ChronyMonitor,
    Health,
    parse_output,
    parse_source,
    parse_tracking,
)
from agent.gps.chrony_conf import render
from agent.gps.clock import ClockMonitor
from agent.gps.time_settings import TimeSettings
from agent.labs.nmea import truck_log
from agent.labs.waiting import wait_for
from agent.model import Alarm, ClockSource, Fix, FixMode
from tests.fixtures.keys import KeySet

from .conftest import free_port

# Captured from chronyc 4.3 (this machine) against chronyd -x with gpsd's SHM 0.
TRACKING_GNSS = (
    "474E5353,GNSS,1,1796040940.646107685,1.045026302,0.000010301,0.013420104,3023.018,"
    "426.496,532.524,0.200000003,0.002192741,1.0,Normal"
)
SOURCE_GNSS = "#,*,GNSS,0,0,377,2,-0.000639445,-0.000629144,0.100000016"
TRACKING_UNSYNC = (
    "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,"
    "1.000000000,1.000000000,0.0,Not synchronised"
)
# chronyc's documented example (chronyc(1), "sources") in CSV form, and an NTP-synced tracking.
SOURCES_MIXED = [
    "#,*,PPS,0,4,377,11,-0.000000479,-0.000000621,0.000000134",
    "#,-,GNSS,0,4,377,11,0.012,0.012,0.1",
    "^,?,foo.example.net,2,6,377,23,-0.000923,-0.000924,0.043",
    "^,+,203.0.113.5,1,6,377,21,-0.002629,-0.002619,0.086",
]
TRACKING_NTP = (
    "CB00710F,203.0.113.5,3,1485510557.0,-0.000006523,-0.000006747,0.000035822,-3.225,"
    "-0.000,0.129,0.013639022,0.001100737,64.2,Normal"
)


def settings(**kw: object) -> TimeSettings:
    base: dict[str, object] = {"poll_s": 1.0, "timeout_s": 5.0}
    base.update(kw)
    return TimeSettings(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ parsing as documented


def test_tracking_and_sources_fields() -> None:
    t = parse_tracking(TRACKING_GNSS)
    assert (t.ref_id, t.name, t.stratum, t.leap) == ("474E5353", "GNSS", 1, "Normal")
    assert t.system_time_s == pytest.approx(1.045026302)
    assert (t.root_delay_s, t.root_dispersion_s) == pytest.approx((0.200000003, 0.002192741))
    s = parse_source(SOURCE_GNSS)
    assert (s.mode, s.state, s.name, s.reach, s.refclock) == ("#", "*", "GNSS", 0o377, True)
    reading = parse_output("\n".join([TRACKING_GNSS, SOURCE_GNSS]) + "\n")
    st = reading.clock_state()
    assert st.source is ClockSource.GNSS and st.synced is True and st.via == "chrony"
    assert st.offset_s == pytest.approx(1.045026)  # positive: the system clock is slow
    assert st.error_s == pytest.approx(0.002193 + 0.1, abs=1e-6)  # dispersion + delay / 2
    assert st.to_json() == {
        "source": "gnss",
        "offset_s": st.offset_s,
        "error_s": st.error_s,
        "synced": True,
        "via": "chrony",
    }


def test_reference_kinds() -> None:
    pps = parse_output("\n".join([TRACKING_GNSS.replace("474E5353,GNSS", "50505300,PPS"),
                                  *SOURCES_MIXED]))  # fmt: skip
    assert pps.reference() is ClockSource.PPS and pps.selected is not None
    ntp = parse_output("\n".join([TRACKING_NTP, SOURCES_MIXED[2].replace("?", "*")]))
    assert ntp.reference() is ClockSource.NTP
    # Synchronised with no source selected at this instant: tracking's reference decides.
    assert parse_output(TRACKING_NTP).reference() is ClockSource.NTP
    assert parse_output(TRACKING_GNSS).reference() is ClockSource.GNSS
    unsync = parse_output(TRACKING_UNSYNC).clock_state()
    assert (unsync.source, unsync.offset_s, unsync.synced) == (ClockSource.NONE, None, False)
    # chrony's local mode (it serves its own clock) is no reference at all.
    local = TRACKING_NTP.replace("CB00710F,203.0.113.5,3", "7F7F0101,,10")
    assert parse_output(local).clock_state().source is ClockSource.NONE


@pytest.mark.parametrize(
    "text",
    [
        "",
        "506 Cannot talk to daemon",
        TRACKING_GNSS.replace(",Normal", ",Sort of"),
        TRACKING_GNSS.replace("1.045026302", "nan"),
        TRACKING_GNSS.replace("1.045026302", "1e999"),
        TRACKING_GNSS.replace("474E5353", "GNSS"),
        TRACKING_GNSS.replace("0.200000003", "-0.2"),
        TRACKING_GNSS + ",extra",
        TRACKING_GNSS + "\n" + SOURCE_GNSS.replace("#,*", "#,!"),
        TRACKING_GNSS + "\n" + SOURCE_GNSS.replace(",377,", ",999,"),
        TRACKING_GNSS + "\n" + "\x00\xff garbage",
        TRACKING_GNSS + "\n" + SOURCE_GNSS * 3000,
    ],
)
def test_garbage_is_a_format_error(text: str) -> None:
    with pytest.raises(FormatError):
        parse_output(text)


# ------------------------------------------------------------------ failing chronyc


def fake_chronyc(tmp_path: Path, body: str) -> str:
    """A program standing in for chronyc (what a broken or hostile one prints)."""
    path = tmp_path / "chronyc"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


class Alarms(list[Alarm]):
    def __call__(self, alarm: Alarm) -> None:
        self.append(alarm)


def test_not_installed_not_running_garbage_and_hung(tmp_path: Path) -> None:
    stop = threading.Event()
    m = ChronyMonitor(settings(chronyc=str(tmp_path / "no-such-chronyc")), stop)
    m.poll_once()
    assert m.health == Health.NOT_INSTALLED and m.state() is None
    if shutil.which("chronyc"):
        m = ChronyMonitor(settings(chrony_socket=str(tmp_path / "none.sock")), stop)
        m.poll_once()  # the real chronyc, no chronyd behind the socket
        assert m.health == Health.UNAVAILABLE and "chronyd does not answer" in m.detail
    m = ChronyMonitor(settings(chronyc=fake_chronyc(tmp_path, "echo 'all good!'")), stop)
    m.poll_once()
    assert m.health == Health.BAD_OUTPUT and m.state() is None
    m = ChronyMonitor(settings(chronyc=fake_chronyc(tmp_path, "exec sleep 30"), timeout_s=0.5),
                      stop)  # fmt: skip
    m.poll_once()
    assert m.health == Health.UNAVAILABLE and "no answer within" in m.detail


def test_losing_the_reference_raises_one_alarm_and_falls_back_to_the_fixes(
    tmp_path: Path,
) -> None:
    """chrony synchronised, then gone: an alarm, the fixes' measurement takes over; back: one
    more alarm. The thread survives every state."""
    good = tmp_path / "good.csv"
    good.write_text(f"{TRACKING_GNSS}\n{SOURCE_GNSS}\n")
    mode = tmp_path / "mode"
    mode.write_text("good")
    prog = fake_chronyc(
        tmp_path,
        f'case "$(cat {mode})" in good) cat {good};; dead) echo "506 Cannot talk to daemon" >&2;'
        f" exit 1;; *) echo garbage;; esac",
    )
    alarms = Alarms()
    stop = threading.Event()
    m = ChronyMonitor(settings(chronyc=prog, poll_s=1.0), stop, alarm=alarms)
    now = [2_000_000_000.0]
    clock = ClockMonitor(now=lambda: now[0], monotonic=lambda: now[0], reference=m.state)
    for _i in range(5):
        clock.observe(Fix(time=now[0] + 0.3, mode=FixMode.FIX_3D, lat=1.0, lon=1.0))
        now[0] += 1
    m.start()
    try:
        wait_for(lambda: m.health == Health.SYNCED, 10, "chrony synced")
        assert clock.state().via == "chrony" and clock.state().source is ClockSource.GNSS
        mode.write_text("dead")
        wait_for(lambda: m.health == Health.UNAVAILABLE, 10, "chrony gone")
        st = clock.state()
        assert (st.source, st.via, st.offset_s) == (ClockSource.GNSS, "fixes", 0.3)
        mode.write_text("garbage")
        wait_for(lambda: m.health == Health.BAD_OUTPUT, 10, "garbage")
        mode.write_text("good")
        wait_for(lambda: m.health == Health.SYNCED, 10, "chrony back")
        assert m.is_alive()
    finally:
        stop.set()
        m.join(5)
    assert [a.kind for a in alarms] == ["time_reference_lost", "time_reference_restored"]
    assert m.failures >= 2


def test_required_chrony_that_never_answers_raises_an_alarm(tmp_path: Path) -> None:
    alarms = Alarms()
    m = ChronyMonitor(settings(chrony="on", chronyc=str(tmp_path / "nope")), threading.Event(),
                      alarm=alarms)  # fmt: skip
    m.poll_once()
    m.poll_once()
    assert [a.kind for a in alarms] == ["time_reference_lost"]
    quiet = Alarms()
    m = ChronyMonitor(settings(chrony="auto", chronyc=str(tmp_path / "nope")), threading.Event(),
                      alarm=quiet)  # fmt: skip
    m.poll_once()
    assert quiet == [] and m.health == Health.NOT_INSTALLED


# ------------------------------------------------------------------ real chronyd + gpsd


@dataclass
class TimeRig:
    sock: Path
    proc: subprocess.Popen[bytes]
    log: Path
    gpsd_port: int

    def kill_chronyd(self) -> None:
        pid = int((self.sock.parent / "chronyd.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--ipc", "true"], check=False).returncode == 0


@pytest.fixture
def chrony_gpsd(tmp_path: Path) -> Iterator[TimeRig]:
    for prog in ("chronyd", "chronyc", "gpsfake", "gpsd"):
        if shutil.which(prog) is None:
            pytest.skip(f"{prog} is not installed (make setup installs chrony, gpsd, gpsd-clients)")
    if not _can_unshare():
        pytest.skip("needs root for a private IPC namespace (unshare --ipc) for SHM 0")
    # A short 0700 directory: Unix socket paths are limited to 108 bytes.
    rundir = Path(tempfile.mkdtemp(prefix="chr-"))
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o700
    sock = rundir / "chronyd.sock"
    conf = rundir / "chrony.conf"
    # The refclock lines deploy/install.sh writes on a device, polled every second instead of
    # every 8 s so that chrony selects the source within seconds.
    refclocks = render(None).replace(" poll 3 ", " poll 0 ")
    assert "refclock SHM 0 refid GNSS poll 0" in refclocks
    conf.write_text(
        refclocks + f"bindcmdaddress {sock}\n"
        "cmdport 0\n"  # no UDP command port
        "port 0\n"  # no NTP server port
        f"pidfile {rundir / 'chronyd.pid'}\n"
    )
    # NMEA with this minute's dates: 4 sentences a second at gpsfake -c 0.25.
    t = time.gmtime(time.time() + 2)
    nmea = tmp_path / "now.nmea"
    nmea.write_bytes(truck_log(900, start=(t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour,
                                           t.tm_min, t.tm_sec)))  # fmt: skip
    log = tmp_path / "rig.log"
    port = free_port()
    script = (
        f"gpsfake -1 -n -t -q -P {port} -c 0.25 {nmea} >/dev/null 2>&1 &\n"
        f"exec chronyd -x -d -u root -f {conf}\n"
    )
    proc = subprocess.Popen(
        ["unshare", "--ipc", "--", "sh", "-c", script],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(sock.exists, 20, "chronyd's command socket")
        yield TimeRig(sock, proc, log, port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        shutil.rmtree(rundir, ignore_errors=True)


def test_agent_reports_the_gnss_reference_through_chrony(chrony_gpsd: TimeRig) -> None:
    stop = threading.Event()
    alarms = Alarms()
    monitor = ChronyMonitor(settings(chrony="on", chrony_socket=str(chrony_gpsd.sock)), stop,
                            alarm=alarms)  # fmt: skip
    clock = ClockMonitor(reference=monitor.state)

    def synced() -> bool:
        monitor.poll_once()
        return monitor.health == Health.SYNCED

    try:
        wait_for(synced, 90, f"chrony to select gpsd's SHM 0 ({chrony_gpsd.log.read_text()})")
    finally:
        stop.set()
    st = clock.state()
    assert st.source is ClockSource.GNSS, monitor.to_json()
    assert st.via == "chrony" and st.synced is True
    assert st.offset_s is not None and st.error_s is not None
    # delay 0.2 in the refclock line: the bound is at least half of it, and sane.
    assert 0.1 <= st.error_s < 5.0
    status = monitor.to_json()
    assert status["reference"] == "gnss" and status["selected"] == "GNSS"
    # chronyd stops: a health state and an alarm, and the clock says it has no reference.
    chrony_gpsd.kill_chronyd()
    wait_for(lambda: chrony_gpsd.proc.poll() is not None, 20, "chronyd to exit")
    monitor.poll_once()
    assert monitor.health == Health.UNAVAILABLE
    assert clock.state().source is ClockSource.NONE
    assert [a.kind for a in alarms] == ["time_reference_lost"]


def test_sealed_segments_carry_chronys_clock(
    chrony_gpsd: TimeRig, tmp_path: Path, keyset: KeySet
) -> None:
    """The running agent (composition root) with gpsd's fixes and chrony's state: its GPS
    segments' manifests say the clock followed GNSS through chrony, with an error bound."""
    from agent.config import parse_config
    from agent.runtime.app import Agent
    from agent.storage.seal import read_segment_info

    cfg = parse_config(
        f"""
[device]
id = "trk-time"
profile = "tracker"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp_path / "spool"}"
reserve_mb = 0
batch_s = 1
[gps]
source = "gpsd"
gpsd_port = {chrony_gpsd.gpsd_port}
[time]
chrony = "on"
chrony_socket = "{chrony_gpsd.sock}"
poll_s = 1.0
[health]
status_file = "{tmp_path / "run/status.json"}"
control_socket = "{tmp_path / "run/control.sock"}"
"""
    )
    agent = Agent(cfg)
    assert agent.chrony is not None
    agent.start()
    try:
        wait_for(lambda: agent.chrony is not None and agent.chrony.health == Health.SYNCED, 90,
                 "the agent's chrony reading")  # fmt: skip

        def sealed_via_chrony() -> bool:
            for path in sorted((tmp_path / "spool/seg/gps").glob("*.seg")):
                with path.open("rb") as f:
                    clock = read_segment_info(f).manifest["clock"]
                if clock.get("via") == "chrony":
                    found.append(clock)
                    return True
            return False

        found: list[dict[str, object]] = []
        wait_for(sealed_via_chrony, 60, "a GPS segment sealed with chrony's clock")
        status = agent.status()
    finally:
        agent.shutdown()
    clock = found[0]
    assert clock["source"] == "gnss" and clock["synced"] is True
    assert isinstance(clock["error_s"], float) and clock["error_s"] >= 0.1
    assert status["time"]["state"] == "synced" and status["time"]["reference"] == "gnss"
    assert status["clock"]["via"] == "chrony"
