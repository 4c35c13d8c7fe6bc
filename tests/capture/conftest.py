"""Fixtures for the video tests: keys, a real spool, decryption, ffprobe and pixel helpers.

Frames are small (320x240 at 15 fps, 2 s segments) so the whole capture run stays short.
The expensive recordings are session-scoped and shared by the tests that inspect them.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.capture.frames import read_counter
from agent.capture.overlay import Overlay
from agent.capture.recorder import Recorder
from agent.capture.settings import VideoSettings
from agent.capture.sim import SyntheticSource
from agent.model import Alarm, Fix, FixMode
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
from tests.storage.helpers import Sealed, decrypt_stream

W, H, FPS = 320, 240, 15
DEVICE = "cam-7"
OFFICER = "012345"
FIX = Fix(time=1_700_000_000.0, mode=FixMode.FIX_3D, lat=31.2304, lon=121.4737)
START_UTC = 1_700_000_000.0


@dataclass(frozen=True)
class Keys:
    dir: Path
    platform_key_path: Path

    def sealer(self, device_id: str = DEVICE) -> Sealer:
        return Sealer(
            device_id=device_id,
            boot_id="boot-1",
            signing_key=load_signing_key(self.dir / "dev" / "device.key"),
            platform_public=load_platform_public(self.dir / "plat" / "platform.pub"),
            settings=SealSettings(),
        )

    def spool(self, where: Path, **settings: Any) -> Spool:
        return Spool(SpoolSettings(dir=where, **settings), self.sealer())


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("capture-keys")
    init_device_keys(d / "dev")
    init_platform_keys(d / "plat")
    return Keys(d, d / "plat" / "platform.key")


def decode_counters(mp4: bytes) -> list[int]:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        return [read_counter(f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]


def decode_frames(mp4: bytes) -> list[Any]:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


@dataclass(frozen=True)
class Probe:
    codec: str
    width: int
    height: int
    frames: int
    first_pts: float
    last_pts: float
    keyframes: int

    def duration(self, fps: float) -> float:
        return self.last_pts - self.first_pts + 1 / fps


def ffprobe(path: Path) -> Probe:
    exe = shutil.which("ffprobe")
    if exe is None:
        pytest.skip("ffprobe (Debian ffmpeg) is not installed")
    out = subprocess.run(
        [
            exe, "-v", "error", "-select_streams", "v:0", "-count_frames",
            "-show_entries", "stream=codec_name,width,height,nb_read_frames:packet=pts_time,flags",
            "-of", "json", str(path),
        ],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    j = json.loads(out)
    st = j["streams"][0]
    pts = [float(p["pts_time"]) for p in j["packets"]]
    return Probe(
        codec=st["codec_name"],
        width=int(st["width"]),
        height=int(st["height"]),
        frames=int(st["nb_read_frames"]),
        first_pts=min(pts),
        last_pts=max(pts),
        keyframes=sum(1 for p in j["packets"] if "K" in p["flags"]),
    )


def make_overlay() -> Overlay:
    return Overlay(device_id=DEVICE, officer=OFFICER, fix=lambda: FIX)


def small_settings(**changes: Any) -> VideoSettings:
    base: dict[str, Any] = dict(
        width=W, height=H, fps=FPS, segment_s=2, prebuffer_s=2, keyframe_s=1.0, queue_frames=8
    )
    base.update(changes)
    return VideoSettings(**base)


@dataclass
class EventRun:
    """A body-camera recording: 150 frames, REC at frame 60, MARK at 90, STOP at 120."""

    dir: Path
    spool_dir: Path
    source: SyntheticSource
    recorder: Recorder
    video: list[Sealed]
    events: list[Sealed]
    alarms: list[Alarm] = field(default_factory=list)


START_AT, MARK_AT, STOP_AT, TOTAL = 60, 90, 120, 150


@pytest.fixture(scope="session")
def event_run(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventRun]:
    d = tmp_path_factory.mktemp("event-run")
    spool = keys.spool(d / "spool")
    stop = threading.Event()
    src = SyntheticSource(W, H, FPS, start_utc=START_UTC, limit=TOTAL)
    alarms: list[Alarm] = []
    box: dict[str, Recorder] = {}

    def on_frame(frame: Any) -> None:
        rec = box["rec"]
        if frame.index == START_AT:
            rec.start("button")
        elif frame.index == MARK_AT:
            rec.mark("button", "suspect left")
        elif frame.index == STOP_AT:
            rec.stop("button")

    rec = box["rec"] = Recorder(
        small_settings(mode="event"),
        src,
        spool,
        stop,
        overlay=make_overlay(),
        alarm=alarms.append,
        meta={"device": DEVICE},
        on_frame=on_frame,
    )
    rec.start_threads()
    assert rec.join(120), "recorder threads did not finish"
    assert rec.error is None
    run = EventRun(
        d,
        d / "spool",
        src,
        rec,
        decrypt_all(spool, keys, "video"),
        decrypt_all(spool, keys, "event"),
        alarms,
    )
    yield run
    spool.close()


def decrypt_all(spool: Spool, keys: Keys, stream: str | None = None) -> list[Sealed]:
    return decrypt_stream(spool, load_platform_private(keys.platform_key_path), stream)
