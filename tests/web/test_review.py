"""The review page in a real browser, over a store the real pipeline filled."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.gps.fixdelta import batch_records
from agent.gps.wire import decode_fix
from agent.storage.seal import read_segment_info
from agent.web.httpbase import Limits, WebServer
from agent.web.review import COOKIE, serve_review
from tests.web.conftest import DEVICE, TOKEN, Clock, Pipeline, ask, screenshot


def _serve(
    store: Path, pipeline: Pipeline, tile_url: str | None = None, **kw: Any
) -> Iterator[WebServer]:
    stop = threading.Event()
    server = serve_review(
        store, "127.0.0.1", 0, TOKEN, pipeline.keyset.platform_private, tile_url, stop, **kw
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
        with (store / DEVICE / "seg" / "gps" / f"{plain.stem}.seg").open("rb") as f:
            ctype = read_segment_info(f).content_type
        for rec in batch_records(ctype, plain.read_bytes()):
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
    assert resp.getheader("Cache-Control") == "no-store"  # evidence is never cached
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
    assert resp.getheader("Cache-Control") == "no-store"
    assert body[:2] == b"\xff\xd8"
    for path in ("/", f"/d/{DEVICE}", f"/d/{DEVICE}/s/video/0"):
        assert _get(review, path, AUTH)[0].getheader("Cache-Control") == "no-store", path


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


# --------------------------------------------------------------------------- issue 15


def _live(path: Path, payload: object, received: object = None) -> bytes:
    line = json.dumps({"received": received or time.time(), "topic": "t", "payload": payload})
    return line.encode()


DEEP = b"[" * 30000 + b"]" * 30000  # 60 kB of nested JSON


def _poison_device(store: Path, pipeline: Pipeline, tmp: Path, dev: str = "cam-evil") -> None:
    """A second device in the store whose every file is hostile (it holds a device key)."""
    from agent.storage.sealer import Sealer
    from agent.storage.settings import SealSettings, SpoolSettings
    from agent.storage.spool import Spool

    live = store / dev / "live"
    live.mkdir(parents=True)
    (live / "state.json").write_bytes(_live(live, {"state": "online", "boot": "b-evil"}))
    status = {
        "backlog": {"video": {"count": "lots", "bytes": "many"}, "gps": 7},
        "battery_pct": "full",
        "cpu_temp_c": 1e300,
        "gps": {"state": {"x": 1}},
    }
    (live / "status.json").write_bytes(_live(live, status))
    (live / "fix.json").write_bytes(b'{"received": 1, "payload": ' + DEEP + b"}")
    alarms = [
        _live(live, {"kind": "<script>alert(1)</script>", "message": "<b>x</b>"}),
        b"not json",
        _live(live, {"kind": "k"}, received=1e300),
        _live(live, {"kind": {"a": 1}, "message": ["m"], "severity": "' onmouseover='x"}),
        b'{"received": 1e999, "payload": {}}',
    ]
    (live / "alarms.jsonl").write_bytes(b"\n".join(alarms) + b"\n")
    sealer = Sealer(
        device_id=dev,
        boot_id="evil-boot",
        signing_key=pipeline.keyset.signing_key,
        platform_public=pipeline.keyset.platform_public,
        settings=SealSettings(),
    )
    seg = store / dev / "seg" / "event"
    seg.mkdir(parents=True)
    (store / dev / "keys").mkdir()
    with Spool(SpoolSettings(dir=tmp / "evil-spool", reserve_mb=0), sealer) as spool:
        # A properly sealed event whose JSON is 60 kB deep.
        r = spool.put_bytes("event", DEEP, content_type="application/json", meta={"type": "x"})
        shutil.copy(r.path, seg / r.path.name)
        for key in (tmp / "evil-spool" / "keys").glob("*.key"):
            shutil.copy(key, store / dev / "keys" / key.name)
    # A segment whose manifest is 60 kB of nested JSON (a JSON parser recurses on it).
    manifest = b'{"meta":' + DEEP + b"}"
    trailer = manifest + bytes(64) + struct.pack(">I", len(manifest))
    (seg / "000000000001.seg").write_bytes(b"EASEG\x00" + struct.pack(">H", 1) + trailer)


def test_the_overview_stays_up_with_poison_from_one_device(
    context: Any, pipeline: Pipeline, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(pipeline.snapshot, store)
    _poison_device(store, pipeline, tmp_path)
    for server in _serve(store, pipeline):
        page = context.new_page()
        r = page.goto(f"{server.url}?token={TOKEN}")
        assert r is not None and r.status == 200
        good = page.locator(f"tr[data-device='{DEVICE}']").inner_text()
        assert "online" in good and "verified" in good and "malformed" not in good
        evil = page.locator("tr[data-device='cam-evil']")
        text = evil.inner_text()
        assert "online" in text and "malformed" in text, text  # what is valid, and the rest
        assert "1 verified" in text and "1 failed" in text, text
        # Nothing the device sent became markup: the page's own script only.
        assert page.locator("script").count() == 0
        assert page.locator("tr[data-device='cam-evil'] b").count() == 1  # the page's <b>
        screenshot(page, "review-poison-overview")
        r = page.goto(f"{server.url}d/cam-evil")
        assert r is not None and r.status == 200
        section = page.locator("section", has_text="last seen").inner_text()
        assert "malformed" in section and "b-evil" in section
        assert page.locator("script").count() == 1  # review.js
        assert page.locator("rect.seg[data-stream='event'][data-state='verified']").count() == 1
        # The unreadable one has no time to be drawn at: it is listed, failed.
        assert page.locator("tr.failed[data-seq='1']").count() == 1
        screenshot(page, "review-poison-device")
        for seq in (0, 1):
            r = page.goto(f"{server.url}d/cam-evil/s/event/{seq}")
            assert r is not None and r.status == 200, seq
        assert "nested too deep" in page.locator("#verdict").inner_text()
        # The good device's pages are as before.
        r = page.goto(f"{server.url}d/{DEVICE}")
        assert r is not None and r.status == 200
        assert page.locator("rect.seg.failed").count() == 0


def _throttled_server(pipeline: Pipeline, **kw: Any) -> Iterator[tuple[WebServer, Clock]]:
    clock = Clock()
    for server in _serve(pipeline.snapshot, pipeline, monotonic=clock, **kw):
        yield server, clock


def test_token_guessing_is_throttled_per_client_and_logged(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.web")
    for server, clock in _throttled_server(pipeline):

        def login(token: str, source: str, addr: tuple[str, int] = server.address) -> int:
            return ask(addr, f"/?token={token}", source=source)[0].status

        def bearer(token: str, source: str, addr: tuple[str, int] = server.address) -> int:
            return ask(addr, "/", headers={"Authorization": f"Bearer {token}"}, source=source)[
                0
            ].status

        guesses = [f"guess-{n:02d}-0123456789abc" for n in range(5)]
        assert [login(g, "127.0.0.2") for g in guesses] == [403] * 5
        assert login(TOKEN, "127.0.0.2") == 429  # locked, the right token too
        assert [bearer(g, "127.0.0.3") for g in guesses] == [401] * 5
        assert bearer(TOKEN, "127.0.0.3") == 429
        assert login(TOKEN, "127.0.0.1") == 303  # another client is not locked out
        assert bearer(TOKEN, "127.0.0.1") == 200
        logged = [r.getMessage() for r in caplog.records]
        assert sum("wrong token from 127.0.0.2" in m for m in logged) == 5
        assert sum("wrong bearer from 127.0.0.3" in m for m in logged) == 5
        assert all(TOKEN not in m and "guess-" not in m for m in logged)
        clock.advance(61)
        assert login(TOKEN, "127.0.0.2") == 303


def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled(pipeline: Pipeline) -> None:
    limits = Limits(trusted_proxies=("127.0.0.9",))
    for server, _ in _throttled_server(pipeline, limits=limits):

        def login(
            token: str,
            client: str,
            source: str = "127.0.0.9",
            addr: tuple[str, int] = server.address,
        ) -> int:
            headers = {"X-Forwarded-For": f"203.0.113.50, {client}"}
            return ask(addr, f"/?token={token}", headers=headers, source=source)[0].status

        assert [login(f"wrong-{n}-0123456789abcdef", "198.51.100.7") for n in range(5)] == [403] * 5
        assert login(TOKEN, "198.51.100.7") == 429
        assert login(TOKEN, "198.51.100.8") == 303  # the proxy's other clients are not locked
        # A client that is not the proxy cannot pick its identity with the header.
        assert [
            login(f"wrong-{n}-0123456789abcdef", f"192.0.2.{n}", "127.0.0.4") for n in range(5)
        ] == [403] * 5
        assert login(TOKEN, "192.0.2.99", "127.0.0.4") == 429


def test_sessions_are_random_and_expire(pipeline: Pipeline) -> None:
    for server, clock in _throttled_server(pipeline):
        cookies = []
        for _ in range(2):
            resp, _ = ask(server.address, f"/?token={TOKEN}")
            assert resp.status == 303
            cookies.append(resp.getheader("Set-Cookie"))
        assert cookies[0] != cookies[1]  # a session id, not a value derived from the token
        for c in cookies:
            assert "HttpOnly" in c and "SameSite=Strict" in c and "Max-Age=43200" in c
            assert TOKEN not in c
        cookie = {"Cookie": cookies[0].split(";")[0]}
        assert ask(server.address, "/", headers=cookie)[0].status == 200
        clock.advance(3601)  # idle longer than an hour
        resp, body = ask(server.address, "/", headers=cookie)
        assert resp.status == 401 and b"session has ended" in body
        assert f"{COOKIE}=;" in resp.getheader("Set-Cookie")


def test_the_token_never_reaches_the_log(
    review: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    typo = TOKEN[:-1] + "X"
    for path in (
        f"/?token={TOKEN}",
        f"/d/{DEVICE}?from=&token={TOKEN}",
        f"/nowhere?token={TOKEN}",
        f"/?token={typo}",
        f"/static/web.css?token={TOKEN}",
    ):
        ask(review.address, path)
    ask(review.address, "/", headers={"Authorization": f"Bearer {typo}"})
    # A request line the server cannot parse is logged as an error, with the token in it.
    with socket.create_connection(review.address, timeout=10) as s:
        s.sendall(f"GET /?token={TOKEN} HTTP/1.1 extra\r\n\r\n".encode())
        assert b"400" in s.recv(4096)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "token=<redacted>" in text  # the requests were logged ...
    assert TOKEN not in text and typo not in text  # ... without the token


def test_a_host_not_in_the_allow_list_is_refused(pipeline: Pipeline, review: WebServer) -> None:
    _, port = review.address
    for host in ("evil.example", f"rebind.example:{port}", "::1]"):
        resp, body = ask(review.address, "/", headers={**AUTH, "Host": host})
        assert resp.status == 421, host
        assert DEVICE.encode() not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert ask(review.address, "/", headers={**AUTH, "Host": host})[0].status == 200, host
    for server in _serve(pipeline.snapshot, pipeline, allowed_hosts=["review.example.org"]):
        headers = {**AUTH, "Host": "review.example.org"}
        assert ask(server.address, "/", headers=headers)[0].status == 200


def test_the_live_fix_sent_binary_shows_on_the_device_page(
    context: Any, review: WebServer, pipeline: Pipeline
) -> None:
    """The agent sends its live fixes binary (protocol 3); the ingest records them as the
    JSON object the live view reads, and the device page shows the position."""
    import json

    entry = json.loads((pipeline.snapshot / DEVICE / "live" / "fix.json").read_text())
    assert entry["form"] == "binary"  # the agent's default: the 28-byte wire fix and a trailer
    fix = entry["payload"]
    assert fix["class"] == "TPV" and -90 <= fix["lat"] <= 90 and -180 <= fix["lon"] <= 180
    page = context.new_page()
    _login(page, review, f"/d/{DEVICE}")
    row = page.locator("tr", has_text="live fix")
    assert row.count() == 1
    assert f"{fix['lat']:.6f}, {fix['lon']:.6f} at {fix['time']}" in row.inner_text()
