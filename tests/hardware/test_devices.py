"""End to end against the real camera, GNSS receiver and microphone a rig names (see rig.py).

Without the device each test skips and says why; ``edge-agent selftest --json`` is the rig's
quick gate before these (agent/enrol/selftest.py, built separately).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.labs.broker import Mosquitto, Pki
from tests.hardware.rig import Rig, cli, device_from_env, ffprobe_codecs

pytestmark = pytest.mark.hardware


def _record(rig: Rig, seconds: float) -> None:
    res = cli("record", "start", "--config", str(rig.cfg))
    assert res.returncode == 0, res.stderr
    time.sleep(seconds)
    assert cli("still", "--config", str(rig.cfg)).returncode == 0
    assert cli("record", "stop", "--config", str(rig.cfg)).returncode == 0


def test_camera_end_to_end(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    if os.environ.get("EDGE_AGENT_HIL_CAMERA", "").split(":")[0] in ("picamera2", "rpicam"):
        pytest.skip("NOT RUN here: the CSI camera runs in test_camera_sources.py")
    camera = device_from_env("EDGE_AGENT_HIL_CAMERA", "camera")
    rig = Rig(tmp_path, pki, broker_alive, "hil-cam")
    rig.write_config(
        "bodycam",
        f"""[video]
enabled = true
source = "{camera}"
width = 1280
height = 720
fps = 25
segment_s = 5
prebuffer_s = 5
""",
    )
    rig.run(lambda _agent: _record(rig, 12))
    plain = rig.verify()
    videos = sorted((plain / "video").glob("*.mp4"))
    assert len(videos) >= 2, videos
    assert ffprobe_codecs(videos[-1])[:1] == ["h264"]
    assert list((plain / "still").glob("*.jpg"))
    events = [json.loads(p.read_text())["type"] for p in sorted((plain / "event").glob("*.json"))]
    assert "camera_lost" not in events, f"the camera was lost during the run: {events}"


def test_gnss_end_to_end(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    port = device_from_env("EDGE_AGENT_HIL_GNSS", "GNSS receiver")
    baud = int(os.environ.get("EDGE_AGENT_HIL_GNSS_BAUD", "9600"))
    need_fix = os.environ.get("EDGE_AGENT_HIL_GNSS_FIX") == "1"
    rig = Rig(tmp_path, pki, broker_alive, "hil-gnss")
    rig.write_config(
        "tracker",
        f"""[gps]
source = "serial"
serial_port = "{port}"
baud = {baud}
[gps.strategy]
interval_s = 1.0
""",
    )

    def during(agent: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + (180 if need_fix else 30)
        while time.monotonic() < deadline:
            gps = rig.status_json().get("gps")
            seen = isinstance(gps, dict) and int(gps.get("seen", 0)) > 0
            if seen and (not need_fix or gps.get("fix") is not None):  # type: ignore[union-attr]
                break
            assert agent.poll() is None
            time.sleep(1)
        gps = rig.status_json().get("gps")
        assert isinstance(gps, dict) and gps.get("state") != "lost", gps
        assert int(gps.get("seen", 0)) > 0, f"no sentences from {port} at {baud} baud: {gps}"
        if need_fix:
            assert gps.get("fix") is not None, f"no position fix (antenna?): {gps}"
        time.sleep(8)  # a batch of fixes is sealed every 5 s

    rig.run(during)
    plain = rig.verify()
    if need_fix:
        assert list((plain / "gps").glob("*")), "no GPS batches at the platform"


def test_microphone_end_to_end(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    mic = device_from_env("EDGE_AGENT_HIL_MIC", "microphone", path=False)
    rig = Rig(tmp_path, pki, broker_alive, "hil-mic")
    rig.write_config(
        "bodycam",
        f"""[audio]
enabled = true
device = "{mic}"
mode = "continuous"
segment_s = 5
""",
    )

    def during(agent: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "spool").glob("seg/audio/*.seg")):
            assert agent.poll() is None and time.monotonic() < deadline, "no audio segment"
            time.sleep(0.5)
        # The status file is rewritten every few seconds.
        while True:
            audio = rig.status_json().get("audio")
            if isinstance(audio, dict) and audio.get("state") == "ok":
                break
            assert agent.poll() is None and time.monotonic() < deadline, audio
            time.sleep(0.5)

    rig.run(during)
    plain = rig.verify()
    tracks = sorted((plain / "audio").glob("*.m4a"))
    assert tracks and ffprobe_codecs(tracks[-1]) == ["opus"]


def test_selftest_json_gates_the_rig(tmp_path: Path) -> None:
    """``edge-agent selftest --json``: what a rig's CI runs first (agent/enrol/selftest.py)."""
    named = [v for v in ("CAMERA", "GNSS", "MIC") if os.environ.get(f"EDGE_AGENT_HIL_{v}")]
    if not named:
        pytest.skip("NOT RUN: no EDGE_AGENT_HIL_* device named (not a rig)")
    cfg = os.environ.get("EDGE_AGENT_HIL_CONFIG") or os.environ.get("EDGE_AGENT_CONFIG")
    if not cfg:
        pytest.skip("NOT RUN: EDGE_AGENT_HIL_CONFIG (the rig's agent.toml) is not set")
    res = cli("selftest", "--json", "--config", cfg)
    report = json.loads(res.stdout)
    assert res.returncode == 0, json.dumps(report, indent=1)
