"""Fixtures for the web pages: a store filled by the real pipeline, and a real browser.

``pipeline`` (session) runs, in this process, against the session's mosquitto (mutual TLS):
the platform's ingest worker (``Ingest`` + ``Store`` with the platform key) with the live/state
recorder on its link, and the agent (``Agent``, bodycam profile: synthetic camera, a replayed
GPS drive, 2-second video segments, 2-second GPS batches, a heartbeat every second). It records
about 7 s with a mark and a still, waits until the platform acknowledged everything, then copies
the store (``snapshot``) so the review tests see a store that no longer changes. The agent keeps
running for the device page's tests and stops at the end of the session.

``browser`` (session) is Debian's Chromium driven by Playwright; if it cannot start, every
browser test fails with the reason (``make setup`` installs it).
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.labs.broker import Mosquitto, Pki
from agent.labs.nmea import truck_log
from agent.labs.waiting import wait_for
from agent.uplink.mqtt import LinkConfig
from tests.fixtures.keys import KeySet
from tests.fixtures.pki import WEB_INGEST

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "web"
DEVICE = "cam-web-1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "review-token-0123456789"


class Clock:
    """A monotonic clock the test moves by hand (session lifetimes, lockouts)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def ask(
    address: tuple[str, int],
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str = "127.0.0.1",
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request from ``source`` (any 127.x address is this machine: a different client to
    the server's per-client throttles and caps)."""
    host, port = address
    conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp, data


def idle_connection(address: tuple[str, int], source: str) -> socket.socket:
    """A connection from ``source`` that sends nothing (what a slow or hostile client holds)."""
    return socket.create_connection(address, timeout=10, source_address=(source, 0))


def busy_reply(sock: socket.socket) -> bytes:
    """What the server says at once on a connection it does not take (b"" if it said nothing
    within 5 s)."""
    sock.settimeout(5)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


@dataclass
class Pipeline:
    store: Path  # the live store (the agent keeps sending GPS and heartbeats)
    snapshot: Path  # a copy taken once everything recorded was acknowledged
    agent: Any
    keyset: KeySet


def _config(tmp: Path, pki: Pki, broker: Mosquitto, keyset: KeySet) -> Path:
    cert = pki.issue(DEVICE)
    g = time.gmtime(time.time() - 2)
    (tmp / "drive.nmea").write_bytes(
        truck_log(600, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    )
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "{DEVICE}"
profile = "bodycam"
officer = "W42"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp / "spool"}"
reserve_mb = 0
batch_s = 2
[gps]
source = "replay"
replay_file = "{tmp / "drive.nmea"}"
replay_speed = 1.0
[gps.strategy]
interval_s = 1.0
[uplink]
enabled = true
host = "127.0.0.1"
port = {broker.port}
ca = "{pki.ca}"
cert = "{cert.cert}"
key = "{cert.key}"
state_dir = "{tmp / "uplink"}"
keepalive_s = 5
backoff_min_s = 0.1
backoff_max_s = 1.0
[video]
enabled = true
source = "synthetic"
width = 320
height = 240
fps = 10
segment_s = 2
prebuffer_s = 1
[health]
heartbeat_s = 1.0
status_file = "{tmp / "status.json"}"
control_socket = "{tmp / "control.sock"}"
"""
    )
    return cfg


def _backlog_empty(agent: Any) -> bool:
    return not agent.status().get("backlog")


# Package scope: its ingest (share group "web-tests") takes every device's uploads, so while
# it runs, tests outside tests/web would get its acknowledgements (signed by another platform
# key: forged, to their devices).
@pytest.fixture(scope="package")
def pipeline(
    broker: Mosquitto, pki: Pki, keyset: KeySet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    from agent.config import load_config
    from agent.ingest.livestate import LiveRecorder
    from agent.ingest.receiver import Ingest
    from agent.ingest.store import Store
    from agent.runtime.app import Agent

    tmp = tmp_path_factory.mktemp("pipeline")
    stop = threading.Event()
    ingest_cert = pki.client(WEB_INGEST)
    link = LinkConfig(
        host="127.0.0.1",
        port=broker.port,
        client_id=WEB_INGEST,
        ca=pki.ca,
        cert=ingest_cert.cert,
        key=ingest_cert.key,
        keepalive_s=5,
        backoff_min_s=0.1,
        backoff_max_s=1.0,
    )
    store_dir = tmp / "platform"
    store = Store(store_dir, platform_key=keyset.platform_private)
    ingest = Ingest(store, link, stop, group="web-tests")
    # Once the worker builds its own recorder (Ingest.live), use it; else add one (it must
    # route before the link starts).
    live = None if hasattr(ingest, "live") else LiveRecorder(store_dir, ingest.link, stop)
    ingest.start()
    if live is not None:
        live.start()
    agent = Agent(load_config(_config(tmp, pki, broker, keyset)))
    try:
        agent.start()
        assert agent.video is not None
        video = agent.video
        wait_for(lambda: agent.uplink is not None and agent.uplink.link.connected, 20, "uplink")
        video.start("device")
        time.sleep(3.5)
        video.mark("device", "web test: something happened")
        video.still("device")
        time.sleep(3.5)
        video.stop("device")
        seg = store_dir / DEVICE / "seg"

        def delivered() -> bool:
            return (
                len(list((seg / "video").glob("*.seg"))) >= 3
                and len(list((seg / "gps").glob("*.seg"))) >= 3
                and len(list((seg / "still").glob("*.seg"))) >= 1
                and (store_dir / DEVICE / "live" / "status.json").exists()
                and _backlog_empty(agent)
            )

        wait_for(delivered, 30, "the platform to acknowledge the recording")
        snapshot = tmp / "snapshot"
        shutil.copytree(store_dir, snapshot, ignore=shutil.ignore_patterns(".tmp", "partial"))
        yield Pipeline(store_dir, snapshot, agent, keyset)
    finally:
        agent.shutdown()
        stop.set()
        ingest.join(10)
        if live is not None:
            live.join(10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed ({exc}): pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make setup)")
    pw = sync_playwright().start()
    try:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.fail(f"Chromium ({CHROMIUM}) did not start: {exc}")
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(("http://127.0.0.1:", "data:", "about:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    ctx.route("**/*", route)
    ctx.outside = outside
    yield ctx
    ctx.close()
    assert not outside, f"the page asked an outside host: {outside}"


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def read_json(path: Path) -> dict[str, Any]:
    obj = json.loads(path.read_text())
    assert isinstance(obj, dict)
    return obj
