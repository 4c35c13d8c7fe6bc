"""The process's one PortAudio (sounddevice): loaded on first use, its streams counted, and
re-initialised only while none is open.

PortAudio lists devices only when it initialises, so a device plugged in (or a sound server
started) after the first look is seen only after ``Pa_Terminate`` + ``Pa_Initialize``
(sounddevice's ``_terminate``/``_initialize``). Terminating closes every stream the process has
open: when the audio recorder and push-to-talk each did it for themselves, one closed the
other's stream. Here one object does it for both: :meth:`PortAudio.refresh` re-initialises only
while no stream is open (otherwise it is skipped and counted, and the caller tries again at its
next attempt), and streams are opened and closed through the same lock, so none can open
half-way through a re-initialisation.

``sounddevice`` is imported on first use: importing this module loads nothing heavy.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from agent.errors import SourceError

log = logging.getLogger(__name__)


def load_sounddevice() -> ModuleType:
    """Import sounddevice; ``OSError`` when the PortAudio library is missing."""
    return importlib.import_module("sounddevice")


def device_arg(device: str) -> int | str | None:
    """The config's device: ``""`` the default, digits an index, else a name (substring)."""
    device = device.strip()
    if not device:
        return None
    return int(device) if device.isdigit() else device


def _name(device: int | str | None) -> str:
    return "default" if device is None else str(device)


class PortAudio:
    """Thread-safe. ``loader`` is replaceable (tests: a missing PortAudio library)."""

    def __init__(self, loader: Callable[[], ModuleType] = load_sounddevice) -> None:
        self._loader = loader
        self._sd: ModuleType | None = None
        self._lock = threading.Lock()
        self._open: set[int] = set()  # id() of the streams open
        self.reinits = 0
        self.skipped = 0  # re-initialisations not done because a stream was open

    def module(self) -> ModuleType:
        with self._lock:
            return self._load()

    def _load(self) -> ModuleType:
        if self._sd is None:
            try:
                self._sd = self._loader()
            except OSError as exc:
                raise SourceError(f"PortAudio library not available: {exc}") from None
        return self._sd

    @property
    def streams(self) -> int:
        """How many streams are open."""
        return len(self._open)

    def refresh(self, why: str) -> bool:
        """Re-initialise PortAudio (to list the devices again) if no stream is open; True if
        it was done."""
        with self._lock:
            sd = self._sd
            if sd is None:
                return False  # not loaded yet: its first initialisation will list the devices
            if self._open:
                self.skipped += 1
                log.debug("audio: PortAudio not re-initialised for the %s: %d streams open",
                          why, len(self._open))  # fmt: skip
                return False
            try:
                sd._terminate()
                sd._initialize()
            except Exception as exc:  # PortAudioError: keep the old device list
                log.debug("audio: PortAudio re-initialisation failed: %s", exc)
                return False
            self.reinits += 1
            return True

    def open_input(
        self,
        device: int | str | None,
        *,
        rate: int,
        block: int,
        callback: Callable[[Any, int, Any, Any], None],
        finished: Callable[[], None],
    ) -> Any:
        """A started ``RawInputStream`` (s16le mono), or SourceError with the reason."""
        return self._open_stream(
            "RawInputStream",
            "microphone",
            device,
            samplerate=rate,
            channels=1,
            dtype="int16",
            blocksize=block,
            callback=callback,
            finished_callback=finished,
        )

    def open_output(self, device: int | str | None, *, rate: int) -> Any:
        """A started ``RawOutputStream`` (s16le mono; blocking writes)."""
        return self._open_stream(
            "RawOutputStream", "speaker", device, samplerate=rate, channels=1, dtype="int16"
        )

    def _open_stream(self, kind: str, what: str, device: int | str | None, **kw: Any) -> Any:
        with self._lock:
            sd = self._load()
            try:
                stream = getattr(sd, kind)(device=device, **kw)
            except (ValueError, sd.PortAudioError) as exc:
                raise SourceError(f"{what} {_name(device)}: {exc}") from None
            try:
                stream.start()
            except sd.PortAudioError as exc:
                with contextlib.suppress(Exception):
                    stream.close()
                raise SourceError(f"{what}: cannot start the stream: {exc}") from None
            self._open.add(id(stream))
            return stream

    def close(self, stream: Any, *, drain: bool = False) -> None:
        """Stop the stream (``drain``: play out what is buffered) and close it; never raises
        (a vanished device may fail even here)."""
        for op in (stream.stop if drain else stream.abort, stream.close):
            try:
                op()
            except Exception as exc:
                log.debug("audio: closing a stream: %s", exc)
        with self._lock:  # counted open until closed: no re-initialisation meanwhile
            self._open.discard(id(stream))

    def probe(self, device: int | str | None, kind: str) -> str:
        """ "" when ``device`` is listed as an ``input``/``output`` device, else why not."""
        what = "microphone" if kind == "input" else "speaker"
        try:
            with self._lock:
                self._load().query_devices(device, kind=kind)
        except SourceError as exc:
            return str(exc)
        except Exception as exc:  # ValueError (no such device), PortAudioError
            return f"{what} {_name(device)}: {exc}"
        return ""

    def device_name(self, stream: Any, fallback: int | str | None) -> str:
        """The name of the device a stream opened (for health reports; best effort)."""
        try:
            with self._lock:
                return str(self._load().query_devices(stream.device)["name"])
        except Exception:
            return _name(fallback)
