"""A recording cut by SIGKILL: its recovered part reaches the platform, verifies, decrypts to a
playable file and plays in the review page like any other video part, marked recovered.

The device is ``edge-agent run`` (body camera, synthetic camera) killed mid-recording and
started again (it seals the journaled fragments as a recovered part and resumes); its spool
is then delivered by the real uplink to the real ingest over the session's broker. The
platform's checks are ``edge-agent verify --platform-key --decrypt-to`` (ffprobe reads what it
wrote) and the review page in Chromium, with the platform key and without it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.labs.broker import Mosquitto, Pki
from agent.storage.keys import load_platform_private
from agent.storage.recovered import RECOVERED_CONTENT_TYPE
from agent.storage.seal import read_segment_info
from agent.web.httpbase import WebServer
from agent.web.review import serve_review
from tests.uplink.harness import (
    Device,
    Platform,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    wait_for,
)
from tests.web.conftest import TOKEN, screenshot

REPO = Path(__file__).resolve().parents[2]
STRIDE = 4 + 4096 + 16  # a journal frame (agent.storage.segjournal, 4 KiB chunks)
JOURNALED = 24  # chunks in the journal before the kill: 160x120 at 15 fps is ~11 a second


def _agent(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _config(dev: Device, platform: Platform, root: Path) -> Path:
    cfg = root / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "{dev.id}"
profile = "bodycam"
[keys]
device_key = "{dev.dir / "keys" / "device.key"}"
platform_public = "{platform.pub}"
[spool]
dir = "{dev.spool_dir}"
reserve_mb = 0
[video]
enabled = true
source = "synthetic"
width = 160
height = 120
fps = 15
keyframe_s = 0.5
segment_s = 60
prebuffer_s = 0
[health]
status_file = "{root / "status.json"}"
control_socket = "{root / "control.sock"}"
"""
    )
    return cfg


def _recovered_in_spool(dev: Device) -> list[int]:
    out = []
    for seg in sorted((dev.spool_dir / "seg" / "video").glob("*.seg")):
        with seg.open("rb") as f:
            if read_segment_info(f).content_type == RECOVERED_CONTENT_TYPE:
                out.append(int(seg.stem))
    return out


