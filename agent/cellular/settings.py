"""Settings of the cellular link monitor (the ``[cellular]`` table).

Example::

    [cellular]
    source = "modemmanager"    # none | modemmanager
    modem = "any"              # mmcli -m: any, an index (0) or a D-Bus path
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.fields import check, in_range, one_of

_MODEM = re.compile(r"^(any|[0-9]{1,4}|/org/freedesktop/ModemManager1/Modem/[0-9]{1,4})\Z")


def _modem(v: Any) -> str | None:
    if _MODEM.match(v):
        return None
    return f"must be any, a modem index or /org/freedesktop/ModemManager1/Modem/N, got {v!r}"


@dataclass(frozen=True)
class CellularSettings:
    # none | modemmanager (read through mmcli -J, ModemManager's command-line client)
    source: str = field(default="none", metadata=check(one_of("none", "modemmanager")))
    # The mmcli executable (a path, or a name looked up in PATH).
    mmcli: str = "mmcli"
    modem: str = field(default="any", metadata=check(_modem))
    poll_s: float = field(default=30.0, metadata=check(in_range(1.0, 3600.0)))
    timeout_s: float = field(default=10.0, metadata=check(in_range(1.0, 120.0)))
    # Extended signal figures (RSSI/RSRP/RSRQ/SINR) need ModemManager to poll the modem:
    # mmcli --signal-setup=RATE where the modem's rate is 0. 0 = leave it alone.
    signal_rate_s: int = field(default=30, metadata=check(in_range(0, 3600)))
    # The modem gone, failed or unregistered this long: alarm (handovers are brief).
    alarm_after_s: float = field(default=60.0, metadata=check(in_range(0.0, 86400.0)))
    # What the agent sent per lane and per day (UTC), kept across restarts; unset: traffic.json
    # in the uplink's state_dir.
    traffic_file: Path | None = None
    traffic_days: int = field(default=62, metadata=check(in_range(1, 400)))
    traffic_save_s: float = field(default=60.0, metadata=check(in_range(1.0, 3600.0)))
