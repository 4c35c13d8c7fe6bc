"""The technician's device page: a live preview, the GPS fix, the self-test and the health
figures, served by the running agent when ``[web] enabled = true`` (off by default).

    /               the page (after a login)
    /login          the login form (POST): the PIN or the token, throttled per client
    /preview.jpg    the newest camera frame as JPEG (from the capture pipeline, never the spool)
    /api/status     the agent's health figures (Agent.status()) as JSON
    /api/selftest   GET: the last self-test result; POST: run it again
    /static/<name>  the package's CSS and JS

Who may ask (:mod:`agent.web.auth`): a session from the login form (a cookie that expires),
or ``Authorization: Bearer <token>`` with the configured token (16+ characters; a PIN is
never accepted as a bearer). Each kind of credential is throttled per client: wrong attempts
lock that client out of that kind (the right PIN is refused too while it lasts), and are
logged; other clients are not affected. A request whose ``Host`` is not an IP address,
``localhost`` or a configured host name is refused (DNS rebinding).

It never serves sealed or plaintext evidence: it has no access to the spool at all, only to
the callables it is given (``status``, ``frame``, ``selftest``). A POST must carry the
``X-Edge-Agent: 1`` header (or come from the page's own form, same origin): a page on another
site cannot make the technician's browser rerun the self-test. Every piece of HTML is built
by :func:`agent.web.markup.html`, which escapes each value.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from agent.errors import ConfigError
from agent.web.auth import HostCheck, Policy, Sessions, Throttle, secret_matches
from agent.web.httpbase import (
    Limits,
    Request,
    Response,
    WebError,
    WebServer,
    bearer,
    error_page,
    page,
    redirect,
    session_cookie,
    static_file,
    too_many,
)
from agent.web.markup import Markup, html
from agent.web.settings import WebSettings

log = logging.getLogger(__name__)

COOKIE = "edge_device"
MAX_SESSIONS = 32
# Credential kinds, each throttled on its own (a stale cookie after a restart is not a guess,
# so sessions get a wider margin).
LOGIN, BEARER, SESSION = "login", "bearer", "session"
SESSION_FAILURE_FACTOR = 4
PREVIEW_MIN_S = 0.5  # encode at most twice a second, whoever asks
PREVIEW_WIDTH = 640
JPEG_QUALITY = 70
SELFTEST_TIMEOUT_S = 300


class FrameLike(Protocol):
    @property
    def image(self) -> Any: ...

    @property
    def index(self) -> int: ...

    @property
    def utc(self) -> float: ...


StatusFn = Callable[[], dict[str, Any]]
FrameFn = Callable[[], FrameLike | None]
SelfTestFn = Callable[[], dict[str, Any]]


def selftest_command(config: Path | None = None) -> SelfTestFn:
    """A self-test hook that runs ``edge-agent selftest --json`` and returns its JSON."""

    def run() -> dict[str, Any]:
        args = [sys.executable, "-m", "agent.cli", "selftest", "--json"]
        if config is not None:
            args += ["--config", str(config)]
        try:
            res = subprocess.run(
                args, capture_output=True, text=True, timeout=SELFTEST_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"ok": False, "error": f"selftest could not run: {exc}"}
        try:
            out = json.loads(res.stdout)
        except ValueError:
            return {
                "ok": False,
                "error": f"selftest exited {res.returncode}: {(res.stderr or res.stdout)[-500:]}",
            }
        return out if isinstance(out, dict) else {"ok": res.returncode == 0, "result": out}

    return run


def encode_jpeg(image: Any, width: int = PREVIEW_WIDTH, quality: int = JPEG_QUALITY) -> bytes:
    """A BGR frame as JPEG, scaled down to ``width`` (OpenCV is imported only here)."""
    import cv2

    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(
            image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise WebError(500, "the frame could not be encoded")
    return bytes(buf)


class DeviceApp:
    """Builds every response of the device page (see the module docstring)."""

    def __init__(
        self,
        settings: WebSettings,
        *,
        status: StatusFn,
        frame: FrameFn | None = None,
        selftest: SelfTestFn | None = None,
        selftest_result: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.secrets:
            raise ConfigError("web.pin: the device page needs a pin or a token")
        self.settings = settings
        self._status = status
        self._frame = frame
        self._selftest = selftest
        self._lock = threading.Lock()
        policy = Policy(settings.max_failures, settings.lockout_s)
        wide = Policy(settings.max_failures * SESSION_FAILURE_FACTOR, settings.lockout_s)
        self.throttle = Throttle(
            "device-web", {LOGIN: policy, BEARER: policy, SESSION: wide}, clock
        )
        self.sessions = Sessions(
            clock,
            lifetime_s=settings.session_s,
            idle_s=settings.session_idle_s,
            max_sessions=MAX_SESSIONS,
        )
        self.hosts = HostCheck((settings.host, *settings.hostnames))
        # guarded by _lock:
        self._jpeg: tuple[int, float, bytes] | None = None  # frame index, when, bytes
        self._test_result = selftest_result
        self._test_finished: float | None = time.time() if selftest_result else None
        self._test_thread: threading.Thread | None = None

    def security_headers(self) -> list[tuple[str, str]]:
        csp = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
        return [
            ("Content-Security-Policy", csp),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "DENY"),
        ]

    # ------------------------------------------------------------------ auth

    def _authorize(self, req: Request) -> Response | None:
        """None when the request may go on; else the refusal (401, or 429 when locked)."""
        given = bearer(req)
        if given is not None:
            # Only the long token is a bearer credential: a PIN is for a person at the form.
            left = self.throttle.locked(req.client, BEARER)
            if left:
                return too_many(left, "bearer tokens")
            if secret_matches(given, (self.settings.token,)):
                self.throttle.success(req.client, BEARER)
                return None
            self.throttle.failure(req.client, BEARER)
            return self._login_form("the bearer token is not valid for this device", 401)
        sid = req.cookies.get(COOKIE, "")
        if sid:
            left = self.throttle.locked(req.client, SESSION)
            if left:
                return too_many(left, "sessions")
            if self.sessions.valid(sid):
                return None
            self.throttle.failure(req.client, SESSION)
            if req.path == "/" and req.method == "GET":
                return redirect("/login", [self._clear_cookie()])
            return self._login_form("the session has ended: log in again", 401)
        if req.path == "/" and req.method == "GET":
            return redirect("/login")
        return self._login_form("this page needs the PIN or token", 401)

    @staticmethod
    def _clear_cookie() -> tuple[str, str]:
        return ("Set-Cookie", f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict")

    def _same_origin(self, req: Request) -> bool:
        if req.header("X-Edge-Agent") == "1" or req.header("Sec-Fetch-Site") == "same-origin":
            return True
        origin = req.header("Origin")
        return bool(origin) and origin == f"http://{req.header('Host')}"

    def _login(self, req: Request) -> Response:
        if not self._same_origin(req):
            return error_page(403, "a login must come from this page")
        left = self.throttle.locked(req.client, LOGIN)
        if left:
            r = self._login_form(
                f"too many wrong attempts from this address: try again in {left:.0f} s", 429
            )
            r.headers.append(("Retry-After", str(max(1, round(left)))))
            return r
        fields = parse_qs(req.body.decode("utf-8", "replace"))
        given = (fields.get("secret") or [""])[-1].strip()
        if not secret_matches(given, self.settings.secrets):
            self.throttle.failure(req.client, LOGIN)
            return self._login_form("wrong PIN or token", 403)
        self.throttle.success(req.client, LOGIN)
        sid = self.sessions.create()
        log.info("device-web: a login from %s", req.client)
        cookie = session_cookie(COOKIE, sid, self.settings.session_s, secure=req.https)
        return redirect("/", [("Set-Cookie", cookie)])

    def _login_form(self, message: str = "", status: int = 200) -> Response:
        note = html("<p class=bad id=login-error>{m}</p>", m=message) if message else Markup()
        body = html(
            "<header><h1>edge-agent device</h1><p class=sub>technician's page</p></header><main>"
            "{note}<form method=post action='/login' class=login>"
            "<label>PIN or token <input type=password name=secret id=secret autocomplete=off "
            "required autofocus></label> <button id=login>open</button></form></main>",
            note=note,
        )
        r = page("edge-agent device: log in", body, status=status)
        if status == 401:
            r.headers.append(("WWW-Authenticate", 'Bearer realm="edge-agent device"'))
        return r

    # ------------------------------------------------------------------ routes

    def handle(self, req: Request) -> Response:
        if not self.hosts.allowed(req.header("Host")):
            log.warning(
                "device-web: refused a request for host %r from %s",
                req.header("Host")[:80],
                req.client,
            )
            return error_page(
                421,
                "this page answers only to its own addresses (add the name to [web] hostnames)",
            )
        path = req.path
        if path.startswith("/static/"):
            return static_file(path[len("/static/") :])
        if path == "/login":
            if req.method == "POST":
                return self._login(req)
            return self._login_form()
        refused = self._authorize(req)
        if refused is not None:
            return refused
        if req.method == "POST":
            if not self._same_origin(req):
                return error_page(403, "this request must come from the device page")
            if path == "/api/selftest":
                return self._json(self.start_selftest())
            if path == "/logout":
                self.sessions.drop(req.cookies.get(COOKIE, ""))
                return redirect("/login", [self._clear_cookie()])
            return error_page(405, "nothing to post here")
        if req.method not in ("GET", "HEAD"):
            return error_page(405, "not allowed")
        if path == "/":
            return self.page()
        if path == "/preview.jpg":
            return self.preview()
        if path == "/api/status":
            return self._json(self.status())
        if path == "/api/selftest":
            return self._json(self.selftest_state())
        return error_page(404, "there is no such page")

    def _json(self, obj: dict[str, Any]) -> Response:
        data = json.dumps(obj, default=str, sort_keys=True).encode()
        return Response(200, data, "application/json")

    # ------------------------------------------------------------------ content

    def status(self) -> dict[str, Any]:
        try:
            return dict(self._status())
        except Exception as exc:  # the page must stay up when a figure fails
            log.warning("web: status failed: %s", exc)
            return {"error": f"status unavailable: {exc}"}

    def preview(self) -> Response:
        if self._frame is None:
            raise WebError(404, "this device has no camera")
        frame = self._frame()
        if frame is None:
            raise WebError(503, "no frame from the camera yet")
        now = time.monotonic()  # the encode rate is real time, whatever clock auth uses
        with self._lock:
            cached = self._jpeg
        if cached is not None and (cached[0] == frame.index or now - cached[1] < PREVIEW_MIN_S):
            data = cached[2]
        else:
            data = encode_jpeg(frame.image)
            with self._lock:
                self._jpeg = (frame.index, now, data)
        return Response(200, data, "image/jpeg", [("Cache-Control", "no-store")])

    def selftest_state(self) -> dict[str, Any]:
        with self._lock:
            running = self._test_thread is not None and self._test_thread.is_alive()
            return {
                "available": self._selftest is not None,
                "running": running,
                "result": self._test_result,
                "finished_utc": self._test_finished,
            }

    def start_selftest(self) -> dict[str, Any]:
        if self._selftest is None:
            raise WebError(404, "no self-test on this device")
        with self._lock:
            if self._test_thread is None or not self._test_thread.is_alive():
                self._test_thread = threading.Thread(target=self._run_selftest, name="web-selftest")
                self._test_thread.start()
        return self.selftest_state()

    def _run_selftest(self) -> None:
        assert self._selftest is not None
        try:
            result = self._selftest()
        except Exception as exc:
            log.warning("web: selftest failed: %s", exc)
            result = {"ok": False, "error": str(exc)}
        with self._lock:
            self._test_result = result
            self._test_finished = time.time()

    def join(self, timeout: float | None = None) -> None:
        with self._lock:
            t = self._test_thread
        if t is not None:
            t.join(timeout)

    def page(self) -> Response:
        s = self.status()
        title = f"{s.get('device', 'device')} ({s.get('profile', '?')})"
        camera = (
            html(
                "<section><h2>camera</h2><img class=preview id=preview alt='live preview' "
                "src='/preview.jpg'><p class=sub id=preview-note>refreshed about once a second"
                "</p></section>"
            )
            if self._frame is not None
            else html("<section><h2>camera</h2><p>this device has no camera</p></section>")
        )
        button = (
            html("<button id=rerun type=button>run the self-test again</button>")
            if self._selftest is not None
            else html("<p class=sub>no self-test hook on this device</p>")
        )
        body = html(
            "<header><h1>{title}</h1><p class=sub>technician's page: live figures, "
            "no evidence</p></header><main><div class=cols>"
            "{camera}<section><h2>GPS</h2><table class=kv id=gps><tr><td>waiting</td></tr>"
            "</table><h2>health</h2><table class=kv id=health><tr><td>waiting</td></tr></table>"
            "</section></div><section><h2>self-test</h2>{button}<p class=sub id=selftest-state>"
            "</p><div id=selftest></div></section>"
            "<form method=post action='/logout'><button>log out</button></form></main>",
            title=title,
            camera=camera,
            button=button,
        )
        return page(f"{title}: edge-agent device", body, scripts=["device.js"])


class DevicePage:
    """The device page as a part of the running agent: ``start()``, then ``join()`` after the
    agent's stop event is set."""

    def __init__(
        self,
        settings: WebSettings,
        *,
        status: StatusFn,
        stop: threading.Event,
        frame: FrameFn | None = None,
        selftest: SelfTestFn | None = None,
        selftest_result: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = DeviceApp(
            settings,
            status=status,
            frame=frame,
            selftest=selftest,
            selftest_result=selftest_result,
            clock=clock,
        )
        limits = Limits(
            max_connections=settings.max_connections,
            max_per_client=settings.max_connections_per_client,
        )
        self.server = WebServer(self.app, settings.host, settings.port, stop, "device-web", limits)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def join(self, timeout: float | None = None) -> None:
        self.server.join(timeout)
        self.app.join(timeout)

    def close(self) -> None:
        self.server.close()


def serve_device(
    settings: WebSettings,
    *,
    status: StatusFn,
    stop: threading.Event,
    frame: FrameFn | None = None,
    selftest: SelfTestFn | None = None,
) -> DevicePage:
    """Start the device page; it serves until ``stop`` is set."""
    p = DevicePage(settings, status=status, stop=stop, frame=frame, selftest=selftest)
    p.start()
    return p
