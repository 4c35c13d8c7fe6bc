"""``edge-agent run`` in the tracker profile: replayed GPS into sealed GPS segments; SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.gps.fixdelta import batch_records
from agent.gps.replay import read_fixes
from agent.gps.wire import decode_fix
from agent.labs.nmea import truck_log
from agent.storage.records import JOURNAL_CONTENT_TYPE
from agent.storage.seal import decrypt_segment, parse_key_record, read_segment_info
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet

REPO = Path(__file__).resolve().parents[2]


def _now_tuple() -> tuple[int, int, int, int, int, int]:
    g = time.gmtime(time.time() - 120)
    return (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)


@pytest.fixture
def tracker(tmp_path: Path, keyset: KeySet) -> tuple[Path, Path, bytes]:
    log = truck_log(120, start=_now_tuple())
    (tmp_path / "drive.nmea").write_bytes(log)
    cfg = tmp_path / "agent.toml"
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
batch_max_records = 50
[gps]
source = "replay"
replay_file = "{tmp_path / "drive.nmea"}"
replay_speed = 0
"""
    )
    return cfg, tmp_path / "spool", log


def _fixes_in_spool(spool: Path, keyset: KeySet) -> list[float]:
    times: list[float] = []
    keys = {p.stem: parse_key_record(p.read_bytes()) for p in (spool / "keys").glob("*.key")}
    for path in sorted((spool / "seg" / "gps").glob("*.seg")):
        with path.open("rb") as f:
            info = read_segment_info(f)
            out = bytearray()
            decrypt_segment(f, info, keys[info.key_id].unwrap(keyset.platform_private), out.extend)
        assert info.manifest["content_type"] != JOURNAL_CONTENT_TYPE
        assert info.manifest["clock"]["source"] == "gnss"
        assert info.content_type == "application/x-edge-fix-delta"
        times += [decode_fix(r).time for r in batch_records(info.content_type, bytes(out))]
    return times


def test_tracker_seals_every_kept_fix_and_stops_on_sigterm(
    tracker: tuple[Path, Path, bytes], keyset: KeySet
) -> None:
    cfg, spool, _log = tracker
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # The replay runs as fast as possible; two full batches of 50 are sealed by count.
        while len(list((spool / "seg" / "gps").glob("*.seg"))) < 2:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no GPS segments sealed"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "edge-agent stopped" in out
    # SIGTERM sealed the open batch: nothing is left in the journal.
    assert not (spool / "journal" / "gps.jnl").exists()
    report = verify_paths([spool])
    assert report.ok, report.problems
    expected = [f.time for f in read_fixes(cfg.parent / "drive.nmea") if f.has_position]
    got = _fixes_in_spool(spool, keyset)
    # keep_interval_s = 1 s and the log is 1 Hz: every fix is kept, in order, once.
    assert got == pytest.approx(expected, abs=1e-3)
    assert len(got) == 120


def test_tracker_profile_refuses_video(tmp_path: Path, tracker: tuple[Path, Path, bytes]) -> None:
    cfg, _spool, _log = tracker
    cfg.write_text(cfg.read_text() + "[video]\nenabled = true\n")
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1
    assert "video.enabled: the tracker profile records no video" in res.stderr


def test_status_file_watchdog_and_status_command(
    tracker: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    """systemd's notify socket receives READY and WATCHDOG; `edge-agent status` reads figures."""
    import socket

    cfg, _spool, _log = tracker
    status_file = tmp_path / "run" / "status.json"
    cfg.write_text(cfg.read_text() + f'[health]\nstatus_file = "{status_file}"\n')
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="3000000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        messages = []
        while "WATCHDOG=1" not in messages:
            messages += sock.recv(4096).decode().split("\n")
        assert "READY=1" in messages
        res = subprocess.run(
            [sys.executable, "-m", "agent.cli", "status", "--config", str(cfg)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert "device truck-7  profile tracker" in res.stdout
        assert "clock   gnss" in res.stdout
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages += sock.recv(4096).decode().split("\n")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0
    # The replayed drive's times lag the system clock by minutes: the clock is not trusted,
    # and the agent raises the alarm (logged here; on the live lane when the uplink runs).
    assert "alarm clock_untrusted: system clock differs from GNSS time by" in out, out
