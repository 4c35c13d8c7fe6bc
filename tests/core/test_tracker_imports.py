"""The tracker loads only what it uses (issue 19, docs/scale.md "Tracker memory").

A real ``edge-agent run`` in the tracker profile (replayed GPS, the uplink to the test broker
over mutual TLS) runs until it has sealed a GPS segment and its uplink is connected; then the
modules it has loaded are compared with those it must not load: what it never uses (video,
audio, the web page, the platform's side, every other command's CLI) and what it used to load
for one helper (pyubx2 for the UBX checksum, statistics for a median, ctypes for a writeback
hint, the CLI modules for their parsers, cryptography.x509 for a certificate's two dates). A
later module-level import that brings one back fails here.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent.gps.clock import _median
from agent.labs.broker import Mosquitto, Pki
from tests.fixtures.keys import KeySet

REPO = Path(__file__).resolve().parents[2]

# Never used by a tracker.
NEVER = (
    "cv2",
    "numpy",
    "av",
    "jinja2",
    "sounddevice",
    "serial",  # pyserial: a replayed or gpsd source needs no serial port
    "agent.capture.service",
    "agent.capture.recorder",
    "agent.capture.encoder",
    "agent.capture.av_mux",
    "agent.capture.audio_recorder",
    "agent.talk.device",
    "agent.web.device",
    "agent.ingest",
    "agent.enrol.provision",
    "agent.jt808.terminal",
    "agent.fleet.service",  # [fleet] is off in this config
)
# Loaded before issue 19 item 4 for one helper; now only by the branches that need them.
HELPERS = (
    "pyubx2",  # the UBX checksum: only once a UBX frame arrives (agent/gps/ubx.py)
    "pyrtcm",
    "pynmeagps",
    "statistics",  # one median (agent/gps/clock.py)
    "fractions",
    "decimal",
    "ctypes",  # sync_file_range: only for a file past one writeback window (durable.py)
    "mimetypes",  # `edge-agent put` (agent/storage/cli.py)
    "cryptography.x509",  # the client certificate's dates (agent/uplink/cert_dates.py)
    "agent.cellular.mmcli",  # ModemManager's output, only with cellular.source = "modemmanager"
    # PEM key files in the one form agent/storage/keys.py writes (its pem_private_key)
    "cryptography.hazmat.primitives.serialization",
    # paho's proxy lookup, used only with PySocks: deferred by `run` (agent/runtime/deferred.py)
    "urllib.request",
    "http.client",
    "email.message",
    "tempfile",
    # `run` builds only the runtime's subcommands (agent/cli.py)
    "agent.storage.cli",
    "agent.gps.cli",
    "agent.gps.configure_cli",
    "agent.uplink.cli",
    "agent.ingest.cli",
    "agent.capture.cli",
    "agent.config.cli",
    "agent.enrol.cli",
    "agent.web.cli",
    "agent.talk.cli",
    "agent.jt808.cli",
)

# Runs `edge-agent run` in this process (agent.cli.main, as the console script does) and, once
# a GPS segment is sealed and the uplink connected, writes the loaded modules and stops it.
DRIVER = """
import json, os, signal, sys, threading, time
from pathlib import Path

cfg, spool, status, out = sys.argv[1:5]

def watch():
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            connected = json.loads(Path(status).read_text())["uplink"]["connected"]
        except (OSError, ValueError, KeyError, TypeError):
            connected = False
        if connected and any((Path(spool) / "seg" / "gps").glob("*.seg")):
            # A stand-in of agent/runtime/deferred.py is not an imported module.
            loaded = [n for n, m in list(sys.modules.items()) if type(m).__name__ != "Deferred"]
            Path(out).write_text(json.dumps(sorted(loaded)))
            break
        time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
from agent.cli import main
sys.exit(main(["run", "--config", cfg]))
"""


def test_tracker_run_loads_only_what_it_uses(
    tmp_path: Path, keyset: KeySet, pki: Pki, broker_alive: Mosquitto
) -> None:
    from agent.labs.nmea import truck_log

    g = time.gmtime(time.time() - 120)
    (tmp_path / "drive.nmea").write_bytes(
        truck_log(300, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    )
    device = f"trk-imports-{tmp_path.name[-8:]}"
    cert = pki.issue(device)
    spool, status = tmp_path / "spool", tmp_path / "status.json"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "{device}"
profile = "tracker"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{spool}"
reserve_mb = 0
batch_max_records = 20
[uplink]
enabled = true
host = "127.0.0.1"
port = {broker_alive.port}
ca = "{pki.ca}"
cert = "{cert.cert}"
key = "{cert.key}"
state_dir = "{tmp_path / "uplink"}"
[gps]
source = "replay"
replay_file = "{tmp_path / "drive.nmea"}"
replay_speed = 0
[health]
heartbeat_s = 1.0
status_file = "{status}"
control_socket = "{tmp_path / "control.sock"}"
"""
    )
    out = tmp_path / "modules.json"
    res = subprocess.run(
        [sys.executable, "-c", DRIVER, str(cfg), str(spool), str(status), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert out.exists(), f"no sealed GPS segment with the uplink connected:\n{res.stderr}"
    loaded = set(json.loads(out.read_text()))
    # The run went through what a tracker does use (the test would pass vacuously otherwise).
    for used in ("agent.runtime.app", "agent.gps.service", "agent.uplink.service", "paho"):
        assert used in loaded, used
    assert sorted(m for m in NEVER if m in loaded) == []
    assert sorted(m for m in HELPERS if m in loaded) == []


def test_the_clock_median_is_statistics_median() -> None:
    """agent/gps/clock.py's own median (to spare statistics, fractions and decimal)."""
    rng = random.Random(19)
    for n in range(1, 40):
        values = [rng.uniform(-3.0, 3.0) for _ in range(n)]
        assert _median(values) == statistics.median(values)
    assert _median([2.0, 1.0]) == 1.5
    assert _median([5.0]) == 5.0
