"""Hardware in the loop: the agent against the real devices a rig names, end to end.

A rig names its devices in the environment; a test whose device is not named skips and says
why (the hardware cannot exist on CI). A device that is named but absent is a broken rig: that
fails, it does not skip.

    EDGE_AGENT_HIL_CAMERA=/dev/video0      a V4L2 camera (USB, or the Pi camera via libcamera)
    EDGE_AGENT_HIL_GNSS=/dev/ttyACM0       a GNSS receiver on a serial port
    EDGE_AGENT_HIL_GNSS_BAUD=9600          its speed (default 9600)
    EDGE_AGENT_HIL_GNSS_FIX=1              the antenna sees the sky: require a position fix
    EDGE_AGENT_HIL_MIC=<name>              a microphone (part of its PortAudio/ALSA name)

Each test runs ``edge-agent run`` with that device, a lab mosquitto with mutual TLS and the
reference ingest, and checks what the platform holds: every sealed segment there, verified,
decrypted and readable by ffprobe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.storage.keys import init_device_keys, init_platform_keys

REPO = Path(__file__).resolve().parents[2]


def device_from_env(var: str, what: str, *, path: bool = True) -> str:
    value = os.environ.get(var, "")
    if not value:
        pytest.skip(
            f"NOT RUN: no {what} on this machine ({var} is not set; a rig sets it, "
            "e.g. in its CI runner's environment - see docs/hil.md)"
        )
    if path and not Path(value).exists():
        pytest.fail(f"{var}={value} names a device that is not there (unplugged? wrong rig?)")
    return value


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Rig:
    """Keys, an agent config for the named devices, the broker and the ingest."""

    def __init__(self, tmp: Path, pki: Pki, broker: Mosquitto, device_id: str) -> None:
        self.tmp, self.pki, self.broker, self.id = tmp, pki, broker, device_id
        init_device_keys(tmp / "keys" / "device")
        init_platform_keys(tmp / "keys" / "platform")
        self.cert = pki.issue(device_id)
        self.store = tmp / "platform"
        self.cfg = tmp / "agent.toml"
        self.status = tmp / "run" / "status.json"

    def write_config(self, profile: str, sections: str) -> Path:
        self.cfg.write_text(
            f"""
[device]
id = "{self.id}"
profile = "{profile}"
[keys]
device_key = "{self.tmp}/keys/device/device.key"
platform_public = "{self.tmp}/keys/platform/platform.pub"
[spool]
dir = "{self.tmp}/spool"
reserve_mb = 0
batch_s = 5
[uplink]
enabled = true
host = "127.0.0.1"
port = {self.broker.port}
ca = "{self.pki.ca}"
cert = "{self.cert.cert}"
key = "{self.cert.key}"
state_dir = "{self.tmp}/uplink"
[health]
status_file = "{self.status}"
control_socket = "{self.tmp}/run/control.sock"
{sections}
"""
        )
        return self.cfg

    def status_json(self) -> dict[str, object]:
        try:
            out = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}
        return out if isinstance(out, dict) else {}

    def run(self, during: Callable[[subprocess.Popen[bytes]], None]) -> None:
        """Ingest and agent up; ``during``; SIGTERM; wait until the platform has it all."""
        ing = self.pki.client(INGEST_IDENTITY)
        ingest = subprocess.Popen(
            [
                sys.executable, "-m", "agent.cli", "ingest", "--store", str(self.store),
                "--broker", f"127.0.0.1:{self.broker.port}", "--ca", str(self.pki.ca),
                "--cert", str(ing.cert), "--cert-key", str(ing.key),
                "--client-id", INGEST_IDENTITY, "--group", f"hil-{self.id}",
                "--platform-key", str(self.tmp / "keys" / "platform" / "platform.key"),
                "--trust-on-first-use",
            ],
            cwd=REPO,
            stdout=(self.tmp / "ingest.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.cfg)],
            cwd=REPO,
            stdout=(self.tmp / "agent.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            sock = self.tmp / "run" / "control.sock"
            wait_for(sock.exists, 90, "the agent to start", proc=agent, step=0.2)
            during(agent)
            os.killpg(agent.pid, signal.SIGTERM)
            assert agent.wait(60) == 0, (self.tmp / "agent.log").read_text()[-2000:]
            fwd = cli("uplink", "forward", "--until-empty", "--config", str(self.cfg))
            assert fwd.returncode == 0, fwd.stderr
        finally:
            for p in (agent, ingest):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    def verify(self) -> Path:
        """Everything at the platform verifies against the pinned key; decrypted under plain/."""
        dev = self.store / self.id
        plain = self.tmp / "plain"
        res = cli(
            "verify", str(dev / "seg"), str(dev / "keys"),
            "--device-key", str(self.tmp / "keys" / "device" / "device.pub"),
            "--platform-key", str(self.tmp / "keys" / "platform" / "platform.key"),
            "--decrypt-to", str(plain),
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert not list((self.tmp / "spool").glob("seg/*/*.seg")), "left in the spool"
        return plain / self.id


def ffprobe_codecs(path: Path) -> list[str]:
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
         str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return res.stdout.split()
