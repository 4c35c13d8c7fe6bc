"""The talk's microphone and speaker: the device's one microphone, and a speaker opened only
while a message plays, both through the process's one PortAudio.

The microphone is not opened here: a press takes a tap on the device's
:class:`~agent.capture.audio.Microphone` (:meth:`~agent.capture.audio.Microphone.acquire`). On a
body camera with audio on, that is the recorder's microphone, open all the time and fanning its
blocks out to both; on a device with push-to-talk alone it opens the device for the press only.
A tap's queue is bounded (full: dropped and counted, never blocking PortAudio). The speaker is a
``RawOutputStream`` written from the player thread (blocking writes of 100 ms). Both raise
:class:`SourceError` with a reason a technician can act on (no PortAudio library, no such
device, will not open); the caller reports it in health and refuses talk.

PortAudio is re-initialised (to see a device plugged in later) only through
:class:`agent.capture.portaudio.PortAudio`, which never does it while a stream is open: looking
for a speaker never closes the recorder's microphone, nor the reverse.

``sounddevice`` is imported on first use: importing this module loads nothing heavy.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from agent.capture.audio import Microphone, MicState, Tap
from agent.capture.portaudio import PortAudio, device_arg
from agent.errors import SourceError

SAMPLE_BYTES = 2
INPUT_QUEUE_BLOCKS = 500  # 10 s of 20 ms blocks (PulseAudio may hand over 2 s at once)

log = logging.getLogger(__name__)


class Input(Protocol):
    """An open microphone: blocks of s16le mono PCM at ``rate``."""

    @property
    def rate(self) -> int: ...

    def read(self, timeout: float) -> bytes | None: ...

    def pending(self, until_mono_ns: int) -> bool: ...  # that moment is still to be delivered

    def close(self) -> None: ...


class Output(Protocol):
    """An open speaker: ``write`` blocks until the device took the samples."""

    def write(self, pcm: bytes) -> None: ...

    def close(self) -> None: ...


class AudioIO(Protocol):
    def start(self) -> None: ...  # before the first use (the microphone's thread)

    def probe_input(self) -> str: ...  # "" when present, else why not

    def probe_output(self) -> str: ...

    def open_input(self) -> Input: ...

    def open_output(self, rate: int) -> Output: ...


class _TapInput:
    """A press's tap on the microphone."""

    def __init__(self, tap: Tap) -> None:
        self._tap = tap
        self.rate = tap.rate
        self._newest_ns = 0  # the end of the newest block read (monotonic)

    def read(self, timeout: float) -> bytes | None:
        block = self._tap.read(timeout)
        if block is None:
            return None
        self._newest_ns = block.end_mono_ns
        return block.pcm

    def pending(self, until_mono_ns: int) -> bool:
        return self._tap.mic.present and self._newest_ns < until_mono_ns

    def close(self) -> None:
        self._tap.close()


class Speaker:
    """An open speaker (``device``: an index, a name or None for the default)."""

    def __init__(self, pa: PortAudio, device: int | str | None, rate: int) -> None:
        self._pa = pa
        self._stream: Any = pa.open_output(device, rate=rate)
        self._errors = pa.module().PortAudioError

    def write(self, pcm: bytes) -> None:
        try:
            self._stream.write(pcm)
        except self._errors as exc:
            raise SourceError(f"speaker: {exc}") from None

    def close(self) -> None:
        self._pa.close(self._stream, drain=True)  # plays out what is buffered


class SoundDeviceIO:
    """The real devices: ``microphone`` (the device's one), ``speaker`` (a device name, index
    or "" for the default) through ``portaudio`` (the process's one)."""

    def __init__(self, microphone: Microphone, speaker: str, portaudio: PortAudio) -> None:
        self.microphone = microphone
        self.speaker = device_arg(speaker)
        self.pa = portaudio

    def start(self) -> None:
        self.microphone.start()

    def probe_input(self) -> str:
        mic = self.microphone
        if mic.state is MicState.OK:
            return ""
        if mic.state is MicState.MISSING:
            return mic.reason
        return self._probe(mic.device, "input")

    def probe_output(self) -> str:
        return self._probe(self.speaker, "output")

    def _probe(self, device: int | str | None, kind: str) -> str:
        problem = self.pa.probe(device, kind)
        if problem and self.pa.refresh(f"talk's {kind} probe"):
            problem = self.pa.probe(device, kind)
        return problem

    def open_input(self) -> Input:
        return _TapInput(self.microphone.acquire("talk", INPUT_QUEUE_BLOCKS))

    def open_output(self, rate: int) -> Output:
        try:
            return Speaker(self.pa, self.speaker, rate)
        except SourceError:
            if not self.pa.refresh("speaker"):
                raise
            return Speaker(self.pa, self.speaker, rate)
