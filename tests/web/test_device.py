"""The technician's device page in a real browser, served by the running agent's parts.

Several clients are needed to show that a throttle or a cap is per client: every 127.x.y.z
address is this machine, so a test talks from 127.0.0.2, .3, ... as other clients while the
browser (127.0.0.1) plays the technician.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config.fields import load_dataclass
from agent.errors import ConfigError
from agent.labs.waiting import wait_for
from agent.web.device import COOKIE, DevicePage
from agent.web.settings import WebSettings
from tests.web.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEVICE,
    Clock,
    Pipeline,
    ask,
    busy_reply,
    idle_connection,
    screenshot,
)

PIN = "482913"
TOKEN = "device-api-token-0123456789abcdef"
HOSTNAME = "truck-17.local"
SELFTEST = {
    "device": DEVICE,
    "ok": True,
    "counts": {"PASS": 2, "FAIL": 0, "SKIP": 1},
    "items": [
        {"item": "camera", "name": "camera frame", "status": "PASS", "detail": "320x240"},
        {"item": "gps", "name": "GPS fix", "status": "PASS", "detail": "52.0, 5.0"},
        {"item": "mic", "name": "microphone level", "status": "SKIP", "detail": "disabled"},
    ],
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Served:
    def __init__(self, page: DevicePage, runs: list[int], clock: Clock) -> None:
        self.page = page
        self.runs = runs
        self.clock = clock

    @property
    def address(self) -> tuple[str, int]:
        return self.page.server.address

    @property
    def url(self) -> str:
        return self.page.url

    def form(self, pin: str, source: str) -> Any:
        host, port = self.address
        return ask(
            self.address,
            "/login",
            method="POST",
            body=f"secret={pin}".encode(),
            headers={
                "Origin": f"http://{host}:{port}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            source=source,
        )


@pytest.fixture(scope="module")
def served(pipeline: Pipeline) -> Iterator[Served]:
    agent = pipeline.agent
    assert agent.video is not None
    runs: list[int] = []

    def selftest() -> dict[str, Any]:
        runs.append(1)
        return {**SELFTEST, "run": len(runs)}

    stop = threading.Event()
    clock = Clock()
    settings = WebSettings(
        enabled=True,
        host="127.0.0.1",
        port=0,
        pin=PIN,
        token=TOKEN,
        max_failures=3,
        lockout_s=60.0,
        session_s=3600.0,
        session_idle_s=600.0,
        hostnames=(HOSTNAME,),
    )
    page = DevicePage(
        settings,
        status=agent.status,
        stop=stop,
        frame=agent.video.recorder.latest_frame,
        selftest=selftest,
        clock=clock,
    )
    page.start()
    try:
        yield Served(page, runs, clock)
    finally:
        stop.set()
        page.join(5)


def _login_in_browser(page: Any, served: Served, pin: str) -> None:
    page.goto(served.url)
    assert page.url.endswith("/login")
    page.fill("#secret", pin)
    page.click("#login")


def test_device_page_preview_gps_health_and_selftest(context: Any, served: Served) -> None:
    page = context.new_page()
    _login_in_browser(page, served, "000000")
    assert "wrong PIN" in page.locator("#login-error").inner_text()
    page.fill("#secret", PIN)
    page.click("#login")
    page.wait_for_selector("#preview")
    # The preview refreshes about once a second with new frames from the capture pipeline.
    page.wait_for_function(
        "() => Number(document.getElementById('preview').getAttribute('data-frames')) >= 3",
        timeout=8000,
    )
    assert page.evaluate("() => document.getElementById('preview').naturalWidth") == 320
    page.wait_for_function("() => document.getElementById('gps').innerText.includes('52.')")
    assert "fix" in page.locator("#gps").inner_text()
    health = page.locator("#health").inner_text()
    assert DEVICE in health and "uplink" in health
    assert served.runs == []
    page.click("#rerun")
    page.wait_for_selector("#selftest-items")
    assert served.runs == [1]
    items = page.locator("#selftest-items").inner_text()
    assert "camera frame" in items and "PASS" in items and "SKIP" in items
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["expires"] > 0  # a session cookie with an end, not one for ever
    screenshot(page, "device-page")


def test_preview_frames_change(served: Served) -> None:
    first = ask(served.address, "/preview.jpg", headers=AUTH)
    assert first[0].status == 200 and first[0].getheader("Content-Type") == "image/jpeg"
    assert first[0].getheader("Cache-Control") == "no-store"
    assert first[1][:2] == b"\xff\xd8"
    threading.Event().wait(0.7)
    second = ask(served.address, "/preview.jpg", headers=AUTH)
    assert second[1] != first[1]  # a newer frame (its watermark carries the time)


def test_without_a_credential_nothing_is_shown(served: Served) -> None:
    src = "127.0.0.4"
    for path in ("/api/status", "/preview.jpg", "/api/selftest"):
        resp, body = ask(served.address, path, source=src)
        assert resp.status == 401, path
        assert b"PIN" in body and b"\xff\xd8" not in body
    resp, _ = ask(
        served.address, "/api/status", headers={"Authorization": "Bearer 1234"}, source=src
    )
    assert resp.status == 401
    # The PIN is for a person at the login form: never a bearer credential, right or wrong.
    resp, _ = ask(
        served.address, "/api/status", headers={"Authorization": f"Bearer {PIN}"}, source=src
    )
    assert resp.status == 401


def test_no_evidence_and_no_cross_site_posts(served: Served, pipeline: Pipeline) -> None:
    for path in ("/d/cam-web-1", "/spool", "/seg/video/0", "/static/../device.py", "/m/video/0"):
        resp, _ = ask(served.address, path, headers=AUTH)
        assert resp.status == 404, path
    status = ask(served.address, "/api/status", headers=AUTH)[1]
    assert str(pipeline.agent.cfg.spool.dir).encode() not in status  # figures, no paths
    before = len(served.runs)
    resp, _ = ask(
        served.address,
        "/api/selftest",
        method="POST",
        headers={**AUTH, "Origin": "http://evil.example"},
    )
    assert resp.status == 403 and len(served.runs) == before


def test_pin_guessing_locks_that_client_and_not_the_technician(
    context: Any, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    attacker = "127.0.0.2"
    caplog.set_level(logging.WARNING, logger="agent.web")
    assert [served.form(p, attacker)[0].status for p in ("1111", "2222", "3333")] == [403] * 3
    # Locked: the right PIN is refused too, unchecked, for that client.
    resp, body = served.form(PIN, attacker)
    assert resp.status == 429 and b"too many wrong attempts" in body
    assert 55 <= int(resp.getheader("Retry-After")) <= 60
    logged = [r.getMessage() for r in caplog.records]
    assert sum(f"wrong login from {attacker}" in m for m in logged) == 3
    assert any(f"{attacker} locked out of login" in m for m in logged)
    # The technician at another address logs in as usual, in the browser.
    page = context.new_page()
    _login_in_browser(page, served, PIN)
    page.wait_for_selector("#preview")
    # The lockout ends; guessing again locks for twice as long.
    served.clock.advance(61)
    assert [served.form(p, attacker)[0].status for p in ("4444", "5555", "6666")] == [403] * 3
    resp, _ = served.form(PIN, attacker)
    assert resp.status == 429 and 115 <= int(resp.getheader("Retry-After")) <= 120
    served.clock.advance(121)
    resp, _ = served.form(PIN, attacker)
    assert resp.status == 303 and COOKIE in resp.getheader("Set-Cookie")


def test_bearer_guessing_is_counted_locked_and_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    attacker = "127.0.0.3"
    caplog.set_level(logging.WARNING, logger="agent.web")

    def status(token: str, source: str = attacker) -> int:
        return ask(
            served.address,
            "/api/status",
            headers={"Authorization": f"Bearer {token}"},
            source=source,
        )[0].status

    # The attack of issue 15: 4-digit PINs as bearer tokens against /api/status.
    assert [status(f"{n:04d}") for n in range(3)] == [401, 401, 401]
    assert status(TOKEN) == 429  # locked: even the right token is refused from there
    assert status(PIN) == 429
    logged = [r.getMessage() for r in caplog.records]
    assert sum(f"wrong bearer from {attacker}" in m for m in logged) == 3
    assert any(f"{attacker} locked out of bearer" in m for m in logged)
    assert all(TOKEN not in m and PIN not in m for m in logged)
    # Other clients, and the attacker's own login form, are not locked by bearer guesses.
    assert status(TOKEN, "127.0.0.1") == 200
    assert served.form(PIN, attacker)[0].status == 303


def test_sessions_expire(served: Served) -> None:
    src = "127.0.0.5"
    resp, _ = served.form(PIN, src)
    assert resp.status == 303
    set_cookie = resp.getheader("Set-Cookie")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Max-Age=3600" in set_cookie
    sid = set_cookie.split(";")[0].split("=", 1)[1]
    cookie = {"Cookie": f"{COOKIE}={sid}"}
    assert ask(served.address, "/api/status", headers=cookie, source=src)[0].status == 200
    # Idle for longer than session_idle_s: the session is gone.
    served.clock.advance(601)
    resp, _ = ask(served.address, "/", headers=cookie, source=src)
    assert resp.status == 303 and resp.getheader("Location") == "/login"
    assert ask(served.address, "/api/status", headers=cookie, source=src)[0].status == 401
    # In use all along, it still ends at session_s.
    sid = served.form(PIN, src)[0].getheader("Set-Cookie").split(";")[0].split("=", 1)[1]
    cookie = {"Cookie": f"{COOKIE}={sid}"}
    for _ in range(7):
        served.clock.advance(500)
        assert ask(served.address, "/api/status", headers=cookie, source=src)[0].status == 200
    served.clock.advance(500)  # 4000 s > 3600 s
    assert ask(served.address, "/api/status", headers=cookie, source=src)[0].status == 401


def test_a_host_not_in_the_allow_list_is_refused(served: Served) -> None:
    _, port = served.address
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
        resp, body = ask(served.address, "/api/status", headers={**AUTH, "Host": host})
        assert resp.status == 421, host
        assert b"hostnames" in body and DEVICE.encode() not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"{HOSTNAME}:{port}", HOSTNAME.upper()):
        resp, _ = ask(served.address, "/api/status", headers={**AUTH, "Host": host})
        assert resp.status == 200, host


def test_dns_rebinding_in_the_browser_is_refused(browser: Any, served: Served) -> None:
    """A page on an attacker's name that resolves to the device (DNS rebinding), in Chromium
    (a second browser of the session's Playwright, resolving two names to loopback)."""
    _, port = served.address
    rules = f"--host-resolver-rules=MAP rebind.example 127.0.0.1, MAP {HOSTNAME} 127.0.0.1"
    b = browser.browser_type.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, rules])
    try:
        page = b.new_page()
        r = page.goto(f"http://rebind.example:{port}/login")
        assert r is not None and r.status == 421
        assert page.locator("#secret").count() == 0  # no login form to guess against
        r = page.goto(f"http://{HOSTNAME}:{port}/login")
        assert r is not None and r.status == 200
    finally:
        b.close()


