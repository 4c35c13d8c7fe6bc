"""The Pi's camera module through picamera2 and rpicam-vid, on a rig (see docs/hil.md).

``EDGE_AGENT_HIL_CAMERA=picamera2`` (or ``picamera2:1`` for the second CSI port) runs the
picamera2 tests, ``EDGE_AGENT_HIL_CAMERA=rpicam`` (``rpicam:1``) the rpicam-vid ones; anything
else, or nothing, skips them with the reason. A camera stack that is named but not installed
fails (a broken rig). Each test records a few seconds through the real source class into a
real spool and checks every sealed segment on its own (ffprobe, decoding), that the pictures
are the camera's own H.264 (not re-encoded), the watermark (picamera2) and the frame count;
it prints the CPU share the recording took, the figure docs/video.md's board table asks for.
The end-to-end test runs ``edge-agent run`` with the source and verifies at the platform.
``EDGE_AGENT_HIL_STREAM=rtsp://...`` (an IP camera on the rig's network) runs the pass-through
of a network stream against a real camera.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.capture.frames import AccessUnit, EncodedSource
from agent.capture.h264 import NAL_PPS, NAL_SPS, nal_type, split_nals
from agent.capture.overlay import Overlay
from agent.capture.recorder import Recorder
from agent.capture.settings import VideoSettings
from agent.labs.broker import Mosquitto, Pki
from agent.model import Alarm
from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_private,
    load_platform_public,
    load_signing_key,
)
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool
from tests.hardware.rig import Rig, cli, ffprobe_codecs
from tests.storage.helpers import decrypt_stream

pytestmark = pytest.mark.hardware

W, H, FPS, SECONDS = 1280, 720, 30, 6


def camera_from_env(kind: str) -> int:
    """The CSI camera index when EDGE_AGENT_HIL_CAMERA names ``kind``; skips otherwise."""
    value = os.environ.get("EDGE_AGENT_HIL_CAMERA", "")
    if not value:
        pytest.skip(
            "NOT RUN: no camera on this machine (EDGE_AGENT_HIL_CAMERA is not set; a rig sets "
            f"it to {kind} for this test - see docs/hil.md)"
        )
    name, _, index = value.partition(":")
    if name != kind:
        pytest.skip(f"NOT RUN: EDGE_AGENT_HIL_CAMERA={value} names another camera than {kind}")
    if kind == "picamera2" and importlib.util.find_spec("picamera2") is None:
        pytest.fail(
            "EDGE_AGENT_HIL_CAMERA=picamera2 but picamera2 is not importable here "
            "(python3-picamera2 and a venv with --system-site-packages: docs/deploy.md)"
        )
    if kind == "rpicam" and shutil.which("rpicam-vid") is None:
        pytest.fail("EDGE_AGENT_HIL_CAMERA=rpicam but rpicam-vid is not installed")
    return int(index or 0)


def _spool(tmp: Path) -> tuple[Spool, Any]:
    init_device_keys(tmp / "dev")
    init_platform_keys(tmp / "plat")
    sealer = Sealer(
        device_id="hil-cam",
        boot_id="hil",
        signing_key=load_signing_key(tmp / "dev" / "device.key"),
        platform_public=load_platform_public(tmp / "plat" / "platform.pub"),
        settings=SealSettings(),
    )
    spool = Spool(SpoolSettings(dir=tmp / "spool", reserve_mb=0), sealer)
    return spool, load_platform_private(tmp / "plat" / "platform.key")


def _record(tmp: Path, source: EncodedSource, stop: threading.Event) -> dict[str, Any]:
    spool, private = _spool(tmp)
    units: list[AccessUnit] = []
    alarms: list[Alarm] = []
    s = VideoSettings(width=W, height=H, fps=FPS, mode="continuous", segment_s=2)
    rec = Recorder(s, source, spool, stop, alarm=alarms.append, on_unit=units.append)
    wall0, cpu0 = time.monotonic(), time.process_time()
    rec.start_threads()
    stop.wait(SECONDS)
    stop.set()
    assert rec.join(60) and rec.error is None
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    share = cpu / wall / (os.cpu_count() or 1)
    print(f"\nHIL {source.name}: {source.encoder}: CPU {100 * share:.1f} % of the board "
          f"({cpu / wall:.2f} of one core) recording {W}x{H}@{FPS}")  # fmt: skip
    video = decrypt_stream(spool, private, "video")
    spool.close()
    assert not alarms, [a.message for a in alarms]
    return {"video": video, "units": units, "rec": rec}


def _check(tmp: Path, out: dict[str, Any]) -> None:
    video, units = out["video"], out["units"]
    assert len(video) >= 2, "no segments"
    total = 0
    for i, seg in enumerate(video):
        path = tmp / f"{i}.mp4"
        path.write_bytes(seg.data)
        assert ffprobe_codecs(path) == ["h264"]
        total += seg.meta["frames"]
        assert seg.meta["passthrough"] is True
    # The camera delivered (nearly) every frame, and the keyframe interval asked for.
    assert total >= 0.9 * FPS * (SECONDS - 2), total
    keys = [au.index for au in units if au.key]
    assert keys and all(b - a == FPS for a, b in itertools.pairwise(keys)), keys[:10]
    for au in units:
        if au.key:
            kinds = {nal_type(n) for n in split_nals(au.data)}
            assert {NAL_SPS, NAL_PPS} <= kinds


def test_picamera2_source(tmp_path: Path) -> None:
    from agent.capture.picam import Picamera2Source

    index = camera_from_env("picamera2")
    stop = threading.Event()
    overlay = Overlay(device_id="hil-cam", officer="012345")
    src = Picamera2Source(W, H, FPS, camera=index, overlay=overlay, stop=stop)
    out = _record(tmp_path, src, stop)
    _check(tmp_path, out)
    assert all(seg.meta["watermark"] is True for seg in out["video"])
    # The watermark box is in the decoded pictures: its region matches the rendering.
    import io

    import av

    seg = out["video"][1]
    with av.open(io.BytesIO(seg.data), "r") as c:
        image = next(iter(c.decode(video=0))).to_ndarray(format="bgr24")
    best = float("inf")
    t0 = time.time()
    for t in range(int(t0) - 30, int(t0) + 2):
        patch = overlay.box(float(t), H)
        y, x = overlay.origin(image.shape, patch.shape)
        region = image[y : y + patch.shape[0], x : x + patch.shape[1]].astype(float)
        best = min(best, float(abs(region - patch).mean()))
    assert best < 20, f"no watermark where it belongs (error {best:.1f})"


def test_rpicam_source(tmp_path: Path) -> None:
    from agent.capture.rpicam import PipeSource, rpicam_command

    index = camera_from_env("rpicam")
    stop = threading.Event()
    cmd = rpicam_command(VideoSettings(width=W, height=H, fps=FPS, camera=index))
    out = _record(tmp_path, PipeSource(cmd, FPS, stop=stop), stop)
    _check(tmp_path, out)


@pytest.mark.parametrize("kind", ["picamera2", "rpicam"])
def test_csi_camera_end_to_end(
    kind: str, tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    index = camera_from_env(kind)
    rig = Rig(tmp_path, pki, broker_alive, f"hil-{kind}")
    rig.write_config(
        "bodycam",
        f"""[video]
