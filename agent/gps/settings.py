"""Settings of the GPS source and reporting strategy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.settings import check, in_range, one_of, port_number


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
