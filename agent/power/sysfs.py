"""The Linux power_supply class: ``/sys/class/power_supply/<name>/...``.

Fuel gauges and UPS HATs with a kernel driver (and PiSugar's own kernel module) appear as
supplies with a ``type``: the battery (``Battery``) and the inputs (``Mains``, ``USB``,
``USB_C``, ...). Units are the kernel's: ``capacity`` in percent, ``voltage_now`` in
microvolts, ``current_now`` in microamperes (positive into the battery, per the ABI),
``energy_*`` in µWh and ``charge_*`` in µAh. A driver that cannot answer returns an error on
read (ENODATA for "not available now"); an attribute it does not have is absent.
"""

from __future__ import annotations

import errno
from pathlib import Path

from agent.errors import SourceError
from agent.power.reading import PowerReading
from agent.power.settings import SysfsPowerSettings

#: Kernel supply types that feed the device (an input, not the battery).
INPUT_TYPES = frozenset(
    {"Mains", "USB", "USB_DCP", "USB_CDP", "USB_ACA", "USB_C", "USB_PD", "USB_PD_DRP",
     "BrickID", "Wireless", "UPS"}
)  # fmt: skip
MAX_ATTR_BYTES = 256


class SysfsPower:
    """Reads the battery and the inputs of the power_supply class under ``settings.root``."""

    def __init__(self, settings: SysfsPowerSettings) -> None:
        self.root = settings.root
        self.wanted = settings.battery

    @property
    def name(self) -> str:
        return f"sysfs:{self.wanted or 'auto'}"

    def _attr(self, supply: Path, attr: str) -> str | None:
        """One attribute's text; None when the driver has no such attribute or no data now."""
        try:
            with (supply / attr).open("rb") as f:
                raw = f.read(MAX_ATTR_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.EINVAL, errno.ENOENT):
                return None
            raise SourceError(f"{supply.name}/{attr}: the driver failed ({exc})") from None
        if len(raw) > MAX_ATTR_BYTES:
            raise SourceError(f"{supply.name}/{attr}: garbage (over {MAX_ATTR_BYTES} bytes)")
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise SourceError(f"{supply.name}/{attr}: garbage (not text)") from None

    def _int(self, supply: Path, attr: str) -> int | None:
        text = self._attr(supply, attr)
        if text is None or text == "":
            return None
        try:
            return int(text)
        except ValueError:
            raise SourceError(f"{supply.name}/{attr}: not an integer ({text[:40]!r})") from None

    def _supplies(self) -> list[tuple[Path, str]]:
        try:
            names = sorted(p.name for p in self.root.iterdir())
        except FileNotFoundError:
            raise SourceError(f"{self.root}: no power_supply class here") from None
        except OSError as exc:
            raise SourceError(f"{self.root}: cannot list ({exc})") from None
        out = []
        for n in names:
            p = self.root / n
            if p.is_dir():
                out.append((p, self._attr(p, "type") or "Unknown"))
        return out

    def _battery(self, supplies: list[tuple[Path, str]]) -> Path:
        if self.wanted:
            for p, _t in supplies:
                if p.name == self.wanted:
                    return p
            have = ", ".join(p.name for p, _ in supplies) or "none"
            raise SourceError(f"{self.root}/{self.wanted}: no such supply (present: {have})")
        for p, t in supplies:
            # scope "Device": a peripheral's battery (a mouse), not the one feeding us
            if t == "Battery" and self._attr(p, "scope") != "Device":
                return p
        have = ", ".join(f"{p.name} ({t})" for p, t in supplies) or "none"
        raise SourceError(f"{self.root}: no battery among the supplies (present: {have})")

    def read(self) -> PowerReading:
        supplies = self._supplies()
        bat = self._battery(supplies)
        name = f"sysfs:{bat.name}"
        if self._attr(bat, "present") == "0":
            raise SourceError(f"{bat.name}: no battery present")
        charge: float | None = None
        capacity = self._int(bat, "capacity")
        if capacity is not None:
            if not 0 <= capacity <= 100:
                raise SourceError(f"{bat.name}/capacity: {capacity} is not a percentage")
            charge = float(capacity)
        else:
            for now, full in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
                n, f = self._int(bat, now), self._int(bat, full)
                if n is not None and f:
                    charge = max(0.0, min(100.0, 100.0 * n / f))
                    break
        status = self._attr(bat, "status")
        charging = {"Charging": True, "Discharging": False, "Not charging": False,
                    "Full": False}.get(status or "")  # fmt: skip
        inputs = [p for p, t in supplies if t in INPUT_TYPES]
        external: bool | None = None
        if inputs:
            external = any(self._attr(p, "online") == "1" for p in inputs)
        elif status in ("Charging", "Full", "Not charging"):
            external = True
        elif status == "Discharging":
            external = False
        microvolts = self._int(bat, "voltage_now")
        if microvolts is None:
            microvolts = self._int(bat, "voltage_avg")
        microamps = self._int(bat, "current_now")
        if microamps is None:
            microamps = self._int(bat, "current_avg")
        return PowerReading(
            source=name,
            charge_pct=charge,
            charging=charging,
            external_power=external,
            voltage_v=None if microvolts is None else microvolts / 1e6,
            current_a=None if microamps is None else microamps / 1e6,
        )

    def close(self) -> None:
        pass
