"""Settings of the MQTT uplink."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.settings import at_least, check, one_of, port_number


@dataclass(frozen=True)
class UplinkSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=8883, metadata=check(port_number))
    protocol: str = field(default="mqtt5", metadata=check(one_of("mqtt5", "mqtt311")))
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # Server name checked against the broker certificate (defaults to host).
    server_name: str = ""
    keepalive_s: int = field(default=30, metadata=check(at_least(5)))
    # Bytes per second for the backfill lane; 0 = unlimited.
    bandwidth_bps: int = field(default=0, metadata=check(at_least(0)))
    priority: tuple[str, ...] = ("event", "gps", "still", "audio", "video")