def test_the_connection_cap_holds_and_the_page_stays_responsive(pipeline: Pipeline) -> None:
    stop = threading.Event()
    settings = WebSettings(
        enabled=True,
        host="127.0.0.1",
        port=0,
        token=TOKEN,
        max_connections=4,
        max_connections_per_client=2,
    )
    page = DevicePage(settings, status=pipeline.agent.status, stop=stop)
    page.start()
    held = []
    try:
        addr = page.server.address
        held += [idle_connection(addr, "127.0.0.6") for _ in range(2)]
        wait_for(lambda: page.server.open_connections == 2, 10, "2 connections taken")
        # The same client's third connection is answered 503 at once and closed ...
        extra = idle_connection(addr, "127.0.0.6")
        reply = busy_reply(extra)
        extra.close()
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
        # ... while another client is served.
        assert ask(addr, "/api/status", headers=AUTH)[0].status == 200
        wait_for(lambda: page.server.open_connections == 2, 10, "that request's connection to end")
        # Over the global cap (4): everyone is refused, quickly, until connections end.
        held += [idle_connection(addr, "127.0.0.7") for _ in range(2)]
        wait_for(lambda: page.server.open_connections == 4, 10, "4 connections taken")
        probe = idle_connection(addr, "127.0.0.8")
        assert busy_reply(probe).startswith(b"HTTP/1.1 503")
        probe.close()
        assert page.server.refused == 2
        for s in held:
            s.close()
        held.clear()
        wait_for(lambda: page.server.open_connections == 0, 10, "the held connections to end")
        assert ask(addr, "/api/status", headers=AUTH)[0].status == 200
    finally:
        for s in held:
            s.close()
        stop.set()
        page.join(5)


def test_web_settings_are_off_by_default_and_need_a_secret() -> None:
    assert WebSettings().enabled is False
    assert WebSettings().host == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"web\.pin"):
        load_dataclass(WebSettings, {"enabled": True}, "web")
    with pytest.raises(ConfigError, match=r"web\.pin: must be 4-12 digits"):
        load_dataclass(WebSettings, {"enabled": True, "pin": "12ab"}, "web")
    with pytest.raises(ConfigError, match=r"web\.token"):
        load_dataclass(WebSettings, {"enabled": True, "token": "short"}, "web")
    with pytest.raises(ConfigError, match=r"web\.hostnames"):
        load_dataclass(WebSettings, {"enabled": True, "pin": "1234", "hostnames": ["a/b"]}, "web")
    s = load_dataclass(
        WebSettings,
        {"enabled": True, "pin": "1234", "port": 8081, "hostnames": ["truck-17.local"]},
        "web",
    )
    assert s.secrets == ("1234",) and s.hostnames == ("truck-17.local",)
