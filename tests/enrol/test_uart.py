"""The Pi's UART setup for a GNSS HAT, checked from the boot files as Raspberry Pi OS lays them
out (bookworm: /boot/firmware; older: /boot), and the udev rule that keeps ModemManager off our
serial ports. Each bad case says exactly what to change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.gps.serial_ports import (
    BootFiles,
    check_uart,
    our_ports,
    pps_configured,
    udev_rule,
)

REPO = Path(__file__).resolve().parents[2]
GOOD_CONFIG = """\
# Raspberry Pi OS bookworm's config.txt, trimmed
dtparam=audio=on
camera_auto_detect=1
[cm4]
otg_mode=1
[pi4]
arm_boost=1
[all]
enable_uart=1
dtoverlay=disable-bt
dtoverlay=pps-gpio,gpiopin=18
"""
GOOD_CMDLINE = "console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
PI4 = "Raspberry Pi 4 Model B Rev 1.4"


def board(
    root: Path,
    *,
    config: str = GOOD_CONFIG,
    cmdline: str = GOOD_CMDLINE,
    model: str = PI4,
    boot: str = "boot/firmware",
    serial0: str | None = "ttyAMA0",
) -> BootFiles:
    (root / boot).mkdir(parents=True)
    (root / boot / "config.txt").write_text(config)
    (root / boot / "cmdline.txt").write_text(cmdline)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    (root / "dev").mkdir()
    if serial0:
        (root / "dev" / serial0).touch()
        (root / "dev/serial0").symlink_to(serial0)
    return BootFiles(root)


def test_a_good_pi4_passes(tmp_path: Path) -> None:
    rep = check_uart("/dev/serial0", board(tmp_path))
    assert rep.applies and rep.ok and rep.findings == ()
    assert "enable_uart=1" in rep.summary() and "dtoverlay=disable-bt" in rep.summary()
    assert pps_configured(BootFiles(tmp_path)) == "18"


def test_older_layout_in_boot(tmp_path: Path) -> None:
    rep = check_uart("/dev/serial0", board(tmp_path, boot="boot"))
    assert rep.ok and "/boot/config.txt" in rep.summary()


def test_uart_not_enabled(tmp_path: Path) -> None:
    rep = check_uart("/dev/serial0", board(tmp_path, config="dtoverlay=disable-bt\n"))
    assert not rep.ok
    (f,) = rep.findings
    assert f.fix == f"add the line enable_uart=1 to {tmp_path}/boot/firmware/config.txt and reboot"


def test_enable_uart_only_in_another_models_section_does_not_count(tmp_path: Path) -> None:
    cfg = "[pi3]\nenable_uart=1\n[all]\ndtoverlay=disable-bt\n"
    assert not check_uart("/dev/serial0", board(tmp_path, config=cfg)).ok
    cfg = "enable_uart=1\nenable_uart=0\ndtoverlay=disable-bt\n"  # the last one wins
    assert not check_uart("/dev/serial0", board(tmp_path / "b", config=cfg)).ok


def test_include_is_followed(tmp_path: Path) -> None:
    files = board(tmp_path, config="include extra.txt\n")
    (tmp_path / "boot/firmware/extra.txt").write_text("enable_uart=1\ndtoverlay=disable-bt\n")
    assert check_uart("/dev/serial0", files).ok


def test_serial_console_on_the_receivers_uart(tmp_path: Path) -> None:
    cmdline = "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootwait\n"
    rep = check_uart("/dev/serial0", board(tmp_path, cmdline=cmdline))
    assert not rep.ok
    (f,) = rep.findings
    assert "console=serial0,115200" in f.problem
    assert f.fix.startswith(f"remove console=serial0,115200 from {tmp_path}/boot/firmware/cmdline")


def test_serial_getty_on_the_receivers_uart(tmp_path: Path) -> None:
    files = board(tmp_path)
    wants = tmp_path / "etc/systemd/system/getty.target.wants"
    wants.mkdir(parents=True)
    (wants / "serial-getty@ttyAMA0.service").symlink_to("/lib/systemd/system/serial-getty@.service")
    rep = check_uart("/dev/serial0", files)
    assert [f.fix for f in rep.findings] == [
        "sudo systemctl disable --now serial-getty@ttyAMA0.service"
    ]


def test_a_console_on_the_other_uart_is_not_ours(tmp_path: Path) -> None:
    # serial0 is the PL011 (Bluetooth moved off it); a console on ttyS0 does not touch it.
    rep = check_uart("/dev/serial0", board(tmp_path, cmdline="console=ttyS0,115200 rootwait\n"))
    assert rep.ok


@pytest.mark.parametrize(
    ("model", "severity"),
    [
        (PI4, "fail"),
        ("Raspberry Pi Zero 2 W Rev 1.0", "fail"),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "fail"),
        ("Raspberry Pi 2 Model B Rev 1.1", None),  # no Bluetooth: serial0 is the PL011
        ("Raspberry Pi 5 Model B Rev 1.0", None),  # Bluetooth has its own UART
        ("", "warn"),  # cannot tell the board
    ],
)
def test_bluetooth_on_the_pl011(tmp_path: Path, model: str, severity: str | None) -> None:
    files = board(tmp_path, config="enable_uart=1\n", model=model, serial0="ttyS0")
    rep = check_uart("/dev/serial0", files)
    sev = [f.severity for f in rep.findings]
    assert sev == ([severity] if severity else [])
    if severity:
        assert "dtoverlay=disable-bt" in rep.findings[0].fix
        assert "sudo systemctl disable hciuart" in rep.findings[0].fix


def test_miniuart_bt_counts_as_moved(tmp_path: Path) -> None:
    files = board(tmp_path, config="enable_uart=1\ndtoverlay=miniuart-bt\n")
    assert check_uart("/dev/serial0", files).ok


def test_usb_receivers_and_non_pi_need_no_uart_setup(tmp_path: Path) -> None:
    rep = check_uart("/dev/ttyACM0", board(tmp_path))
    assert not rep.applies and rep.ok and "not the Pi's UART" in rep.summary()
    rep = check_uart("/dev/serial0", BootFiles(tmp_path / "empty"))
    assert not rep.applies and "not a Pi" in rep.summary()


# ------------------------------------------------------------------ the udev rule


def test_udev_rule_names_every_port_of_ours(tmp_path: Path) -> None:
    cfg = parse_config(
        """
