"""The rule engine's tuning, kept apart so the config loader imports no geometry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuleSettings:
    hysteresis_m: float = 10.0
    dwell_fixes: int = 3
    idle_s: float = 300.0
    stopped_s: float = 600.0
    moving_mps: float = 1.0
    speed_margin_kmh: float = 3.0
    max_hdop: float = 5.0
    max_speed_mps: float = 70.0
    piece_m: float = 10.0
    cell_m: float = 250.0
