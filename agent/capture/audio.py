"""The microphone: one owner of the input device, fanning its blocks out to whoever listens.

One PortAudio input stream (``sounddevice.RawInputStream``, opened through the process's one
:class:`agent.capture.portaudio.PortAudio`) feeds every user of the microphone: the audio
recorder and push-to-talk each hold a :class:`Tap`, a bounded queue of blocks. The stream's
callback runs on PortAudio's thread and does only this: copy the block's bytes, stamp it, and
``put_nowait`` it into each tap; a full tap drops the block and counts it (``dropped_blocks``/
``dropped_samples``, per tap, so one slow user costs the others nothing); PortAudio's own input
overflows are counted too. The microphone thread logs the counters whenever they grow and the
recorder puts its own into every segment's manifest: audio is never lost silently.

The device is open while someone taps it: all the time when the recorder is on, from the press
to the release on a device with push-to-talk alone (nothing listens otherwise).
:meth:`Microphone.acquire` (a press) returns a tap on an open device or raises SourceError with
the reason, at once when the device is known to be missing.

We use ``sounddevice.RawInputStream`` (the buffer-protocol flavour of ``InputStream``): the
callback receives a plain buffer, so neither this module nor the recorder needs numpy. Nothing
heavy is imported at module level: ``sounddevice`` (and PortAudio) load only when the
microphone thread first opens the device, so a GPS-only tracker never pays for them.

Missing hardware is a state, not a crash. If the PortAudio library is absent (``OSError`` at
import), the device is not there (``ValueError``: no device matching the name) or will not open
(``PortAudioError``), the microphone reports itself ``missing`` in :meth:`Microphone.health`,
logs the reason once, emits one ``microphone_missing`` event, and retries with a doubling pause
waited on the stop event (:class:`agent.contain.Reconnect`). PortAudio lists devices only when
it initialises, so a failed open asks PortAudio to re-initialise (a device plugged in later, or
a PulseAudio server that came back, is then seen); it does so only while no other stream (the
talk's speaker) is open, so it never closes anyone's stream. A stream that stops delivering
(device unplugged, server gone) is detected by a stall watchdog and handled the same way; the
recovery is logged with the length of the gap and emitted as ``microphone_restored``.

Time stamps: every block carries the monotonic time (the clock video frames use) of its first
sample. PortAudio's ADC times are unreliable through ALSA's ``pulse`` plugin, so the stamp comes
from a minimum-delay filter over the callback arrival times: a sample cannot reach us before it
was captured, so the earliest ``arrival - samples_so_far / rate`` seen is the best anchor of the
sample clock; the anchor may creep later by ``DRIFT_PPM`` to follow a slow sound-card clock.

Thread use: PortAudio's thread runs the callback; the microphone thread (:meth:`run`, started
by :meth:`Microphone.start`) opens, watches and reopens; each tap has one reader. Counters have
one writer each (noted) and may be read from any thread.
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
from agent.capture.portaudio import PortAudio, device_arg, load_sounddevice
from agent.capture.settings import AudioSettings
from agent.contain import Reconnect, Why
from agent.errors import SourceError
from agent.model import Alarm, Severity, format_utc

__all__ = ["AudioBlock", "MicState", "Microphone", "Tap", "device_arg", "load_sounddevice"]

log = logging.getLogger(__name__)

SAMPLE_BYTES = 2  # signed 16-bit little-endian, mono
DRIFT_PPM = 300.0  # how fast the sample-clock anchor may move later (sound card slower)
STALL_BLOCKS = 25  # no callback for this many block lengths (at least STALL_MIN_S): lost
STALL_MIN_S = 5.0  # PulseAudio sources may deliver in bursts of up to 2 s
IDLE_WAIT_S = 0.25  # nobody listens: how often the microphone thread looks again
ACQUIRE_S = 5.0  # a press waits this long at most for the device to open


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
    OFF = "off"  # not open (not started, stopped, or nobody listens)
    OK = "ok"
    MISSING = "missing"  # no PortAudio, no device, or the device stopped delivering


@dataclass
class MicStats:
    """Counters. Writer: PortAudio's callback thread for the first five, else the mic thread."""

    blocks: int = 0
    samples: int = 0
    dropped_blocks: int = 0  # all taps together (each tap counts its own)
    dropped_samples: int = 0
    overflows: int = 0  # PortAudio input overflows (samples lost before the callback)
    opens: int = 0
    losses: int = 0
    attempts: int = 0  # failed opens


