"""Vehicle inputs: ignition, work equipment (brush, pump, lift) and a worker's SOS button.

Three sources behind one interface (:class:`InputSource`): GPIO lines through libgpiod
(:class:`GpioInputSource`), a serial I/O module speaking a small line protocol
(:class:`SerialInputSource`), and a simulated source (:class:`SimInputSource`).

::

    source --read(stop, timeout)--> raw readings --Debouncer--> InputEvent --queue.Queue--> owner
                    (InputThread: one thread, bounded queue, oldest dropped, one stop Event)

**Debounce.** A level (ignition, brush, pump, lift, and the SOS line on GPIO) changes only
after the new raw value held for ``debounce_s`` without interruption; the change is dated at
the raw edge that started it. Relay chatter and a contact bouncing for a few milliseconds
therefore make no change at all. An SOS *press* (the serial ``SOS`` line, or the SOS level
becoming active) is reported at once, then ignored for ``sos_refractory_s``: one press, one
alarm, however long the button is held or however often the module repeats it.

**Serial line protocol** (ASCII, one message per line, ``\\n`` or ``\\r\\n``)::

    IN ign=1 brush=0 pump=1 lift=0     levels; any subset, in any order (``ignition`` = ``ign``)
    SOS                                 the SOS button was pressed
    # anything                          a comment, ignored

Values are ``0``/``1``. The module sends ``IN`` on every change and at least once every few
seconds (a level that is not repeated keeps its last value). Unknown names are ignored (counted
in ``stats["unknown"]``); a malformed line changes nothing (``stats["bad"]``).

**GPIO** uses the PyPI ``gpiod`` (libgpiod v2) binding, imported only when the GPIO source is
opened: a machine without it runs every other part, and asking for ``source = "gpio"`` there
fails with a message that says what to install. See docs/fleet.md for why v2.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from agent.errors import SourceError
from agent.fleet.rules import Inputs

log = logging.getLogger(__name__)

LEVELS = ("ignition", "brush", "pump", "lift")
ALIASES = {"ign": "ignition", "ignition": "ignition", "brush": "brush", "pump": "pump"}
ALIASES |= {"lift": "lift", "sos": "sos"}
MAX_LINE = 256


@dataclass(frozen=True, slots=True)
class Reading:
    """A raw sample from a source: a level (``press`` False) or an SOS press."""

    name: str
    value: bool
    press: bool = False


@dataclass(frozen=True, slots=True)
class InputEvent:
    """A debounced change (``kind`` "change") or an SOS press (``kind`` "sos")."""

    kind: str
    name: str
    value: bool
    time: float  # wall-clock UTC seconds of the raw edge


class InputSource(Protocol):
    @property
    def name(self) -> str: ...

    def read(self, stop: threading.Event, timeout: float) -> list[Reading]:
        """Raw readings that arrived within ``timeout`` s (waits on ``stop``, never sleeps).
        Never raises for a vanished device: it reopens, logging once per change."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- debounce (pure)


