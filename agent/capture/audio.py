"""The microphone: a PortAudio input stream (sounddevice) feeding a bounded queue of blocks.

The stream's callback runs on PortAudio's thread and does only this: copy the block's bytes,
stamp it, and ``put_nowait`` it into a bounded :class:`queue.Queue`. When the queue is full the
block is dropped and counted (``dropped_blocks``/``dropped_samples``); PortAudio's own input
overflows are counted too. The counters are logged by the microphone thread whenever they grow
and go into every segment's manifest: audio is never lost silently.

We use ``sounddevice.RawInputStream`` (the buffer-protocol flavour of ``InputStream``): the
callback receives a plain buffer, so neither this module nor the recorder needs numpy. Nothing
heavy is imported at module level: ``sounddevice`` (and PortAudio) load only when the
microphone thread first opens the device, so a GPS-only tracker never pays for them.

Missing hardware is a state, not a crash. If the PortAudio library is absent (``OSError`` at
import), the device is not there (``ValueError``: no device matching the name) or will not open
(``PortAudioError``), the microphone reports itself ``missing`` in :meth:`Microphone.health`,
logs the reason once, emits one ``microphone_missing`` event, and retries with a doubling pause
waited on the stop event. PortAudio lists devices only when it initialises, so each retry
re-initialises it (a device plugged in later, or a PulseAudio server that came back, is then
seen). A stream that stops delivering (device unplugged, server gone) is detected by a stall
watchdog and handled the same way; the recovery is logged with the length of the gap and
emitted as ``microphone_restored``.

Time stamps: every block carries the monotonic time (the clock video frames use) of its first
sample. PortAudio's ADC times are unreliable through ALSA's ``pulse`` plugin, so the stamp comes
from a minimum-delay filter over the callback arrival times: a sample cannot reach us before it
was captured, so the earliest ``arrival - samples_so_far / rate`` seen is the best anchor of the
sample clock; the anchor may creep later by ``DRIFT_PPM`` to follow a slow sound-card clock.

Thread use: PortAudio's thread runs the callback; the microphone thread (:meth:`run`) opens,
watches and reopens; one consumer thread reads :attr:`Microphone.blocks`. Counters have one
writer each (noted) and may be read from any thread.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from agent import wallclock
from agent.capture.settings import AudioSettings
from agent.errors import SourceError
from agent.model import Alarm, Severity, format_utc

log = logging.getLogger(__name__)

SAMPLE_BYTES = 2  # signed 16-bit little-endian, mono
DRIFT_PPM = 300.0  # how fast the sample-clock anchor may move later (sound card slower)
STALL_BLOCKS = 25  # no callback for this many block lengths (at least STALL_MIN_S): lost
STALL_MIN_S = 5.0  # PulseAudio sources may deliver in bursts of up to 2 s


@dataclass(frozen=True, slots=True)
class AudioBlock:
    """One callback's worth of samples (s16le mono)."""

    pcm: bytes
    index: int  # sample number of the first sample since the microphone first opened
    mono_ns: int  # monotonic time of the first sample (estimated, see the module docstring)
    utc: float  # wall-clock time of the first sample
    rate: int
    session: int  # increments each time the device is (re)opened: a gap lies between sessions

    @property
    def samples(self) -> int:
        return len(self.pcm) // SAMPLE_BYTES

    @property
    def duration_s(self) -> float:
        return self.samples / self.rate

    @property
    def end_mono_ns(self) -> int:
        return self.mono_ns + round(self.samples * 1e9 / self.rate)


class MicState(enum.StrEnum):
    OFF = "off"  # not started (or stopped)
    OK = "ok"
    MISSING = "missing"  # no PortAudio, no device, or the device stopped delivering


@dataclass
class MicStats:
    """Counters. Writer: PortAudio's callback thread for the first four, else the mic thread."""

    blocks: int = 0
    samples: int = 0
    dropped_blocks: int = 0
    dropped_samples: int = 0
    overflows: int = 0  # PortAudio input overflows (samples lost before the callback)
    opens: int = 0
    losses: int = 0
    attempts: int = 0  # failed opens