class Tap:
    """One user's view of the microphone: a bounded queue of blocks (full: the block is dropped
    and counted here). :meth:`close` when done (the device closes when nobody listens)."""

    def __init__(self, mic: Microphone, name: str, maxsize: int) -> None:
        self.mic = mic
        self.name = name
        self.rate = mic.rate
        self.blocks: queue.Queue[AudioBlock] = queue.Queue(maxsize=maxsize)
        self.dropped_blocks = 0  # writer: PortAudio's callback thread
        self.dropped_samples = 0

    def read(self, timeout: float) -> AudioBlock | None:
        try:
            return self.blocks.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.mic.release(self)


class Microphone:
    """Opens the input device while someone taps it, keeps it open, reopens it after a loss,
    and hands every block to every tap. See the module docstring.

    ``run`` is the body of the microphone thread (:meth:`start`); it returns when ``stop`` is
    set. ``on_event`` receives ``microphone_missing``/``microphone_restored`` (the audio
    recorder writes them as event records).
    """

    def __init__(
        self,
        settings: AudioSettings,
        stop: threading.Event,
        *,
        on_event: Callable[[str, dict[str, Any]], None] = lambda k, d: None,
        alarm: Callable[[Alarm], None] = lambda a: None,
        loader: Callable[[], ModuleType] = load_sounddevice,
        portaudio: PortAudio | None = None,
    ) -> None:
        self.settings = settings
        self.rate = settings.rate
        self.block = max(1, settings.rate * settings.block_ms // 1000)
        self.device = device_arg(settings.device)
        self._stop = stop
        self.on_event = on_event
        self._alarm = alarm
        self.pa = portaudio or PortAudio(loader)
        self.stats = MicStats()
        self.retry = Reconnect(
            "audio: microphone",
            stop,
            log,
            min_s=settings.reopen_s,
            max_s=settings.reopen_max_s,
            on_lost=self._missing,
            on_retry=self._still_missing,
            on_restored=self._restored,
        )
        self.thread = threading.Thread(target=self.run, name="audio-mic", daemon=True)
        self.finished = threading.Event()  # the microphone thread has ended
        self.error: BaseException | None = None
        self._start_lock = threading.Lock()
        self._taps: tuple[Tap, ...] = ()  # replaced, never mutated: the callback reads it
        self._taps_lock = threading.Lock()
        self._wake = threading.Event()
        self._tries = 0  # open attempts made (writer: mic thread)
        self._now = False  # the next attempt without waiting out the pause
        self._refresh_first = False
        self._state = MicState.OFF
        self._reason = ""
        self._since = wallclock.now()
        self._lost_mono: float | None = None
        self._stream: Any = None
        self._finished = threading.Event()
        self._last_cb_ns = 0  # writer: callback
        self._next_index = 0  # writer: callback (and the mic thread between sessions)
        self._anchor_ns: float | None = None  # monotonic time of sample 0 (writer: callback)
        self._anchor_at_ns = 0
        self._session = 0
        self.device_name = ""

    # ------------------------------------------------------------------ users (any thread)

    def start(self) -> None:
        """Start the microphone thread (once, whoever asks first)."""
        with self._start_lock:
            if self.thread.ident is None:
                self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.ident is not None:
            self.thread.join(timeout)

    def tap(self, name: str, maxsize: int) -> Tap:
        """A new listener; the device opens (if it is not open) as soon as it can."""
        tap = Tap(self, name, maxsize)
        with self._taps_lock:
            first = not self._taps
            self._taps = (*self._taps, tap)
        if first:
            self._now = True  # nobody listened: try at once, whatever the last pause was
        self._wake.set()
        return tap

    def release(self, tap: Tap) -> None:
        with self._taps_lock:
            self._taps = tuple(t for t in self._taps if t is not tap)
        self._wake.set()

    def acquire(self, name: str, maxsize: int, timeout: float = ACQUIRE_S) -> Tap:
        """A tap on an open device (push-to-talk's press), or SourceError with the reason: at
        once when others listen and it is missing, else after this attempt to open it."""
        tries = self._tries
        tap = self.tap(name, maxsize)
        if self._state is MicState.MISSING and len(self._taps) > 1:
            tap.close()
            raise SourceError(self._reason)
        deadline = time.monotonic() + timeout
        while self._state is not MicState.OK:
            failed = self._tries > tries and self._state is MicState.MISSING
            if failed or time.monotonic() > deadline or self._stop.wait(0.02):
                tap.close()
                raise SourceError(self._reason or "the microphone did not open in time")
        return tap

    @property
    def state(self) -> MicState:
        return self._state

    @property
    def present(self) -> bool:
        return self._state is MicState.OK

    @property
    def reason(self) -> str:
        return self._reason

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
        try:
            while not self._stop.is_set():
                if not self._taps:
                    self._wake.clear()
                    if not self._taps:
                        self._wake.wait(IDLE_WAIT_S)
                    continue
                if not (self._now or self.retry.due(IDLE_WAIT_S)):
                    continue  # pausing after a failure (and looking whether anyone listens)
                self._now = False
                try:
                    self._open()
                except SourceError as exc:
                    self.stats.attempts += 1
                    self._tries += 1
                    self.retry.failed(exc)
                    continue
                self._tries += 1
                if not self.retry.restored():
                    self._set(MicState.OK, "")
                    log.info("audio: recording from %s at %d Hz", self.device_name, self.rate)
                why = self._watch()
                self._close()
                if why:
                    self.stats.losses += 1
                    self._refresh_first = True
                    self._now = True  # a quick replug: reopen at once, then back off
                    self.retry.failed(why)
                elif self._state is MicState.OK and not self._stop.is_set():
                    self._set(MicState.OFF, "nobody listens")
        except Exception as exc:
            log.exception("audio: microphone thread failed")
            self.error = exc
        finally:
            self._close()
            if self._state is MicState.OK:
                self._set(MicState.OFF, "stopped")
            self.finished.set()

    def _open(self) -> None:
        if self._refresh_first:
            self.pa.refresh("microphone")  # the device may be back under another number
        try:
            stream = self._open_stream()
        except SourceError:
            if not self.pa.refresh("microphone"):  # PortAudio lists devices when it starts
                raise
            stream = self._open_stream()
        self._refresh_first = False
        self._stream = stream
        self.stats.opens += 1
        self.device_name = self.pa.device_name(stream, self.device)

    def _open_stream(self) -> Any:
        self._finished.clear()
        self._session += 1
        if self._lost_mono is not None and self._next_index:
            # The sample timeline goes on through the gap: the next block starts where the
            # wall clock is now, not where the last block ended.
            self._next_index += round((time.monotonic() - self._lost_mono) * self.rate)
            self._lost_mono = time.monotonic()
        self._anchor_ns = None
        self._last_cb_ns = time.monotonic_ns()
        return self.pa.open_input(
            self.device,
            rate=self.rate,
            block=self.block,
            callback=self._callback,
            finished=self._finished.set,
        )

    def _watch(self) -> str:
        """Wait while the stream delivers; return why it was lost, or "" at the stop event or
        when nobody listens any more."""
        stall_ns = max(STALL_MIN_S, STALL_BLOCKS * self.block / self.rate) * 1e9
        reported = (0, 0, 0)
        while not self._stop.wait(0.25):
            if not self._taps:
                return ""
            st = self.stats
            now = (st.dropped_blocks, st.dropped_samples, st.overflows)
            if now != reported:
                behind = [f"{t.name} {t.dropped_blocks}" for t in self._taps if t.dropped_blocks]
                log.warning(
                    "audio: %d blocks (%d samples) dropped (consumer behind: %s), %d input"
                    " overflows so far",
                    now[0],
                    now[1],
                    ", ".join(behind) or "-",
                    now[2],
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
        self.pa.close(stream)
        self._lost_mono = time.monotonic()

    def _set(self, state: MicState, reason: str) -> None:
        self._state, self._reason, self._since = state, reason, wallclock.now()

    def _missing(self, why: Why) -> None:
        """The first failure of an outage: reported once (log, event, alarm)."""
        reason = str(why)
        if self._lost_mono is None:
            self._lost_mono = time.monotonic()
        self._set(MicState.MISSING, reason)
        log.warning("audio: microphone missing: %s (retrying in the background)", reason)
        self.on_event("microphone_missing", {"reason": reason, "device": self.settings.device})
        self._alarm(
            Alarm(
                "microphone_missing",
                f"microphone missing: {reason}",
                Severity.WARNING,
                wallclock.now(),
            )
        )

    def _still_missing(self, why: Why) -> None:
        if str(why) != self._reason:
            log.debug("audio: still missing: %s", why)
            self._reason = str(why)

    def _restored(self, gap_s: float, attempts: int) -> None:
        self._set(MicState.OK, "")
        log.info("audio: microphone %s is back after %.1f s", self.device_name, gap_s)
        self.on_event(
            "microphone_restored",
            {"device": self.device_name, "rate": self.rate, "gap_s": round(gap_s, 3)},
        )

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
        st.blocks += 1
        st.samples += frames
        for tap in self._taps:
            try:
                tap.blocks.put_nowait(block)
            except queue.Full:
                tap.dropped_blocks += 1
                tap.dropped_samples += frames
                st.dropped_blocks += 1
                st.dropped_samples += frames
