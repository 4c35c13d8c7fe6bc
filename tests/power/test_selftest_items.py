"""``edge-agent selftest``'s power and modem items, on the simulated twins: a pisugar-server
on 127.0.0.1, a power_supply tree, the firmware's flags in a file, and the fake mmcli."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.enrol.selftest import SelfTest, Status
from agent.labs.mmcli import set_scenario, write_fake_mmcli
from agent.labs.power import PiSugarServer, lay_out_power_supply

REPO = Path(__file__).resolve().parents[2]


def _config(tmp: Path, extra: str) -> Path:
    path = tmp / "agent.toml"
    path.write_text(f"""
[device]
id = "self-power"
[keys]
device_key = "{tmp}/no/device.key"
platform_public = "{tmp}/no/platform.pub"
[spool]
dir = "{tmp}/spool"
[health]
control_socket = "{tmp}/control.sock"
{extra}
""")
    return path


def _items(tmp: Path, extra: str) -> dict[str, tuple[Status, str]]:
    cfg = parse_config(_config(tmp, extra).read_text())
    report = SelfTest(cfg).run()
    return {i.key: (i.status, i.detail) for i in report.items if i.key in ("power", "modem")}


def test_power_and_modem_pass_on_healthy_twins(tmp_path: Path) -> None:
    server = PiSugarServer().start()
    exe = write_fake_mmcli(tmp_path / "mm")
    flags = tmp_path / "get_throttled"
    flags.write_text("10000\n")
    try:
        items = _items(
            tmp_path,
            f"""
[power]
source = "pisugar"
throttled = "sysfs"
throttled_file = "{flags}"
[power.pisugar]
port = {server.port}
[cellular]
source = "modemmanager"
mmcli = "{exe}"
signal_rate_s = 0
""",
        )
    finally:
        server.stop()
    status, detail = items["power"]
    assert status is Status.PASS, detail
    assert detail.startswith("88 %, on battery, 4.08 V (pisugar:127.0.0.1:")
    assert "under-voltage occurred since boot" in detail
    assert items["modem"] == (Status.PASS, "LTE home, CMCC, signal 67 %")


def test_power_and_modem_problems_say_what_to_do(tmp_path: Path) -> None:
    cls = lay_out_power_supply(tmp_path / "sys", {
        "battery": {"type": "Battery", "status": "Discharging", "capacity": 3}})  # fmt: skip
    exe = write_fake_mmcli(tmp_path / "mm", {"state": "failed", "failed_reason": "sim-missing",
                                             "registration": None})  # fmt: skip
    extra = f"""
[power]
source = "sysfs"
throttled = "off"
[power.sysfs]
root = "{cls}"
[cellular]
source = "modemmanager"
mmcli = "{exe}"
"""
    items = _items(tmp_path, extra)
    assert items["power"][0] is Status.FAIL and "battery critical: 3 %" in items["power"][1]
    assert items["modem"] == (
        Status.FAIL,
        "the modem failed (sim-missing): a missing or unusable SIM, or the modem's firmware",
    )
    for scenario, why in (
        ({"modem": "absent"}, "ModemManager finds no modem"),
        ({"modem": "no-modemmanager"}, "systemctl enable --now ModemManager"),
        ({"modem": "present", "state": "searching", "registration": "searching"},
         "not registered on a network"),
    ):  # fmt: skip
        set_scenario(exe, **scenario)
        status, detail = _items(tmp_path, extra)["modem"]
        assert status is Status.FAIL and why in detail


def test_nothing_configured_skips_and_under_voltage_fails(tmp_path: Path) -> None:
    items = _items(tmp_path, '[power]\nthrottled = "off"\n')
    assert items["power"] == (Status.SKIP, "no power source configured ([power] source = none)")
    assert items["modem"][0] is Status.SKIP
    flags = tmp_path / "flags"
    flags.write_text("50005\n")
    items = _items(tmp_path, f'[power]\nthrottled = "sysfs"\nthrottled_file = "{flags}"\n')
    assert items["power"][0] is Status.FAIL and "under-voltage now" in items["power"][1]


def test_selftest_cli_json_carries_the_items(tmp_path: Path) -> None:
    exe = write_fake_mmcli(tmp_path / "mm", {"modem": "absent"})
    cfg = _config(tmp_path, f'[cellular]\nsource = "modemmanager"\nmmcli = "{exe}"\n')
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "selftest", "--json", "--config", str(cfg)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    items = {i["item"]: i for i in report["items"]}
    assert items["modem"]["status"] == "FAIL"
    assert "cellular modem ... FAIL (ModemManager finds no modem" in res.stderr


@pytest.mark.parametrize("bad", ['source = "ups"', "critical_pct = 30", "poll_s = 0"])
def test_power_config_errors_name_the_field(tmp_path: Path, bad: str) -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"power\.(source|critical_pct|poll_s)"):
        parse_config(_config(tmp_path, f"[power]\n{bad}\n").read_text())


def test_ina219_settings_from_toml(tmp_path: Path) -> None:
    from agent.errors import ConfigError

    text = "[power.ina219]\naddress = 0x43\ncells = 1\ncurve = [[3.0, 0], [4.2, 100]]\n"
    cfg = parse_config(_config(tmp_path, text).read_text())
    assert cfg.power.ina219.address == 0x43 and cfg.power.ina219.curve == ((3.0, 0.0), (4.2, 100.0))
    with pytest.raises(ConfigError, match=r"power\.ina219\.curve: point 1: volts must rise"):
        parse_config(_config(tmp_path, "[power.ina219]\ncurve = [[4.2, 100], [3.0, 0]]\n")
                     .read_text())  # fmt: skip
    with pytest.raises(ConfigError, match=r"power\.ina219\.address: must be 64\.\.79"):
        parse_config(_config(tmp_path, "[power.ina219]\naddress = 0x36\n").read_text())
