"""``edge-agent run`` as a body camera: local record commands, SIGTERM mid-recording."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.labs.nmea import truck_log
from agent.labs.waiting import wait_for
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bodycam_records_on_local_command_and_seals_on_sigterm(
    tmp_path: Path, keyset: KeySet
) -> None:
    g = time.gmtime(time.time() - 60)
    (tmp_path / "drive.nmea").write_bytes(
        truck_log(600, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    )
    spool = tmp_path / "spool"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "cam-9"
profile = "bodycam"
officer = "A77"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{spool}"
reserve_mb = 0
[gps]
source = "replay"
replay_file = "{tmp_path / "drive.nmea"}"
replay_speed = 1.0
[video]
enabled = true
source = "synthetic"
width = 160
height = 120
fps = 10
segment_s = 1
prebuffer_s = 1
[health]
status_file = "{tmp_path / "status.json"}"
control_socket = "{tmp_path / "control.sock"}"
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
        wait_for(lambda: (tmp_path / "control.sock").exists(), 60, "the control socket", proc=proc)
        res = cli("record", "start", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        video = spool / "seg" / "video"
        wait_for(lambda: len(list(video.glob("*.seg"))) >= 2, 60, "two video segments", proc=proc)
        assert cli("record", "mark", "--note", "suspect left", "--config", str(cfg)).returncode == 0
        assert cli("still", "--config", str(cfg)).returncode == 0
        # SIGTERM while recording: what is held is sealed, nothing is lost.
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    plain = tmp_path / "plain"
    report = verify_paths([spool])
    assert report.ok, report.problems
    res = cli(
        "verify",
        str(spool),
        "--platform-key",
        str(keyset.platform_key_path),
        "--decrypt-to",
        str(plain),
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(p.read_text()) for p in sorted((plain / "cam-9" / "event").glob("*.json"))]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "record_start" and "mark" in kinds, kinds
    assert any(e.get("trigger") == "device" for e in events), events
    mp4s = sorted((plain / "cam-9" / "video").glob("*.mp4"))
    assert len(mp4s) >= 2
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
            str(mp4s[-1]),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "h264"
    assert list((plain / "cam-9" / "still").glob("*.jpg"))


def test_record_without_a_running_agent_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[device]\nid = "x"\n[health]\ncontrol_socket = "{tmp_path / "none.sock"}"\n')
    res = cli("record", "start", "--config", str(cfg))
    assert res.returncode == 1
    assert "no control socket: is the agent running?" in res.stderr


def test_bodycam_with_microphone_records_audio_inside_video(tmp_path: Path, keyset: KeySet) -> None:
    """A real PulseAudio sine microphone: the video segments carry an Opus track."""
    from agent.labs.pulse import PulseServer

    pulse = PulseServer(tmp_path / "pulse")
    pulse.start()
    spool = tmp_path / "spool"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "cam-a"
profile = "bodycam"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{spool}"
reserve_mb = 0
[video]
enabled = true
width = 160
height = 120
fps = 10
segment_s = 1
prebuffer_s = 0
[audio]
enabled = true
[health]
status_file = "{tmp_path / "status.json"}"
control_socket = "{tmp_path / "control.sock"}"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        env=pulse.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "control.sock").exists(), 60, "the control socket", proc=proc)
        assert cli("record", "start", "--config", str(cfg)).returncode == 0
        video = spool / "seg" / "video"
        wait_for(lambda: len(list(video.glob("*.seg"))) >= 3, 60, "three video segments", proc=proc)

        def mic_state() -> str:
            status = json.loads((tmp_path / "status.json").read_text())
            return str(status["audio"]["state"])

        # The health loop rewrites the status file every few seconds.
        wait_for(lambda: mic_state() == "ok", 60, "the microphone reported ok", proc=proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        pulse.stop()
    assert proc.returncode == 0, out
    plain = tmp_path / "plain"
    res = cli(
        "verify",
        str(spool),
        "--platform-key",
        str(keyset.platform_key_path),
        "--decrypt-to",
        str(plain),
    )
    assert res.returncode == 0, res.stderr
    # No separate audio stream: the microphone is a track of each video segment.
    assert not (plain / "cam-a" / "audio").exists()
    mp4 = sorted((plain / "cam-a" / "video").glob("*.mp4"))[1]
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
            str(mp4),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["h264", "opus"]
