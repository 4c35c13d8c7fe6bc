"""Video benchmarks: the whole pipeline against a bare PyAV encode of the same frames.

- ``pipeline-720p30`` / ``pipeline-1080p30``: frames per second through capture (a new frame
  buffer per frame, as a camera delivers), watermark, H.264 encode, fragmenting, sealing and the
  spool, versus a bare PyAV encode (same encoder and settings, same frames) in the same run.
- ``cpu-720p30``: CPU seconds (all threads) per second of video recorded, versus the bare encode.
- ``prebuffer-rss-1080p``: memory held by a 30 s pre-event buffer of encoded 1080p fragments
  (ring bytes, and the process RSS growth), versus the raw frames it stands for.
- ``passthrough-cpu``: recording an already-encoded stream (rpicam-vid, picamera2's encoder,
  an IP camera) versus encoding it in software (:mod:`bench.video_passthrough`).

What differs between the two sides besides the pipeline's own work: the pipeline's replayed
camera copies each frame into a new buffer and draws its bar code (1-2 ms a 1080p frame that
the bare encode does not pay); the bare encode copies its I420 conversion into a frame
(``from_ndarray``, the textbook path, about 1 ms a 1080p frame) where the recorder wraps it
without a copy (docs/video.md, "What a raw frame costs").

Each throughput figure is the best of three alternating runs of each side (the machine may be
busy with other work). Frames come from the synthetic source, rendered once (one second's
worth, replayed), so the figures measure the pipeline and not the test pattern's drawing.
"""

from __future__ import annotations

import io
import resource
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench import Reporter

GROUP = "video"
REPEATS = 3


def _frames(width: int, height: int, fps: int) -> list[Any]:
    from agent.capture.sim import SyntheticSource

    src = SyntheticSource(width, height, fps)
    out = []
    for _ in range(fps):
        frame = src.read()
        assert frame is not None
        out.append(frame.image)
    return out


class _Replay:
    """A non-live source replaying pre-rendered frames (a fresh buffer each, like a camera)."""

    def __init__(self, images: list[Any], fps: int, count: int) -> None:
        self.images, self._fps, self.count = images, fps, count
        self.i = 0
        self.t0 = time.monotonic_ns()

    @property
    def name(self) -> str:
        return "replay"

    @property
    def live(self) -> bool:
        return False

    @property
    def fps(self) -> float:
        return float(self._fps)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self) -> Any:
        from agent.capture.frames import Frame, draw_counter

        if self.i >= self.count:
            return None
        img = self.images[self.i % len(self.images)].copy()
        draw_counter(img, self.i)
        f = Frame(img, self.i, self.t0 + round(self.i * 1e9 / self._fps), time.time())
        self.i += 1
        return f


