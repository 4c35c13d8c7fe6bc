"""The installer's time and serial-port steps: chrony's refclock lines (checked by chronyd's
own parser), the gpsd defaults, and the udev rule, in the plan install.sh prints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.gps.chrony_conf import render, sock_path

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"


@pytest.mark.parametrize("pps", [None, "/dev/pps0", "sock:/dev/pps0"])
def test_chronyd_accepts_what_we_write(tmp_path: Path, pps: str | None) -> None:
    chronyd = shutil.which("chronyd")
    if chronyd is None:
        pytest.fail("chronyd is missing though the Makefile installs chrony: run make setup")
    conf = tmp_path / "edge-agent-gnss.conf"
    conf.write_text(render(pps))
    res = subprocess.run([chronyd, "-p", "-f", str(conf)], capture_output=True, text=True,
                         timeout=30, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    refclocks = [ln for ln in res.stdout.splitlines() if ln.startswith("refclock")]
    if pps is None:
        assert refclocks == ["refclock SHM 0 refid GNSS poll 3 offset 0.1 delay 0.2"]
    else:
        assert refclocks[0].endswith(" noselect")  # NMEA only numbers the pulses
        assert refclocks[1].endswith("refid PPS lock GNSS poll 3")
        assert (sock_path("/dev/pps0") in refclocks[1]) == pps.startswith("sock:")


def test_chrony_conf_cli_reads_the_pps_overlay(tmp_path: Path) -> None:
    boot = tmp_path / "boot/firmware"
    boot.mkdir(parents=True)
    (boot / "config.txt").write_text("enable_uart=1\ndtoverlay=pps-gpio,gpiopin=4\n")

    def conf(*args: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "agent.cli", "gps", "chrony-conf", *args],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "refclock PPS /dev/pps0 refid PPS lock GNSS" in conf("--boot-root", str(tmp_path))
    assert "PPS" not in conf("--boot-root", str(tmp_path / "nothing")).replace("gpsd", "")
    assert "refclock PPS" not in conf("--pps", "none", "--boot-root", str(tmp_path))
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "gps", "chrony-conf", "--pps", "pps0"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode != 0 and "/dev/ppsN" in res.stderr


def test_install_plan_with_gpsd_time_and_ports(tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = subprocess.run(
        [str(INSTALL), "--root", str(root), "--profile", "tracker", "--gpsd",
         "--gnss-port", "/dev/serial0", "--pps", "sock:/dev/pps0", "--dry-run"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "gpsd chrony" in out  # Debian packages
    assert f"gps udev-rule --config {root}/etc/edge-agent/agent.toml --port /dev/serial0 > " \
        f"{root}/etc/udev/rules.d/77-edge-agent-serial.rules" in out  # fmt: skip
    assert "gps chrony-conf --pps sock:/dev/pps0" in out
    assert f"> {root}/etc/chrony/conf.d/edge-agent-gnss.conf" in out
    assert 'DEVICES="/dev/serial0 /dev/pps0", GPSD_OPTIONS="-n"' in out
    order = [out.index(s) for s in ("restart chrony.service", "enable gpsd.service",
                                    "restart gpsd.service")]  # fmt: skip
    assert order == sorted(order)  # chrony first: it creates the PPS socket gpsd writes to
    assert "udevadm trigger --subsystem-match=tty --action=change # skipped: --root" in out
    assert not root.exists(), "a dry run created files"
    res = subprocess.run(
        [str(INSTALL), "--root", str(root), "--profile", "tracker", "--dry-run"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "udev-rule" in res.stdout and "chrony" not in res.stdout
