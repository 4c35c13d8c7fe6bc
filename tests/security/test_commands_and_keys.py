"""Signed commands: a replayed, expired, future-dated or over-long one is refused (also after a
restart: the seen ids are on disk); private keys are 0600 and the agent refuses looser ones.

Tampered commands (every single-byte change, random fields) are in tests/fuzz/test_commands.py;
tampered segments (every single-byte change of a sealed file) in tests/fuzz/test_seal.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.storage.keys import init_device_keys, init_platform_keys
from agent.uplink.control import CommandChannel, SeenIds, init_command_keys, sign_command

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cam-sec"


def _channel(state: Path, key: Ed25519PrivateKey) -> tuple[CommandChannel, list[Any]]:
    ran: list[Any] = []
    ch = CommandChannel(DEVICE, key.public_key(), SeenIds(state / "seen.json"))
    ch.register("record.start", lambda args: ran.append(args) or {"started": True})
    return ch, ran


def test_replayed_and_expired_commands_are_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    ch, ran = _channel(tmp_path, key)
    cmd = sign_command(key, DEVICE, "record.start", {}, ttl_s=60)
    assert ch.handle(cmd)["ok"] is True and len(ran) == 1
    replay = ch.handle(cmd)
    assert replay["ok"] is False and "replayed" in replay["reason"]
    # After a restart (a new channel reading the same state file): still a replay.
    ch2, ran2 = _channel(tmp_path, key)
    again = ch2.handle(cmd)
    assert again["ok"] is False and "replayed" in again["reason"] and not ran2
    now = time.time()
    cases = {
        "expired": sign_command(key, DEVICE, "record.start", now=now - 3600, ttl_s=60),
        "in the future": sign_command(key, DEVICE, "record.start", now=now + 3600),
        "exceeds": sign_command(key, DEVICE, "record.start", now=now, ttl_s=30 * 86400),
        "addressed to": sign_command(key, "cam-other", "record.start", now=now),
        "bad signature": sign_command(
            Ed25519PrivateKey.generate(), DEVICE, "record.start", now=now
        ),
    }
    for reason, payload in cases.items():
        answer = ch2.handle(payload)
        assert answer["ok"] is False and reason in answer["reason"], (reason, answer)
    assert not ran2, "a refused command ran"


def test_private_keys_are_0600(tmp_path: Path) -> None:
    dev, _ = init_device_keys(tmp_path / "device")
    plat, _ = init_platform_keys(tmp_path / "platform")
    cmd = init_command_keys(tmp_path / "command")
    for path in (dev, plat, cmd):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_agent_refuses_a_readable_device_key(tmp_path: Path) -> None:
    dev, _ = init_device_keys(tmp_path / "device")
    init_platform_keys(tmp_path / "platform")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "{DEVICE}"
profile = "tracker"
[keys]
device_key = "{dev}"
platform_public = "{tmp_path / "platform" / "platform.pub"}"
[spool]
dir = "{tmp_path / "spool"}"
reserve_mb = 0
[health]
status_file = "{tmp_path / "status.json"}"
control_socket = "{tmp_path / "control.sock"}"
"""
    )
    os.chmod(dev, 0o644)
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode != 0
    assert f"chmod 600 {dev}" in res.stderr, res.stderr
    assert not (tmp_path / "spool" / "seg").exists() or not list(
        (tmp_path / "spool" / "seg").rglob("*.seg")
    )
