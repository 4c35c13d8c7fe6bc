"""Terminal parameters (0x8103 set, 0x8104/0x8106 query, 0x0104 answer) on the reporting
strategy, kept durably.

The platform may set the heartbeat interval and the location reporting parameters; each maps
onto the terminal's own :class:`~agent.gps.strategy.ReportingStrategy` (the agent's strategy
class, started from ``[gps.strategy]``: the 808 platform's choices never change what the MQTT
platform receives):

======  ==============================  ===================================================
id      JT/T 808                        here
======  ==============================  ===================================================
0x0001  heartbeat interval (s)          the 0x0002 interval
0x0020  reporting strategy: 0 timed,    0: ``distance_m`` = 0; 1: distance only
        1 by distance, 2 both           (``interval_s`` = one day); 2: both
0x0021  reporting scheme: 0 by ACC      0 only (no driver login on this terminal)
0x0027  interval while asleep (ACC off) ``stopped_interval_s`` (parked and stopped)
0x0028  interval during an emergency    a report at least this often while SOS is set
0x0029  default interval (s)            ``interval_s``
0x002C  default distance (m)            ``distance_m`` (strategies 1, 2)
0x002F  distance during an emergency    a report at least every this many metres with SOS
0x0030  corner angle (< 180 degrees)    ``heading_deg`` (0 = off)
======  ==============================  ===================================================

Every other id (0x0022/0x002D driver not logged in, 0x0023-0x0026 backup server, 0x002E
sleep distance, 0x0002 TCP timeouts, APN, server addresses, ...) is **not supported**: a set
containing one applies the supported ids and answers 3 "not supported"; a value out of range
or of the wrong length for a supported id applies nothing and answers 1 "failure"; a body
that does not parse answers 2 "message error".

The values live in ``<state_dir>/params.json`` (written atomically) and win over the config
file at start, as the platform's areas do over ``fleet.areas_file``; deleting the file goes
back to the config.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from agent import wallclock
from agent.errors import ConfigError
from agent.gps.settings import StrategySettings
from agent.jt808.messages import FAILURE, NOT_SUPPORTED, OK
from agent.storage.durable import write_atomic

log = logging.getLogger(__name__)

HEARTBEAT = 0x0001
STRATEGY = 0x0020
SCHEME = 0x0021
SLEEP_INTERVAL = 0x0027
EMERGENCY_INTERVAL = 0x0028
DEFAULT_INTERVAL = 0x0029
DEFAULT_DISTANCE = 0x002C
EMERGENCY_DISTANCE = 0x002F
CORNER_ANGLE = 0x0030
PARAMS_FILE = "params.json"
DISTANCE_ONLY_INTERVAL_S = 86400

#: supported id -> (lowest, highest) accepted value (all are DWORDs)
RANGES: dict[int, tuple[int, int]] = {
    HEARTBEAT: (1, 3600),
    STRATEGY: (0, 2),
    SCHEME: (0, 0),
    SLEEP_INTERVAL: (1, 86400),
    EMERGENCY_INTERVAL: (1, 86400),
    DEFAULT_INTERVAL: (1, 86400),
    DEFAULT_DISTANCE: (1, 100000),
    EMERGENCY_DISTANCE: (0, 100000),
    CORNER_ANGLE: (0, 179),
}


@dataclass(frozen=True)
class SetResult:
    result: int  # OK, FAILURE or NOT_SUPPORTED (message errors are the caller's)
    applied: dict[int, int]
    unsupported: list[int]
    reason: str = ""


def defaults(base: StrategySettings, heartbeat_s: float) -> dict[int, int]:
    """The parameters as the config file gives them."""
    return {
        HEARTBEAT: max(1, round(heartbeat_s)),
        STRATEGY: 2 if base.distance_m > 0 else 0,
        SCHEME: 0,
        SLEEP_INTERVAL: max(1, round(base.stopped_interval_s)),
        EMERGENCY_INTERVAL: 10,
        DEFAULT_INTERVAL: max(1, round(base.interval_s)),
        DEFAULT_DISTANCE: max(1, round(base.distance_m)) if base.distance_m > 0 else 200,
        EMERGENCY_DISTANCE: 0,
        CORNER_ANGLE: min(179, round(base.heading_deg)),
    }


def strategy_settings(base: StrategySettings, p: dict[int, int]) -> StrategySettings:
    """``base`` (the config's ``[gps.strategy]``) with the platform's parameters."""
    mode = p[STRATEGY]
    interval = DISTANCE_ONLY_INTERVAL_S if mode == 1 else p[DEFAULT_INTERVAL]
    stopped = DISTANCE_ONLY_INTERVAL_S if mode == 1 else p[SLEEP_INTERVAL]
    return replace(
        base,
        interval_s=float(interval),
        stopped_interval_s=float(stopped),
        distance_m=float(p[DEFAULT_DISTANCE]) if mode in (1, 2) else 0.0,
        heading_deg=float(p[CORNER_ANGLE]),
    )


class ParamStore:
    """The current parameters, persisted in ``state_dir``. Not thread-safe (the terminal
    holds its lock)."""

    def __init__(self, state_dir: Path, base: StrategySettings, heartbeat_s: float) -> None:
        self.path = state_dir / PARAMS_FILE
        self.base = base
        self.values = defaults(base, heartbeat_s)
        self.origin = "config"
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("jt808: cannot read %s: %s (using the config's values)", self.path, exc)
            return
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != 1:
                raise ValueError("format must be 1")
            values = doc.get("params")
            if not isinstance(values, dict):
                raise ValueError("params must be an object")
            loaded: dict[int, int] = {}
            for k, v in values.items():
                pid = int(k, 16)
                if pid not in RANGES or isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"parameter {k}: not supported or not an integer")
                lo, hi = RANGES[pid]
                if not lo <= v <= hi:
                    raise ValueError(f"parameter {k}: {v} outside {lo}..{hi}")
                loaded[pid] = v
        except (ValueError, UnicodeDecodeError) as exc:
            aside = self.path.with_name(f"{PARAMS_FILE}.bad-{int(wallclock.now())}")
            log.error("jt808: %s does not load (%s); moved to %s", self.path, exc, aside.name)
            self.path.replace(aside)
            return
        self.values.update(loaded)
        self.origin = "platform"

    def strategy(self) -> StrategySettings:
        return strategy_settings(self.base, self.values)

    @property
    def heartbeat_s(self) -> float:
        return float(self.values[HEARTBEAT])

    def apply(self, items: list[tuple[int, bytes]]) -> SetResult:
        """0x8103: validate everything first; apply the supported ids atomically."""
        new: dict[int, int] = {}
        unsupported: list[int] = []
        for pid, value in items:
            if pid not in RANGES:
                unsupported.append(pid)
                continue
            if len(value) != 4:
                return SetResult(
                    FAILURE, {}, [], f"0x{pid:04x}: a DWORD is 4 bytes, got {len(value)}"
                )
            (v,) = struct.unpack(">I", value)
            lo, hi = RANGES[pid]
            if not lo <= v <= hi:
                return SetResult(FAILURE, {}, [], f"0x{pid:04x}: {v} outside {lo}..{hi}")
            new[pid] = v
        merged = {**self.values, **new}
        if merged[STRATEGY] in (1, 2) and merged[DEFAULT_DISTANCE] < 1:
            return SetResult(FAILURE, {}, [], "distance reporting needs 0x002C >= 1 m")
        if new:
            try:
                strategy_settings(self.base, merged)
            except (ValueError, ConfigError) as exc:  # pragma: no cover - ranges prevent it
                return SetResult(FAILURE, {}, [], str(exc))
            self._save(merged)
            self.values = merged
            self.origin = "platform"
        result = NOT_SUPPORTED if unsupported else OK
        return SetResult(result, new, unsupported)

    def _save(self, values: dict[int, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": 1,
            "params": {f"0x{k:04x}": v for k, v in sorted(values.items())},
            "saved_at": wallclock.now(),
        }
        write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())

    def answer(self, ids: list[int] | None = None) -> list[tuple[int, bytes]]:
        """0x0104 items: every supported parameter (0x8104), or those of ``ids`` that are
        supported (0x8106), as DWORDs."""
        wanted = sorted(self.values) if ids is None else [i for i in ids if i in self.values]
        return [(pid, struct.pack(">I", self.values[pid])) for pid in wanted]
