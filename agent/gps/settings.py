"""Settings of the GPS source and reporting strategy (the ``[gps]`` and ``[gps.strategy]`` tables).

Example::

    [gps]
    source = "serial"            # none | serial | gpsd | replay
    serial_port = "/dev/ttyACM0"
    baud = 9600

    [gps.strategy]               # like JT/T 808 terminal parameters / Teltonika acquisition
    interval_s = 30              # moving: report at least every 30 s
    distance_m = 200             # ... or every 200 m
    heading_deg = 30             # ... or when the course turns by more than 30 degrees
    stopped_interval_s = 300     # stopped: every 5 minutes
    max_hdop = 5.0               # poorer fixes are not reported as positions
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.fields import at_least, check, in_range, one_of, port_number


@dataclass(frozen=True)
class StrategySettings:
    """When a fix goes to the live lane and when it is kept for the GPS segments."""

    # Moving: report at least every interval_s seconds ...
    interval_s: float = field(default=30.0, metadata=check(in_range(1.0, 86400.0)))
    # ... or when distance_m metres were covered since the last report (0 = off) ...
    distance_m: float = field(default=200.0, metadata=check(in_range(0.0, 100000.0)))
    # ... or when the course changed by more than heading_deg degrees (0 = off).
    heading_deg: float = field(default=30.0, metadata=check(in_range(0.0, 180.0)))
    # Course changes are ignored below this speed (a parked truck's course is noise).
    heading_min_speed_mps: float = field(default=2.0, metadata=check(in_range(0.0, 100.0)))
    # Stopped (speed below stopped_speed_mps): the slower interval.
    stopped_interval_s: float = field(default=300.0, metadata=check(in_range(1.0, 86400.0)))
    stopped_speed_mps: float = field(default=1.0, metadata=check(in_range(0.0, 20.0)))
    # Quality: fixes with HDOP above max_hdop, or implying a speed above max_speed_mps
    # relative to the last good fix, are not reported as positions.
    max_hdop: float = field(default=5.0, metadata=check(in_range(0.5, 99.0)))
    max_speed_mps: float = field(default=70.0, metadata=check(in_range(1.0, 1000.0)))
    # Fixes kept for the backfill segments: at most one per keep_interval_s (0 = all).
    keep_interval_s: float = field(default=1.0, metadata=check(in_range(0.0, 3600.0)))


@dataclass(frozen=True)
class GpsSettings:
    # none | serial | gpsd | replay
    source: str = field(default="none", metadata=check(one_of("none", "serial", "gpsd", "replay")))
    serial_port: str = "/dev/ttyACM0"
    baud: int = field(default=9600, metadata=check(in_range(1200, 921600)))
    gpsd_host: str = "127.0.0.1"
    gpsd_port: int = field(default=2947, metadata=check(port_number))
    replay_file: Path | None = None
    # 0 = as fast as possible; 1.0 = real time
    replay_speed: float = field(default=1.0, metadata=check(in_range(0.0, 1000.0)))
    replay_loop: bool = False
    # Reopening a vanished serial port / reconnecting to gpsd: exponential backoff cap.
    reconnect_max_s: float = field(default=30.0, metadata=check(in_range(0.1, 3600.0)))
    # No data for this long counts as a lost source (reconnect).
    stale_after_s: float = field(default=10.0, metadata=check(at_least(0.5)))
    # Bound of the queue between the source thread and its consumer (fixes; oldest dropped).
    queue_size: int = field(default=256, metadata=check(in_range(1, 100000)))
    strategy: StrategySettings = field(default_factory=StrategySettings)