def _bare(images: list[Any], fps: int, count: int, settings: Any) -> tuple[float, float]:
    """Bare PyAV: convert, encode, mux fragmented MP4 into memory. Returns (wall, cpu)."""
    import av
    import cv2

    from agent.capture.encoder import MOVFLAGS, choose_codec

    h, w = images[0].shape[:2]
    codec = choose_codec(settings.encoder, w, h, fps)
    w0, c0 = time.perf_counter(), time.process_time()
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"movflags": MOVFLAGS}) as c:
        st: Any = c.add_stream(codec, rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.codec_context.time_base = Fraction(1, fps)
        st.codec_context.bit_rate = settings.bitrate_kbps * 1000
        key = round(fps * settings.keyframe_s)
        if codec == "libx264":
            st.codec_context.options = {
                "preset": settings.preset, "bf": "0", "g": str(key), "keyint_min": str(key),
                "sc_threshold": "0",
            }  # fmt: skip
        for i in range(count):
            yuv = cv2.cvtColor(images[i % len(images)], cv2.COLOR_BGR2YUV_I420)
            vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            vf.pts = i
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    return time.perf_counter() - w0, time.process_time() - c0


def _spool(where: Path) -> Any:
    from agent.storage.keys import (
        init_device_keys,
        init_platform_keys,
        load_platform_public,
        load_signing_key,
    )
    from agent.storage.sealer import Sealer
    from agent.storage.settings import SealSettings, SpoolSettings
    from agent.storage.spool import Spool

    init_device_keys(where / "dev")
    init_platform_keys(where / "plat")
    sealer = Sealer(
        device_id="bench-cam",
        boot_id="bench",
        signing_key=load_signing_key(where / "dev" / "device.key"),
        platform_public=load_platform_public(where / "plat" / "platform.pub"),
        settings=SealSettings(),
    )
    return Spool(SpoolSettings(dir=where / "spool", reserve_mb=0), sealer)


def _pipeline(images: list[Any], fps: int, count: int, settings: Any) -> tuple[float, float, Any]:
    from agent.capture.overlay import Overlay
    from agent.capture.recorder import Recorder

    with tempfile.TemporaryDirectory(prefix="bench-video-") as d:
        spool = _spool(Path(d))
        stop = threading.Event()
        overlay = Overlay(device_id="bench-cam", officer="012345")
        rec = Recorder(settings, _Replay(images, fps, count), spool, stop, overlay=overlay)
        w0, c0 = time.perf_counter(), time.process_time()
        rec.start_threads()
        if not rec.join(600):
            stop.set()
            rec.join(30)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        spool.close()
    if rec.error is not None:
        raise rec.error
    return wall, cpu, rec.stats


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def run(report: Reporter) -> None:
    from agent.capture.settings import VideoSettings

    for name, (w, h, count) in {"720p30": (1280, 720, 450), "1080p30": (1920, 1080, 240)}.items():
        fps = 30
        s = VideoSettings(width=w, height=h, fps=fps, mode="continuous", segment_s=2, prebuffer_s=0)
        images = _frames(w, h, fps)
        _bare(images, fps, fps, s)  # warm up (encoder libraries, page cache)
        # Alternate the two and keep the best of each: the machine may be shared.
        bare_wall, bare_cpu = wall, cpu = float("inf"), 0.0
        stats = None
        for _ in range(REPEATS):
            bw, bc = _bare(images, fps, count, s)
            if bw < bare_wall:
                bare_wall, bare_cpu = bw, bc
            pw, pc, st = _pipeline(images, fps, count, s)
            if pw < wall:
                wall, cpu, stats = pw, pc, st
        assert stats is not None
        bare_fps, fps_got = count / bare_wall, stats.encoded / wall
        report.figure(
            GROUP,
            f"pipeline-{name}",
            fps_got,
            "frames/s",
            ratio=fps_got / bare_fps,
            baseline=f"bare PyAV {stats.encoder} encode {bare_fps:.1f} frames/s",
            target=0.9,
        )
        if name == "720p30":
            video_s = count / fps
            per_s, bare_per_s = cpu / video_s, bare_cpu / video_s
            report.figure(
                GROUP,
                "cpu-720p30",
                per_s,
                "cpu-s per s of video",
                ratio=per_s / bare_per_s,
                baseline=f"bare encode {bare_per_s:.2f} cpu-s/s",
                target=1.25,
                higher_is_better=False,
            )
        if stats.dropped or stats.encoded != count:
            report.info(GROUP, f"pipeline-{name}-frames", stats.encoded, "frames", "some lost!")

    # 30 s pre-event buffer at 1080p. The ring holds encoded bytes, set by the bitrate, not the
    # frame rate: 10 frames/s keeps the run short (35 s of video) for the same bytes per second.
    from agent.capture.encoder import H264Encoder
    from agent.capture.recorder import VideoPipeline

    fps = 10
    s = VideoSettings(width=1920, height=1080, fps=fps, mode="event", prebuffer_s=30)
    images = _frames(1920, 1080, fps)
    rss0 = _rss_mb()
    enc = H264Encoder(1920, 1080, fps, codec=s.encoder, bitrate_kbps=s.bitrate_kbps)
    pipe = VideoPipeline(s, enc, lambda job: None)
    src = _Replay(images, fps, 35 * fps)
    while (frame := src.read()) is not None:
        pipe.feed(frame)
    rss = _rss_mb() - rss0
    raw = 30 * 30 * 1920 * 1080 * 3
    ring_mb = pipe.ring.bytes / 2**20
    report.figure(
        GROUP,
        "prebuffer-30s-1080p",
        ring_mb,
        "MB in the ring",
        ratio=pipe.ring.bytes / raw,
        baseline=f"{raw / 2**30:.1f} GB of raw 1080p30 frames; RSS grew {rss:.0f} MB "
        f"(encoder + ring), span {pipe.ring.span_s:.0f} s at {s.bitrate_kbps} kbit/s",
        target=0.01,
        higher_is_better=False,
    )
    report.info(GROUP, "prebuffer-30s-1080p-rss", rss, "MB RSS growth")

    from bench.bench_journal import run as journal

    journal(report)

    from bench import video_passthrough

    video_passthrough.run(report)
