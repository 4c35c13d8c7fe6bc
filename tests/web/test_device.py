"""The technician's device page in a real browser, served by the running agent's parts."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.settings import load_dataclass
from agent.web.device import DevicePage
from agent.web.settings import WebSettings
from tests.web.conftest import DEVICE, Pipeline, screenshot

PIN = "482913"
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


@pytest.fixture(scope="module")
def device_page(pipeline: Pipeline) -> Iterator[tuple[DevicePage, list[int]]]:
    agent = pipeline.agent
    assert agent.video is not None
    runs: list[int] = []

    def selftest() -> dict[str, Any]:
        runs.append(1)
        return {**SELFTEST, "run": len(runs)}

    stop = threading.Event()
    settings = WebSettings(enabled=True, host="127.0.0.1", port=0, pin=PIN, max_failures=3)
    page = DevicePage(
        settings,
        status=agent.status,
        stop=stop,
        frame=agent.video.recorder.latest_frame,
        selftest=selftest,
    )
    page.start()
    try:
        yield page, runs
    finally:
        stop.set()
        page.join(5)


def _get(p: DevicePage, path: str, headers: dict[str, str] | None = None) -> Any:
    host, port = p.server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_device_page_preview_gps_health_and_selftest(
    context: Any, device_page: tuple[DevicePage, list[int]]
) -> None:
    server, runs = device_page
    page = context.new_page()
    page.goto(server.url)
    assert page.url.endswith("/login")
    page.fill("#secret", "000000")
    page.click("#login")
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
    assert runs == []
    page.click("#rerun")
    page.wait_for_selector("#selftest-items")
    assert runs == [1]
    items = page.locator("#selftest-items").inner_text()
    assert "camera frame" in items and "PASS" in items and "SKIP" in items
    screenshot(page, "device-page")


def test_preview_frames_change(device_page: tuple[DevicePage, list[int]]) -> None:
    server, _ = device_page
    auth = {"Authorization": f"Bearer {PIN}"}
    first = _get(server, "/preview.jpg", auth)
    assert first[0].status == 200 and first[0].getheader("Content-Type") == "image/jpeg"
    assert first[1][:2] == b"\xff\xd8"
    threading.Event().wait(0.7)
    second = _get(server, "/preview.jpg", auth)
    assert second[1] != first[1]  # a newer frame (its watermark carries the time)


def test_without_the_pin_nothing_is_shown(device_page: tuple[DevicePage, list[int]]) -> None:
    server, _ = device_page
    for path in ("/api/status", "/preview.jpg", "/api/selftest"):
        resp, body = _get(server, path)
        assert resp.status == 401, path
        assert b"PIN" in body and b"\xff\xd8" not in body
    resp, _ = _get(server, "/api/status", {"Authorization": "Bearer 1234"})
    assert resp.status == 401


def test_no_evidence_and_no_cross_site_posts(
    device_page: tuple[DevicePage, list[int]], pipeline: Pipeline
) -> None:
    server, runs = device_page
    auth = {"Authorization": f"Bearer {PIN}"}
    for path in ("/d/cam-web-1", "/spool", "/seg/video/0", "/static/../device.py", "/m/video/0"):
        resp, _ = _get(server, path, auth)
        assert resp.status == 404, path
    status = _get(server, "/api/status", auth)[1]
    assert str(pipeline.agent.cfg.spool.dir).encode() not in status  # figures, no paths
    host, port = server.server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    before = len(runs)
    conn.request("POST", "/api/selftest", headers={**auth, "Origin": "http://evil.example"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 403 and len(runs) == before


def test_wrong_pins_lock_the_login(device_page: tuple[DevicePage, list[int]]) -> None:
    server, _ = device_page
    host, port = server.server.address
    origin = {"Origin": f"http://{host}:{port}", "Host": f"{host}:{port}"}

    def login(pin: str) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        body = f"secret={pin}".encode()
        conn.request(
            "POST",
            "/login",
            body=body,
            headers={**origin, "Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status

    assert [login("1111"), login("2222"), login("3333")] == [403, 403, 403]
    assert login(PIN) == 429  # locked, even with the right PIN


def test_web_settings_are_off_by_default_and_need_a_secret() -> None:
    assert WebSettings().enabled is False
    assert WebSettings().host == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"web\.pin"):
        load_dataclass(WebSettings, {"enabled": True}, "web")
    with pytest.raises(ConfigError, match=r"web\.pin: must be 4-12 digits"):
        load_dataclass(WebSettings, {"enabled": True, "pin": "12ab"}, "web")
    with pytest.raises(ConfigError, match=r"web\.token"):
        load_dataclass(WebSettings, {"enabled": True, "token": "short"}, "web")
    s = load_dataclass(WebSettings, {"enabled": True, "pin": "1234", "port": 8081}, "web")
    assert s.secrets == ("1234",)
