"""The review page in a real browser, over a store the real pipeline filled."""

from __future__ import annotations

import http.client
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.gps.wire import decode_fix
from agent.storage.records import unpack_records
from agent.web.httpbase import WebServer
from agent.web.review import serve_review
from tests.web.conftest import DEVICE, TOKEN, Pipeline, screenshot


def _serve(store: Path, pipeline: Pipeline, tile_url: str | None = None) -> Iterator[WebServer]:
    stop = threading.Event()
    server = serve_review(
        store, "127.0.0.1", 0, TOKEN, pipeline.keyset.platform_private, tile_url, stop
    )
    try:
        yield server
    finally:
        stop.set()
        server.join(5)


@pytest.fixture(scope="module")
def review(pipeline: Pipeline) -> Iterator[WebServer]:
    yield from _serve(pipeline.snapshot, pipeline)


def _get(server: WebServer, path: str, headers: dict[str, str] | None = None) -> Any:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _fixes_in_store(store: Path) -> int:
    n = 0
    for plain in sorted((store / DEVICE / "plain" / "gps").glob("*.bin")):
        for rec in unpack_records(plain.read_bytes()):
            fix = decode_fix(rec)
            if fix.lat is not None and fix.lon is not None:
                n += 1
    return n


def _login(page: Any, server: WebServer, path: str) -> None:
    page.goto(f"{server.url.rstrip('/')}{path}?token={TOKEN}")


def test_devices_page_shows_state_backlog_and_last_seen(context: Any, review: WebServer) -> None:
    page = context.new_page()
    _login(page, review, "/")
    assert "token=" not in page.url  # the token went into an HttpOnly cookie
    row = page.locator(f"tr[data-device='{DEVICE}']")
    assert row.count() == 1
    text = row.inner_text()
    assert "online" in text, text
    assert "verified" in text and "failed" not in text, text
    assert "ago" in text  # last seen from the heartbeats
    cookies = context.cookies()
    assert any(c["name"] == "edge_review" and c["httpOnly"] for c in cookies)
    screenshot(page, "review-devices")


def test_track_has_as_many_points_as_the_gps_segments_hold(
    context: Any, review: WebServer, pipeline: Pipeline
) -> None:
    expected = _fixes_in_store(pipeline.snapshot)
    assert expected >= 5
    page = context.new_page()
    _login(page, review, f"/d/{DEVICE}")
    assert page.locator("#track").get_attribute("data-kind") == "grid"
    assert page.locator("#track circle.fix").count() == expected
    assert page.locator("#track-count").get_attribute("data-points") == str(expected)
    # Hovering a fix shows its time.
    first = page.locator("#track circle.fix").first
    first.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible", timeout=3000)
    assert first.get_attribute("data-time") in tip.inner_text()
    # The timeline: every stream, every segment verified, the mark and the still.
    for stream in ("video", "still", "event", "gps"):
        assert page.locator(f"rect.seg[data-stream='{stream}']").count() >= 1, stream
    assert page.locator("rect.seg.failed").count() == 0
    assert page.locator("g.mark[data-type='mark']").count() == 1
    assert page.locator("#stills img").count() >= 1
    page.wait_for_function(
        "() => [...document.querySelectorAll('#stills img')].every(i => i.naturalWidth > 0)"
    )
    screenshot(page, "review-device")


def test_a_narrower_range_shows_fewer_fixes(
    context: Any, review: WebServer, pipeline: Pipeline
) -> None:
    page = context.new_page()
    _login(page, review, f"/d/{DEVICE}")
    total = page.locator("#track circle.fix").count()
    first = page.locator("#track circle.fix").nth(2).get_attribute("data-time")
    assert first is not None
    start = first.replace(" ", "T")[:19]
    page.fill("input[name=from]", start)
    page.click("#range button")
    page.wait_for_load_state()
    assert "from=" in page.url
    assert page.locator("#track circle.fix").count() == total - 2


def test_video_plays_in_the_browser(context: Any, review: WebServer) -> None:
    page = context.new_page()
    _login(page, review, f"/d/{DEVICE}/s/video/0")
    assert page.locator("#verdict").get_attribute("data-state") == "verified"
    page.wait_for_function("() => document.getElementById('player').readyState >= 2", timeout=10000)
    page.evaluate(
        "() => { const v = document.getElementById('player'); v.muted = true; return v.play(); }"
    )
    page.wait_for_function(
        "() => document.getElementById('player').currentTime > 0.5", timeout=10000
    )
    assert page.evaluate("() => document.getElementById('player').error") is None
    screenshot(page, "review-video")


