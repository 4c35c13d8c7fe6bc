"""The talk's microphone and speaker through sounddevice (PortAudio), opened only when used.

The input stream is open only while the talk button is held; its callback copies the block and
``put_nowait``s it into a bounded queue (full: dropped and counted, never blocking PortAudio).
The output is a ``RawOutputStream`` written from the player thread (blocking writes of 100 ms).
Both raise :class:`SourceError` with a reason a technician can act on (no PortAudio library, no
such device, will not open); the caller reports it in health and refuses talk.

``sounddevice`` is imported on first use: importing this module loads nothing heavy.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import queue
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

from agent.errors import SourceError

SAMPLE_BYTES = 2
INPUT_QUEUE_BLOCKS = 500  # 10 s of 20 ms blocks (PulseAudio may hand over 2 s at once)

log = logging.getLogger(__name__)


class Input(Protocol):
    """An open microphone: blocks of s16le mono PCM."""

    def read(self, timeout: float) -> bytes | None: ...

    def close(self) -> None: ...


class Output(Protocol):
    """An open speaker: ``write`` blocks until the device took the samples."""

    def write(self, pcm: bytes) -> None: ...

    def close(self) -> None: ...


class AudioIO(Protocol):
    def probe_input(self) -> str: ...  # "" when present, else why not

    def probe_output(self) -> str: ...

    def open_input(self, rate: int, block: int) -> Input: ...

    def open_output(self, rate: int) -> Output: ...


def device_arg(device: str) -> int | str | None:
    device = device.strip()
    if not device:
        return None
    return int(device) if device.isdigit() else device


class _SdInput:
    def __init__(self, sd: ModuleType, device: int | str | None, rate: int, block: int) -> None:
        self.blocks: queue.Queue[bytes] = queue.Queue(INPUT_QUEUE_BLOCKS)
        self.dropped = 0
        self.ended = threading.Event()
        try:
            self._stream: Any = sd.RawInputStream(
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=block,
                device=device,
                callback=self._callback,
                finished_callback=self.ended.set,
            )
            self._stream.start()
        except (ValueError, sd.PortAudioError) as exc:
            name = device if device is not None else "default"
            raise SourceError(f"microphone {name}: {exc}") from None

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        try:
            self.blocks.put_nowait(bytes(indata))
        except queue.Full:
            self.dropped += 1

    def read(self, timeout: float) -> bytes | None:
        try:
            return self.blocks.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        for op in (self._stream.abort, self._stream.close):
            with contextlib.suppress(Exception):  # a vanished device may fail even here
                op()


class _SdOutput:
    def __init__(self, sd: ModuleType, device: int | str | None, rate: int) -> None:
        try:
            self._stream: Any = sd.RawOutputStream(
                samplerate=rate, channels=1, dtype="int16", device=device
            )
            self._stream.start()
        except (ValueError, sd.PortAudioError) as exc:
            name = device if device is not None else "default"
            raise SourceError(f"speaker {name}: {exc}") from None
        self._sd = sd

    def write(self, pcm: bytes) -> None:
        try:
            self._stream.write(pcm)
        except self._sd.PortAudioError as exc:
            raise SourceError(f"speaker: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.stop()  # plays out what is buffered
        with contextlib.suppress(Exception):
            self._stream.close()


def load_sounddevice() -> ModuleType:
    return importlib.import_module("sounddevice")


class SoundDeviceIO:
    """The real devices. ``loader`` is replaceable (tests: a missing PortAudio)."""

    def __init__(
        self,
        microphone: str,
        speaker: str,
        loader: Callable[[], ModuleType] = load_sounddevice,
    ) -> None:
        self.microphone = device_arg(microphone)
        self.speaker = device_arg(speaker)
        self._loader = loader
        self._sd: ModuleType | None = None

    def _module(self) -> ModuleType:
        if self._sd is None:
            try:
                self._sd = self._loader()
            except OSError as exc:
                raise SourceError(f"PortAudio library not available: {exc}") from None
        return self._sd

    def _probe(self, device: int | str | None, kind: str) -> str:
        try:
            sd = self._module()
            sd.query_devices(device, kind=kind)
        except SourceError as exc:
            return str(exc)
        except Exception as exc:  # ValueError (no such device), PortAudioError
            name = "microphone" if kind == "input" else "speaker"
            return f"{name} {device if device is not None else 'default'}: {exc}"
        return ""

    def _refresh(self) -> None:
        """PortAudio lists devices only when it initialises: look again (a device plugged in,
        or a sound server started, after the first look)."""
        sd = self._module()
        try:
            sd._terminate()
            sd._initialize()
        except Exception as exc:  # PortAudioError: keep the old list
            log.debug("talk: PortAudio re-initialisation failed: %s", exc)

    def probe_input(self) -> str:
        problem = self._probe(self.microphone, "input")
        if problem and self._sd is not None:
            self._refresh()
            problem = self._probe(self.microphone, "input")
        return problem

    def probe_output(self) -> str:
        problem = self._probe(self.speaker, "output")
        if problem and self._sd is not None:
            self._refresh()
            problem = self._probe(self.speaker, "output")
        return problem

    def open_input(self, rate: int, block: int) -> Input:
        try:
            return _SdInput(self._module(), self.microphone, rate, block)
        except SourceError:
            self._refresh()
            return _SdInput(self._module(), self.microphone, rate, block)

    def open_output(self, rate: int) -> Output:
        try:
            return _SdOutput(self._module(), self.speaker, rate)
        except SourceError:
            self._refresh()
            return _SdOutput(self._module(), self.speaker, rate)
