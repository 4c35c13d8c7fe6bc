"""Provisioning and the self-test on the receiver's port: the Pi's UART findings, the udev rule
in the target root, a u-blox receiver configured (a simulated one on a pty), and the self-test's
"serial port" item with ModemManager present."""

from __future__ import annotations

from pathlib import Path

from agent.config import parse_config
from agent.gps.receiver_setup import provision_receiver, rule_path, serial_item, write_udev_rule
from tests.enrol.test_uart import board
from tests.gps.ublox_sim import SimReceiver


def config(port: str, source: str = "serial", profile: str = "bodycam") -> object:
    return parse_config(
        f'[device]\nid = "cam-1"\nprofile = "{profile}"\n'
        f'[gps]\nsource = "{source}"\nserial_port = "{port}"\n'
        "[receiver]\nack_timeout_s = 2.0\n"
    )


def test_provisioning_reports_the_uart_and_writes_the_udev_rule(tmp_path: Path) -> None:
    board(tmp_path, config="dtoverlay=disable-bt\n")  # enable_uart missing
    said: list[str] = []
    assert provision_receiver(config("/dev/serial0"), tmp_path, say=said.append) is None
    text = "\n".join(said)
    assert "UART FAIL: the UART is not enabled" in text
    assert f"add the line enable_uart=1 to {tmp_path}/boot/firmware/config.txt" in text
    rule = rule_path(tmp_path).read_text()
    assert 'KERNEL=="ttyAMA0|ttyS0", ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
    if not Path("/dev/serial0").exists():
        assert "/dev/serial0 is not there" in text


def test_provisioning_configures_a_ublox_receiver(tmp_path: Path) -> None:
    sim = SimReceiver(tmp_path / "ttyACM9", generation=8)
    try:
        said: list[str] = []
        ok = provision_receiver(config(str(sim.link)), tmp_path / "root", say=said.append)
        assert ok is True, said
        assert (sim.meas_ms, sim.dyn_model) == (1000, 3)  # bodycam: pedestrian
        assert sim.saved == ["flash"]
        assert any("CFG-NAV5) ... ACKNOWLEDGED (pedestrian)" in s for s in said)
    finally:
        sim.close()
    silent = SimReceiver(tmp_path / "ttyACM8", silent=True)
    try:
        said = []
        assert (
            provision_receiver(config(str(silent.link)), tmp_path / "r2", say=said.append) is False
        )
        assert any("not a u-blox?" in s for s in said)
    finally:
        silent.close()


def test_under_gpsd_the_receiver_is_left_to_the_technician(tmp_path: Path) -> None:
    said: list[str] = []
    assert provision_receiver(config("/dev/ttyACM0", "gpsd"), tmp_path, say=said.append) is None
    assert any("sudo systemctl stop gpsd.socket gpsd" in s for s in said)


def test_selftest_serial_item(tmp_path: Path) -> None:
    assert serial_item(config("x", "replay"), tmp_path)[0] == "SKIP"
    board(tmp_path)
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/ModemManager").touch()
    cfg = config("/dev/ttyACM0")
    status, detail = serial_item(cfg, tmp_path)
    assert status == "FAIL" and "ModemManager is installed" in detail
    write_udev_rule(cfg, tmp_path, say=lambda _s: None)
    status, detail = serial_item(cfg, tmp_path)
    assert status == "PASS" and "ModemManager keeps off it" in detail
    status, detail = serial_item(config("/dev/serial0"), tmp_path)
    assert status == "FAIL" and "does not name /dev/serial0" in detail  # rule for ttyACM0 only
    bad = tmp_path / "bad"
    board(bad, cmdline="console=serial0,115200 rootwait\n")
    status, detail = serial_item(config("/dev/serial0"), bad)
    assert status == "FAIL" and "remove console=serial0,115200" in detail