class Debouncer:
    """Levels change after holding ``debounce_s``; presses pass at once, then a refractory time.

    ``update(reading, t)`` with a monotonic ``t``; ``poll(t)`` returns the changes that
    became stable, each with the monotonic time of its raw edge.
    """

    def __init__(self, debounce_s: float, sos_refractory_s: float = 2.0) -> None:
        self.debounce_s = debounce_s
        self.sos_refractory_s = sos_refractory_s
        self.stable: dict[str, bool] = {}
        self._raw: dict[str, tuple[bool, float]] = {}
        self._last_press = -1e18
        self._presses: list[tuple[str, bool, float]] = []

    def update(self, r: Reading, t: float) -> None:
        if r.press:
            self._press(r.name, t)
            return
        cur = self._raw.get(r.name)
        if cur is None or cur[0] != r.value:
            self._raw[r.name] = (r.value, t)

    def _press(self, name: str, t: float) -> None:
        if t - self._last_press >= self.sos_refractory_s:
            self._presses.append((name, True, t))
        self._last_press = t

    def poll(self, t: float) -> list[tuple[str, bool, float]]:
        out, self._presses = self._presses, []
        for name, (value, since) in self._raw.items():
            if self.stable.get(name) == value or t - since < self.debounce_s:
                continue
            self.stable[name] = value
            if name != "sos":
                out.append((name, value, since))
            elif value:  # the SOS line became active: one press
                if since - self._last_press >= self.sos_refractory_s:
                    out.append(("sos", True, since))
                self._last_press = since
        out.sort(key=lambda c: c[2])
        return out

    def inputs(self) -> Inputs:
        s = self.stable
        return Inputs(
            ignition=s.get("ignition"),
            brush=s.get("brush", False),
            pump=s.get("pump", False),
            lift=s.get("lift", False),
        )


# --------------------------------------------------------------------------- serial protocol


def parse_line(line: str) -> list[Reading] | None:
    """One protocol line -> readings ([] for blank/comment), or None when malformed."""
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    if line.upper() == "SOS":
        return [Reading("sos", True, press=True)]
    parts = line.split()
    if parts[0].upper() != "IN":
        return None
    out: list[Reading] = []
    for p in parts[1:]:
        key, eq, val = p.partition("=")
        if not eq or val not in ("0", "1"):
            return None
        name = ALIASES.get(key.lower(), "?" + key)
        out.append(Reading(name, val == "1"))
    return out


class SerialInputSource:
    """A serial I/O module (pyserial ``serial_for_url``: a device, a pty, or ``loop://``)."""

    def __init__(self, port: str, baud: int = 9600, *, reconnect_max_s: float = 10.0) -> None:
        self.port = port
        self.baud = baud
        self.reconnect_max_s = reconnect_max_s
        self.stats = {"lines": 0, "bad": 0, "unknown": 0, "reopens": 0}
        self._ser: Any = None
        self._buf = bytearray()
        self._retry_at = 0.0
        self._backoff = 0.05
        self._down = False

    @property
    def name(self) -> str:
        return f"serial-io:{self.port}"

    def _open(self, stop: threading.Event, timeout: float) -> bool:
        import serial

        now = time.monotonic()
        if now < self._retry_at:
            stop.wait(min(timeout, self._retry_at - now))
            return False
        try:
            self._ser = serial.serial_for_url(self.port, self.baud, timeout=min(timeout, 0.2))
        except (serial.SerialException, OSError, ValueError) as exc:
            self._fail(exc)
            return False
        if self._down:
            log.info("%s: receiving again", self.name)
            self.stats["reopens"] += 1
        self._down = False
        self._backoff = 0.05
        return True

    def _fail(self, exc: BaseException) -> None:
        if not self._down:
            log.warning("%s: lost (%s); retrying with backoff", self.name, exc)
        self._down = True
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.reconnect_max_s)
        self.close()

    def read(self, stop: threading.Event, timeout: float) -> list[Reading]:
        import serial

        if self._ser is None and not self._open(stop, timeout):
            return []
        try:
            data = self._ser.read(max(1, self._ser.in_waiting))
        except (serial.SerialException, OSError) as exc:
            self._fail(exc)
            return []
        if not data:
            return []
        self._buf += data
        out: list[Reading] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self.stats["bad"] += 1
                    self._buf.clear()
                break
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self.stats["lines"] += 1
            parsed = parse_line(raw.decode("ascii", "replace")) if len(raw) <= MAX_LINE else None
            if parsed is None:
                self.stats["bad"] += 1
                continue
            for r in parsed:
                if r.name.startswith("?"):
                    self.stats["unknown"] += 1
                else:
                    out.append(r)
        return out

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(OSError):  # closing a vanished port
                ser.close()


