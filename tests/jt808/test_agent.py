"""``edge-agent run`` in the tracker profile with ``[jt808]``: the replayed drive reaches the
reference platform (registered, authenticated, reports with the ignition's ACC bit), the status
shows the terminal, SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.jt808.location import STATUS_ACC
from agent.labs.jt808_platform import ReferencePlatform
from agent.labs.mmcli import write_fake_mmcli
from agent.labs.nmea import truck_log
from agent.labs.waiting import wait_for
from tests.fixtures.keys import KeySet

REPO = Path(__file__).resolve().parents[2]


def test_tracker_reports_to_the_808_platform(
    tmp_path: Path, keyset: KeySet, platform: ReferencePlatform
) -> None:
    g = time.gmtime(time.time() - 120)
    log = truck_log(120, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    (tmp_path / "drive.nmea").write_bytes(log)
    cfg = tmp_path / "agent.toml"
    status = tmp_path / "run" / "status.json"
    cfg.write_text(
        f"""
[device]
id = "truck-7"
profile = "tracker"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp_path / "spool"}"
reserve_mb = 0
[gps]
source = "replay"
replay_file = "{tmp_path / "drive.nmea"}"
replay_speed = 20
[gps.strategy]
interval_s = 10.0
[fleet]
enabled = true
state_dir = "{tmp_path / "fleet"}"
[fleet.inputs]
source = "sim"
sim_state = "ign=1"
[jt808]
enabled = true
server = "{platform.address}"
phone = "013800000007"
terminal_id = "TRK0007"
plate = "粤B00007"
plate_color = 2
state_dir = "{tmp_path / "jt808"}"
[health]
status_file = "{status}"
control_socket = "{tmp_path / "run" / "control.sock"}"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: len(platform.received) >= 8, 60, "eight location reports")
        assert platform.registrations[0].plate == "粤B00007"
        # the ignition input: the simulated source's level arrives debounced, after the first
        # replayed fixes; the drive is replayed at 20x so reports go on after it
        wait_for(
            lambda: any(r.location.status & STATUS_ACC for r in platform.locations()),
            60,
            "a location report with the ignition on (ACC)",
        )
        got = platform.locations()
        assert all(r.location.status & 0b10 for r in got)  # positioned

        def jt808_status() -> dict[str, object]:
            try:
                return json.loads(status.read_text()).get("jt808") or {}
            except (OSError, ValueError):
                return {}

        deadline = time.monotonic() + 30
        while jt808_status().get("state") != "up" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert jt808_status()["authenticated"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "jt808: authenticated with" in out


def test_the_modems_signal_goes_into_the_location_reports(
    tmp_path: Path, keyset: KeySet, platform: ReferencePlatform
) -> None:
    """Item 0x30 from the link monitor: the (simulated) modem's LTE RSSI of -65 dBm is +CSQ 24."""
    mmcli = write_fake_mmcli(tmp_path / "mm")
    g = time.gmtime(time.time() - 120)
    log = truck_log(120, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    (tmp_path / "drive.nmea").write_bytes(log)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "truck-8"
profile = "tracker"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp_path / "spool"}"
reserve_mb = 0
[gps]
source = "replay"
replay_file = "{tmp_path / "drive.nmea"}"
replay_speed = 4
[gps.strategy]
interval_s = 5.0
[cellular]
source = "modemmanager"
mmcli = "{mmcli}"
poll_s = 1.0
[jt808]
enabled = true
server = "{platform.address}"
phone = "013800000008"
terminal_id = "TRK0008"
plate = "粤B00008"
plate_color = 2
state_dir = "{tmp_path / "jt808"}"
[health]
status_file = "{tmp_path / "run" / "status.json"}"
control_socket = "{tmp_path / "run" / "control.sock"}"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def signals() -> list[bytes | None]:
        return [r.location.item(0x30) for r in platform.received]

    try:
        wait_for(lambda: bytes([24]) in signals(), 60, "a report with the modem's signal")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    got = signals()
    first = got.index(bytes([24]))
    assert set(got[first:]) == {bytes([24])}, got
    # Before it: nothing (no reading yet), or the signal quality of 67 % (+CSQ 21) until
    # ModemManager's extended figures (the RSSI) are set up and read.
    assert set(got[:first]) <= {None, bytes([21])}, got
