"""deploy/ for power and the modem: the polkit rules (exactly the power-off for the service
user), the I2C drop-in only where configured (systemd-analyze verify), and install.sh's plan
for --i2c, --modem and a config that already reads an INA219."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.test_deploy import DEPLOY, INSTALL, UNIT, run_script, verify_copy

RULES = DEPLOY / "polkit"


def test_power_off_rule_allows_exactly_the_power_off_for_the_service_user() -> None:
    text = (RULES / "50-edge-agent-power-off.rules").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    assert sorted(re.findall(r'action\.id == "([^"]+)"', code)) == [
        "org.freedesktop.login1.power-off",
        "org.freedesktop.login1.power-off-multiple-sessions",
    ]
    assert re.findall(r'subject\.user == "([^"]+)"', code) == ["edge-agent"]
    assert code.count("polkit.Result.YES") == 1 and "reboot" not in code
    assert "ignore-inhibit" not in code
    modem = (RULES / "51-edge-agent-modem.rules").read_text()
    assert re.findall(r'action\.id == "([^"]+)"', modem) == [
        "org.freedesktop.ModemManager1.Device.Control"
    ]


def test_unit_with_the_i2c_dropin_verifies(tmp_path: Path) -> None:
    verify_copy(tmp_path, UNIT.read_text(), "[Service]\nDeviceAllow=char-i2c rw\n")
    assert "char-i2c" not in "\n".join(
        line for line in UNIT.read_text().splitlines() if not line.startswith("#")
    ), "I2C only where configured, in the drop-in"


def test_install_plan_without_and_with_i2c_and_modem(tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = run_script(INSTALL, "--root", root, "--profile", "tracker", "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "polkitd" in out and "modemmanager" not in out
    assert "50-edge-agent-power-off.rules" in out and "51-edge-agent-modem.rules" not in out
    assert "20-i2c.conf" not in out and "usermod -a -G i2c" not in out
    res = run_script(INSTALL, "--root", root, "--profile", "bodycam", "--dry-run", "--i2c",
                     "--modem")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "modemmanager" in out and "51-edge-agent-modem.rules" in out
    assert "+ usermod -a -G i2c edge-agent # skipped: --root" in out
    assert f"+ write {root}/etc/systemd/system/edge-agent.service.d/20-i2c.conf" in out
    assert not root.exists(), "a dry run created files"


def test_install_sees_an_ina219_in_the_existing_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/edge-agent").mkdir(parents=True)
    (root / "etc/edge-agent/agent.toml").write_text('[power]\nsource = "ina219"\n')
    res = run_script(INSTALL, "--root", root, "--profile", "tracker", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert 'agent.toml reads the battery over I2C ([power] source = "ina219")' in res.stdout
    assert "20-i2c.conf" in res.stdout
