"""Audio benchmarks: CPU per second of audio, and bytes per minute at the default bitrate.

* ``audio/capture_cpu``: the whole recorder (PortAudio callback through ALSA's ``pulse`` device,
  bounded queue, Opus, fragmented MP4, segments sealed into a real spool) records a private
  PulseAudio's sine source for ``CAPTURE_S`` seconds at 48 kHz. Process CPU seconds (all
  threads) per second of audio captured, against real time (target <= 0.05: at most 5% of one
  core). The PulseAudio server's own CPU is not counted (on a device it is the sound card).
* ``audio/encode_cpu``: the pipeline alone (mute, Opus, fMP4, segmenting) fed 60 s of a
  synthetic speech-band signal as fast as it goes, CPU per second of audio against real time
  (target <= 0.02), at 48 kHz and 16 kHz.
* ``audio/bytes_per_min``: sealed-ready segment bytes (init + fragments, what the spool seals)
  per minute at the default 24 kb/s, against the raw PCM of the same minute (48 kHz s16 mono,
  5.76 MB); target <= 0.05. The signal is noise shaped like speech plus a tone, so Opus's VBR
  spends about its target (a pure tone or silence would flatter the figure).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import Reporter

GROUP = "audio"
CAPTURE_S = 8.0
ENCODE_S = 60.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _signal(rate: int, seconds: float) -> list[bytes]:
    """20 ms blocks of speech-band noise plus a tone (deterministic)."""
    import numpy as np

    rng = np.random.default_rng(7)
    n = int(rate * seconds)
    noise = rng.standard_normal(n)
    # A crude speech band: the difference of two moving averages (~300 Hz .. 3 kHz).
    k1, k2 = max(1, rate // 3000), max(2, rate // 300)
    lo = np.convolve(noise, np.ones(k1) / k1, mode="same")
    hi = np.convolve(noise, np.ones(k2) / k2, mode="same")
    t = np.arange(n) / rate
    x = 0.6 * (lo - hi) + 0.1 * np.sin(2 * np.pi * 220 * t)
    # Syllable-like loudness changes, 4 per second.
    x *= 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    pcm = (np.clip(x, -1, 1) * 20000).astype("<i2").tobytes()
    step = rate // 50 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def _pipeline_run(rate: int, blocks: list[bytes]) -> tuple[float, float, int]:
    """(CPU s, audio s, segment bytes) for the pipeline over ``blocks``."""
    from agent.capture.audio import AudioBlock
    from agent.capture.audio_recorder import AudioPipeline
    from agent.capture.jobs import Job, SegmentJob
    from agent.capture.settings import AudioSettings

    jobs: list[Job] = []
    p = AudioPipeline(AudioSettings(enabled=True, rate=rate, mode="continuous"), jobs.append)
    t0 = time.monotonic_ns()
    p.start("bench", t0)
    index = 0
    c0 = _cpu()
    for pcm in blocks:
        mono = t0 + index * 1_000_000_000 // rate
        p.feed(AudioBlock(pcm, index, mono, mono / 1e9, rate, 1))
        index += len(pcm) // 2
    p.finish("bench")
    cpu = _cpu() - c0
    size = sum(j.size for j in jobs if isinstance(j, SegmentJob))
    return cpu, index / rate, size


def encode_figures(report: Reporter) -> None:
    for rate in (48000, 16000):
        blocks = _signal(rate, ENCODE_S)
        cpu, audio_s, size = _pipeline_run(rate, blocks)
        ratio = cpu / audio_s
        report.figure(
            GROUP,
            f"encode_cpu_{rate // 1000}k",
            ratio * 1000,
            "ms CPU per s of audio",
            ratio=ratio,
            baseline="real time",
            target=0.02,
            higher_is_better=False,
        )
        if rate == 48000:
            per_min = size * 60 / audio_s
            raw = rate * 2 * 60
            report.figure(
                GROUP,
                "bytes_per_min",
                per_min / 1000,
                "kB/min at 24 kb/s",
                ratio=per_min / raw,
                baseline="raw PCM 48 kHz s16 mono (5760 kB/min)",
                target=0.05,
                higher_is_better=False,
            )


class _Pulse:
    """A private PulseAudio with a 440 Hz sine source (as the tests start it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "run" / "native"
        self.proc: subprocess.Popen[bytes] | None = None
        self._saved = os.environ.get("PULSE_SERVER")

    def start(self) -> str:
        exe = shutil.which("pulseaudio")
        if exe is None:
            return "pulseaudio is not installed"
        (self.root / "run").mkdir(mode=0o700)
        conf = self.root / "pulse.pa"
        conf.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.sock}\n"
            "load-module module-null-sink sink_name=null\n"
            "load-module module-sine-source source_name=sine frequency=440 rate=48000\n"
            "set-default-source sine\n"
        )
        env = {
            **os.environ,
            "HOME": str(self.root),
            "PULSE_RUNTIME_PATH": str(self.root / "run"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "PULSE_SERVER": f"unix:{self.sock}",
        }
        self.proc = subprocess.Popen(
            [exe, "--daemonize=no", "--system=false", "--exit-idle-time=-1", "-n", "-F", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        clock = threading.Event()
        for _ in range(200):
            if self.proc.poll() is not None:
                return f"pulseaudio exited with {self.proc.returncode}"
            ok = subprocess.run(["pactl", "info"], env=env, capture_output=True, check=False)
            if ok.returncode == 0:
                os.environ["PULSE_SERVER"] = env["PULSE_SERVER"]
                return ""
            clock.wait(0.05)
        return "pulseaudio did not answer within 10 s"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._saved is None:
            os.environ.pop("PULSE_SERVER", None)
        else:
            os.environ["PULSE_SERVER"] = self._saved


def capture_figure(report: Reporter) -> None:
    from agent.capture.audio_recorder import AudioRecorder
    from agent.capture.settings import AudioSettings
    from bench.common import Lab

    with tempfile.TemporaryDirectory(prefix="ea-bench-pulse-") as tmp:
        pulse = _Pulse(Path(tmp))
        why = pulse.start()
        if why:
            pulse.stop()
            report.info(GROUP, "capture_cpu", 0, "not measured", why)
            report.misses += 1
            return
        lab = Lab()
        spool = lab.spool()
        stop = threading.Event()
        try:
            s = AudioSettings(enabled=True, device="pulse", rate=48000, mode="continuous")
            rec = AudioRecorder(s, spool, stop)
            rec.start_threads()
            clock = threading.Event()
            waited = 0.0
            while rec.mic.stats.samples == 0 and waited < 10:
                clock.wait(0.05)
                waited += 0.05
            c0, n0 = _cpu(), rec.mic.stats.samples
            stop.wait(CAPTURE_S)
            cpu, n = _cpu() - c0, rec.mic.stats.samples - n0
            stop.set()
            rec.join(10)
            info: dict[str, Any] = rec.health()
        finally:
            stop.set()
            spool.close()
            lab.close()
            pulse.stop()
        audio_s = n / 48000
        if audio_s <= 0:
            report.info(GROUP, "capture_cpu", 0, "not measured", f"no audio: {info}")
            report.misses += 1
            return
        ratio = cpu / audio_s
        report.figure(
            GROUP,
            "capture_cpu",
            ratio * 1000,
            "ms CPU per s of audio captured, encoded and sealed (48 kHz)",
            ratio=ratio,
            baseline="real time",
            target=0.05,
            higher_is_better=False,
        )


def run(report: Reporter) -> None:
    encode_figures(report)
    capture_figure(report)
