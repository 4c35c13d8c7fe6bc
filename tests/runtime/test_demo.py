"""`make demo`, shortened: mosquitto + ingest + a bodycam agent; the platform verifies all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_and_the_platform_verifies_everything(tmp_path: Path) -> None:
    env = dict(os.environ, EDGE_AGENT_DEMO_RECORD_S="6", PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-m", "agent.labs.demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "OK: every segment verifies and every chain is continuous" in out
    for stream in ("event", "gps", "video"):
        assert f"cam-demo-01/{stream}:" in out, out
    videos = sorted((tmp_path / "demo-out" / "decrypted" / "cam-demo-01" / "video").glob("*.mp4"))
    assert videos
    # status shows the simulated battery and LTE modem, and what was sent per lane today.
    assert "power   battery 78 %, on battery, 3.87 V, -0.64 A (sysfs:battery)" in out, out
    assert "link    LTE home, CMCC, signal 67 % (" in out and "dBm RSRP" in out, out
    assert "sent    today (" in out and "backfill" in out, out
    # It cleaned up every process it started.
    assert "stopped mosquitto" in out and "stopped agent" in out and "stopped ingest" in out
    # The truck beside it reported to the reference JT/T 808 platform.
    import re

    got = re.search(r"jt808: tracker trk-demo-01 .* received (\d+) location reports", out)
    assert got and int(got.group(1)) >= 1, out
    assert "stopped tracker" in out
