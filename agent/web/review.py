"""The platform's review page over the ingest store: ``edge-agent ingest --web HOST:PORT`` or
``edge-agent review --store DIR --web HOST:PORT --token T``. This module is its routing and
its gate; the pages are built by :mod:`agent.web.review_pages` (templates in
``agent/web/templates/``, Jinja2 with autoescape) and the drawings by
:mod:`agent.web.review_svg`.

Read-only, behind a token (``Authorization: Bearer T``, or ``?token=T`` once, which starts a
session: a random id in an HttpOnly, SameSite=Strict cookie that expires). Pages:

    /                               devices: online/offline, last seen, backlog, alarms
    /d/<device>?from=..&to=..       live state, per-stream timeline, track, stills, segments
    /d/<device>/s/<stream>/<seq>    one segment: verification, manifest, player or content
    /d/<device>/m/<stream>/<seq>    its verified plaintext (Range requests; never cached)
    /static/<name>                  the package's CSS and JS

Who may ask (:mod:`agent.web.auth`): each kind of credential (the ``?token=`` login, a bearer
token, a session cookie) is throttled per client, every failure logged (never the value).
A request whose ``Host`` is not an IP address, ``localhost`` or an ``--allowed-host`` is
refused (DNS rebinding). Every id in a path is checked by :mod:`agent.ids`; nothing else
reaches the file system. The only outside address a page may name is the operator's own map
tile server (``tile_url``), and only in ``<image>`` elements (see the
Content-Security-Policy).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import ConfigError
from agent.web.auth import HostCheck, Policy, Sessions, Throttle, secret_matches
from agent.web.httpbase import (
    Limits,
    Request,
    Response,
    WebError,
    WebServer,
    bearer,
    byte_range,
    error_page,
    redirect,
    session_cookie,
    static_file,
    too_many,
)
from agent.web.markup import html
from agent.web.review_pages import ReviewPages
from agent.web.storeview import StoreView, check_seq, check_stream

log = logging.getLogger(__name__)

COOKIE = "edge_review"
MIN_TOKEN = 16
SESSION_S = 12 * 3600.0
SESSION_IDLE_S = 3600.0
MAX_FAILURES = 5
LOCKOUT_S = 60.0
# Credential kinds, each throttled on its own (a stale cookie is not a guess: wider margin).
TOKEN, BEARER, SESSION = "token", "bearer", "session"
# Plaintext served inline, by the manifest's content type; anything else is not served.
MEDIA_TYPES = {
    "video/mp4": "video/mp4",
    "audio/mp4": "audio/mp4",
    "audio/ogg": "audio/ogg",
    "image/jpeg": "image/jpeg",
    "image/png": "image/png",
    "application/json": "application/json",
}
ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("devices", re.compile(r"^/\Z")),
    ("device", re.compile(r"^/d/(?P<dev>[^/]{1,64})\Z")),
    (
        "segment",
        re.compile(r"^/d/(?P<dev>[^/]{1,64})/s/(?P<stream>[^/]{1,32})/(?P<seq>[^/]{1,12})\Z"),
    ),
    (
        "media",
        re.compile(r"^/d/(?P<dev>[^/]{1,64})/m/(?P<stream>[^/]{1,32})/(?P<seq>[^/]{1,12})\Z"),
    ),
    ("static", re.compile(r"^/static/(?P<name>[^/]{1,64})\Z")),
]


def check_tile_url(url: str | None) -> str | None:
    """An operator's tile server: http(s) with {z}, {x} and {y}, or None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"tile url {url!r}: must be an http(s) address")
    if not all(v in url for v in ("{z}", "{x}", "{y}")):
        raise ConfigError(f"tile url {url!r}: must contain {{z}}, {{x}} and {{y}}")
    if any(c in url for c in "\"'<> \\"):
        raise ConfigError(f"tile url {url!r}: contains characters an address may not")
    return url


