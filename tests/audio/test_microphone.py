"""The real audio path: PulseAudio's 440 Hz sine source -> ALSA pulse -> PortAudio -> Opus ->
sealed ``audio`` segments, decrypted and decoded; mute; the missing-microphone paths."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from agent.capture.audio import MicState, load_sounddevice
from agent.capture.audio_recorder import AudioRecorder, command_handlers
from agent.capture.settings import AudioSettings
from agent.labs.pulse import SINE_HZ, PulseServer
from agent.labs.waiting import wait_for
from agent.storage.spool import Spool
from tests.audio.conftest import Sealed, decode_audio, decrypt_all, peak_hz, rms
from tests.fixtures.keys import KeySet

PAD_S = 312 / 48000  # Opus encoder delay: the stream's first segment is this much shorter


def settings(**kw: object) -> AudioSettings:
    base: dict[str, object] = {
        "enabled": True,
        "device": "pulse",
        "rate": 16000,
        "mode": "continuous",
        "segment_s": 2,
        "reopen_s": 0.05,
        "reopen_max_s": 0.2,
    }
    base.update(kw)
    return AudioSettings(**base)  # type: ignore[arg-type]


class Running:
    def __init__(self, rec: AudioRecorder, stop: threading.Event) -> None:
        self.rec, self.stop = rec, stop

    def segments_at_least(self, n: int, timeout: float = 20.0) -> None:
        wait_for(lambda: self.rec.stats.segments >= n, timeout, f"{n} audio segments stored")

    def finish(self) -> None:
        self.stop.set()
        assert self.rec.join(15), "audio threads did not end after the stop event"


@pytest.fixture
def run_recorder(spool: Spool) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(s: AudioSettings, loader: Callable[[], ModuleType] = load_sounddevice) -> Running:
        stop = threading.Event()
        rec = AudioRecorder(s, spool, stop, loader=loader, meta={"device": "dev-1"})
        rec.start_threads()
        r = Running(rec, stop)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop.set()
        r.rec.join(15)


def events(spool: Spool, keyset: KeySet) -> list[dict[str, object]]:
    return [s.record for s in decrypt_all(spool, keyset, "event")]


def check_sine(seg: Sealed, segment_s: float) -> None:
    d = decode_audio(seg.data)
    assert d.codec == "opus"
    assert d.rate == 48000  # Opus always decodes at 48 kHz
    meta = seg.meta
    if d.duration_s >= 0.5 or not meta["final"]:  # a last short tail resolves too few hertz
        hz = peak_hz(d.samples, d.rate)
        assert abs(hz - SINE_HZ) <= 5, f"segment {seg.seq}: spectrum peaks at {hz:.1f} Hz"
    if meta["final"]:
        # A decoder may return the last Opus packet as a whole 20 ms frame.
        assert 0 <= d.duration_s - meta["duration_s"] <= 0.021
    else:
        assert d.duration_s == pytest.approx(meta["duration_s"], abs=1e-4)
        want = segment_s - (PAD_S if meta["media_start_s"] == 0 else 0.0)
        assert meta["duration_s"] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_records_sealed_440hz_segments(
    pulse: PulseServer,
    spool: Spool,
    keyset: KeySet,
    run_recorder: Callable[..., Running],
    rate: int,
    tmp_path: Path,
) -> None:
    r = run_recorder(settings(rate=rate))
    r.segments_at_least(2)
    assert r.rec.health()["state"] == "ok"
    r.finish()
    segs = decrypt_all(spool, keyset, "audio")
    assert len(segs) >= 2
    for seg in segs:
        m = seg.manifest
        assert m["content_type"] == "audio/mp4"
        assert seg.meta["codec"] == "opus" and seg.meta["rate"] == rate
        assert seg.meta["dropped_blocks"] == 0
        check_sine(seg, 2.0)
    # Parts are numbered in order, the last one is final, the timeline is continuous.
    assert [s.meta["part"] for s in segs] == list(range(len(segs)))
    assert segs[-1].meta["final"] and not any(s.meta["final"] for s in segs[:-1])
    for a, b in itertools.pairwise(segs):
        assert b.meta["media_start_s"] == pytest.approx(
            a.meta["media_start_s"] + a.meta["duration_s"], abs=1e-5
        )
    # A middle segment is a file ffprobe reads on its own.
    path = tmp_path / "part1.m4a"
    path.write_bytes(segs[1].data)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_streams", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    assert stream["codec_name"] == "opus" and stream["channels"] == 1
    kinds = [e["type"] for e in events(spool, keyset)]
    assert kinds[0] == "audio_record_start" and kinds[-1] == "audio_record_stop"


def test_mute_gives_silence_and_event_records(
    pulse: PulseServer,
    spool: Spool,
    keyset: KeySet,
    run_recorder: Callable[..., Running],
) -> None:
    r = run_recorder(settings(segment_s=1))
    r.segments_at_least(1)
    platform = command_handlers(r.rec)
    assert platform["audio.mute"]({"note": "privacy"}) == {"muted": True}
    wait_for(lambda: r.rec.muted, 10, "muted")
    n = r.rec.stats.segments
    r.segments_at_least(n + 3)
    r.rec.unmute("device")
    wait_for(lambda: not r.rec.muted, 10, "unmuted")
    n = r.rec.stats.segments
    r.segments_at_least(n + 3)
    r.finish()

    segs = decrypt_all(spool, keyset, "audio")
    whole = [s for s in segs if s.meta["muted"] == [[0.0, round(s.meta["duration_s"], 3)]]]
    clear = [s for s in segs if not s.meta["muted"]]
    part = [s for s in segs if s.meta["muted"] and s not in whole]
    assert whole, [s.meta["muted"] for s in segs]
    assert clear and clear[-1].seq > whole[-1].seq, "audio did not come back after unmute"
    for s in whole:
        assert rms(decode_audio(s.data).samples) < 1e-3, f"muted segment {s.seq} is not silent"
    for s in clear:
        d = decode_audio(s.data)
        assert rms(d.samples) > 0.05
        if d.duration_s >= 0.5:
            assert abs(peak_hz(d.samples, d.rate) - SINE_HZ) <= 5
    for s in part:  # silence exactly where the manifest says, sound elsewhere
        d = decode_audio(s.data)
        for a, b in s.meta["muted"]:
            lo, hi = int((a + 0.02) * d.rate), int((b - 0.02) * d.rate)
            if hi > lo:
                assert rms(d.samples[lo:hi]) < 1e-3
    evs = events(spool, keyset)
    mutes = [e for e in evs if e["type"] == "audio_mute"]
    unmutes = [e for e in evs if e["type"] == "audio_unmute"]
    assert [(e["source"], e["note"], e["already"]) for e in mutes] == [
        ("platform", "privacy", False)
    ]
    assert [(e["source"], e["already"]) for e in unmutes] == [("device", False)]
    assert all(e["recording"] for e in mutes + unmutes)


def _missing_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "agent.capture.audio"
        and r.levelno >= logging.WARNING
        and "microphone missing" in r.getMessage()
    ]


def test_unknown_device_is_reported_missing_once(
    pulse: PulseServer,
    spool: Spool,
    keyset: KeySet,
    run_recorder: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.capture")
    r = run_recorder(settings(device="no-such-microphone"))
    wait_for(lambda: r.rec.mic.stats.attempts >= 4, 10, "four attempts to open the microphone")
    health = r.rec.health()
    assert health["state"] == "missing"
    assert "no-such-microphone" in health["reason"]
    assert r.rec.error is None and all(t.is_alive() for t in r.rec._threads)
    r.finish()
    assert len(_missing_logs(caplog)) == 1
    kinds = [e["type"] for e in events(spool, keyset)]
    assert kinds.count("microphone_missing") == 1
    assert spool.items("audio") == []


def test_missing_portaudio_library_then_back(
    pulse: PulseServer,
    spool: Spool,
    keyset: KeySet,
    run_recorder: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.capture")
    gate = threading.Event()

    def loader() -> ModuleType:
        if not gate.is_set():
            raise OSError("cannot load library 'libportaudio.so.2'")
        return load_sounddevice()

    r = run_recorder(settings(segment_s=1), loader=loader)
    wait_for(lambda: r.rec.mic.stats.attempts >= 3, 10, "three attempts to open the microphone")
    h = r.rec.health()
    assert h["state"] == "missing" and "PortAudio library" in h["reason"], h
    gate.set()
    wait_for(lambda: r.rec.mic.state is MicState.OK, 10, "the microphone back")
    r.segments_at_least(1)
    r.finish()
    assert len(_missing_logs(caplog)) == 1
    evs = events(spool, keyset)
    assert [e["type"] for e in evs].count("microphone_missing") == 1
    restored = [e for e in evs if e["type"] == "microphone_restored"]
    assert len(restored) == 1
    gap = restored[0]["gap_s"]
    assert isinstance(gap, float) and gap > 0
    check_sine(decrypt_all(spool, keyset, "audio")[0], 1.0)


def test_no_server_then_server_appears_then_vanishes(
    pulse: PulseServer,
    spare_pulse: PulseServer,
    spool: Spool,
    keyset: KeySet,
    run_recorder: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.capture")
    r = run_recorder(settings(segment_s=1))
    wait_for(lambda: r.rec.mic.stats.attempts >= 3, 10, "three attempts to open the microphone")
    assert r.rec.health()["state"] == "missing"
    assert len(_missing_logs(caplog)) == 1
    spare_pulse.start()
    wait_for(lambda: r.rec.mic.state is MicState.OK, 15, "the microphone back")
    r.segments_at_least(1)
    # The server goes away mid-recording: reported missing again, the agent keeps running.
    spare_pulse.stop()
    wait_for(lambda: r.rec.mic.state is MicState.MISSING, 15, "the microphone missing")
    assert r.rec.error is None
    r.finish()
    assert len(_missing_logs(caplog)) == 2  # once per outage
    kinds = [e["type"] for e in events(spool, keyset)]
    assert kinds.count("microphone_missing") == 2
    assert kinds.count("microphone_restored") == 1
    segs = decrypt_all(spool, keyset, "audio")
    assert segs and segs[-1].meta["final"]
    check_sine(segs[0], 1.0)


def test_import_loads_neither_numpy_nor_sounddevice() -> None:
    code = (
        "import sys\n"
        "import agent.capture.audio, agent.capture.audio_recorder, agent.capture.audio_encoder\n"
        "heavy = [m for m in ('numpy', 'sounddevice', 'av', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
