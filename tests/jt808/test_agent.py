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
replay_speed = 0
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
        got = platform.locations()
        # the ignition input (the simulated source's level arrives debounced, after the first
        # replayed fixes, which replay_speed 0 delivers at once)
        assert got[-1].location.status & STATUS_ACC
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
