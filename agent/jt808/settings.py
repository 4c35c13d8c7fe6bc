"""Settings of the JT/T 808 terminal (the ``[jt808]`` table).

Example::

    [jt808]
    enabled = true
    server = "808.city-fleet.example.cn:7611"   # host:port; most 808 platforms are plain TCP
    tls = false
    phone = "013800000001"          # the terminal phone number the platform knows the truck by
    manufacturer_id = "EDGEA"
    terminal_model = "edge-agent"
    terminal_id = "TRK0007"
    plate = "粤B12345"
    plate_color = 2                  # 0 none (plate = VIN), 1 blue, 2 yellow, 3 black,
                                     # 4 white, 5 green, 9 other
    province_id = 44
    city_id = 300
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.fields import Check, check, in_range, one_of
from agent.errors import ConfigError

PLATE_COLORS = (0, 1, 2, 3, 4, 5, 9)


def _server(v: object) -> str | None:
    if v == "":
        return None
    if not isinstance(v, str) or ":" not in v:
        return f"must be host:port, got {v!r}"
    host, _, port = v.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"must be host:port with a port 1..65535, got {v!r}"
    return None


def _digits(v: object) -> str | None:
    if not isinstance(v, str) or (v and not v.isdigit()) or len(v) > 20:
        return f"must be up to 20 digits, got {v!r}"
    return None


def _ascii(n: int) -> Check:
    def _check(v: object) -> str | None:
        if not isinstance(v, str) or not v.isascii() or len(v) > n or "\x00" in v:
            return f"must be at most {n} ASCII characters, got {v!r}"
        return None

    return _check


def _plate(v: object) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    try:
        b = v.encode("gbk")
    except UnicodeEncodeError:
        return f"must be writable in GBK (JT/T 808's character set), got {v!r}"
    if len(b) > 32:
        return f"must be at most 32 bytes in GBK, got {len(b)}"
    return None


def _plate_color(v: object) -> str | None:
    if v in PLATE_COLORS:
        return None
    return f"must be one of {', '.join(map(str, PLATE_COLORS))}, got {v!r}"


def _equipment_item(v: object) -> str | None:
    if v == 0 or (isinstance(v, int) and 0xE1 <= v <= 0xFF):
        return None
    return f"must be 0 (off) or 225..255 (0xE1..0xFF, the custom items), got {v!r}"


def _imei(v: object) -> str | None:
    if not isinstance(v, str) or (v and (not v.isdigit() or len(v) != 15)):
        return f"must be empty or 15 digits, got {v!r}"
    return None


@dataclass(frozen=True)
class Jt808Settings:
    enabled: bool = False
    # The platform: host:port. TLS is rare on 808 platforms (plain TCP is the norm); when on,
    # the server certificate is checked against `ca` (or the system's CAs), with an optional
    # client certificate.
    server: str = field(default="", metadata=check(_server))
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # 2019 (version flag, 20-digit phone number, longer registration fields) or 2013.
    protocol: str = field(default="2019", metadata=check(one_of("2019", "2013")))
    # The identity the platform registers (from provisioning).
    phone: str = field(default="", metadata=check(_digits))
    manufacturer_id: str = field(default="", metadata=check(_ascii(11)))
    terminal_model: str = field(default="edge-agent", metadata=check(_ascii(30)))
    terminal_id: str = field(default="", metadata=check(_ascii(30)))
    plate: str = field(default="", metadata=check(_plate))
    plate_color: int = field(default=0, metadata=check(_plate_color))
    province_id: int = field(default=0, metadata=check(in_range(0, 65535)))
    city_id: int = field(default=0, metadata=check(in_range(0, 65535)))
    imei: str = field(default="", metadata=check(_imei))
    # Registration code, parameters set by the platform, its areas, the report queue.
    state_dir: Path = Path("/var/lib/edge-agent/jt808")
    # Intervals (the platform may change the heartbeat with parameter 0x0001).
    heartbeat_s: float = field(default=60.0, metadata=check(in_range(1.0, 3600.0)))
    response_timeout_s: float = field(default=15.0, metadata=check(in_range(1.0, 300.0)))
    reconnect_max_s: float = field(default=60.0, metadata=check(in_range(0.1, 3600.0)))
    # Store and forward: reports kept for the platform (oldest dropped beyond), the backlog's
    # share of the link (bytes/s of 0x0704 batches), reports per batch (a batch stays within
    # one 1023-byte frame).
    max_backlog: int = field(default=20000, metadata=check(in_range(10, 1_000_000)))
    backlog_bytes_per_s: int = field(default=4096, metadata=check(in_range(100, 10_000_000)))
    batch_max: int = field(default=20, metadata=check(in_range(1, 200)))
    # The equipment inputs (brush, pump, lift) in a custom additional item; 0 = not sent.
    equipment_item: int = field(default=0xE1, metadata=check(_equipment_item))

    def __post_init__(self) -> None:
        """Checks across fields (each field's own checks ran at load)."""
        if self.protocol == "2013":
            limits = (("phone", 12), ("manufacturer_id", 5), ("terminal_model", 20))
            for name, limit in (*limits, ("terminal_id", 7)):
                if len(getattr(self, name)) > limit:
                    raise ConfigError(
                        f"jt808.{name}: at most {limit} characters with protocol 2013"
                    )
        for name in ("ca", "cert", "key"):
            if getattr(self, name) is not None and not self.tls:
                raise ConfigError(f"jt808.{name}: set only with jt808.tls = true")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("jt808.cert: a client certificate needs jt808.key (and vice versa)")
        if not self.enabled:
            return
        for name in ("server", "phone"):
            if not getattr(self, name):
                raise ConfigError(f"jt808.{name}: required when jt808.enabled = true")

    @property
    def host(self) -> str:
        return self.server.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.server.rpartition(":")[2])

    @property
    def v2019(self) -> bool:
        return self.protocol == "2019"