# --------------------------------------------------------------------------- GPIO (libgpiod v2)


def load_gpiod() -> Any:
    """The PyPI ``gpiod`` (libgpiod v2) module, or SourceError saying what to install."""
    try:
        gpiod = importlib.import_module("gpiod")
    except ImportError:
        raise SourceError(
            "fleet.inputs: source 'gpio' needs the libgpiod v2 Python binding: "
            "pip install 'gpiod>=2.1' (in the agent's virtualenv)"
        ) from None
    if not hasattr(gpiod, "request_lines"):
        raise SourceError(
            "fleet.inputs: the installed gpiod module is the v1 binding (Debian "
            "python3-libgpiod); install the v2 binding: pip install 'gpiod>=2.1'"
        )
    return gpiod


class GpioInputSource:
    """Input lines of one GPIO chip, edge-driven, with the kernel's debounce where it has one.

    ``lines`` maps an input name (ignition, brush, pump, lift, sos) to a line offset.
    ``active_low``: the input reads active when the line is pulled to ground (the usual
    opto-isolated input with a pull-up). The SOS line is a level here; the debouncer turns its
    activation into one press.
    """

    def __init__(
        self,
        chip: str,
        lines: Mapping[str, int],
        *,
        active_low: bool = True,
        bias: str = "pull-up",
        debounce_s: float = 0.05,
        reconnect_max_s: float = 10.0,
        gpiod: Any = None,
    ) -> None:
        self.chip = chip
        self.lines = dict(lines)
        self.active_low = active_low
        self.bias = bias
        self.debounce_s = debounce_s
        self.reconnect_max_s = reconnect_max_s
        self._gpiod = gpiod
        self._req: Any = None
        self._fresh = False
        self._retry_at = 0.0
        self._backoff = 0.1
        self._down = False
        self._by_offset = {off: name for name, off in self.lines.items()}

    @property
    def name(self) -> str:
        return f"gpio:{self.chip}"

    def _open(self, stop: threading.Event, timeout: float) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            stop.wait(min(timeout, self._retry_at - now))
            return False
        gpiod = self._gpiod or load_gpiod()
        self._gpiod = gpiod
        line = importlib.import_module(f"{gpiod.__name__}.line")
        bias = {
            "pull-up": line.Bias.PULL_UP,
            "pull-down": line.Bias.PULL_DOWN,
            "disabled": line.Bias.DISABLED,
            "as-is": line.Bias.AS_IS,
        }[self.bias]
        settings = gpiod.LineSettings(
            direction=line.Direction.INPUT,
            edge_detection=line.Edge.BOTH,
            bias=bias,
            active_low=self.active_low,
            debounce_period=timedelta(seconds=self.debounce_s),
        )
        try:
            self._req = gpiod.request_lines(
                self.chip,
                consumer="edge-agent",
                config={tuple(self.lines.values()): settings},
            )
        except OSError as exc:
            if not self._down:
                log.warning("%s: cannot request lines (%s); retrying", self.name, exc)
            self._down = True
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.reconnect_max_s)
            return False
        if self._down:
            log.info("%s: lines requested again", self.name)
        self._down = False
        self._backoff = 0.1
        self._fresh = True
        return True

    def _values(self) -> list[Reading]:
        gpiod = self._gpiod
        active = importlib.import_module(f"{gpiod.__name__}.line").Value.ACTIVE
        offsets = list(self.lines.values())
        values = self._req.get_values(offsets)
        return [
            Reading(self._by_offset[o], v == active) for o, v in zip(offsets, values, strict=True)
        ]

    def read(self, stop: threading.Event, timeout: float) -> list[Reading]:
        if self._req is None and not self._open(stop, timeout):
            return []
        try:
            if self._fresh:
                self._fresh = False
                return self._values()
            if not self._req.wait_edge_events(timedelta(seconds=timeout)):
                return []
            self._req.read_edge_events()  # drain; the levels are read below
            return self._values()
        except OSError as exc:
            log.warning("%s: read failed (%s); requesting the lines again", self.name, exc)
            self._down = True
            self.close()
            return []

    def close(self) -> None:
        req, self._req = self._req, None
        if req is not None:
            with contextlib.suppress(OSError):
                req.release()


