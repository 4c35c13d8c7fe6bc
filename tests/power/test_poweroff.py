"""The power-off request's shape: logind's documented D-Bus PowerOff through busctl, or
systemctl poweroff, run here against stand-ins on PATH that record what they were asked (the
real call runs on the rig: tests/hardware; run here it would power this machine off)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.power.poweroff import system_power_off


def _stand_in(bin_dir: Path, name: str, rc: int, say: str = "") -> Path:
    log = bin_dir / f"{name}.args"
    exe = bin_dir / name
    exe.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "{say}" >&2\nexit {rc}\n')
    exe.chmod(0o755)
    return log


def test_logind_power_off_is_the_documented_dbus_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _stand_in(tmp_path, "busctl", 0)
    monkeypatch.setenv("PATH", f"{tmp_path}")
    assert system_power_off("logind")("battery critical") is True
    assert log.read_text().split() == [
        "call", "--system", "org.freedesktop.login1", "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager", "PowerOff", "b", "false",
    ]  # fmt: skip


def test_systemctl_and_a_refusal_and_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = _stand_in(tmp_path, "systemctl", 1, "Access denied")
    monkeypatch.setenv("PATH", f"{tmp_path}")
    with caplog.at_level(logging.ERROR):
        assert system_power_off("systemctl")("battery critical") is False
    assert log.read_text().split() == ["poweroff", "--no-wall"]
    assert "power-off refused (1): Access denied" in caplog.text
    assert "polkit rule" in caplog.text
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert system_power_off("logind")("x") is False  # no busctl at all: reported, not raised
    assert system_power_off("none")("x") is True