class ReviewApp:
    """Routes each request of the review page and decides who may ask (see the docstring)."""

    def __init__(
        self,
        view: StoreView,
        token: str,
        *,
        tile_url: str | None = None,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        allowed_hosts: Iterable[str] = (),
        session_s: float = SESSION_S,
        session_idle_s: float = SESSION_IDLE_S,
        max_failures: int = MAX_FAILURES,
        lockout_s: float = LOCKOUT_S,
    ) -> None:
        if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
            raise ConfigError(
                f"review token: must be at least {MIN_TOKEN} characters without spaces"
            )
        self.view = view
        self.token = token
        self.tile_url = check_tile_url(tile_url)
        self.pages = ReviewPages(view, clock or time.time, self.tile_url)
        self.hosts = HostCheck(allowed_hosts)
        policy = Policy(max_failures, lockout_s)
        wide = Policy(max_failures * 4, lockout_s)
        self.throttle = Throttle(
            "review", {TOKEN: policy, BEARER: policy, SESSION: wide}, monotonic
        )
        self.sessions = Sessions(monotonic, lifetime_s=session_s, idle_s=session_idle_s)

    # ------------------------------------------------------------------ plumbing

    def security_headers(self) -> list[tuple[str, str]]:
        img = "'self' data:"
        if self.tile_url:
            p = urlsplit(self.tile_url)
            img += f" {p.scheme}://{p.netloc}"
        csp = (
            "default-src 'none'; script-src 'self'; style-src 'self'; "
            f"img-src {img}; media-src 'self'; connect-src 'self'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'"
        )
        return [
            ("Content-Security-Policy", csp),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "DENY"),
        ]

    def handle(self, req: Request) -> Response:
        if not self.hosts.allowed(req.header("Host")):
            log.warning(
                "review: refused a request for host %r from %s", req.header("Host")[:80], req.client
            )
            return error_page(
                421, "this page answers only to its own addresses (see --allowed-host)"
            )
        if req.method not in ("GET", "HEAD"):
            return error_page(405, "the review page is read-only")
        for name, pattern in ROUTES:
            m = pattern.match(req.path)
            if m is None:
                continue
            if name == "static":
                return static_file(m.group("name"))
            if "token" in req.query:
                return self._login(req)
            refused = self._authorize(req)
            if refused is not None:
                return refused
            args = m.groupdict()
            if name == "devices":
                return self.pages.devices_page()
            if name == "device":
                return self.pages.device_page(args["dev"], req)
            stream, seq = check_stream(args["stream"]), check_seq(args["seq"])
            if name == "segment":
                return self.pages.segment_page(args["dev"], stream, seq)
            return self.media(args["dev"], stream, seq, req)
        if "token" in req.query:
            return self._login(req)
        refused = self._authorize(req)
        return refused or error_page(404, "there is no such page")

    # ------------------------------------------------------------------ auth

    def _authorize(self, req: Request) -> Response | None:
        """None when the request may go on; else the refusal (401, or 429 when locked)."""
        given = bearer(req)
        if given is not None:
            left = self.throttle.locked(req.client, BEARER)
            if left:
                return too_many(left, "tokens")
            if secret_matches(given, (self.token,)):
                self.throttle.success(req.client, BEARER)
                return None
            self.throttle.failure(req.client, BEARER)
            return self._refuse("that token is not valid for this review page")
        sid = req.cookies.get(COOKIE, "")
        if sid:
            left = self.throttle.locked(req.client, SESSION)
            if left:
                return too_many(left, "sessions")
            if self.sessions.valid(sid):
                return None
            self.throttle.failure(req.client, SESSION)
            r = self._refuse("the session has ended: open the page with the token again")
            r.headers.append(("Set-Cookie", f"{COOKIE}=; Max-Age=0; Path=/"))
            return r
        return self._refuse("this page needs the review token")

    def _login(self, req: Request) -> Response:
        left = self.throttle.locked(req.client, TOKEN)
        if left:
            return too_many(left, "tokens")
        if not secret_matches(req.query.get("token", ""), (self.token,)):
            self.throttle.failure(req.client, TOKEN)
            return error_page(403, "that token is not valid for this review page")
        self.throttle.success(req.client, TOKEN)
        rest = {k: v for k, v in req.query.items() if k != "token"}
        target = req.path + (f"?{urlencode(rest)}" if rest else "")
        sid = self.sessions.create()
        log.info("review: a session started from %s", req.client)
        cookie = session_cookie(COOKIE, sid, self.sessions.lifetime_s, secure=req.https)
        return redirect(target, [("Set-Cookie", cookie)])

    def _refuse(self, message: str) -> Response:
        form = html(
            '<form method=get action="/" class=login><label>token '
            "<input type=password name=token autocomplete=off required></label> "
            "<button>open</button></form>"
        )
        r = error_page(401, message, form)
        r.headers.append(("WWW-Authenticate", 'Bearer realm="edge-agent review"'))
        return r

    # ------------------------------------------------------------------ media

    def media(self, device: str, stream: str, seq: int, req: Request) -> Response:
        review = self.view.review(device)
        s = review.segment(stream, seq)
        if s is None:
            raise WebError(404, f"{stream} #{seq} is not in the store")
        if not s.verified:
            raise WebError(409, "this segment failed verification; its content is not served")
        ctype = MEDIA_TYPES.get(s.media_type)
        if ctype is None:
            raise WebError(415, f"{s.content_type or 'this content'} is not served as media")
        data = self.view.media(device, stream, seq, s.content_type)
        # Evidence never rests in a browser's or a proxy's cache.
        return byte_range(data, ctype, req, cache="no-store")


def serve_review(
    store_dir: Path,
    host: str,
    port: int,
    token: str,
    platform_key: X25519PrivateKey | None,
    tile_url: str | None,
    stop: threading.Event,
    *,
    devices_dir: Path | None = None,
    allowed_hosts: Iterable[str] = (),
    limits: Limits | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> WebServer:
    """Start the review page on (host, port) in its own threads; it serves until ``stop`` is
    set. Returns the running server (``.url``, ``.join()``). Raises ConfigError for a weak
    token or a bad tile URL, WebError when the address cannot be bound."""
    view = StoreView(store_dir, platform_key=platform_key, devices_dir=devices_dir)
    app = ReviewApp(
        view, token, tile_url=tile_url, allowed_hosts=allowed_hosts, monotonic=monotonic
    )
    server = WebServer(app, host, port, stop, "review", limits)
    server.start()
    return server


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) for --web."""
    m = re.match(r"^\[?([^\[\]]+?)\]?:(\d{1,5})$", text.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ConfigError(f"--web {text!r}: must be HOST:PORT, e.g. 127.0.0.1:8090")
    return m.group(1), int(m.group(2))
