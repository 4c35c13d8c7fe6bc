"""The picamera2 source, driven here through a simulated twin of the picamera2 module.

The real :class:`agent.capture.picam.Picamera2Source` runs: configuration, the watermark drawn
in ``pre_callback`` on the mapped YUV420 buffer, the encoder chosen and started through
``start_recording``, pictures arriving at its ``Output`` from the encoder's thread. The twin
stands in for the camera and the Pi's encoder (libx264 with the same in-band parameter sets).
tests/hardware runs the same class against the real module on a rig.
"""

from __future__ import annotations

import importlib.util
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.capture.camera import CaptureLoop
from agent.capture.frames import AccessUnit, read_counter
from agent.capture.picam import I420Watermark, Picamera2Source, load_picamera2
from agent.capture.recorder import Recorder
from agent.capture.sim import SyntheticSource
from agent.errors import SourceError
from agent.model import Alarm, format_utc

from .conftest import (
    FIX,
    FPS,
    H,
    Keys,
    W,
    decode_frames,
    decrypt_all,
    ffprobe,
    make_overlay,
    small_settings,
)
from .picamera2_twin import Twin
from .streams import stop_after


def _source(twin: Twin, stop: threading.Event, **kw: Any) -> Picamera2Source:
    return Picamera2Source(
        W, H, FPS, keyframe_s=1.0, overlay=make_overlay(), stall_s=1.0, stop=stop,
        load=twin.api, **kw,
    )  # fmt: skip


def _record(keys: Keys, tmp: Path, twin: Twin, units: int, **kw: Any) -> dict[str, Any]:
    spool = keys.spool(tmp / "spool")
    stop = threading.Event()
    alarms: list[Alarm] = []
    src = _source(twin, stop, **kw)
    rec = Recorder(
        small_settings(mode="continuous", reopen_s=0.1, reopen_max_s=0.5),
        src, spool, stop, alarm=alarms.append, on_unit=stop_after(units, stop),
    )  # fmt: skip
    rec.start_threads()
    assert rec.join(120)
    assert rec.error is None
    still = rec.latest_frame()
    out = {
        "rec": rec,
        "src": src,
        "video": decrypt_all(spool, keys, "video"),
        "events": decrypt_all(spool, keys, "event"),
        "alarms": alarms,
        "still": still,
    }
    spool.close()
    return out


def _watermark_error(image: Any, utc: float) -> tuple[float, float]:
    """Mean error of the watermark region against the expected box (best of utc +-1 s, as the
    callback and the stamp may fall either side of a second), and against no watermark."""
    overlay = make_overlay()
    index = read_counter(image)
    bare_img = SyntheticSource(W, H, FPS, text=False).render(index, 0.0)
    best = float("inf")
    bare = 0.0
    for t in (utc - 1, utc, utc + 1):
        lines = overlay.lines(t, FIX)
        # The watermark shows the second that has begun (format_utc rounds to the millisecond:
        # t = ...07.9999996, a sum of floats, is "08.000" there but still second 07 here).
        second = format_utc(float(int(t)))
        assert lines[0] == second[:10] + " " + second[11:19] + " UTC"
        patch = overlay.patch(lines, H)
        y, x = overlay.origin(image.shape, patch.shape)
        ph, pw = patch.shape[0] & ~1, patch.shape[1] & ~1
        y, x = y & ~1, x & ~1
        region = image[y : y + ph, x : x + pw].astype(float)
        best = min(best, float(abs(region - patch[:ph, :pw]).mean()))
        bare = float(abs(region - bare_img[y : y + ph, x : x + pw]).mean())
    return best, bare


