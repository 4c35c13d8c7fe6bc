"""The power sources against their simulated twins: a power_supply tree laid out as the kernel
does, an INA219 answering register reads on a simulated I2C bus, and a pisugar-server speaking
its line protocol on 127.0.0.1 and on a Unix socket."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import SourceError
from agent.labs.power import FixedChip, Ina219Chip, PiSugarServer, SimBus, lay_out_power_supply
from agent.labs.power import set_attr as set_sysfs
from agent.power.ina219 import CONFIG, Ina219Power
from agent.power.pisugar import PiSugarPower
from agent.power.reading import charge_from_curve
from agent.power.settings import (
    LI_ION_CURVE,
    Ina219Settings,
    PiSugarSettings,
    SysfsPowerSettings,
)
from agent.power.sysfs import SysfsPower
from agent.power.throttle import ThrottleReader, parse

# ------------------------------------------------------------------ power_supply class


def _ups_tree(tmp: Path, **battery: str | int) -> Path:
    """A UPS HAT's kernel driver: a mains input and a battery, real attribute names/units."""
    bat: dict[str, str | int] = {
        "type": "Battery", "status": "Discharging", "present": 1, "technology": "Li-ion",
        "capacity": 76, "capacity_level": "Normal", "voltage_now": 3_912_000,
        "current_now": -412_000, "scope": "System",
    }  # fmt: skip
    bat.update(battery)
    return lay_out_power_supply(
        tmp, {"ac": {"type": "Mains", "online": 0}, "battery": bat, "hid-mouse": {
            "type": "Battery", "scope": "Device", "capacity": 5, "status": "Discharging"}}
    )  # fmt: skip


def test_sysfs_reads_the_battery_and_the_mains_as_the_kernel_lays_them_out(tmp_path: Path) -> None:
    cls = _ups_tree(tmp_path)
    assert (cls / "battery").is_symlink() and (cls / "battery" / "uevent").exists()
    src = SysfsPower(SysfsPowerSettings(root=cls))
    r = src.read()
    # the peripheral's battery (scope Device) is not the one feeding the device
    assert r.source == "sysfs:battery"
    assert r.charge_pct == 76.0
    assert r.voltage_v == pytest.approx(3.912)  # microvolts
    assert r.current_a == pytest.approx(-0.412)  # microamperes, negative discharging
    assert r.charging is False and r.external_power is False and r.on_battery
    set_sysfs(tmp_path, "ac", "online", 1)
    set_sysfs(tmp_path, "battery", "status", "Charging")
    r = src.read()
    assert r.charging is True and r.external_power is True and not r.on_battery


def test_sysfs_named_battery_energy_fallback_and_no_input_supply(tmp_path: Path) -> None:
    cls = lay_out_power_supply(tmp_path, {"BAT0": {
        "type": "Battery", "status": "Full", "energy_now": 30_000_000,
        "energy_full": 40_000_000, "voltage_avg": 12_100_000}})  # fmt: skip
    r = SysfsPower(SysfsPowerSettings(root=cls, battery="BAT0")).read()
    assert r.charge_pct == 75.0 and r.voltage_v == pytest.approx(12.1)
    # no Mains/USB supply: "Full" means a charger is connected
    assert r.external_power is True and r.charging is False


@pytest.mark.parametrize(
    ("attr", "value", "why"),
    [
        ("capacity", "abc", "not an integer"),
        ("capacity", 250, "not a percentage"),
        ("voltage_now", "3.9V", "not an integer"),
        ("voltage_now", 99_000_000, "outside"),
        ("capacity", "\xff\xfe", "not text"),
        ("present", 0, "no battery present"),
    ],
)
def test_sysfs_garbage_is_a_clear_error(tmp_path: Path, attr: str, value: object, why: str) -> None:
    cls = _ups_tree(tmp_path)
    set_sysfs(tmp_path, "battery", attr, value)  # type: ignore[arg-type]
    with pytest.raises(SourceError, match=why):
        SysfsPower(SysfsPowerSettings(root=cls)).read()


