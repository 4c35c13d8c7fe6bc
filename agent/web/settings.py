"""The ``[web]`` table of the device config: the technician's device page (off by default).

    [web]
    enabled = true
    host = "192.168.7.1"     # the interface a technician reaches (never 0.0.0.0 by default)
    port = 8080
    pin = "482913"           # typed on the page's login form only
    token = "<at least 16 characters>"   # for tools: Authorization: Bearer <token>
    hostnames = ["truck-17.local"]       # names the page may be reached by (IPs always)

The page shows a live preview, the GPS fix, the self-test and the health figures; it never
exposes sealed or plaintext evidence (see ``docs/web.md``). The PIN is for a person at the
login form (throttled per client); an ``Authorization: Bearer`` header must carry the token,
never the PIN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config.fields import check, in_range, port_number
from agent.errors import ConfigError

MIN_TOKEN = 16


def _host(v: object) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be an address to bind (e.g. 127.0.0.1 or the technician's interface)"
    if any(c.isspace() for c in v) or "/" in v:
        return f"must be an address, got {v!r}"
    return None


def _pin(v: object) -> str | None:
    if v == "":
        return None
    if not isinstance(v, str) or not (v.isascii() and v.isdigit()) or not 4 <= len(v) <= 12:
        return "must be 4-12 digits"
    return None


def _hostnames(v: object) -> str | None:
    if not isinstance(v, tuple):
        return "must be a list of host names"
    for name in v:
        if (
            not isinstance(name, str)
            or not name
            or len(name) > 253
            or not all(c.isalnum() or c in ".-" for c in name)
            or not name.isascii()
        ):
            return f"must be host names (letters, digits, '.', '-'), got {name!r}"
    return None


def _token(v: object) -> str | None:
    if v == "":
        return None
    if not isinstance(v, str) or len(v) < MIN_TOKEN or any(c.isspace() for c in v):
        return f"must be at least {MIN_TOKEN} characters without spaces"
    return None


@dataclass(frozen=True)
class WebSettings:
    # Serve the device page at all (off unless a technician needs it).
    enabled: bool = False
    # The address to bind: loopback by default; set the technician's interface explicitly.
    host: str = field(default="127.0.0.1", metadata=check(_host))
    port: int = field(default=8080, metadata=check(port_number))
    # The PIN set at provisioning (4-12 digits) ...
    pin: str = field(default="", metadata=check(_pin))
    # ... and/or a token: the only credential accepted as "Authorization: Bearer <token>"
    # (a PIN is for the login form only), and accepted on the form too.
    token: str = field(default="", metadata=check(_token))
    # Wrong attempts of one kind (login form, bearer token) from one client before that
    # client is refused that kind for lockout_s; each further lockout doubles it (max 1 h).
    # Other clients are not affected.
    max_failures: int = field(default=5, metadata=check(in_range(1, 100)))
    lockout_s: float = field(default=60.0, metadata=check(in_range(1.0, 86400.0)))
    # A login lasts this long at most, and ends after session_idle_s without a request.
    session_s: float = field(default=8 * 3600.0, metadata=check(in_range(60.0, 7 * 86400.0)))
    session_idle_s: float = field(default=1800.0, metadata=check(in_range(60.0, 86400.0)))
    # Host names the page may be reached by besides IP addresses and localhost (a request
    # naming any other host is refused: DNS rebinding).
    hostnames: tuple[str, ...] = field(default=(), metadata=check(_hostnames))
    # Connections served at once, and from one client at once (more get 503 and are closed).
    max_connections: int = field(default=16, metadata=check(in_range(2, 256)))
    max_connections_per_client: int = field(default=8, metadata=check(in_range(1, 256)))

    def __post_init__(self) -> None:
        if self.enabled and not (self.pin or self.token):
            raise ConfigError("web.pin: the device page needs a pin or a token when enabled")

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.pin, self.token) if s)
