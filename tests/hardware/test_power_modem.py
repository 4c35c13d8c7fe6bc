"""The device's own body on a rig: the UPS HAT over I2C, pisugar-server, the firmware's
flags, the cellular modem through ModemManager, and the polkit rule for the power-off.

    EDGE_AGENT_HIL_I2C=1:0x42            an INA219 UPS HAT: I2C bus and address
    EDGE_AGENT_HIL_I2C_CELLS=2           its cells in series (default 2)
    EDGE_AGENT_HIL_PISUGAR=127.0.0.1:8423  pisugar-server (or the path of its Unix socket)
    EDGE_AGENT_HIL_MODEM=any             a modem ModemManager sees (mmcli -m argument)
    EDGE_AGENT_HIL_MODEM_REGISTERED=1    the SIM is active and in coverage: require registration
    EDGE_AGENT_HIL_POWEROFF=1            install.sh ran: logind must allow the service user to
                                         power off without asking (CanPowerOff = "yes"; the rig
                                         is not powered off)

Each skips, saying why, where the rig does not name the part; a named part that is absent
fails. The same readers as the agent's (agent/power, agent/cellular) run against the real
hardware, so a pass means what the simulated twins' tests mean, on the device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.cellular.mmcli import ModemManagerLink
from agent.errors import SourceError
from agent.power.ina219 import Ina219Power
from agent.power.pisugar import PiSugarPower
from agent.power.settings import Ina219Settings, PiSugarSettings
from agent.power.throttle import ThrottleReader
from tests.hardware.rig import device_from_env

pytestmark = pytest.mark.hardware

THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


def test_ina219_ups_hat_on_i2c() -> None:
    spec = device_from_env("EDGE_AGENT_HIL_I2C", "I2C UPS HAT (INA219)", path=False)
    bus_s, _, addr_s = spec.partition(":")
    bus, address = int(bus_s), int(addr_s or "0x42", 0)
    if not Path(f"/dev/i2c-{bus}").exists():
        pytest.fail(f"EDGE_AGENT_HIL_I2C={spec}: /dev/i2c-{bus} is not there (I2C enabled?)")
    cells = int(os.environ.get("EDGE_AGENT_HIL_I2C_CELLS", "2"))
    src = Ina219Power(Ina219Settings(bus=bus, address=address, cells=cells))
    try:
        readings = [src.read() for _ in range(3)]
    except SourceError as exc:
        pytest.fail(f"the INA219 at {spec} cannot be read: {exc}")
    finally:
        src.close()
    for r in readings:
        assert r.voltage_v is not None and 2.5 * cells <= r.voltage_v <= 4.35 * cells, r
        assert r.charge_pct is not None and 0 <= r.charge_pct <= 100
        assert r.current_a is None or abs(r.current_a) < 10
    spread = max(r.voltage_v or 0 for r in readings) - min(r.voltage_v or 0 for r in readings)
    assert spread < 0.3, f"the bus voltage jumps between readings: {readings}"


def test_pisugar_server() -> None:
    spec = device_from_env("EDGE_AGENT_HIL_PISUGAR", "PiSugar power manager", path=False)
    if spec.startswith("/"):
        settings = PiSugarSettings(socket=Path(spec))
    else:
        host, _, port = spec.rpartition(":")
        settings = PiSugarSettings(host=host or "127.0.0.1", port=int(port))
    src = PiSugarPower(settings)
    try:
        r = src.read()
    except SourceError as exc:
        pytest.fail(f"pisugar-server at {spec}: {exc}")
    finally:
        src.close()
    assert r.charge_pct is not None and 0 <= r.charge_pct <= 100
    assert r.voltage_v is None or 2.5 <= r.voltage_v <= 4.4
    assert r.charging is not None


def test_firmware_throttling_flags_on_a_raspberry_pi() -> None:
    if not THROTTLED.exists() and shutil.which("vcgencmd") is None:
        pytest.skip(f"NOT RUN: not a Raspberry Pi ({THROTTLED} and vcgencmd absent)")
    t = ThrottleReader("auto", THROTTLED).read()
    assert t is not None
    assert not t.under_voltage, f"the rig's supply is under-voltage now ({t.to_json()})"


def test_modem_through_modemmanager() -> None:
    modem = device_from_env("EDGE_AGENT_HIL_MODEM", "cellular modem", path=False)
    link = ModemManagerLink("mmcli", modem, timeout_s=20.0, signal_rate_s=10)
    r = link.read()
    assert r.present, f"EDGE_AGENT_HIL_MODEM={modem}: {r.state} (ModemManager, USB, power?)"
    assert r.state not in ("failed", "locked"), r.to_json()
    assert r.model, r.to_json()
    if os.environ.get("EDGE_AGENT_HIL_MODEM_REGISTERED") == "1":
        assert r.registered, f"not registered: {r.to_json()}"
        assert r.signal_pct is not None and r.signal_pct > 0
        assert r.access_tech, r.to_json()


def test_service_user_may_power_off_without_asking() -> None:
    if os.environ.get("EDGE_AGENT_HIL_POWEROFF") != "1":
        pytest.skip(
            "NOT RUN: EDGE_AGENT_HIL_POWEROFF is not set (a rig with install.sh run sets it; "
            "see docs/hil.md)"
        )
    # logind's own answer for the same user and polkit action the agent's PowerOff call uses.
    res = subprocess.run(
        ["runuser", "-u", "edge-agent", "--", "busctl", "call", "--system",
         "org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager",
         "CanPowerOff"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 's "yes"', (
        f"logind answers {res.stdout.strip()} for edge-agent: is "
        "/etc/polkit-1/rules.d/50-edge-agent-power-off.rules installed and polkitd running?"
    )
