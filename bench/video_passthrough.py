"""``bench video/passthrough-cpu``: what recording an already-encoded camera stream costs.

An rpicam-vid-like H.264 stream (720p30 at 4 Mbit/s, an IDR a second, AUD and SPS/PPS
in-band: libx264 through ffmpeg, made once before timing; the test card with the frame counter
plus temporal noise, as a camera's sensor adds: a clean test card is unrealistically cheap to
encode, which would flatter neither side fairly) is fed in real time through a pipe (``ffmpeg -re
-c copy`` in rpicam-vid's place) into the real recorder: the pipe source's Annex-B parsing and
checks, the remuxer, fragments, segments, sealing into a spool on disk. Its CPU seconds (this
process, all threads; the feeding ffmpeg is another process, as rpicam-vid would be) per second
of video are compared with a bare libx264 encode (the agent's preset) of the same pictures,
decoded beforehand, into fragmented MP4 in memory: what the device would spend encoding in
software instead. Target: at most a tenth.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench import Reporter

GROUP = "video"
W, H, FPS, SECONDS = 1280, 720, 30, 10


def _stream(path: Path) -> None:
    from agent.capture.sim import counter_lavfi

    card = counter_lavfi(W, H, FPS).replace(
        ",format=yuv420p,", ",format=yuv420p,noise=alls=10:allf=t,"
    )
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "lavfi", "-i", card, "-frames:v", str(FPS * SECONDS),
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "0",
            "-g", str(FPS), "-keyint_min", str(FPS), "-sc_threshold", "0", "-b:v", "4M",
            "-x264-params", "repeat-headers=1:aud=1", "-f", "h264", "-y", str(path),
        ],
        check=True,
    )  # fmt: skip


def _passthrough(stream: Path, where: Path) -> tuple[float, Any]:
    """CPU seconds of this process while the recorder records the stream fed in real time."""
    from agent.capture.recorder import Recorder
    from agent.capture.rpicam import PipeSource
    from agent.capture.settings import VideoSettings
    from bench.bench_video import _spool

    spool = _spool(where)
    stop = threading.Event()
    s = VideoSettings(width=W, height=H, fps=FPS, mode="continuous", segment_s=5, prebuffer_s=0)
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-i", str(stream),
           "-c", "copy", "-flush_packets", "1", "-f", "h264", "-"]  # fmt: skip
    src = PipeSource(cmd, FPS, name="rpicam", encoder="rpicam-vid (ffmpeg)", stall_s=2.0, stop=stop)
    units = FPS * SECONDS

    def on_unit(au: Any) -> None:
        if au.index + 1 >= units:
            stop.set()

    rec = Recorder(s, src, spool, stop, on_unit=on_unit)
    c0 = time.process_time()
    rec.start_threads()
    if not rec.join(SECONDS * 6):
        stop.set()
        rec.join(30)
    cpu = time.process_time() - c0
    spool.close()
    if rec.error is not None:
        raise rec.error
    return cpu, rec.stats


def _bare(stream: Path, preset: str, bitrate_kbps: int) -> float:
    """CPU seconds of a bare libx264 encode of the stream's pictures into fMP4 in memory."""
    import av

    from agent.capture.encoder import MOVFLAGS

    with av.open(str(stream), "r", format="h264") as c:
        frames = [f for f in c.decode(video=0)]
    c0 = time.process_time()
    with av.open(io.BytesIO(), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        st: Any = out.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.codec_context.time_base = Fraction(1, FPS)
        st.codec_context.bit_rate = bitrate_kbps * 1000
        st.codec_context.options = {
            "preset": preset, "bf": "0", "g": str(FPS), "keyint_min": str(FPS),
            "sc_threshold": "0",
        }  # fmt: skip
        for i, vf in enumerate(frames):
            vf.pts = i
            vf.time_base = Fraction(1, FPS)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return time.process_time() - c0


def run(report: Reporter) -> None:
    from agent.capture.settings import VideoSettings

    if shutil.which("ffmpeg") is None:
        print(f"bench {GROUP}/passthrough-cpu: skipped (ffmpeg is not installed)")
        return
    s = VideoSettings()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="ea-bench-pass-") as d:
        stream = Path(d) / "cam.h264"
        _stream(stream)
        cpu, stats = _passthrough(stream, Path(d))
        bare = _bare(stream, s.preset, s.bitrate_kbps)
    video_s = stats.encoded / FPS if stats.encoded else float(SECONDS)
    per_s, bare_per_s = cpu / video_s, bare / SECONDS
    report.figure(
        GROUP,
        "passthrough-cpu",
        per_s,
        "cpu-s per s of video",
        ratio=per_s / bare_per_s,
        baseline=f"bare libx264 {s.preset} encode of the same 720p30 pictures "
        f"{bare_per_s:.3f} cpu-s/s",
        target=0.1,
        higher_is_better=False,
    )
    if stats.dropped or stats.encoded != FPS * SECONDS:
        report.info(GROUP, "passthrough-pictures", stats.encoded, "pictures", "some lost!")
