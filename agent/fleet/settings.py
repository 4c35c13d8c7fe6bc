"""Settings of the fleet part (the ``[fleet]`` and ``[fleet.inputs]`` tables).

Example::

    [fleet]
    enabled = true
    state_dir = "/var/lib/edge-agent/fleet"     # the plan installed by fleet.set_areas
    areas_file = "/etc/edge-agent/areas.toml"   # used until the platform installs a plan
    timezone = "Europe/Amsterdam"                # shift hours are local ("" = utc_offset_min)
    hysteresis_m = 10
    dwell_fixes = 3
    idle_min = 5
    stopped_min = 10

    [fleet.inputs]
    source = "serial"                            # none | serial | gpio | sim
    serial_port = "/dev/ttyUSB1"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.fields import check, in_range, one_of
from agent.fleet.rule_settings import RuleSettings

LINE = check(in_range(-1, 1023))


@dataclass(frozen=True)
class InputSettings:
    # none | serial | gpio | sim
    source: str = field(default="none", metadata=check(one_of("none", "serial", "gpio", "sim")))
    # serial I/O module (line protocol in docs/fleet.md)
    serial_port: str = "/dev/ttyUSB1"
    baud: int = field(default=9600, metadata=check(in_range(1200, 921600)))
    # GPIO: chip and line offsets (-1 = not wired)
    gpio_chip: str = "/dev/gpiochip0"
    ignition_line: int = field(default=-1, metadata=LINE)
    brush_line: int = field(default=-1, metadata=LINE)
    pump_line: int = field(default=-1, metadata=LINE)
    lift_line: int = field(default=-1, metadata=LINE)
    sos_line: int = field(default=-1, metadata=LINE)
    # an input is active when its line is low (opto-isolated input with a pull-up)
    active_low: bool = True
    bias: str = field(
        default="pull-up", metadata=check(one_of("pull-up", "pull-down", "disabled", "as-is"))
    )
    # a level must hold this long to count; one SOS press per sos_refractory_s
    debounce_ms: float = field(default=50.0, metadata=check(in_range(0.0, 10000.0)))
    sos_refractory_s: float = field(default=2.0, metadata=check(in_range(0.0, 3600.0)))
    # sim: the levels the simulated source starts with ("ign=1 brush=1")
    sim_state: str = "ign=1"
    queue_size: int = field(default=64, metadata=check(in_range(1, 10000)))
    reconnect_max_s: float = field(default=10.0, metadata=check(in_range(0.1, 3600.0)))

    def gpio_lines(self) -> dict[str, int]:
        lines = {
            "ignition": self.ignition_line,
            "brush": self.brush_line,
            "pump": self.pump_line,
            "lift": self.lift_line,
            "sos": self.sos_line,
        }
        return {k: v for k, v in lines.items() if v >= 0}


@dataclass(frozen=True)
class FleetSettings:
    enabled: bool = False
    state_dir: Path = Path("/var/lib/edge-agent/fleet")
    # a TOML file with [[areas]] and [[routes]] tables, used until a plan is installed
    areas_file: Path | None = None
    # shift hours are local time: a zoneinfo zone, or (timezone = "") a fixed UTC offset
    timezone: str = ""
    utc_offset_min: int = field(default=0, metadata=check(in_range(-840, 840)))
    # boundaries: enter at d <= -hysteresis_m, leave at d >= +hysteresis_m, each for
    # dwell_fixes consecutive fixes
    hysteresis_m: float = field(default=10.0, metadata=check(in_range(0.0, 500.0)))
    dwell_fixes: int = field(default=3, metadata=check(in_range(1, 100)))
    idle_min: float = field(default=5.0, metadata=check(in_range(0.1, 1440.0)))
    stopped_min: float = field(default=10.0, metadata=check(in_range(0.1, 1440.0)))
    moving_mps: float = field(default=1.0, metadata=check(in_range(0.1, 20.0)))
    speed_margin_kmh: float = field(default=3.0, metadata=check(in_range(0.0, 50.0)))
    max_hdop: float = field(default=5.0, metadata=check(in_range(0.5, 99.0)))
    coverage_piece_m: float = field(default=10.0, metadata=check(in_range(1.0, 1000.0)))
    inputs: InputSettings = field(default_factory=InputSettings)

    def rule_settings(self) -> RuleSettings:
        return RuleSettings(
            hysteresis_m=self.hysteresis_m,
            dwell_fixes=self.dwell_fixes,
            idle_s=self.idle_min * 60.0,
            stopped_s=self.stopped_min * 60.0,
            moving_mps=self.moving_mps,
            speed_margin_kmh=self.speed_margin_kmh,
            max_hdop=self.max_hdop,
            piece_m=self.coverage_piece_m,
        )
