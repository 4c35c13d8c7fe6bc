"""The power monitor over a power_supply tree (the kernel's layout) that the test changes
between readings: thresholds, alarms once per change, the critical confirmation, garbage and
a vanished gauge, the firmware's under-voltage flags, and a thread that never dies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.labs.power import lay_out_power_supply, set_attr
from agent.model import Alarm
from agent.power.monitor import PowerMonitor
from agent.power.reading import PowerReading
from agent.power.settings import PowerSettings, SysfsPowerSettings
from agent.power.sysfs import SysfsPower
from agent.power.throttle import ThrottleReader
from agent.runtime.status_text import format_status


class Rig:
    def __init__(self, tmp: Path, **settings: object) -> None:
        self.tmp = tmp
        self.cls = lay_out_power_supply(tmp, {
            "mains": {"type": "Mains", "online": 0},
            "battery": {"type": "Battery", "status": "Discharging", "capacity": 80,
                        "voltage_now": 3_950_000},
        })  # fmt: skip
        self.flags = tmp / "get_throttled"
        self.flags.write_text("0\n")
        self.alarms: list[Alarm] = []
        self.critical: list[PowerReading] = []
        s = PowerSettings(source="sysfs", sysfs=SysfsPowerSettings(root=self.cls),
                          throttled="sysfs", throttled_file=self.flags,
                          **settings)  # type: ignore[arg-type]  # fmt: skip
        self.stop = threading.Event()
        self.mon = PowerMonitor(s, SysfsPower(s.sysfs), self.stop, alarm=self.alarms.append,
                                on_critical=self.critical.append,
                                throttle=ThrottleReader("sysfs", self.flags))  # fmt: skip

    def set(self, attr: str, value: object, supply: str = "battery") -> None:
        set_attr(self.tmp, supply, attr, value)  # type: ignore[arg-type]

    def kinds(self) -> list[str]:
        return [a.kind for a in self.alarms]


def test_low_alarm_once_ok_with_hysteresis_and_on_mains(tmp_path: Path) -> None:
    rig = Rig(tmp_path, low_pct=20, critical_pct=5)
    assert rig.mon.poll_once() == 10.0 and rig.mon.state == "ok" and rig.kinds() == []
    rig.set("capacity", 19)
    rig.mon.poll_once()
    rig.set("capacity", 18)
    rig.mon.poll_once()
    assert rig.kinds() == ["power_low"] and rig.mon.state == "low"
    assert rig.alarms[0].details["charge_pct"] == 19.0
    rig.set("capacity", 21)  # within the hysteresis: still low, no flapping
    rig.mon.poll_once()
    assert rig.kinds() == ["power_low"] and rig.mon.state == "low"
    rig.set("online", 1, supply="mains")  # plugged in: no longer low at the same charge
    rig.mon.poll_once()
    assert rig.kinds() == ["power_low", "power_ok"] and rig.mon.state == "ok"
    h = rig.mon.health()
    assert h["external_power"] is True and h["voltage_v"] == pytest.approx(3.95)


def test_critical_needs_readings_in_a_row_on_battery_and_acts_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, low_pct=20, critical_pct=5, critical_readings=3)
    rig.set("capacity", 4)
    rig.mon.poll_once()
    rig.mon.poll_once()
    rig.set("capacity", "garbage")  # a bad reading breaks the run: no power-off on noise
    rig.mon.poll_once()
    rig.set("capacity", 4)
    rig.mon.poll_once()
    rig.mon.poll_once()
    assert rig.critical == []
    rig.set("online", 1, supply="mains")  # on external power: never critical
    for _ in range(4):
        rig.mon.poll_once()
    assert rig.critical == []
    rig.set("online", 0, supply="mains")
    for _ in range(5):
        rig.mon.poll_once()
    assert len(rig.critical) == 1 and rig.critical[0].charge_pct == 4.0
    assert rig.kinds().count("power_critical") == 1
    assert rig.mon.state == "critical"


def test_garbage_and_a_vanished_gauge_are_states_with_one_alarm_and_backoff(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, poll_s=2.0, retry_max_s=30.0)
    rig.mon.poll_once()
    rig.set("capacity", "\x00\x01garbage")
    delays = [rig.mon.poll_once() for _ in range(6)]
    assert delays == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0]  # doubling, capped
    assert rig.kinds() == ["power_source_failed"]
    h = rig.mon.health()
    assert h["state"] == "error" and "not an integer" in h["error"]
    assert h["charge_pct"] == 80.0  # the last good reading stays, with its age
    line = format_status({"updated_utc": 0, "power": h}, now=0.0)
    assert "power   ERROR: battery 80 %" in line and "not an integer" in line
    (rig.cls / "battery").unlink()  # the driver unbound: the supply is gone
    rig.mon.poll_once()
    assert "no battery among the supplies" in rig.mon.health()["error"]
    assert rig.kinds() == ["power_source_failed"]
    rig.cls.joinpath("battery").symlink_to(
        next(tmp_path.joinpath("devices").rglob("power_supply/battery"))
    )
    rig.set("capacity", 70)
    assert rig.mon.poll_once() == 2.0
    assert rig.kinds() == ["power_source_failed", "power_source_restored"]


def test_firmware_under_voltage_flags(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.flags.write_text("50000\n")  # occurred since boot, not now
    rig.mon.poll_once()
    assert rig.kinds() == ["undervoltage_occurred"]
    rig.flags.write_text("50005\n")
    rig.mon.poll_once()
    rig.mon.poll_once()
    assert rig.kinds() == ["undervoltage_occurred", "undervoltage"]
    h = rig.mon.health()
    assert h["throttled"]["under_voltage"] is True and h["throttled"]["throttled"] is True
    assert "UNDER-VOLTAGE now" in format_status({"updated_utc": 0, "power": h}, now=0.0)
    rig.flags.write_text("50000\n")
    rig.mon.poll_once()
    assert rig.kinds()[-1] == "undervoltage_cleared"
    rig.flags.write_text("what\n")
    rig.mon.poll_once()
    assert "garbage" in rig.mon.health()["throttled_error"]


def test_the_thread_survives_garbage_and_waits_on_the_stop_event(tmp_path: Path) -> None:
    rig = Rig(tmp_path, poll_s=0.5, retry_max_s=1.0)
    rig.mon.start()
    try:
        rig.set("capacity", "NaN")
        deadline = time.monotonic() + 10
        while rig.mon.state != "error":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rig.mon.is_alive()
        rig.set("capacity", 55)
        while rig.mon.state != "ok":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rig.mon.health()["charge_pct"] == 55.0
    finally:
        rig.stop.set()
        rig.mon.join(5)
    assert not rig.mon.is_alive()


def test_no_source_reports_off_and_the_status_says_so(tmp_path: Path) -> None:
    mon = PowerMonitor(PowerSettings(throttled="off"), None, threading.Event(), alarm=print)
    mon.poll_once()
    h = mon.health()
    assert h["state"] == "off" and h["throttled"] is None
    assert "power   not monitored ([power] source = none)" in format_status(
        {"updated_utc": 0, "power": h}, now=0.0
    )