def test_media_is_served_with_its_type_and_ranges(review: WebServer) -> None:
    resp, body = _get(review, f"/d/{DEVICE}/m/video/0", {**AUTH, "Range": "bytes=0-99"})
    assert resp.status == 206
    assert resp.getheader("Content-Type") == "video/mp4"
    assert resp.getheader("Accept-Ranges") == "bytes"
    total = int(resp.getheader("Content-Range").split("/")[1])
    assert resp.getheader("Content-Range") == f"bytes 0-99/{total}"
    assert len(body) == 100 and body[4:8] == b"ftyp"
    resp, body = _get(review, f"/d/{DEVICE}/m/video/0", {**AUTH, "Range": "bytes=-10"})
    assert resp.status == 206 and len(body) == 10
    resp, _ = _get(review, f"/d/{DEVICE}/m/video/0", {**AUTH, "Range": f"bytes={total}-"})
    assert resp.status == 416
    resp, body = _get(review, f"/d/{DEVICE}/m/still/0", AUTH)
    assert resp.status == 200 and resp.getheader("Content-Type") == "image/jpeg"
    assert body[:2] == b"\xff\xd8"


def test_without_the_token_nothing_is_shown(context: Any, review: WebServer) -> None:
    for path in ("/", f"/d/{DEVICE}", f"/d/{DEVICE}/m/video/0", f"/d/{DEVICE}/s/gps/0"):
        resp, body = _get(review, path)
        assert resp.status == 401, path
        assert resp.getheader("Content-Type").startswith("text/html")
        assert b"review token" in body and DEVICE.encode() not in body
    resp, _ = _get(review, "/", {"Authorization": "Bearer wrong-token-wrong-token"})
    assert resp.status == 401
    resp, _ = _get(review, "/?token=wrong-token-wrong-token")
    assert resp.status == 403
    page = context.new_page()
    r = page.goto(review.url)
    assert r is not None and r.status == 401
    assert page.locator("input[name=token]").count() == 1
    screenshot(page, "review-refused")


@pytest.mark.parametrize(
    "path",
    [
        "/d/../../etc/passwd",
        "/d/..",
        "/d/.",
        "/d/%2e%2e",
        "/d/..%2f..%2fetc",
        f"/d/{DEVICE}/m/video/..%2f..%2fkeys",
        f"/d/{DEVICE}/m/..%2fkeys/0",
        f"/d/{DEVICE}/m/video/0%00",
        f"/d/{DEVICE}/s/video/-1",
        f"/d/{DEVICE}/m/video/1e3",
        "/static/../review.py",
        "/static/..%2freview.py",
        "/static/%2e%2e/review.py",
        "/static/web.css/../../review.py",
        "//etc/passwd",
        "/d/cam-web-1/../../../etc/passwd",
    ],
)
def test_path_traversal_is_refused(review: WebServer, path: str) -> None:
    resp, body = _get(review, path, AUTH)
    assert resp.status in (400, 404), (path, resp.status)
    assert resp.getheader("Content-Type").startswith("text/html")
    assert b"root:" not in body and b"import " not in body and b"Traceback" not in body


