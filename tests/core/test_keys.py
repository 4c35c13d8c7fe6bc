"""Key files: created 0600, refused when looser, never silently replaced."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import KeyFileError
from agent.storage.keys import load_platform_private, load_signing_key


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, check=False
    )


def test_keys_init_writes_0600_and_refuses_to_replace(tmp_path: Path) -> None:
    d = tmp_path / "k"
    res = cli("keys", "init", "--dir", str(d))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((d / "device.key").stat().st_mode) == 0o600
    before = (d / "device.key").read_bytes()
    res = cli("keys", "init", "--dir", str(d))
    assert res.returncode == 1 and "refusing to replace it without --force" in res.stderr
    assert (d / "device.key").read_bytes() == before
    assert cli("keys", "init", "--dir", str(d), "--force").returncode == 0
    assert (d / "device.key").read_bytes() != before
    load_signing_key(d / "device.key")


def test_platform_init_and_loose_permissions_refused(tmp_path: Path) -> None:
    d = tmp_path / "p"
    assert cli("keys", "platform-init", str(d)).returncode == 0
    assert stat.S_IMODE((d / "platform.key").stat().st_mode) == 0o600
    load_platform_private(d / "platform.key")
    os.chmod(d / "platform.key", 0o640)
    with pytest.raises(KeyFileError, match=r"mode 0640\); run: chmod 600"):
        load_platform_private(d / "platform.key")


def test_wrong_key_type_is_named(tmp_path: Path) -> None:
    d = tmp_path / "p"
    assert cli("keys", "platform-init", str(d)).returncode == 0
    with pytest.raises(KeyFileError, match="expected an Ed25519 device key"):
        load_signing_key(d / "platform.key")
    (d / "garbage.key").write_bytes(b"nope")
    os.chmod(d / "garbage.key", 0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_signing_key(d / "garbage.key")


def test_seal_cli_puts_a_file_into_the_spool(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert cli("keys", "init", "--dir", str(keys)).returncode == 0
    assert cli("keys", "platform-init", str(keys)).returncode == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[device]\nid="tech-1"\n[keys]\ndevice_key="{keys}/device.key"\n'
        f'platform_public="{keys}/platform.pub"\n[spool]\ndir="{tmp_path}/spool"\nreserve_mb=0\n'
    )
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"\xff\xd8" + os.urandom(5000))
    res = cli("seal", str(src), "--stream", "still", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "as tech-1/still#0" in res.stdout
    status = cli("spool", "--config", str(cfg))
    assert "still" in status.stdout and status.returncode == 0
    out = tmp_path / "plain"
    res = cli(
        "verify",
        str(tmp_path / "spool"),
        "--platform-key",
        str(keys / "platform.key"),
        "--decrypt-to",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert (out / "tech-1" / "still" / "000000000000.jpg").read_bytes() == src.read_bytes()


def test_spool_retry_reoffers_refused_segments(tmp_path: Path) -> None:
    from agent.storage.keys import load_platform_public
    from agent.storage.sealer import Sealer
    from agent.storage.settings import SealSettings, SpoolSettings
    from agent.storage.spool import Spool

    keys = tmp_path / "keys"
    assert cli("keys", "init", "--dir", str(keys)).returncode == 0
    assert cli("keys", "platform-init", str(keys)).returncode == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[device]\nid="t"\n[spool]\ndir="{tmp_path}/spool"\n')
    sealer = Sealer(
        device_id="t",
        boot_id="b",
        signing_key=load_signing_key(keys / "device.key"),
        platform_public=load_platform_public(keys / "platform.pub"),
        settings=SealSettings(),
    )
    with Spool(SpoolSettings(dir=tmp_path / "spool", reserve_mb=0), sealer) as sp:
        sp.put_bytes("video", b"x")
        sp.park(sp.next_ready()[0].id, "unknown device")
        assert sp.next_ready() == []
        res = cli("spool", "--retry", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        assert "1 refused segment(s) will be sent again" in res.stdout
        assert [i.seq for i in sp.next_ready()] == [0]
