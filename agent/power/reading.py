"""One reading of the device's power, and the small interface every power source offers."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

from agent.errors import SourceError


@dataclass(frozen=True, slots=True)
class PowerReading:
    """What a power source reports; ``None`` where it cannot tell.

    ``charge_pct`` is the battery's state of charge (0-100); ``charging`` whether current flows
    into the battery; ``external_power`` whether mains/USB input is present (the device does
    not run on its battery); ``voltage_v`` the battery (or bus) voltage; ``current_a`` the
    battery current, positive into the battery.
    """

    source: str
    charge_pct: float | None = None
    charging: bool | None = None
    external_power: bool | None = None
    voltage_v: float | None = None
    current_a: float | None = None

    def __post_init__(self) -> None:
        check_number(self.charge_pct, "charge", 0.0, 100.0, self.source)
        check_number(self.voltage_v, "voltage", 0.0, 60.0, self.source)
        check_number(self.current_a, "current", -50.0, 50.0, self.source)

    @property
    def on_battery(self) -> bool:
        """True unless the source says external power is present or the battery charges."""
        return not (self.external_power or self.charging)

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "charge_pct": None if self.charge_pct is None else round(self.charge_pct, 1),
            "charging": self.charging,
            "external_power": self.external_power,
            "voltage_v": None if self.voltage_v is None else round(self.voltage_v, 3),
            "current_a": None if self.current_a is None else round(self.current_a, 3),
        }


def check_number(value: float | None, what: str, lo: float, hi: float, source: str) -> None:
    """A figure from a power source that is not a finite number in [lo, hi] is garbage."""
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise SourceError(f"{source}: {what} is not a number ({value!r})")
    if not lo <= value <= hi:
        raise SourceError(f"{source}: {what} {value:g} is outside {lo:g}..{hi:g}")


def charge_from_curve(volts: float, curve: tuple[tuple[float, ...], ...], cells: int) -> float:
    """State of charge from a battery voltage, by linear interpolation on a per-cell curve
    of (volts, percent) points; clamped to the curve's ends."""
    v = volts / cells
    if v <= curve[0][0]:
        return float(curve[0][1])
    for (v0, p0), (v1, p1) in itertools.pairwise(curve):
        if v <= v1:
            return float(p0 + (p1 - p0) * (v - v0) / (v1 - v0))
    return float(curve[-1][1])


class PowerSource(Protocol):
    """A battery / UPS reader. ``read`` raises SourceError with a reason a technician can act
    on (device missing, garbage); it never blocks longer than the source's own timeout."""

    @property
    def name(self) -> str: ...

    def read(self) -> PowerReading: ...

    def close(self) -> None: ...