def test_errors_are_pages_not_tracebacks(review: WebServer) -> None:
    resp, body = _get(review, f"/d/{DEVICE}?from=yesterday", AUTH)
    assert resp.status == 400 and b"not a time" in body
    resp, body = _get(review, f"/d/{DEVICE}/s/video/999", AUTH)
    assert resp.status == 404 and b"<html" in body
    resp, body = _get(review, "/d/no-such-device", AUTH)
    assert resp.status == 404 and b"<html" in body
    host, port = review.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/", body=b"x", headers=AUTH)
    resp = conn.getresponse()
    assert resp.status == 405 and b"read-only" in resp.read()
    csp = _get(review, "/", AUTH)[0].getheader("Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'self'" in csp


def test_a_tampered_segment_shows_as_failed(
    context: Any, pipeline: Pipeline, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(pipeline.snapshot, store)
    seg = store / DEVICE / "seg" / "video" / "000000000001.seg"
    data = bytearray(seg.read_bytes())
    data[200] ^= 0x01  # one bit of the sealed body
    seg.write_bytes(bytes(data))
    gps = sorted((store / DEVICE / "seg" / "gps").glob("*.seg"))
    gps[1].unlink()  # and a GPS segment gone: a chain gap the device never explained
    for server in _serve(store, pipeline):
        page = context.new_page()
        _login(page, server, f"/d/{DEVICE}")
        bad = page.locator("rect.seg[data-stream='video'][data-seq='1']")
        assert bad.get_attribute("data-state") == "failed"
        assert (
            page.locator("rect.seg[data-stream='video'][data-seq='0']").get_attribute("data-state")
            == "verified"
        )
        assert page.locator("rect.gap[data-stream='gps']").count() == 1
        gap_text = page.locator("li.gap-item").inner_text()
        assert "gps: chain gap, seq 1 missing" in gap_text
        assert "recorded no reason" in gap_text
        screenshot(page, "review-tampered")
        page.goto(f"{server.url}d/{DEVICE}/s/video/1")
        assert page.locator("#verdict").get_attribute("data-state") == "failed"
        assert "body_altered" in page.locator("#verdict").inner_text()
        assert page.locator("video").count() == 0
        resp, _ = _get(server, f"/d/{DEVICE}/m/video/1", AUTH)
        assert resp.status == 409  # a failed segment's content is not served


class _Tiles(BaseHTTPRequestHandler):
    png = b""
    asked: list[str] = []  # noqa: RUF012

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args: object) -> None:
        pass


def test_the_track_over_the_operators_own_tiles(context: Any, pipeline: Pipeline) -> None:
    import cv2
    import numpy as np

    tile = np.full((256, 256, 3), 235, np.uint8)
    cv2.rectangle(tile, (0, 0), (255, 255), (180, 180, 180), 1)
    _Tiles.png = bytes(cv2.imencode(".png", tile)[1])
    _Tiles.asked = []
    tiles = ThreadingHTTPServer(("127.0.0.1", 0), _Tiles)
    t = threading.Thread(target=tiles.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{tiles.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
        for server in _serve(pipeline.snapshot, pipeline, tile_url=url):
            page = context.new_page()
            _login(page, server, f"/d/{DEVICE}")
            assert page.locator("#track").get_attribute("data-kind") == "tiles"
            assert page.locator("#track image.tile").count() >= 1
            page.wait_for_function("() => true")
            page.wait_for_timeout(500)
            assert _Tiles.asked and all(p.endswith(".png") for p in _Tiles.asked)
            assert page.locator("#track circle.fix").count() == _fixes_in_store(pipeline.snapshot)
            screenshot(page, "review-tiles")
    finally:
        tiles.shutdown()
        tiles.server_close()


def test_talk_messages_are_listed_and_playable(pipeline: Pipeline, tmp_path: Path) -> None:
    """Push-to-talk messages sealed in the audio stream are listed with a player."""
    from agent.storage.sealer import Sealer
    from agent.storage.settings import SealSettings, SpoolSettings
    from agent.storage.spool import Spool

    store = tmp_path / "store"
    shutil.copytree(pipeline.snapshot, store)
    sealer = Sealer(
        device_id=DEVICE,
        boot_id="talk-boot",
        signing_key=pipeline.keyset.signing_key,
        platform_public=pipeline.keyset.platform_public,
        settings=SealSettings(),
    )
    voice = b"OggS" + bytes(range(256)) * 8  # the page serves bytes; it does not decode them
    with Spool(SpoolSettings(dir=tmp_path / "spool", reserve_mb=0), sealer) as spool:
        assert not (store / DEVICE / "seg" / "audio").exists()
        r = spool.put_bytes(
            "audio",
            voice,
            content_type="audio/ogg",
            meta={"talk": True, "direction": "in", "message_id": "msg-42", "duration_s": 2.5},
        )
        (store / DEVICE / "seg" / "audio").mkdir(parents=True)
        shutil.copy(r.path, store / DEVICE / "seg" / "audio" / r.path.name)
        for key in (tmp_path / "spool" / "keys").glob("*.key"):
            shutil.copy(key, store / DEVICE / "keys" / key.name)
    for server in _serve(store, pipeline):
        resp, body = _get(server, f"/d/{DEVICE}", AUTH)
        assert resp.status == 200
        html = body.decode()
        assert "talk messages" in html and "msg-42" in html
        assert "control room → officer" in html and "2.5 s" in html
        assert f"/d/{DEVICE}/m/audio/{r.seq}" in html
        resp, body = _get(server, f"/d/{DEVICE}/m/audio/{r.seq}", AUTH)
        assert resp.status == 200 and resp.getheader("Content-Type") == "audio/ogg"
        assert body == voice
