"""What both pages share: a request/response pair, HTML pages, byte ranges, static files, and a
``ThreadingHTTPServer`` run in a thread until a stop event is set.

Why the standard library's ``http.server``: no dependency to install, audit or update on a
device, and a thread per connection is plenty for the handful of people who ever look at one
of these pages (a technician at a truck, a few supervisors). Every response is built by an
application object (``App.handle(Request) -> Response``); the handler here only parses, writes
and turns any unexpected exception into an error page (never a traceback to the browser).

**Bounded.** A thread per connection, but at most ``Limits.max_connections`` at once and at
most ``Limits.max_per_client`` from one client (one IPv4 address or IPv6 /64): the next
connection gets a short ``503`` and is closed at once, so one visitor holding idle
connections cannot starve the others. A connection that sends nothing for
``Limits.idle_timeout_s`` is closed. Behind a reverse proxy (``trusted_proxies``), the client
is the last address the proxy appended to ``X-Forwarded-For``, and the proxy itself is held
only to the global cap.

**Nothing secret in the log.** Request lines are logged (at debug level) with any
``token=`` value replaced by ``<redacted>``; headers are never logged.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from agent.errors import AgentError, ConfigError
from agent.web.auth import client_key
from agent.web.markup import Markup, html, join

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
MAX_QUERY = 4096
RANGE_RE = re.compile(r"^bytes=([0-9]*)-([0-9]*)\Z")
# Static files the pages use: name -> content type. Nothing else under static/ is served.
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
STATIC_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}\.(css|js)\Z")
SECRET_IN_TEXT_RE = re.compile(r"(?i)((?:token|secret)=)[^&\s\"'#]*")
REFUSED_LOG_S = 60.0
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 40\r\n\r\n"
    b"too many connections: try again shortly\n"
)


def redact(text: str) -> str:
    """``text`` (a request line, a path) with every ``token=``/``secret=`` value hidden."""
    return SECRET_IN_TEXT_RE.sub(r"\1<redacted>", text)


@dataclass(frozen=True)
class Limits:
    """How much of the server one page may use (see the module docstring)."""

    max_connections: int = 32
    max_per_client: int = 8
    idle_timeout_s: float = 20.0
    # Reverse proxies whose X-Forwarded-For names the real client (addresses or networks).
    trusted_proxies: tuple[str, ...] = ()


class WebError(AgentError):
    """A request that gets an error page: ``status`` and a message for the person reading it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str  # raw path (still percent-encoded), without the query
    query: dict[str, str]
    headers: Mapping[str, str]
    cookies: dict[str, str]
    body: bytes = b""
    client: str = ""  # the client's address (behind a trusted proxy: the one it named)
    https: bool = False  # a trusted proxy said the browser used https

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class App(Protocol):
    def handle(self, req: Request) -> Response: ...

    def security_headers(self) -> list[tuple[str, str]]: ...


# --------------------------------------------------------------------------- HTML


