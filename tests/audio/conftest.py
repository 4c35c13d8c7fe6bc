"""Fixtures for the audio tests: a real PulseAudio with a 440 Hz sine source, and decryption.

PulseAudio runs as a child of the test (``--daemonize=no``, in its own process group, killed at
teardown) with a private runtime directory and a tiny configuration: the native protocol on a
socket under the test's temp directory, a null sink, and ``module-sine-source`` at 440 Hz as the
default source. sounddevice reaches it through ALSA's ``pulse`` device (Debian
``libasound2-plugins``), which connects to ``PULSE_SERVER``.

If PulseAudio cannot start, the tests that need it FAIL with the reason (``make setup`` installs
``pulseaudio``, ``libportaudio2`` and ``libasound2-plugins``; a silent skip would hide a broken
audio path).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.labs.pulse import PulseServer
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet
from tests.fixtures.pulse import serving_pulse
from tests.storage.helpers import Sealed, decrypt_stream


@pytest.fixture(scope="session")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    """A running PulseAudio with a 440 Hz default source; PULSE_SERVER points at it."""
    with serving_pulse(tmp_path_factory.mktemp("pulse")) as server:
        yield server


@pytest.fixture
def spare_pulse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseServer]:
    """A PulseAudio that is NOT started yet; PULSE_SERVER points at its (absent) socket."""
    server = PulseServer(tmp_path / "pulse2")
    server.runtime.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("PULSE_SERVER", server.server)
    try:
        yield server
    finally:
        server.stop()


def decrypt_all(spool: Spool, keyset: KeySet, stream: str) -> list[Sealed]:
    return decrypt_stream(spool, keyset.platform_private, stream)


@dataclass(frozen=True)
class Decoded:
    samples: Any  # numpy float32 array, mono
    rate: int
    codec: str
    first_pts_s: float

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate


def decode_audio(data: bytes) -> Decoded:
    """Decode an audio segment with PyAV into mono float samples."""
    import av
    import numpy as np

    chunks = []
    first: float | None = None
    container: Any = av.open(io.BytesIO(data))
    with container as c:
        stream = c.streams.audio[0]
        codec = stream.codec_context.name
        rate = 0
        for frame in c.decode(stream):
            if first is None and frame.pts is not None and frame.time_base is not None:
                first = float(frame.pts * frame.time_base)
            rate = frame.sample_rate
            chunks.append(frame.to_ndarray().astype(np.float32).reshape(-1))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return Decoded(samples, rate, codec, first or 0.0)


def peak_hz(samples: Any, rate: int) -> float:
    """The frequency of the strongest spectral line (Hann window)."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate / len(x))


def rms(samples: Any) -> float:
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