# --------------------------------------------------------------------------- simulated


class SimInputSource:
    """Levels set by the test or the demo; ``script`` plays (delay_s, readings) steps."""

    def __init__(
        self,
        initial: Sequence[Reading] = (),
        script: Sequence[tuple[float, Sequence[Reading]]] = (),
    ) -> None:
        self._lock = threading.Lock()
        self._pending: list[Reading] = list(initial)
        self._script = list(script)
        self._start: float | None = None

    @property
    def name(self) -> str:
        return "sim"

    def set(self, name: str, value: bool) -> None:
        with self._lock:
            self._pending.append(Reading(name, value))

    def press_sos(self) -> None:
        with self._lock:
            self._pending.append(Reading("sos", True, press=True))

    def read(self, stop: threading.Event, timeout: float) -> list[Reading]:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        with self._lock:
            while self._script and now - self._start >= self._script[0][0]:
                self._pending.extend(self._script.pop(0)[1])
            out, self._pending = self._pending, []
        if not out:
            stop.wait(timeout)
        return out

    def close(self) -> None:
        pass


def parse_levels(text: str) -> list[Reading]:
    """``"ign=1 brush=1"`` (the serial IN syntax without ``IN``) -> readings."""
    parsed = parse_line("IN " + text) if text.strip() else []
    if parsed is None:
        raise SourceError(f"fleet.inputs.sim_state: not 'name=0|1 ...': {text!r}")
    return [r for r in parsed if not r.name.startswith("?")]


# --------------------------------------------------------------------------- thread


class InputThread:
    """Runs one source: raw readings -> Debouncer -> bounded queue of InputEvents.

    The owner reads ``queue`` (or passes ``on_event``, called in this thread). ``inputs``
    is the current debounced snapshot (thread-safe).
    """

    def __init__(
        self,
        source: InputSource,
        stop: threading.Event,
        *,
        debounce_s: float = 0.05,
        sos_refractory_s: float = 2.0,
        maxsize: int = 64,
        poll_s: float = 0.01,
        on_event: Callable[[InputEvent], None] | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.stop = stop
        self.debouncer = Debouncer(debounce_s, sos_refractory_s)
        self.queue: queue.Queue[InputEvent] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.error: BaseException | None = None
        self._poll_s = poll_s
        self._on_event = on_event
        self._wall = wall
        self._mono = mono
        self._lock = threading.Lock()
        self._inputs = Inputs()
        self._thread = threading.Thread(target=self._run, name=f"inputs:{source.name}", daemon=True)

    @property
    def inputs(self) -> Inputs:
        with self._lock:
            return self._inputs

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _put(self, ev: InputEvent) -> None:
        if self._on_event is not None:
            self._on_event(ev)
            return
        while True:
            try:
                self.queue.put_nowait(ev)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def step(self, readings: Sequence[Reading]) -> list[InputEvent]:
        """Feed readings, collect the changes that are stable now (the loop's body)."""
        mono = self._mono()
        offset = self._wall() - mono
        for r in readings:
            self.debouncer.update(r, mono)
        events = [
            InputEvent("sos" if name == "sos" else "change", name, value, since + offset)
            for name, value, since in self.debouncer.poll(mono)
        ]
        if events:
            with self._lock:
                self._inputs = self.debouncer.inputs()
        return events

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                readings = self.source.read(self.stop, self._poll_s)
                for ev in self.step(readings):
                    self._put(ev)
        except BaseException as exc:
            log.error("%s: stopped: %s", self.source.name, exc)
            self.error = exc
        finally:
            self.source.close()