[device]
id = "trk-1"
[gps]
source = "serial"
serial_port = "/dev/serial/by-id/usb-u-blox_AG_-_www.u-blox.com_u-blox_GNSS_receiver-if00"
[video]
trigger_port = "/dev/ttyUSB0"
[talk]
ptt_port = "socket://127.0.0.1:7000"
"""
    )
    ports = our_ports(cfg)
    assert ports == [cfg.gps.serial_port, "/dev/ttyUSB0"]  # URLs are not device nodes
    rule = udev_rule([*ports, "/dev/serial0"], realpath=lambda p: "/dev/ttyAMA0")
    by_id = "serial/by-id/usb-u-blox_AG_-_www.u-blox.com_u-blox_GNSS_receiver-if00"
    assert f'SYMLINK=="{by_id}", ENV{{ID_MM_DEVICE_IGNORE}}="1"' in rule
    assert 'KERNEL=="ttyUSB0", ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
    assert 'KERNEL=="ttyAMA0", ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
    assert 'ATTRS{idVendor}=="1546", ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
    assert our_ports(AgentConfig()) == []  # gps.source none, no trigger: only the u-blox line
    with pytest.raises(ValueError):
        udev_rule(['/dev/tty"; RUN+="/bin/sh'])


def test_cli_udev_rule(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "trk-1"\n[gps]\nsource = "serial"\nserial_port = "/dev/ttyACM0"\n'
    )
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "gps", "udev-rule", "--config", str(cfg),
         "--port", "/dev/ttyUSB3"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert 'KERNEL=="ttyACM0"' in res.stdout and 'KERNEL=="ttyUSB3"' in res.stdout