def test_sysfs_missing_class_or_battery_names_what_is_there(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no power_supply class"):
        SysfsPower(SysfsPowerSettings(root=tmp_path / "nothing")).read()
    cls = lay_out_power_supply(tmp_path, {"ac": {"type": "Mains", "online": 1}})
    with pytest.raises(SourceError, match=r"no battery among the supplies \(present: ac \(Mains\)"):
        SysfsPower(SysfsPowerSettings(root=cls)).read()
    with pytest.raises(SourceError, match="BAT1: no such supply"):
        SysfsPower(SysfsPowerSettings(root=cls, battery="BAT1")).read()


# ------------------------------------------------------------------ INA219


def test_ina219_twin_answers_as_the_datasheet_documents() -> None:
    chip = Ina219Chip(shunt_ohms=0.1, bus_volts=8.0, current_a=0.25)
    assert chip.read(0x00) == 0x399F  # power-on reset value
    assert chip.read(0x02) == (2000 << 3) | 0x2  # 8.000 V / 4 mV, CNVR set, no overflow
    assert chip.read(0x01) == 2500  # 25 mV / 10 µV
    chip.write(0x05, 4096)  # calibration: current register == shunt register
    assert chip.read(0x04) == 2500
    chip.current_a = -0.25
    assert chip.read(0x01) == (-2500) & 0xFFFF  # two's complement
    chip.write(0x00, 0x8000)  # reset bit
    assert chip.read(0x00) == 0x399F


def _ina(chip: object | None, **kw: object) -> tuple[Ina219Power, SimBus]:
    bus = SimBus({0x42: chip} if chip is not None else {})
    src = Ina219Power(Ina219Settings(**kw), open_bus=lambda n: bus)  # type: ignore[arg-type]
    return src, bus


def test_ina219_two_cells_voltage_curve_current_and_charging() -> None:
    chip = Ina219Chip(shunt_ohms=0.01, bus_volts=7.4, current_a=-0.8)
    src, _bus = _ina(chip)
    r = src.read()
    assert chip.writes[0] == (0x00, CONFIG)  # configured once, then read back
    assert r.voltage_v == pytest.approx(7.4, abs=0.004)
    assert r.charge_pct == pytest.approx(40.0, abs=0.5)  # 3.70 V a cell on the Li-ion curve
    assert r.current_a == pytest.approx(-0.8, abs=0.001)
    assert r.charging is False and r.on_battery
    chip.current_a, chip.bus_volts = 1.2, 8.3
    r = src.read()
    assert r.charging is True and r.external_power is True and r.charge_pct > 90
    assert len([w for w in chip.writes if w[0] == 0]) == 1


def test_ina219_board_wired_the_other_way_and_overflow() -> None:
    chip = Ina219Chip(shunt_ohms=0.01, bus_volts=3.9, current_a=0.5)
    src, _ = _ina(chip, cells=1, charge_current_positive=False, address=0x42)
    r = src.read()
    assert r.current_a == pytest.approx(-0.5, abs=0.001) and r.charging is False
    chip.current_a = 40.0  # 400 mV across the shunt: beyond +/-320 mV, OVF
    r = src.read()
    assert r.current_a is None and r.charging is None and r.voltage_v == pytest.approx(3.9, 0.01)


def test_ina219_missing_device_naks_then_comes_back() -> None:
    src, bus = _ina(None)
    with pytest.raises(SourceError, match=r"no answer from the INA219 at 0x42 .*NAK"):
        src.read()
    assert bus.closed  # closed; reopened on the next read
    bus.closed = False
    bus.chips[0x42] = Ina219Chip(bus_volts=8.0, current_a=0.0)
    assert src.read().voltage_v == pytest.approx(8.0)


def test_ina219_something_else_at_the_address_is_refused() -> None:
    src, _ = _ina(FixedChip(0xFFFF))
    with pytest.raises(SourceError, match="not an INA219"):
        src.read()


@pytest.mark.parametrize(
    ("exc", "why"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file"), "enable I2C"),
        (PermissionError(errno.EACCES, "Permission denied"), "i2c group"),
    ],
)
def test_ina219_bus_problems_say_what_to_do(exc: OSError, why: str) -> None:
    def open_bus(n: int) -> SimBus:
        raise exc

    with pytest.raises(SourceError, match=why):
        Ina219Power(Ina219Settings(), open_bus=open_bus).read()


def test_voltage_curve_interpolates_and_clamps() -> None:
    assert charge_from_curve(7.4, LI_ION_CURVE, 2) == pytest.approx(40.0)
    assert charge_from_curve(3.65, LI_ION_CURVE, 1) == pytest.approx(30.0)
    assert charge_from_curve(2.0, LI_ION_CURVE, 1) == 0.0
    assert charge_from_curve(9.0, LI_ION_CURVE, 2) == 100.0


# ------------------------------------------------------------------ PiSugar


@pytest.fixture
def pisugar() -> Iterator[PiSugarServer]:
    server = PiSugarServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_pisugar_over_tcp_with_button_events_in_between(pisugar: PiSugarServer) -> None:
    pisugar.events = ["single", "long"]  # the server pushes these on the same connection
    src = PiSugarPower(PiSugarSettings(port=pisugar.port, timeout_s=2.0))
    r = src.read()
    assert r.source == f"pisugar:127.0.0.1:{pisugar.port}"
    assert r.charge_pct == 87.5 and r.voltage_v == pytest.approx(4.08)
    assert r.current_a is None  # battery_i: PiSugar 2 only; this server does not know it
    assert r.charging is False and r.external_power is False
    pisugar.values.update(battery_power_plugged="true", battery="100.4")
    r = src.read()
    assert r.charging is True and r.external_power is True and r.charge_pct == 100.0
    assert "get battery" in pisugar.requests and "get battery_power_plugged" in pisugar.requests
    src.close()


def test_pisugar_unix_socket_and_older_model(tmp_path: Path) -> None:
    server = PiSugarServer(unix=tmp_path / "pisugar-server.sock").start()
    try:
        del server.values["battery_power_plugged"]
        server.values.update(battery_charging="true", battery_i="0.61")
        src = PiSugarPower(PiSugarSettings(socket=tmp_path / "pisugar-server.sock"))
        r = src.read()
        assert r.charging is True and r.current_a == pytest.approx(0.61)
        src.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("values", "raw", "why"),
    [
        ({"battery": "I2C read error"}, None, "battery: 'I2C read error'"),
        ({"battery": "nan"}, None, "not a number"),
        ({"battery": "180"}, None, "outside 0..100"),
        ({"battery_v": "-inf"}, None, "not a number"),
        ({}, b"\xff" * 5000, "garbage"),
        ({}, b"battery 12\n", "no answer"),
    ],
)
def test_pisugar_garbage_is_a_clear_error(
    pisugar: PiSugarServer, values: dict[str, str], raw: bytes | None, why: str
) -> None:
    pisugar.values.update(values)
    pisugar.raw = raw
    src = PiSugarPower(PiSugarSettings(port=pisugar.port, timeout_s=0.5))
    with pytest.raises(SourceError, match=why):
        src.read()
    src.close()