def load_sounddevice() -> ModuleType:
    """Import sounddevice; ``OSError`` when the PortAudio library is missing."""
    import importlib

    return importlib.import_module("sounddevice")


def device_arg(device: str) -> int | str | None:
    """The config's device: ``""`` the default input, digits an index, else a name (substring)."""
    device = device.strip()
    if not device:
        return None
    if device.isdigit():
        return int(device)
    return device


class Microphone:
    """Opens the input device, keeps it open, and reopens it after a loss. See module docstring.

    ``run`` is the body of the microphone thread; it returns when ``stop`` is set.
    """

    def __init__(
        self,
        settings: AudioSettings,
        stop: threading.Event,
        *,
        on_event: Callable[[str, dict[str, Any]], None] = lambda k, d: None,
        alarm: Callable[[Alarm], None] = lambda a: None,
        loader: Callable[[], ModuleType] = load_sounddevice,
    ) -> None:
        self.settings = settings
        self.rate = settings.rate
        self.block = max(1, settings.rate * settings.block_ms // 1000)
        self._stop = stop
        self._on_event = on_event
        self._alarm = alarm
        self._loader = loader
        self.blocks: queue.Queue[AudioBlock] = queue.Queue(maxsize=settings.queue_blocks)
        self.stats = MicStats()
        self._state = MicState.OFF
        self._reason = ""
        self._since = wallclock.now()
        self._lost_mono: float | None = None
        self._stream: Any = None
        self._sd: ModuleType | None = None
        self._finished = threading.Event()
        self._last_cb_ns = 0  # writer: callback
        self._next_index = 0  # writer: callback (and the mic thread between sessions)
        self._anchor_ns: float | None = None  # monotonic time of sample 0 (writer: callback)
        self._anchor_at_ns = 0
        self._session = 0
        self.device_name = ""

    # ------------------------------------------------------------------ state (any thread)

    @property
    def state(self) -> MicState:
        return self._state

    @property
    def present(self) -> bool:
        return self._state is MicState.OK

    def health(self) -> dict[str, Any]:
        """For the health report: state, why it is missing, since when, and the loss counters."""
        st = self.stats
        return {
            "state": self._state.value,
            "reason": self._reason,
            "since": format_utc(self._since),
            "device": self.device_name or self.settings.device or "default",
            "rate": self.rate,
            "dropped_blocks": st.dropped_blocks,
            "dropped_samples": st.dropped_samples,
            "overflows": st.overflows,
            "losses": st.losses,
        }

    # ------------------------------------------------------------------ microphone thread

    def run(self) -> None:
        s = self.settings
        pause = s.reopen_s
        pause_max = max(s.reopen_s, s.reopen_max_s)
        try:
            while not self._stop.is_set():
                try:
                    self._open()
                except SourceError as exc:
                    self.stats.attempts += 1
                    self._missing(str(exc))
                    self._stop.wait(pause)
                    pause = min(pause * 2, pause_max)
                    continue
                pause = s.reopen_s
                self._restored()
                why = self._watch()
                self._close()
                if why:
                    self.stats.losses += 1
                    self._missing(why)
        finally:
            self._close()
            if self._state is MicState.OK:
                self._set(MicState.OFF, "stopped")

    def _open(self) -> None:
        if self._sd is None:
            try:
                self._sd = self._loader()
            except OSError as exc:
                raise SourceError(f"PortAudio library not available: {exc}") from None
        sd = self._sd
        if self.stats.attempts or self.stats.losses:
            # PortAudio enumerates devices only when it initialises: look again.
            try:
                sd._terminate()
                sd._initialize()
            except Exception as exc:  # PortAudioError; keep the old device list
                log.debug("audio: PortAudio re-initialisation failed: %s", exc)
        device = device_arg(self.settings.device)
        try:
            stream = sd.RawInputStream(
                samplerate=self.rate,
                channels=1,
                dtype="int16",
                blocksize=self.block,
                device=device,
                callback=self._callback,
                finished_callback=self._finished.set,
            )
        except (ValueError, sd.PortAudioError) as exc:
            name = device if device is not None else "default"
            raise SourceError(f"microphone {name}: {exc}") from None
        self._finished.clear()
        self._session += 1
        if self._lost_mono is not None and self._next_index:
            # The sample timeline goes on through the gap: the next block starts where the
            # wall clock is now, not where the last block ended.
            self._next_index += round((time.monotonic() - self._lost_mono) * self.rate)
        self._anchor_ns = None
        self._last_cb_ns = time.monotonic_ns()
        try:
            stream.start()
        except sd.PortAudioError as exc:
            stream.close()
            raise SourceError(f"microphone: cannot start the stream: {exc}") from None
        self._stream = stream
        self.stats.opens += 1
        try:
            info = sd.query_devices(stream.device)
            self.device_name = str(info["name"])
        except Exception:  # best effort, for the health report only
            self.device_name = str(device) if device is not None else "default"

    def _watch(self) -> str:
        """Wait while the stream delivers; return why it was lost, or "" at the stop event."""
        stall_ns = max(STALL_MIN_S, STALL_BLOCKS * self.block / self.rate) * 1e9
        reported = (0, 0, 0)
        while not self._stop.wait(0.25):
            st = self.stats
            now = (st.dropped_blocks, st.dropped_samples, st.overflows)
            if now != reported:
                log.warning(
                    "audio: %d blocks (%d samples) dropped (consumer behind), %d input overflows"
                    " so far",
                    *now,
                )
                reported = now
            if self._finished.is_set():
                return "the input stream ended (device unplugged or server gone)"
            if time.monotonic_ns() - self._last_cb_ns > stall_ns:
                return "the input stream stopped delivering audio"
        return ""

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.abort()
        except Exception as exc:  # a vanished device may fail even here
            log.debug("audio: abort failed: %s", exc)
        try:
            stream.close()
        except Exception as exc:
            log.debug("audio: close failed: %s", exc)
        self._lost_mono = time.monotonic()

    def _set(self, state: MicState, reason: str) -> None:
        self._state, self._reason, self._since = state, reason, wallclock.now()

    def _missing(self, reason: str) -> None:
        if self._state is MicState.MISSING:
            if reason != self._reason:
                log.debug("audio: still missing: %s", reason)
            return
        if self._lost_mono is None:
            self._lost_mono = time.monotonic()
        self._set(MicState.MISSING, reason)
        log.warning("audio: microphone missing: %s (retrying in the background)", reason)
        self._on_event("microphone_missing", {"reason": reason, "device": self.settings.device})
        self._alarm(
            Alarm(
                "microphone_missing",
                f"microphone missing: {reason}",
                Severity.WARNING,
                wallclock.now(),
            )
        )

    def _restored(self) -> None:
        gap = None if self._lost_mono is None else time.monotonic() - self._lost_mono
        was_missing = self._state is MicState.MISSING
        self._set(MicState.OK, "")
        details: dict[str, Any] = {"device": self.device_name, "rate": self.rate}
        if was_missing:
            details["gap_s"] = None if gap is None else round(gap, 3)
            log.info("audio: microphone %s is back after %.1f s", self.device_name, gap or 0.0)
            self._on_event("microphone_restored", details)
        else:
            log.info("audio: recording from %s at %d Hz", self.device_name, self.rate)
        self._lost_mono = None

    # ------------------------------------------------------------------ PortAudio's thread

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic_ns()
        st = self.stats
        if status.input_overflow:
            st.overflows += 1
        index = self._next_index
        self._next_index = index + frames
        self._last_cb_ns = now
        # Minimum-delay filter: the estimate of when sample 0 was captured.
        est = now - (index + frames) * 1e9 / self.rate
        anchor = self._anchor_ns
        if anchor is None or est < anchor:
            anchor = est
        else:
            anchor = min(est, anchor + (now - self._anchor_at_ns) * DRIFT_PPM * 1e-6)
        self._anchor_ns, self._anchor_at_ns = anchor, now
        mono = round(anchor + index * 1e9 / self.rate)
        block = AudioBlock(
            bytes(indata),
            index,
            mono,
            wallclock.now() - (now - mono) / 1e9,
            self.rate,
            self._session,
        )
        try:
            self.blocks.put_nowait(block)
        except queue.Full:
            st.dropped_blocks += 1
            st.dropped_samples += frames
            return
        st.blocks += 1
        st.samples += frames
