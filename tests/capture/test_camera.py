"""Sources: a video file through OpenCV in continuous mode, and a camera lost mid-recording."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest

from agent.capture.camera import CameraSource, CaptureLoop, source_kind
from agent.capture.frames import Frame
from agent.capture.recorder import Recorder
from agent.capture.sim import SyntheticSource
from agent.errors import SourceError
from agent.model import Alarm

from .conftest import FPS, H, Keys, W, decode_counters, decrypt_all, ffprobe, small_settings

FILE_FRAMES = 75


@pytest.fixture(scope="session")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5 s H.264 file of the synthetic pattern, frame counter included."""
    import av

    path = tmp_path_factory.mktemp("file-source") / "clip.mp4"
    src = SyntheticSource(W, H, FPS)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.codec_context.time_base = Fraction(1, FPS)
        st.codec_context.options = {"crf": "12", "preset": "veryfast"}
        for i in range(FILE_FRAMES):
            frame = src.read()
            assert frame is not None
            vf = av.VideoFrame.from_ndarray(frame.image, format="bgr24")
            vf.pts = i
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    return path


def test_source_kinds() -> None:
    assert source_kind("/dev/video0") == "device"
    assert source_kind("0") == "device"
    assert source_kind("rtsp://10.0.0.2/stream") == "url"
    assert source_kind("udp://@:5000") == "url"
    assert source_kind("/var/lib/clip.mp4") == "file"


def test_file_recorded_continuously_without_losing_a_frame(
    video_file: Path, keys: Keys, tmp_path: Path
) -> None:
    spool = keys.spool(tmp_path / "spool")
    stop = threading.Event()
    src = CameraSource(str(video_file), W, H, FPS)
    assert not src.live  # a file is read as fast as it is encoded: nothing is dropped
    rec = Recorder(small_settings(mode="continuous"), src, spool, stop)
    rec.start_threads()
    assert rec.join(120)
    assert rec.error is None
    video = decrypt_all(spool, keys, "video")
    counters = [c for seg in video for c in decode_counters(seg.data)]
    assert counters == list(range(FILE_FRAMES))
    assert [s.meta["frames"] for s in video] == [30, 30, 15]
    assert video[-1].meta["final"] is True
    for i, seg in enumerate(video):
        path = tmp_path / f"{i}.mp4"
        path.write_bytes(seg.data)
        p = ffprobe(path)
        assert p.codec == "h264" and p.frames == seg.meta["frames"]
    kinds = [e.record["type"] for e in decrypt_all(spool, keys, "event")]
    assert kinds == ["record_start", "record_stop"]
    assert rec.stats.captured == rec.stats.encoded == FILE_FRAMES
    spool.close()


@dataclass
class FlakySource:
    """A synthetic camera that vanishes at frame ``fail_at`` and refuses one reopen."""

    inner: SyntheticSource
    fail_at: int
    refuse_opens: int = 1
    opens: int = 0
    failed: bool = False

    @property
    def name(self) -> str:
        return "flaky"

    @property
    def live(self) -> bool:
        return False

    @property
    def fps(self) -> float:
        return self.inner.fps

    def open(self) -> None:
        self.opens += 1
        if self.failed and self.refuse_opens > 0:
            self.refuse_opens -= 1
            raise SourceError("flaky: device busy")
        self.inner.open()

    def read(self) -> Frame | None:
        if not self.failed and self.inner.index == self.fail_at:
            self.failed = True
            raise SourceError("flaky: unplugged")
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def test_camera_lost_mid_recording_is_reopened_and_reported(keys: Keys, tmp_path: Path) -> None:
    spool = keys.spool(tmp_path / "spool")
    stop = threading.Event()
    src = FlakySource(SyntheticSource(W, H, FPS, limit=60), fail_at=25)
    alarms: list[Alarm] = []
    rec = Recorder(
        small_settings(mode="continuous", reopen_s=0.05, reopen_max_s=0.1),
        src,
        spool,
        stop,
        alarm=alarms.append,
    )
    rec.start_threads()
    assert rec.join(120)
    assert src.opens == 3  # first open, one refused reopen, the reopen that worked
    assert rec.stats.losses == 1
    assert [a.kind for a in alarms] == ["camera_lost"]
    events = [e.record for e in decrypt_all(spool, keys, "event")]
    kinds = [e["type"] for e in events]
    assert kinds == ["record_start", "camera_lost", "camera_restored", "record_stop"]
    assert events[1]["error"] == "flaky: unplugged"
    assert events[2]["attempts"] == 2
    video = decrypt_all(spool, keys, "video")
    counters = [c for seg in video for c in decode_counters(seg.data)]
    assert counters == list(range(60))  # recording went on after the reopen
    spool.close()


def test_missing_camera_is_reported_once_and_retried() -> None:
    stop = threading.Event()
    events: list[str] = []
    alarms: list[Alarm] = []
    src = CameraSource("/dev/video-none-here", W, H, FPS, opener=lambda s, k: None)
    loop = CaptureLoop(
        src,
        lambda f: None,
        stop,
        reopen_s=0.05,
        reopen_max_s=0.05,
        on_event=lambda k, d: events.append(k),
        alarm=alarms.append,
    )
    t = threading.Thread(target=loop.run)
    t.start()
    waited = 0
    while loop.attempts < 3 and waited < 600:
        stop.wait(0.05)
        waited += 1
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert loop.attempts >= 3
    assert events == ["camera_lost"] and loop.losses == 1
    assert [a.kind for a in alarms] == ["camera_lost"]


def test_file_source_end_and_open_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        CameraSource(str(tmp_path / "none.mp4"), W, H, FPS).open()
    with pytest.raises(SourceError, match="not open"):
        CameraSource("/dev/video9", W, H, FPS).read()