enabled = true
source = "{kind}"
camera = {index}
segment_s = 5
prebuffer_s = 5
""",
    )

    def during(_agent: Any) -> None:
        assert cli("record", "start", "--config", str(rig.cfg)).returncode == 0
        time.sleep(12)
        assert cli("still", "--config", str(rig.cfg)).returncode == 0
        assert cli("record", "stop", "--config", str(rig.cfg)).returncode == 0

    rig.run(during)
    plain = rig.verify()
    videos = sorted((plain / "video").glob("*.mp4"))
    assert len(videos) >= 2, videos
    assert ffprobe_codecs(videos[-1])[:1] == ["h264"]
    assert list((plain / "still").glob("*.jpg"))
    events = [json.loads(p.read_text())["type"] for p in sorted((plain / "event").glob("*.json"))]
    assert "camera_lost" not in events, f"the camera was lost during the run: {events}"


def test_ip_camera_stream(tmp_path: Path) -> None:
    from agent.capture.netstream import NetStreamSource

    url = os.environ.get("EDGE_AGENT_HIL_STREAM", "")
    if not url:
        pytest.skip(
            "NOT RUN: no IP camera on this machine (EDGE_AGENT_HIL_STREAM is not set; a rig "
            "sets it to the camera's rtsp:// URL - see docs/hil.md)"
        )
    stop = threading.Event()
    out = _record(tmp_path, NetStreamSource(url, FPS), stop)
    video = out["video"]
    assert len(video) >= 2, "no segments"
    for i, seg in enumerate(video):
        path = tmp_path / f"ip{i}.mp4"
        path.write_bytes(seg.data)
        assert ffprobe_codecs(path) == ["h264"]
        assert seg.meta["passthrough"] is True and seg.meta["watermark"] is False