def test_pisugar_not_running_then_started() -> None:
    server = PiSugarServer()
    port = server.port
    server._server.server_close()  # bound then closed: nothing listens on the port
    src = PiSugarPower(PiSugarSettings(port=port, timeout_s=0.5))
    with pytest.raises(SourceError, match=r"cannot connect.*pisugar-server"):
        src.read()
    again = PiSugarServer().start()
    try:
        src = PiSugarPower(PiSugarSettings(port=again.port, timeout_s=1.0))
        assert src.read().charge_pct == 87.5
        again.stop()
        with pytest.raises(SourceError):
            src.read()  # the server went away: a clear error, the next read reconnects
    finally:
        src.close()


# ------------------------------------------------------------------ get_throttled


def test_throttled_flags_decoded_from_sysfs_and_vcgencmd(tmp_path: Path) -> None:
    t = parse("50005\n", "sysfs")
    assert t.under_voltage and t.flag("throttled") and t.flag("under_voltage_occurred")
    assert not t.flag("freq_capped") and t.to_json()["raw"] == "0x50005"
    assert parse("throttled=0x80008", "vcgencmd").active() == [
        "soft_temp_limit",
        "soft_temp_limit_occurred",
    ]
    for bad in ("", "zz", "throttled=0x", "0x1234567890"):
        with pytest.raises(SourceError, match="garbage"):
            parse(bad, "sysfs")
    f = tmp_path / "get_throttled"
    f.write_text("0\n")
    assert ThrottleReader("auto", f).read() == parse("0", "sysfs")
    assert ThrottleReader("off", f).read() is None
    calls: list[list[str]] = []

    def vcgencmd(argv: list[str]) -> str:
        calls.append(argv)
        return "throttled=0x10000\n"

    t2 = ThrottleReader("vcgencmd", tmp_path / "absent", run=vcgencmd).read()
    assert calls == [["vcgencmd", "get_throttled"]]
    assert t2 is not None and t2.flag("under_voltage_occurred") and not t2.under_voltage
