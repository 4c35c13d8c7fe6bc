"""The audio pipeline driven block by block with synthetic tones (no sound server needed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from agent.capture.audio import AudioBlock
from agent.capture.audio_recorder import AudioPipeline, AudioRecorder, command_handlers
from agent.capture.jobs import EventJob, Job, SegmentJob
from agent.capture.settings import AudioSettings
from agent.errors import CommandError
from tests.audio.conftest import decode_audio, peak_hz, rms

RATE = 16000
BLOCK = 320  # 20 ms
T0 = 1_000_000_000_000


class Feeder:
    """Feeds tone blocks with exact stamps: sample i is captured at T0 + i / RATE."""

    def __init__(self, pipeline: AudioPipeline) -> None:
        self.p = pipeline
        self.index = 0
        self.session = 1

    def at(self, seconds: float) -> int:
        return T0 + round(seconds * 1e9)

    def feed(self, seconds: float, hz: float, amp: float = 0.3) -> None:
        n = round(seconds * RATE / BLOCK)
        for _ in range(n):
            i = np.arange(self.index, self.index + BLOCK)
            x = (amp * 32767 * np.sin(2 * np.pi * hz * i / RATE)).astype("<i2")
            mono = T0 + round(self.index * 1e9 / RATE)
            self.p.feed(AudioBlock(x.tobytes(), self.index, mono, mono / 1e9, RATE, self.session))
            self.index += BLOCK

    def skip(self, seconds: float) -> None:
        self.index += round(seconds * RATE)


def make(**kw: Any) -> tuple[AudioPipeline, list[Job], Feeder]:
    s = AudioSettings(**{"enabled": True, "rate": RATE, "segment_s": 2, **kw})
    jobs: list[Job] = []
    p = AudioPipeline(s, jobs.append, losses=lambda: {"dropped_blocks": 0})
    return p, jobs, Feeder(p)


def segments(jobs: list[Job]) -> list[SegmentJob]:
    return [j for j in jobs if isinstance(j, SegmentJob)]


def events(jobs: list[Job]) -> list[EventJob]:
    return [j for j in jobs if isinstance(j, EventJob)]


def data(job: SegmentJob) -> bytes:
    return b"".join(job.pieces)


def timeline(jobs: list[Job]) -> np.ndarray[Any, Any]:
    """All segments decoded and joined (48 kHz), which must be one continuous timeline."""
    return np.concatenate([decode_audio(data(j)).samples for j in segments(jobs)])


def band(x: np.ndarray[Any, Any], hz: float, rate: int = 48000) -> float:
    """Relative spectral energy within 20 Hz of ``hz``."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spec[np.abs(f - hz) < 20].sum() / spec.sum())


def test_no_pre_event_audio_by_default() -> None:
    p, jobs, f = make(mode="event")
    f.feed(3.0, hz=880)  # before the trigger: must not be recorded anywhere
    assert p.encoder is None and p.stats.idle_blocks == 150
    trigger = f.at(3.0)
    p.start("button", trigger)
    f.feed(3.0, hz=440)
    p.stop("button", f.at(6.0))
    f.feed(1.0, hz=880)
    segs = segments(jobs)
    assert [s.header.meta["part"] for s in segs] == [0, 1]
    assert segs[0].header.meta["pre_event_s"] == 0.0
    assert segs[0].header.start_mono_ns >= trigger
    assert segs[-1].header.meta["final"]
    total = sum(s.header.meta["duration_s"] for s in segs)
    assert total == pytest.approx(3.0, abs=0.021)
    x = timeline(jobs)
    assert band(x, 440) > 0.9 and band(x, 880) < 0.001
    kinds = [e.kind for e in events(jobs)]
    assert kinds == ["audio_record_start", "audio_record_stop"]
    assert p.encoder is None  # idle again: nothing encoded after the stop


def test_pre_event_audio_when_configured() -> None:
    p, jobs, f = make(mode="event", prebuffer_s=2)
    f.feed(5.0, hz=880)
    trigger = f.at(5.0)
    p.start("button", trigger)
    f.feed(2.0, hz=440)
    p.finish("shutdown")
    segs = segments(jobs)
    pre = segs[0].header.meta["pre_event_s"]
    assert 2.0 <= pre <= 3.0 + 0.001  # the ring keeps whole 1 s fragments
    assert segs[0].header.start_mono_ns == pytest.approx(trigger - pre * 1e9, abs=1e6)
    x = timeline(jobs)
    head = x[: int(1.9 * 48000)]
    assert band(head, 880) > 0.9  # the pre-event audio is there
    assert band(x[-int(1.9 * 48000) :], 440) > 0.9
    assert sum(s.header.meta["duration_s"] for s in segs) == pytest.approx(2.0 + pre, abs=0.021)