def test_picamera2_records_watermarked_hardware_encoded_video(keys: Keys, tmp_path: Path) -> None:
    twin = Twin()
    device = tmp_path / "video11"
    device.touch()  # the board has the VideoCore encoder: picamera2's H264Encoder is chosen
    out = _record(keys, tmp_path, twin, 3 * FPS + 4, hardware_device=device)
    video, src = out["video"], out["src"]
    assert [type(e).__name__ for e in twin.encoders] == ["H264Encoder"]
    enc = twin.encoders[0]
    assert enc.repeat is True and enc.iperiod == FPS
    assert src.encoder == "picamera2 H264Encoder (VideoCore hardware)"
    counters: list[int] = []
    for i, seg in enumerate(video):
        path = tmp_path / f"{i}.mp4"
        path.write_bytes(seg.data)
        p = ffprobe(path)
        assert (p.codec, p.width, p.height, p.frames) == ("h264", W, H, seg.meta["frames"])
        assert seg.meta["watermark"] is True and seg.meta["passthrough"] is True
        assert seg.meta["encoder"] == "picamera2 H264Encoder (VideoCore hardware)"
        frames = decode_frames(seg.data)
        counters += [read_counter(f) for f in frames]
        start = datetime.strptime(seg.manifest["start_utc"], "%Y-%m-%dT%H:%M:%S.%fZ")
        start_utc = start.replace(tzinfo=UTC).timestamp()
        for k in range(0, len(frames), FPS // 2):
            right, bare = _watermark_error(frames[k], start_utc + k / FPS)
            assert right < 14, f"watermark region differs ({right:.1f})"
            assert bare > 3 * right
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert counters[0] == 0
    assert not out["alarms"]
    # A still decodes the newest picture (watermark included).
    still = out["still"]
    assert still is not None and still.image.shape == (H, W, 3)
    assert read_counter(still.image) == counters[-1]


def test_picamera2_without_the_hardware_encoder_uses_libav(keys: Keys, tmp_path: Path) -> None:
    twin = Twin()
    out = _record(
        keys, tmp_path, twin, FPS + 2, hardware_device=tmp_path / "absent", preset="superfast"
    )
    assert [type(e).__name__ for e in twin.encoders] == ["LibavH264Encoder"]
    assert twin.encoders[0].preset == "superfast"
    assert out["video"][0].meta["encoder"] == "picamera2 LibavH264Encoder (libx264 superfast)"


def test_camera_that_stops_delivering_is_reported_and_reopened(keys: Keys, tmp_path: Path) -> None:
    twin = Twin(fail_after=FPS + 3)
    out = _record(keys, tmp_path, twin, 3 * FPS)
    assert len(twin.cameras) >= 2  # reopened: a new Picamera2 object, recording started again
    assert [a.kind for a in out["alarms"]] == ["camera_lost"]
    assert "no picture for 1 s" in out["alarms"][0].message
    kinds = [e.record["type"] for e in out["events"]]
    assert kinds.count("camera_lost") == 1 and kinds.count("camera_restored") == 1
    video = out["video"]
    assert {s.meta["recording"] for s in video} == {video[0].meta["recording"]}
    assert sum(s.meta["source_resyncs"] for s in video) == 1
    for i, seg in enumerate(video):
        path = tmp_path / f"r{i}.mp4"
        path.write_bytes(seg.data)
        assert ffprobe(path).frames == seg.meta["frames"]


def test_missing_camera_is_reported_once_and_retried() -> None:
    stop = threading.Event()
    src = _source(Twin(missing=True), stop)
    alarms: list[Alarm] = []
    loop = CaptureLoop[AccessUnit](
        src, lambda au: None, stop, reopen_s=0.02, reopen_max_s=0.05, alarm=alarms.append
    )
    t = threading.Thread(target=loop.run)
    t.start()
    try:
        for _ in range(200):
            if loop.attempts >= 3:
                break
            stop.wait(0.02)
    finally:
        stop.set()
        t.join(10)
    assert loop.attempts >= 3
    assert [a.kind for a in alarms] == ["camera_lost"]
    assert "cannot open the camera" in alarms[0].message


@pytest.mark.skipif(
    importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed here"
)
def test_without_picamera2_the_error_says_how_to_install_it() -> None:
    with pytest.raises(SourceError, match=r"python3-picamera2 .* --camera picamera2"):
        load_picamera2()


def test_i420_watermark_matches_the_bgr_one() -> None:
    import cv2

    overlay = make_overlay()
    base = SyntheticSource(W, H, FPS, text=False).render(3, 0.0)
    bgr = base.copy()
    overlay.apply(bgr, 1_700_000_000.0)
    i420: Any = np.ascontiguousarray(cv2.cvtColor(base, cv2.COLOR_BGR2YUV_I420))
    y, x, h, w = I420Watermark(overlay).apply(i420, W, H, 1_700_000_000.0)
    back: Any = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    assert h > 0 and w > 0 and y % 2 == 0 and x % 2 == 0
    err = abs(back[y : y + h, x : x + w].astype(float) - bgr[y : y + h, x : x + w]).mean()
    assert err < 10, err
    # Outside the box the picture is untouched (beyond the round trip through I420).
    plain: Any = cv2.cvtColor(
        np.ascontiguousarray(cv2.cvtColor(base, cv2.COLOR_BGR2YUV_I420)), cv2.COLOR_YUV2BGR_I420
    )
    assert np.array_equal(back[: y - 2], plain[: y - 2])
