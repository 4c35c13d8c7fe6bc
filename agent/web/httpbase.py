"""What both pages share: a request/response pair, HTML pages, byte ranges, static files, and a
``ThreadingHTTPServer`` run in a thread until a stop event is set.

Why the standard library's ``http.server``: no dependency to install, audit or update on a
device, and a thread per request is plenty for the handful of people who ever look at one of
these pages (a technician at a truck, a few supervisors). Every response is built by an
application object (``App.handle(Request) -> Response``); the handler here only parses, writes
and turns any unexpected exception into an error page (never a traceback to the browser).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import importlib.resources
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from agent.errors import AgentError

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
MAX_QUERY = 4096
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Static files the pages use: name -> content type. Nothing else under static/ is served.
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
STATIC_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}\.(css|js)$")


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
    client: str = ""

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


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(
    title: str,
    body: str,
    *,
    status: int = 200,
    scripts: Iterable[str] = (),
    css: str = "web.css",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    tags = "".join(f'<script src="/static/{esc(s)}" defer></script>' for s in scripts)
    doc = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        f'<link rel=stylesheet href="/static/{esc(css)}">{tags}</head>'
        f"<body>{body}</body></html>\n"
    )
    return Response(status, doc.encode(), headers=list(headers or []))


def error_page(status: int, message: str, extra: str = "") -> Response:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = (
        f"<main class=error><h1>{status} {esc(phrase)}</h1><p>{esc(message)}</p>{extra}"
        '<p><a href="/">back to the start</a></p></main>'
    )
    return page(f"{status} {phrase}", body, status=status)


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    r = Response(303, b"", "text/plain; charset=utf-8", list(headers or []))
    r.headers.append(("Location", location))
    return r


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


def secret_matches(given: str, secrets: Iterable[str]) -> bool:
    """Constant-time comparison against each configured secret."""
    ok = False
    for s in secrets:
        if s and hmac.compare_digest(given.encode(), s.encode()):
            ok = True
    return ok


def session_value(secret: str, purpose: str) -> str:
    """What a cookie carries instead of the secret itself (changes when the secret does)."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def bearer(req: Request) -> str:
    auth = req.header("Authorization")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return ""


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edge-agent"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        log.debug("web: %s %s", self.address_string(), format % args)

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
            log.exception("web: %s %s failed", method, self.path[:200])
            resp = error_page(500, "the page failed; the details are in the server's log")
        try:
            self._write(resp, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

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
        return Request(method, parts.path, query, headers, cookies, body, self.client_address[0])

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

    def __init__(self, app: App, host: str, port: int, stop: threading.Event, name: str) -> None:
        self.stop = stop
        self.name = name
        try:
            self._server = _Server((host, port), app)
        except OSError as exc:
            raise WebError(500, f"{name}: cannot listen on {host}:{port}: {exc}") from exc
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

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

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)
