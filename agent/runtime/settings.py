"""Settings of the health report (heartbeat, status file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.fields import check, in_range


@dataclass(frozen=True)
class HealthSettings:
    # Heartbeat on the status topic (live lane) this often.
    heartbeat_s: float = field(default=60.0, metadata=check(in_range(1.0, 3600.0)))
    # Where the running agent leaves its figures for `edge-agent status` (RAM-backed /run).
    status_file: Path = Path("/run/edge-agent/status.json")
    # The device-local control socket (`edge-agent record ...`, `edge-agent still`).
    control_socket: Path = Path("/run/edge-agent/control.sock")
    # Deprecated: use [power] source = "sysfs". A power_supply capacity file (e.g.
    # /sys/class/power_supply/BAT0/capacity), read as that supply when [power] source = none.
    battery_file: Path | None = None
    # Alarm when the spool's evidence use passes this share of its quota.
    storage_alarm_pct: float = field(default=90.0, metadata=check(in_range(1.0, 100.0)))