def _cut_recording(dev: Device, platform: Platform, root: Path) -> int:
    """Record, SIGKILL the agent with fragments in its journal, start it again (it recovers
    and resumes), stop the recording, stop the agent. Returns the recovered part's seq."""
    cfg = _config(dev, platform, root)
    sock, log = root / "control.sock", root / "agent.log"
    journal = dev.spool_dir / "journal" / "seg"
    proc = _agent(cfg, log)
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, 60, "the control socket")
        assert proc.poll() is None, log.read_text()[-2000:]
        res = _cli("record", "start", "--config", str(cfg))
        assert res.returncode == 0, res.stderr

        def journaled() -> bool:  # two seconds or so made durable in the open part
            return any(b.stat().st_size >= 8 + JOURNALED * STRIDE for b in journal.glob("*.body"))

        wait_for(journaled, 60, "fragments in the journal")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sock.unlink(missing_ok=True)
        proc = _agent(cfg, log)  # recovers the journal, resumes the recording
        wait_for(lambda: sock.exists() or proc.poll() is not None, 60, "the control socket")
        assert proc.poll() is None, log.read_text()[-2000:]
        wait_for(lambda: bool(_recovered_in_spool(dev)), 60, "the recovered part")
        res = _cli("record", "stop", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [seq] = _recovered_in_spool(dev)
    return seq


@pytest.fixture(scope="module")
def cut_store(
    pki: Pki, broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Device, Platform, int]:
    """A platform store holding a device's recording cut once (delivered by uplink + ingest)."""
    from tests.fixtures.broker import PLATFORM_IDENTITIES, forget_sessions

    root = tmp_path_factory.mktemp("recovered")
    broker.start()
    forget_sessions(broker, pki, PLATFORM_IDENTITIES)
    platform = make_platform(root / "platform")
    dev = make_device(root / "dev", "cam-recovered", pki, platform, broker.port)
    seq = _cut_recording(dev, platform, root)
    spool = dev.open_spool(boot="upload")
    store = root / "store"
    try:
        with running_ingest(store, pki, broker.port, platform), running_uplink(dev, spool):
            wait_for(lambda: not spool.items(), 120, "the device's spool to drain")
    finally:
        spool.close()
    return store, dev, platform, seq


def test_verify_checks_the_recovered_part_and_decrypts_it_to_a_playable_file(
    cut_store: tuple[Path, Device, Platform, int], tmp_path: Path
) -> None:
    store, dev, platform, seq = cut_store
    out = tmp_path / "out"
    res = _cli(
        "verify",
        str(store / dev.id),
        "--platform-key",
        str(platform.key),
        "--device-key",
        str(dev.dir / "keys" / "device.pub"),
        "--decrypt-to",
        str(out),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    media = out / dev.id / "video" / f"{seq:012d}.mp4"
    meta = json.loads((out / dev.id / "video" / f"{seq:012d}.meta.json").read_text())
    assert meta["recovered"] is True and meta["inner_content_type"] == "video/mp4"
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames", "-of", "json", str(media)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    [stream] = json.loads(probe.stdout)["streams"]
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 160, 120)
    assert int(stream["nb_read_frames"]) == _decoded_frames(media) >= 15  # a second or more


def _decoded_frames(path: Path) -> int:
    """Frames PyAV decodes, none of them with an error (an independent reader of the file)."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@contextmanager
def _serve(store: Path, platform: Platform | None) -> Iterator[WebServer]:
    stop = threading.Event()
    key = load_platform_private(platform.key) if platform is not None else None
    devices = platform.devices if platform is not None else None
    server = serve_review(store, "127.0.0.1", 0, TOKEN, key, None, stop, devices_dir=devices)
    try:
        yield server
    finally:
        stop.set()
        server.join(5)


def _open(page: Any, server: WebServer, path: str) -> None:
    page.goto(f"{server.url.rstrip('/')}{path}?token={TOKEN}")


def test_the_review_page_lists_and_plays_the_recovered_part(
    context: Any, cut_store: tuple[Path, Device, Platform, int]
) -> None:
    store, dev, platform, seq = cut_store
    with _serve(store, platform) as server:
        page = context.new_page()
        _open(page, server, f"/d/{dev.id}")
        row = page.locator("details.stream", has_text="video:").locator(f'tr[data-seq="{seq}"]')
        assert row.locator(".pill.verified").count() == 1
        assert row.locator(".pill.recovered").count() == 1
        assert "chunks authenticated" in row.inner_text()
        page.goto(f"{server.url.rstrip('/')}/d/{dev.id}/s/video/{seq}")
        assert page.locator("#verdict").get_attribute("data-state") == "verified"
        note = page.locator("#recovered")
        assert note.get_attribute("data-failed") == "0", note.inner_text()
        assert "recovered part 0 of recording" in note.inner_text()
        page.wait_for_function(
            "() => document.getElementById('player').readyState >= 2", timeout=15000
        )
        page.evaluate("() => { const v = document.getElementById('player'); v.muted = true; }")
        page.evaluate("() => document.getElementById('player').play()")
        page.wait_for_function(
            "() => document.getElementById('player').currentTime > 0.5", timeout=15000
        )
        assert page.evaluate("() => document.getElementById('player').error") is None
        screenshot(page, "review-recovered")


def test_without_the_platform_key_the_page_says_what_it_cannot_show(
    context: Any, cut_store: tuple[Path, Device, Platform, int]
) -> None:
    store, dev, _platform, seq = cut_store
    with _serve(store, None) as server:
        page = context.new_page()
        _open(page, server, f"/d/{dev.id}/s/video/{seq}")
        assert page.locator("#verdict").get_attribute("data-state") == "verified"
        body = page.locator("main").inner_text()
        assert "needs the platform key" in body
        assert page.locator("#player").count() == 0
        assert "only the platform key reads it" in page.locator("#meta-note").inner_text()
        sealed = page.locator("table.kv tr", has_text="sealed_meta").inner_text()
        assert "sealed (" in sealed and len(sealed) < 100, sealed