def test_mute_is_exact_and_recorded() -> None:
    p, jobs, f = make(mode="continuous")
    p.start("continuous", f.at(0))
    f.feed(1.0, hz=440)
    p.mute("device", f.at(1.2345), note="witness")
    p.mute("platform", f.at(1.3))  # already muted: still an event record
    p.unmute("platform", f.at(1.7))
    f.feed(2.0, hz=440)
    p.finish("shutdown")
    x = timeline(jobs)
    pad = 312  # the first segment starts at sample 0 of the timeline; 48 kHz decoded

    def part(a: float, b: float) -> np.ndarray[Any, Any]:
        return x[int(a * 48000) - pad : int(b * 48000) - pad]

    assert rms(part(1.245, 1.69)) < 1e-3
    assert rms(part(1.0, 1.225)) > 0.1 and rms(part(1.71, 2.9)) > 0.1
    spans = [(s.header.meta["media_start_s"], s.header.meta["muted"]) for s in segments(jobs)]
    muted = [(start + a, start + b) for start, ms in spans for a, b in ms]
    assert muted == [(pytest.approx(1.2345, abs=1e-3), pytest.approx(1.7, abs=1e-3))]
    ev = [(e.kind, e.details["source"], e.details["already"]) for e in events(jobs)[1:-1]]
    assert ev == [
        ("audio_mute", "device", False),
        ("audio_mute", "platform", True),
        ("audio_unmute", "platform", False),
    ]


def test_short_gap_filled_long_gap_new_timeline() -> None:
    p, jobs, f = make(mode="continuous")
    p.start("continuous", f.at(0))
    f.feed(1.0, hz=440)
    f.skip(0.1)  # blocks dropped before the encoder: silence keeps the clock
    f.feed(1.0, hz=440)
    assert p.stats.filled_samples == 1600
    f.skip(5.0)  # a microphone outage: a new timeline
    f.session += 1
    f.feed(2.5, hz=440)
    p.finish("shutdown")
    assert p.stats.restarts == 1
    segs = segments(jobs)
    metas = [s.header.meta for s in segs]
    new = [m for m in metas if m.get("discontinuity")]
    assert len(new) == 1 and new[0]["media_start_s"] == 0.0
    before = [m for m in metas[: metas.index(new[0])]]
    assert sum(m["duration_s"] for m in before) == pytest.approx(2.1, abs=0.021)
    for s in segs:
        d = decode_audio(data(s))
        if d.duration_s > 0.5:
            assert abs(peak_hz(d.samples, d.rate) - 440) <= 5


def test_stop_without_audio_seals_after_grace() -> None:
    p, jobs, f = make(mode="event")
    p.start("button", f.at(0))
    f.feed(1.5, hz=440)
    p.stop("button", f.at(5.0))  # no block will reach 5 s (the microphone went away)
    assert not segments(jobs)
    p.tick(time.monotonic_ns())  # too early: still waiting for the blocks
    assert not segments(jobs)
    p.tick(time.monotonic_ns() + 2_000_000_000)  # no block for longer than the grace
    segs = segments(jobs)
    assert len(segs) == 1 and segs[0].header.meta["final"]
    assert segs[0].header.meta["duration_s"] == pytest.approx(1.5, abs=0.021)
    assert events(jobs)[-1].kind == "audio_record_stop"


def test_platform_mute_command_checks_its_arguments() -> None:
    rec = AudioRecorder(AudioSettings(enabled=True), _NullSpool(), threading.Event())
    handlers = command_handlers(rec)
    assert set(handlers) == {"audio.mute", "audio.unmute"}
    with pytest.raises(CommandError):
        handlers["audio.mute"]({"mute": "yes"})
    assert handlers["audio.unmute"]({}) == {"muted": False}


class _NullSpool:
    def put(self, header: Any, pieces: Any, *, batch_id: str | None = None) -> None:
        raise AssertionError("nothing should be stored")

    def put_event(self, kind: str, details: dict[str, Any]) -> None:
        raise AssertionError("nothing should be stored")


def test_tap_gets_every_block_muted_alike() -> None:
    tapped: list[AudioBlock] = []
    s = AudioSettings(enabled=True, rate=RATE, mode="event")
    p = AudioPipeline(s, [].append, tap=tapped.append)
    f = Feeder(p)
    f.feed(0.2, hz=440)  # idle (not recording): the video track still needs it
    p.mute("device", f.at(0.2))
    f.feed(0.3, hz=440)
    p.start("button", f.at(0.5))
    f.feed(0.2, hz=440)
    p.unmute("device", f.at(0.7))
    f.feed(0.8, hz=440)
    assert [b.index for b in tapped] == list(range(0, RATE * 3 // 2, BLOCK))
    x = np.frombuffer(b"".join(b.pcm for b in tapped), "<i2").astype(float) / 32767
    assert rms(x[: RATE // 5]) > 0.1
    assert rms(x[RATE // 5 : RATE * 7 // 10]) == 0.0
    assert rms(x[RATE * 7 // 10 :]) > 0.1
