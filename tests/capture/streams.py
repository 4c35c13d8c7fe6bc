"""Encoded streams made by ffmpeg for the pass-through tests: what rpicam-vid writes to a pipe,
and what an IP camera sends over MPEG-TS, with the frame counter burned into the pixels."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.capture.frames import read_counter
from agent.capture.h264 import avcc_nals
from agent.capture.sim import counter_lavfi


def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("ffmpeg (Debian ffmpeg) is not installed")
    return exe


def h264_args(fps: int, gop: int) -> list[str]:
    """libx264 made to write what rpicam-vid writes: no B-frames, an IDR every ``gop`` frames
    and nowhere else, an AUD before each picture, SPS/PPS before every IDR."""
    return [
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0",
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        "-x264-params", "repeat-headers=1:aud=1", "-r", str(fps),
    ]  # fmt: skip


def source_args(width: int, height: int, fps: int, *, realtime: bool = True) -> list[str]:
    return [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
        *(["-re"] if realtime else []),
        "-f", "lavfi", "-i", counter_lavfi(width, height, fps),
    ]  # fmt: skip


def rpicam_like(width: int, height: int, fps: int, *, gop: int, frames: int = 0) -> list[str]:
    """An ffmpeg command writing an rpicam-vid-like stream to stdout in real time."""
    limit = ["-frames:v", str(frames)] if frames else []
    return [
        *source_args(width, height, fps),
        *limit,
        *h264_args(fps, gop),
        "-flush_packets", "1", "-f", "h264", "-",
    ]  # fmt: skip


def write_stream(path: Path, width: int, height: int, fps: int, *, gop: int, frames: int) -> Path:
    subprocess.run(
        [
            *source_args(width, height, fps, realtime=False),
            "-frames:v", str(frames), *h264_args(fps, gop), "-f", "h264", "-y", str(path),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mp4_samples(mp4: bytes) -> list[bytes]:
    """The H.264 samples of an MP4 (length-prefixed NAL units), in decode order."""
    import av

    with av.open(io.BytesIO(mp4), "r") as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def sample_nals(sample: bytes) -> list[bytes]:
    return avcc_nals(sample, 4)


def decode_all_counters(mp4: bytes) -> list[int]:
    import av

    with av.open(io.BytesIO(mp4), "r") as c:
        return [read_counter(f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]


def stop_after(n: int, stop: Any) -> Any:
    """An ``on_unit`` callback that sets ``stop`` once ``n`` access units were captured."""
    seen = [0]

    def on_unit(_au: Any) -> None:
        seen[0] += 1
        if seen[0] >= n:
            stop.set()

    return on_unit
