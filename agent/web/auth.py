"""What both pages use to decide who may ask: credential throttles per client and kind,
expiring sessions, and the ``Host`` allow-list (no dependency: the device page uses it too).

**Throttle.** Every credential check (a PIN or token typed on a form, a bearer token, a
session cookie) is counted per *client* and per *kind*. A client is one IPv4 address or one
IPv6 /64 (a single host can take a whole /64). After ``max_failures`` wrong attempts of one
kind the client is locked out of that kind for ``lockout_s``, and each further lockout
doubles it (up to ``max_lockout_s``). While locked, every attempt of that kind from that
client is refused *without being checked*, the right PIN included, so guessing cannot go on
in the background; another client is never affected, so an attacker cannot lock a technician
out. Every failure is logged (client, kind, count); refusals while locked are logged once a
minute with their count, so a flood of guesses cannot flood the log.

**Sessions.** Random 256-bit ids handed out after a login, valid for ``lifetime_s`` and
dropped after ``idle_s`` without use; at most ``max_sessions`` (the oldest goes first).

**Host allow-list.** DNS rebinding makes a page on an attacker's site talk to this server
under the attacker's host name, from the victim's browser. A request is served only when its
``Host`` is an IP literal (a browser never sends one for a name it resolved), ``localhost``,
or one of the configured names.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_CLIENTS = 4096
REFUSAL_LOG_S = 60.0


def client_key(address: str) -> str:
    """The unit a throttle counts: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64] or "?"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def secret_matches(given: str, secrets_: Iterable[str]) -> bool:
    """Constant-time comparison against each configured secret (empty ones never match)."""
    ok = False
    g = given.encode()
    for s in secrets_:
        if s and hmac.compare_digest(g, s.encode()):
            ok = True
    return ok


@dataclass(frozen=True)
class Policy:
    max_failures: int
    lockout_s: float
    max_lockout_s: float = 3600.0


@dataclass
class _Entry:
    failures: int = 0
    strikes: int = 0  # lockouts so far (each doubles the next)
    locked_until: float = 0.0
    last: float = 0.0
    refused: int = 0  # attempts refused while locked, not yet logged
    refused_logged: float = -1e18


class Throttle:
    """Failed credential attempts per (client, kind); see the module docstring. Thread-safe."""

    def __init__(
        self,
        name: str,
        policies: dict[str, Policy],
        clock: Callable[[], float],
        *,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.name = name
        self.policies = policies
        self._clock = clock
        self._max = max_clients
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self.counts = {"failures": 0, "lockouts": 0, "refused": 0}

    def _policy(self, kind: str) -> Policy:
        return self.policies.get(kind) or next(iter(self.policies.values()))

    def locked(self, client: str, kind: str) -> float:
        """Seconds ``client`` remains locked out of ``kind`` (0: not locked). A locked client's
        attempt is counted and logged here, and must then be refused unchecked."""
        key = (client_key(client), kind)
        now = self._clock()
        with self._lock:
            e = self._entries.get(key)
            if e is None or now >= e.locked_until:
                return 0.0
            e.refused += 1
            self.counts["refused"] += 1
            left = e.locked_until - now
            if now - e.refused_logged >= REFUSAL_LOG_S:
                log.warning(
                    "%s: refused %d %s attempt(s) from %s while it is locked out (%.0f s left)",
                    self.name,
                    e.refused,
                    kind,
                    key[0],
                    left,
                )
                e.refused = 0
                e.refused_logged = now
            return left

    def failure(self, client: str, kind: str) -> float:
        """Count a wrong credential; the lockout (seconds) it started, or 0."""
        key = (client_key(client), kind)
        policy = self._policy(kind)
        now = self._clock()
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                self._make_room(now)
                e = self._entries[key] = _Entry()
            elif e.strikes and now - max(e.locked_until, e.last) > policy.max_lockout_s:
                e.strikes = 0  # a long quiet spell forgives earlier lockouts
            e.failures += 1
            e.last = now
            self.counts["failures"] += 1
            failures = e.failures
            lockout = 0.0
            if e.failures >= policy.max_failures:
                lockout = min(policy.lockout_s * 2**e.strikes, policy.max_lockout_s)
                e.strikes += 1
                e.failures = 0
                e.locked_until = now + lockout
                e.refused_logged = -1e18
                self.counts["lockouts"] += 1
        log.warning("%s: wrong %s from %s (%d in a row)", self.name, kind, key[0], failures)
        if lockout:
            log.warning(
                "%s: %s locked out of %s for %.0f s after %d wrong attempts",
                self.name,
                key[0],
                kind,
                lockout,
                policy.max_failures,
            )
        return lockout

    def success(self, client: str, kind: str) -> None:
        with self._lock:
            self._entries.pop((client_key(client), kind), None)

    def _make_room(self, now: float) -> None:
        if len(self._entries) < self._max:
            return
        # Unlocked entries go first (oldest activity first), then the lock that ends first.
        victim = min(
            self._entries,
            key=lambda k: (
                self._entries[k].locked_until > now,
                self._entries[k].locked_until,
                self._entries[k].last,
            ),
        )
        del self._entries[victim]


class Sessions:
    """Expiring login sessions (see the module docstring). Thread-safe."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        lifetime_s: float,
        idle_s: float,
        max_sessions: int = 64,
    ) -> None:
        self._clock = clock
        self.lifetime_s = lifetime_s
        self.idle_s = idle_s
        self._max = max_sessions
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[float, float]] = {}  # digest -> (expires, last use)

    @staticmethod
    def _digest(sid: str) -> str:
        return hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()

    def create(self) -> str:
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= self._max:
                oldest = min(self._sessions, key=lambda k: self._sessions[k][0])
                del self._sessions[oldest]
            self._sessions[self._digest(sid)] = (now + self.lifetime_s, now)
        return sid

    def valid(self, sid: str) -> bool:
        """True for a live session (and its idle time starts again)."""
        if not sid or len(sid) > 128:
            return False
        now = self._clock()
        d = self._digest(sid)
        with self._lock:
            self._expire(now)
            s = self._sessions.get(d)
            if s is None:
                return False
            self._sessions[d] = (s[0], now)
            return True

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(self._digest(sid), None)

    def _expire(self, now: float) -> None:
        for k in [
            k
            for k, (exp, last) in self._sessions.items()
            if now >= exp or now - last >= self.idle_s
        ]:
            del self._sessions[k]


def _host_name(header: str) -> str | None:
    """The host of a ``Host`` header without its port, lower-case; None when malformed."""
    h = header.strip().lower()
    if not h or len(h) > 255 or any(c.isspace() or c in "/\\@?#" for c in h):
        return None
    if h.startswith("["):
        end = h.find("]")
        if end < 0 or (h[end + 1 :] and not h[end + 1 :].startswith(":")):
            return None
        return h[1:end]
    if h.count(":") == 1:
        h, port = h.split(":")
        if not (port.isascii() and port.isdigit()):
            return None
    elif ":" in h:
        return None
    return h.rstrip(".")


class HostCheck:
    """The ``Host`` allow-list (see the module docstring)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names = frozenset(n.strip().lower().rstrip(".") for n in names if n.strip())

    def allowed(self, header: str) -> bool:
        host = _host_name(header)
        if not host:
            return False
        if host == "localhost" or host in self.names:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
