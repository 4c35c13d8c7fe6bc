"""Settings of the power monitor (the ``[power]`` table).

Example (a Waveshare UPS HAT: INA219 at 0x42 on I2C bus 1, two Li-ion cells in series)::

    [power]
    source = "ina219"          # none | sysfs | ina219 | pisugar
    low_pct = 20               # alarm
    critical_pct = 5           # end the recording, seal, flush, power off

    [power.ina219]
    bus = 1
    address = 0x42
    cells = 2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.fields import check, in_range, one_of, port_number

#: Open-circuit voltage of one Li-ion / Li-polymer cell against its charge (volts, percent):
#: the usual 18650 discharge shape, flat between 3.6 and 4.0 V.
LI_ION_CURVE: tuple[tuple[float, ...], ...] = (
    (3.00, 0.0),
    (3.30, 5.0),
    (3.50, 10.0),
    (3.60, 20.0),
    (3.70, 40.0),
    (3.80, 60.0),
    (3.90, 75.0),
    (4.00, 85.0),
    (4.10, 95.0),
    (4.20, 100.0),
)


def _curve(v: Any) -> str | None:
    if len(v) < 2:
        return "must have at least two [volts, percent] points"
    last_v, last_p = -1.0, -1.0
    for i, point in enumerate(v):
        if len(point) != 2:
            return f"point {i} must be [volts, percent], got {list(point)}"
        volts, pct = point
        if not 0.5 <= volts <= 60.0 or not 0.0 <= pct <= 100.0:
            return f"point {i}: volts must be 0.5..60 and percent 0..100, got {list(point)}"
        if volts <= last_v or pct < last_p:
            return f"point {i}: volts must rise and percent must not fall, got {list(point)}"
        last_v, last_p = volts, pct
    return None


@dataclass(frozen=True)
class SysfsPowerSettings:
    """The kernel's power_supply class (fuel gauges and UPS HATs with a kernel driver)."""

    root: Path = Path("/sys/class/power_supply")
    # The battery's directory name (e.g. "BAT0"); "" = the first supply of type Battery.
    battery: str = ""


@dataclass(frozen=True)
class Ina219Settings:
    """An INA219 current/voltage monitor on I2C (Waveshare UPS HAT: 0x42, two cells;
    UPS HAT (C) for the Zero: 0x43, one cell)."""

    bus: int = field(default=1, metadata=check(in_range(0, 255)))
    address: int = field(default=0x42, metadata=check(in_range(0x40, 0x4F)))
    # The shunt resistor in ohms (Waveshare UPS HATs: 0.01 ohm).
    shunt_ohms: float = field(default=0.01, metadata=check(in_range(0.0001, 10.0)))
    # Cells in series: the curve is per cell.
    cells: int = field(default=2, metadata=check(in_range(1, 8)))
    curve: tuple[tuple[float, ...], ...] = field(default=LI_ION_CURVE, metadata=check(_curve))
    # Current into the battery reads positive on this board (false: the shunt is the other
    # way round).
    charge_current_positive: bool = True
    # Above this current into the battery it is charging (amperes).
    charging_above_a: float = field(default=0.02, metadata=check(in_range(0.0, 10.0)))
    # Write the configuration register at start (32 V range, +/-320 mV, 12 bits averaged
    # over 32 samples, continuous): false leaves a configuration set by the HAT alone.
    configure: bool = True


@dataclass(frozen=True)
class PiSugarSettings:
    """PiSugar's power manager server (pisugar-server): TCP 8423 or its Unix socket."""

    host: str = "127.0.0.1"
    port: int = field(default=8423, metadata=check(port_number))
    # Set to use the Unix socket instead of TCP (pisugar-server's default: this path).
    socket: Path | None = None
    timeout_s: float = field(default=3.0, metadata=check(in_range(0.1, 30.0)))


@dataclass(frozen=True)
class PowerSettings:
    # none | sysfs | ina219 | pisugar
    source: str = field(
        default="none", metadata=check(one_of("none", "sysfs", "ina219", "pisugar"))
    )
    poll_s: float = field(default=10.0, metadata=check(in_range(0.5, 3600.0)))
    # A failing source is retried after poll_s, doubling up to this.
    retry_max_s: float = field(default=120.0, metadata=check(in_range(1.0, 3600.0)))
    # On battery at or below low_pct: alarm. At or below critical_pct (for critical_readings
    # readings in a row, so one bad reading never powers a camera off): the recording is
    # ended and sealed, a power_critical event is recorded, the uplink gets flush_s to deliver,
    # everything is sealed and the device is powered off.
    low_pct: float = field(default=20.0, metadata=check(in_range(0.0, 100.0)))
    critical_pct: float = field(default=5.0, metadata=check(in_range(0.0, 100.0)))
    critical_readings: int = field(default=3, metadata=check(in_range(1, 100)))
    flush_s: float = field(default=15.0, metadata=check(in_range(0.0, 600.0)))
    # How the device is powered off: logind (D-Bus PowerOff; the installer's polkit rule lets
    # the service user do exactly that) | systemctl (systemctl poweroff) | none (only stop the
    # agent, for a HAT that cuts the power itself).
    power_off: str = field(default="logind", metadata=check(one_of("logind", "systemctl", "none")))
    # The firmware's under-voltage and throttling flags: auto (sysfs, else vcgencmd) |
    # sysfs | vcgencmd | off.
    throttled: str = field(
        default="auto", metadata=check(one_of("auto", "sysfs", "vcgencmd", "off"))
    )
    throttled_file: Path = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
    sysfs: SysfsPowerSettings = field(default_factory=SysfsPowerSettings)
    ina219: Ina219Settings = field(default_factory=Ina219Settings)
    pisugar: PiSugarSettings = field(default_factory=PiSugarSettings)

    def __post_init__(self) -> None:
        from agent.errors import ConfigError

        if self.critical_pct >= self.low_pct and self.low_pct > 0:
            raise ConfigError(
                f"power.critical_pct: must be below power.low_pct ({self.low_pct:g}), "
                f"got {self.critical_pct:g}"
            )
