"""Audio as a second track of video segments: aligned with the frames within one frame."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from agent.capture.audio import AudioBlock
from agent.capture.av_mux import AvEncoder
from agent.capture.frames import Frame, draw_counter, read_counter
from agent.capture.jobs import SegmentJob
from agent.capture.recorder import VideoPipeline
from agent.capture.settings import VideoSettings

W, H, FPS = 160, 120, 15
RATE = 16000
BLOCK = 320
T0 = 5_000_000_000_000
CLICK_FRAMES = (10, 25, 40, 55)  # a 1 kHz beep starts exactly when each of these is captured
AUDIO_LEAD_NS = 250_000_000  # audio starts after the first frame (mic opened later)
AUDIO_LATENCY_NS = 80_000_000  # blocks reach the encoder this late


def frame_ns(i: int) -> int:
    return T0 + round(i * 1e9 / FPS)


def audio_block(index: int, offset_ns: int) -> AudioBlock:
    """Block of samples ``index ..``; sample s is captured at offset_ns + s / RATE."""
    s = np.arange(index, index + BLOCK)
    t = offset_ns + s * 1e9 / RATE
    x = np.zeros(BLOCK)
    for f in CLICK_FRAMES:
        on = (t >= frame_ns(f)) & (t < frame_ns(f) + 30e6)
        x[on] = 0.5 * np.sin(2 * np.pi * 1000 * (t[on] - frame_ns(f)) / 1e9)
    pcm = (x * 32767).astype("<i2").tobytes()
    mono = round(offset_ns + index * 1e9 / RATE)
    return AudioBlock(pcm, index, mono, mono / 1e9, RATE, 1)


def record(frames: int, clock_ppm: float = 0.0) -> list[SegmentJob]:
    settings = VideoSettings(
        enabled=True, width=W, height=H, fps=FPS, mode="continuous", segment_s=2, prebuffer_s=0
    )
    enc = AvEncoder(W, H, FPS, codec="libx264", rate=RATE, preset="ultrafast")
    jobs: list[Any] = []
    p = VideoPipeline(settings, enc, jobs.append)
    p.start("continuous")
    offset = T0 + AUDIO_LEAD_NS
    index = 0
    # A sound card whose clock runs clock_ppm fast: its blocks' stamps drift against frames.
    scale = 1.0 + clock_ppm * 1e-6
    for i in range(frames):
        now = frame_ns(i)
        while True:
            blk = audio_block(index, offset)
            if blk.end_mono_ns + AUDIO_LATENCY_NS > now:
                break
            stamped = AudioBlock(
                blk.pcm, blk.index, round(offset + (blk.mono_ns - offset) * scale), 0.0, RATE, 1
            )
            enc.push_audio(stamped)
            index += BLOCK
        img = np.zeros((H, W, 3), np.uint8)
        draw_counter(img, i)
        p.feed(Frame(img, i, now, now / 1e9))
    p.finish("end_of_source")
    return [j for j in jobs if isinstance(j, SegmentJob)]


def decode(mp4: bytes) -> tuple[list[tuple[float, int]], np.ndarray[Any, Any], float, int]:
    """(video (time, counter) pairs, audio samples, audio start time, audio rate)."""
    import av

    container: Any = av.open(io.BytesIO(mp4))
    with container as c:
        video = [
            (float(f.pts * f.time_base), read_counter(f.to_ndarray(format="bgr24")))
            for f in c.decode(video=0)
        ]
    container = av.open(io.BytesIO(mp4))
    with container as c:
        chunks, start, rate = [], None, 0
        for f in c.decode(audio=0):
            if start is None:
                start = float(f.pts * f.time_base)
            rate = f.sample_rate
            chunks.append(f.to_ndarray().reshape(-1))
    return video, np.concatenate(chunks), start or 0.0, rate


def onsets(x: np.ndarray[Any, Any], rate: int, start: float) -> list[float]:
    """Times where the beeps begin (energy rising from silence)."""
    loud = np.abs(x) > 0.05
    out: list[float] = []
    last = -1.0
    for i in np.flatnonzero(loud):
        t = start + i / rate
        if t - last > 0.2:
            out.append(t)
        last = t
    return out


@pytest.mark.parametrize("ppm", [0.0, 20000.0])  # 2%: 100 ms over the 5 s, resync needed
def test_audio_track_is_aligned_with_frames(ppm: float) -> None:
    segs = record(frames=FPS * 5, clock_ppm=ppm)
    assert len(segs) >= 2
    seen = 0
    for job in segs:
        mp4 = b"".join(job.pieces)
        video, audio, a0, rate = decode(mp4)
        times = {counter: t for t, counter in video}
        for t in onsets(audio, rate, a0):
            # The beep belongs to the frame captured when it started.
            frame = min(CLICK_FRAMES, key=lambda f: abs(times.get(f, 1e9) - t))
            assert frame in times, f"beep at {t:.3f} s has no frame in this segment"
            assert abs(t - times[frame]) < 1 / FPS, (
                f"beep of frame {frame} at {t:.4f} s, frame shown at {times[frame]:.4f} s"
            )
            seen += 1
    assert seen == len(CLICK_FRAMES)


def test_missing_microphone_gives_silent_track_without_stalling_video() -> None:
    settings = VideoSettings(enabled=True, width=W, height=H, fps=FPS, mode="continuous")
    enc = AvEncoder(W, H, FPS, codec="libx264", rate=RATE, preset="ultrafast")
    jobs: list[Any] = []
    p = VideoPipeline(settings, enc, jobs.append)
    p.start("continuous")
    for i in range(FPS * 3):
        img = np.zeros((H, W, 3), np.uint8)
        p.feed(Frame(img, i, frame_ns(i), 0.0))
    assert p.fragments >= 1  # fragments are not held back waiting for audio
    p.finish("end_of_source")
    segs = [j for j in jobs if isinstance(j, SegmentJob)]
    video, audio, _a0, rate = decode(b"".join(segs[0].pieces))
    assert len(video) == FPS * 3
    assert len(audio) / rate == pytest.approx(3.0, abs=0.1)
    assert float(np.max(np.abs(audio))) < 1e-3
    assert enc.filled_samples > 0


def test_preskip_can_be_cleared_in_an_init_with_two_tracks() -> None:
    from agent.capture.audio_encoder import preskip_of, zero_preskip

    segs = record(frames=FPS * 3)
    later = segs[1].pieces  # the init boxes, then the fragments
    init = later[0]
    assert preskip_of(init) == round(312 * RATE / 48000) * 3  # dOps counts 48 kHz samples
    fixed = zero_preskip(init)
    assert preskip_of(fixed) == 0 and len(fixed) == len(init)
    # The later segment with the cleared init keeps all of its audio, and its video.
    body = b"".join(later[1:])
    v1, a1, _s1, _r1 = decode(init + body)
    v2, a2, _s2, _ = decode(fixed + body)
    assert v1 == v2
    assert len(a2) - len(a1) == 312