def page(
    title: str,
    body: Markup,
    *,
    status: int = 200,
    scripts: Iterable[str] = (),
    css: str = "web.css",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """A whole HTML document around ``body`` (built with :func:`agent.web.markup.html`)."""
    tags = join(html('<script src="/static/{s}" defer></script>', s=s) for s in scripts)
    doc = html(
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        '<title>{title}</title><link rel=stylesheet href="/static/{css}">{tags}</head>'
        "<body>{body}</body></html>\n",
        title=title,
        css=css,
        tags=tags,
        body=body,
    )
    return Response(status, doc.encode(), headers=list(headers or []))


def error_page(status: int, message: str, extra: Markup | None = None) -> Response:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = html(
        "<main class=error><h1>{status} {phrase}</h1><p>{message}</p>{extra}"
        '<p><a href="/">back to the start</a></p></main>',
        status=status,
        phrase=phrase,
        message=message,
        extra=extra or Markup(),
    )
    return page(f"{status} {phrase}", body, status=status)


def too_many(seconds: float, what: str) -> Response:
    """429 for a client locked out of a kind of credential (see :mod:`agent.web.auth`)."""
    wait = max(1, round(seconds))
    r = error_page(
        429,
        f"too many wrong {what} from this address: try again in {wait} s "
        "(other addresses are not affected)",
    )
    r.headers.append(("Retry-After", str(wait)))
    return r


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    r = Response(303, b"", "text/plain; charset=utf-8", list(headers or []))
    r.headers.append(("Location", location))
    return r


def session_cookie(name: str, value: str, max_age: float, *, secure: bool) -> str:
    """A session cookie: HttpOnly, SameSite=Strict, expiring with the session."""
    flags = "; Secure" if secure else ""
    return f"{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(max_age)}{flags}"


# --------------------------------------------------------------------------- bytes


def byte_range(data: bytes, content_type: str, req: Request, *, cache: str) -> Response:
    """``data`` whole (200) or the one range asked for (206); 416 when it cannot be served.
    Browsers play a <video> by asking ranges; several ranges in one request get the whole."""
    size = len(data)
    headers = [("Accept-Ranges", "bytes"), ("Cache-Control", cache)]
    spec = req.header("Range").strip()
    if not spec:
        return Response(200, data, content_type, headers)
    m = RANGE_RE.match(spec)
    if not m or (not m.group(1) and not m.group(2)):
        return Response(200, data, content_type, headers)
    first_s, last_s = m.group(1), m.group(2)
    if first_s:
        first = int(first_s)
        last = min(int(last_s), size - 1) if last_s else size - 1
    else:
        n = int(last_s)
        first, last = max(0, size - n), size - 1
    if first >= size or last < first:
        headers.append(("Content-Range", f"bytes */{size}"))
        return Response(416, b"", "text/plain; charset=utf-8", headers)
    headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    return Response(206, data[first : last + 1], content_type, headers)


def static_file(name: str) -> Response:
    """One of the package's own files under ``agent/web/static`` (by strict name only)."""
    m = STATIC_NAME_RE.match(name)
    if not m:
        raise WebError(404, "no such file")
    try:
        data = importlib.resources.files("agent.web").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, OSError):
        raise WebError(404, "no such file") from None
    ctype = STATIC_TYPES["." + m.group(1)]
    return Response(200, data, ctype, [("Cache-Control", "no-cache")])


# --------------------------------------------------------------------------- secrets


def bearer(req: Request) -> str | None:
    """The credential of an ``Authorization: Bearer`` header ("" when empty), else None."""
    auth = req.header("Authorization")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


# --------------------------------------------------------------------------- server


