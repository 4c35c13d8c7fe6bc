"""The technician's device page: a live preview, the GPS fix, the self-test and the health
figures, served by the running agent when ``[web] enabled = true`` (off by default).

    /               the page (after the PIN or token)
    /login          PIN/token form (POST); failures beyond ``max_failures`` lock it for a while
    /preview.jpg    the newest camera frame as JPEG (from the capture pipeline, never the spool)
    /api/status     the agent's health figures (Agent.status()) as JSON
    /api/selftest   GET: the last self-test result; POST: run it again
    /static/<name>  the package's CSS and JS

It never serves sealed or plaintext evidence: it has no access to the spool at all, only to
the callables it is given (``status``, ``frame``, ``selftest``). A POST must carry the
``X-Edge-Agent: 1`` header (or come from the page's own form, same origin): a page on another
site cannot make the technician's browser rerun the self-test.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from agent.errors import ConfigError
from agent.web.httpbase import (
    Request,
    Response,
    WebError,
    WebServer,
    bearer,
    error_page,
    esc,
    page,
    redirect,
    secret_matches,
    static_file,
)
from agent.web.settings import WebSettings

log = logging.getLogger(__name__)

COOKIE = "edge_device"
SESSION_S = 8 * 3600
MAX_SESSIONS = 32
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
        self._clock = clock
        self._lock = threading.Lock()
        # guarded by _lock:
        self._sessions: dict[str, float] = {}  # session id -> expiry (monotonic)
        self._failures = 0
        self._locked_until = 0.0
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

    def _authorized(self, req: Request) -> bool:
        if secret_matches(bearer(req), self.settings.secrets):
            return True
        sid = req.cookies.get(COOKIE, "")
        now = self._clock()
        with self._lock:
            for k in [k for k, exp in self._sessions.items() if exp < now]:
                del self._sessions[k]
            return bool(sid) and any(secret_matches(sid, (k,)) for k in self._sessions)

    def _same_origin(self, req: Request) -> bool:
        if req.header("X-Edge-Agent") == "1" or req.header("Sec-Fetch-Site") == "same-origin":
            return True
        origin = req.header("Origin")
        return bool(origin) and origin == f"http://{req.header('Host')}"

    def _login(self, req: Request) -> Response:
        if not self._same_origin(req):
            return error_page(403, "a login must come from this page")
        now = self._clock()
        with self._lock:
            if now < self._locked_until:
                wait = self._locked_until - now
                return self._login_form(f"too many wrong attempts: try again in {wait:.0f} s", 429)
        fields = parse_qs(req.body.decode("utf-8", "replace"))
        given = (fields.get("secret") or [""])[-1].strip()
        if not secret_matches(given, self.settings.secrets):
            with self._lock:
                self._failures += 1
                if self._failures >= self.settings.max_failures:
                    self._failures = 0
                    self._locked_until = now + self.settings.lockout_s
            log.warning("web: a wrong PIN/token from %s", req.client)
            return self._login_form("wrong PIN or token", 403)
        sid = secrets.token_hex(24)
        with self._lock:
            self._failures = 0
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k])
                del self._sessions[oldest]
            self._sessions[sid] = now + SESSION_S
        cookie = f"{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_S}"
        return redirect("/", [("Set-Cookie", cookie)])

    def _login_form(self, message: str = "", status: int = 200) -> Response:
        note = f"<p class=bad id=login-error>{esc(message)}</p>" if message else ""
        body = (
            "<header><h1>edge-agent device</h1><p class=sub>technician's page</p></header><main>"
            f"{note}<form method=post action='/login' class=login>"
            "<label>PIN or token <input type=password name=secret id=secret autocomplete=off "
            "required autofocus></label> <button id=login>open</button></form></main>"
        )
        r = page("edge-agent device: log in", body, status=status)
        if status == 401:
            r.headers.append(("WWW-Authenticate", 'Bearer realm="edge-agent device"'))
        return r

    # ------------------------------------------------------------------ routes

    def handle(self, req: Request) -> Response:
        path = req.path
        if path.startswith("/static/"):
            return static_file(path[len("/static/") :])
        if path == "/login":
            if req.method == "POST":
                return self._login(req)
            return self._login_form()
        if not self._authorized(req):
            if path == "/" and req.method == "GET":
                return redirect("/login")
            return self._login_form("this page needs the PIN or token", 401)
        if req.method == "POST":
            if not self._same_origin(req):
                return error_page(403, "this request must come from the device page")
            if path == "/api/selftest":
                return self._json(self.start_selftest())
            if path == "/logout":
                with self._lock:
                    self._sessions.pop(req.cookies.get(COOKIE, ""), None)
                return redirect("/login", [("Set-Cookie", f"{COOKIE}=; Max-Age=0; Path=/")])
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
        now = self._clock()
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
            "<section><h2>camera</h2><img class=preview id=preview alt='live preview' "
            "src='/preview.jpg'><p class=sub id=preview-note>refreshed about once a second</p>"
            "</section>"
            if self._frame is not None
            else "<section><h2>camera</h2><p>this device has no camera</p></section>"
        )
        button = (
            "<button id=rerun type=button>run the self-test again</button>"
            if self._selftest is not None
            else "<p class=sub>no self-test hook on this device</p>"
        )
        body = (
            f"<header><h1>{esc(title)}</h1><p class=sub>technician's page: live figures, "
            "no evidence</p></header><main><div class=cols>"
            f"{camera}<section><h2>GPS</h2><table class=kv id=gps><tr><td>waiting</td></tr>"
            "</table><h2>health</h2><table class=kv id=health><tr><td>waiting</td></tr></table>"
            f"</section></div><section><h2>self-test</h2>{button}<p class=sub id=selftest-state>"
            "</p><div id=selftest></div></section>"
            "<form method=post action='/logout'><button>log out</button></form></main>"
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
    ) -> None:
        self.app = DeviceApp(
            settings,
            status=status,
            frame=frame,
            selftest=selftest,
            selftest_result=selftest_result,
        )
        self.server = WebServer(self.app, settings.host, settings.port, stop, "device-web")

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
