"""What the composition root reads from the board itself (not through a part)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.power.reading import PowerSource

log = logging.getLogger(__name__)


def cpu_temperature(zone: Path = Path("/sys/class/thermal/thermal_zone0/temp")) -> float | None:
    """The SoC temperature in degrees Celsius, where the kernel reports it."""
    try:
        raw = zone.read_text().strip()
        return round(int(raw) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def legacy_battery_source(capacity_file: Path) -> PowerSource:
    """``health.battery_file`` (before [power]): a power_supply ``capacity`` file, read as the
    power_supply class source for that supply."""
    from agent.power.settings import SysfsPowerSettings
    from agent.power.sysfs import SysfsPower

    log.warning(
        'health.battery_file is deprecated: set [power] source = "sysfs" (battery = %r)',
        capacity_file.parent.name,
    )
    return SysfsPower(
        SysfsPowerSettings(root=capacity_file.parent.parent, battery=capacity_file.parent.name)
    )