def _networks(specs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"--trusted-proxy {spec!r}: not an address or network") from None
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], app: App, limits: Limits, name: str) -> None:
        self.app = app
        self.limits = limits
        self.name = name
        self.proxies = _networks(limits.trusted_proxies)
        self._conn_lock = threading.Lock()
        self._open: dict[str, int] = {}  # client key -> open connections
        self._total = 0
        self.refused = 0
        self._refused_logged = -1e18
        self._refused_since_log = 0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def is_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def _admit(self, key: str, proxy: bool) -> bool:
        with self._conn_lock:
            if self._total >= self.limits.max_connections:
                return False
            if not proxy and self._open.get(key, 0) >= self.limits.max_per_client:
                return False
            self._total += 1
            self._open[key] = self._open.get(key, 0) + 1
            return True

    def _release(self, key: str) -> None:
        with self._conn_lock:
            self._total -= 1
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    @property
    def open_connections(self) -> int:
        with self._conn_lock:
            return self._total

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        key = client_key(peer)
        if not self._admit(key, self.is_proxy(peer)):
            self._refuse(request, key)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(key)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_key(str(client_address[0])))

    def _refuse(self, request: socket.socket, key: str) -> None:
        """Answer 503 at once and close: never a thread for a connection over the cap."""
        now = time.monotonic()
        with self._conn_lock:
            self.refused += 1
            self._refused_since_log += 1
            report = now - self._refused_logged >= REFUSED_LOG_S
            if report:
                n, self._refused_since_log = self._refused_since_log, 0
                self._refused_logged = now
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(BUSY)
        self.shutdown_request(request)
        if report:
            log.warning(
                "%s: refused %d connection(s) over the cap (%d at once, %d per client; "
                "last from %s)",
                self.name,
                n,
                self.limits.max_connections,
                self.limits.max_per_client,
                key,
            )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edge-agent"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # A connection that sends nothing for this long is closed (and its slot freed).
        self.connection.settimeout(self.server.limits.idle_timeout_s)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("web: %s %s", self.address_string(), redact(format % args))

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        try:
            req = self._request(method)
            resp = self.server.app.handle(req)
        except WebError as exc:
            resp = error_page(exc.status, str(exc))
        except Exception:
            log.exception("web: %s %s failed", method, redact(self.path[:200]))
            resp = error_page(500, "the page failed; the details are in the server's log")
        try:
            self._write(resp, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _client(self) -> tuple[str, bool]:
        peer = str(self.client_address[0])
        if not self.server.is_proxy(peer):
            return peer, False
        forwarded = [a.strip() for a in self.headers.get("X-Forwarded-For", "").split(",")]
        https = self.headers.get("X-Forwarded-Proto", "").strip().lower() == "https"
        return (forwarded[-1] if forwarded and forwarded[-1] else peer), https

    def _request(self, method: str) -> Request:
        if len(self.path) > MAX_QUERY:
            raise WebError(414, "the address is too long")
        parts = urlsplit(self.path)
        query: dict[str, str] = {}
        for k, v in parse_qs(parts.query, keep_blank_values=True).items():
            query[k] = v[-1]
        cookies: dict[str, str] = {}
        raw = self.headers.get("Cookie")
        if raw:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(raw)
            cookies = {k: m.value for k, m in jar.items()}
        body = b""
        if method == "POST":
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise WebError(400, "bad Content-Length") from None
            if n < 0 or n > MAX_BODY:
                self.close_connection = True
                raise WebError(413, "the request is too large")
            body = self.rfile.read(n)
        headers = {k: v for k, v in self.headers.items()}
        client, https = self._client()
        return Request(method, parts.path, query, headers, cookies, body, client, https)

    def _write(self, resp: Response, head: bool) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in self.server.app.security_headers():
            self.send_header(k, v)
        for k, v in resp.headers:
            self.send_header(k, v)
        if not any(k.lower() == "cache-control" for k, _ in resp.headers):
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head and resp.body:
            self.wfile.write(resp.body)


class WebServer:
    """A ``ThreadingHTTPServer`` for ``app`` on (host, port), served in a thread until ``stop``
    is set (or :meth:`close`). The port is bound in the constructor (``port`` 0 picks one)."""

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        stop: threading.Event,
        name: str,
        limits: Limits | None = None,
    ) -> None:
        self.stop = stop
        self.name = name
        try:
            self._server = _Server((host, port), app, limits or Limits(), name)
        except OSError as exc:
            raise WebError(500, f"{name}: cannot listen on {host}:{port}: {exc}") from exc
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def refused(self) -> int:
        """Connections refused over the cap so far."""
        return self._server.refused

    @property
    def open_connections(self) -> int:
        return self._server.open_connections

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start(self) -> None:
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name=self.name
        )
        watch = threading.Thread(target=self._watch, name=f"{self.name}-stop")
        self._threads = [serve, watch]
        for t in self._threads:
            t.start()
        log.info("%s: serving on %s", self.name, self.url)

    def _watch(self) -> None:
        while not self.stop.wait(0.2) and not self._closed.is_set():
            pass
        self._server.shutdown()
        self._server.server_close()

    def close(self) -> None:
        """Stop serving (without setting the shared stop event)."""
        self._closed.set()
        if not self._threads:
            self._server.server_close()
        self.join()

    def threads(self) -> list[threading.Thread]:
        """The serving thread and its stop watcher, once started."""
        return list(self._threads)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)
