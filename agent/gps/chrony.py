"""chrony's view of the clock: which reference it follows, how far off the clock is, how sure.

chronyd disciplines the system clock; on a device it takes the GNSS receiver through gpsd
(``refclock SHM 0``, the NMEA time) and, where wired, its pulse per second (``refclock PPS
/dev/pps0`` or gpsd's SOCK). :class:`ChronyMonitor` asks ``chronyc -c -m tracking sources``
every ``[time] poll_s`` seconds from its own thread and keeps the last reading, so sealing a
segment never waits for a subprocess. The CSV fields are those chronyc documents (chronyc(1),
"tracking" and "sources"; ``-c`` prints seconds unconverted):

tracking (one line, 14 fields)
    reference ID (hex), name, stratum, reference time, **system time** (the offset of the
    system clock from chrony's estimate of true time: positive = the system clock is slow),
    last offset, RMS offset, frequency, residual frequency, skew, **root delay**, **root
    dispersion**, update interval, **leap status** (Normal, Insert second, Delete second,
    Not synchronised).
sources (one line per source, 10 fields)
    mode (``^`` server, ``=`` peer, ``#`` local reference clock), state (``*`` selected,
    ``+`` combined, ``-`` not combined, ``x`` falseticker, ``~`` too variable, ``?``
    unusable), name (the refid for reference clocks), stratum, poll, reach (octal), last
    sample age, adjusted offset, measured offset, error bound.

From them a :class:`~agent.model.ClockState`: ``source`` ``pps`` (the selected source is a
reference clock named ``PPS...``), ``gnss`` (any other reference clock: SHM/SOCK from gpsd),
``ntp`` (a server or peer) or ``none`` (not synchronised, or chrony's ``local`` stand-in);
``offset_s`` = the system time field; ``error_s`` = root dispersion + root delay / 2 (the
bound chronyc documents is ``|offset| + root dispersion + root delay / 2``); ``synced`` = the
leap status is not "Not synchronised".

Anything chronyc prints that does not parse as documented (garbage, a wrong field count, a
non-finite number) is a ``bad-output`` health state, never an exception out of the thread.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent import wallclock
from agent.errors import FormatError
from agent.gps.time_settings import TimeSettings
from agent.model import Alarm, ClockSource, ClockState, Severity

log = logging.getLogger(__name__)

LEAP_STATES = ("Normal", "Insert second", "Delete second", "Not synchronised")
#: chrony's reference ID when it serves its own clock (the ``local`` directive): no reference.
LOCAL_REFID = "7F7F0101"
MAX_OUTPUT = 64 * 1024
MAX_SOURCES = 256
_HEX8 = re.compile(r"[0-9A-Fa-f]{8}")
_OCTAL = re.compile(r"[0-7]{1,3}")


@dataclass(frozen=True)
class Tracking:
    ref_id: str
    name: str
    stratum: int
    ref_time: float
    system_time_s: float  # positive: the system clock is slow of chrony's (true) time
    root_delay_s: float
    root_dispersion_s: float
    leap: str

    @property
    def synchronised(self) -> bool:
        return self.leap != "Not synchronised" and self.ref_id.upper() != LOCAL_REFID


@dataclass(frozen=True)
class Source:
    mode: str  # ^ server, = peer, # reference clock
    state: str  # * selected, + combined, - not combined, x falseticker, ~ variable, ? unusable
    name: str
    stratum: int
    reach: int
    error_s: float

    @property
    def refclock(self) -> bool:
        return self.mode == "#"


@dataclass(frozen=True)
class ChronyReading:
    tracking: Tracking
    sources: tuple[Source, ...]

    @property
    def selected(self) -> Source | None:
        return next((s for s in self.sources if s.state == "*"), None)

    def reference(self) -> ClockSource:
        """pps, gnss, ntp or none: what the clock follows now."""
        t = self.tracking
        if not t.synchronised:
            return ClockSource.NONE
        sel = self.selected
        if sel is not None:
            return refclock_kind(sel.name) if sel.refclock else ClockSource.NTP
        # Synchronised but no source selected at this instant (a reference just lost, or
        # selection in progress): tracking still names the reference it last followed.
        if t.stratum == 1 and t.name and not _is_address(t.name):
            return refclock_kind(t.name)
        return ClockSource.NTP

    def clock_state(self) -> ClockState:
        t = self.tracking
        if not t.synchronised:
            return ClockState(ClockSource.NONE, None, synced=False, via="chrony")
        return ClockState(
            self.reference(),
            round(t.system_time_s, 6),
            error_s=round(t.root_dispersion_s + t.root_delay_s / 2, 6),
            synced=True,
            via="chrony",
        )

    def describe(self) -> str:
        t = self.tracking
        if not t.synchronised:
            return "chrony is not synchronised" + (
                " (it serves its own clock: local mode)" if t.ref_id.upper() == LOCAL_REFID else ""
            )
        st = self.clock_state()
        return (
            f"chrony follows {st.source.value} ({t.name or t.ref_id}, stratum {t.stratum}): "
            f"system clock {_signed(st.offset_s)} s, error bound {st.error_s:.6f} s"
        )


def _signed(v: float | None) -> str:
    return "?" if v is None else f"{v:+.6f}"


def _is_address(name: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*", name))


def refclock_kind(name: str) -> ClockSource:
    """A reference clock's refid: ``PPS``, ``PPS0``, ``KPPS``... is a pulse, the rest GNSS time."""
    return ClockSource.PPS if "PPS" in name.upper() else ClockSource.GNSS


def _float(v: str, what: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise FormatError(f"chronyc: {what} {v[:40]!r} is not a number") from None
    if not math.isfinite(f):
        raise FormatError(f"chronyc: {what} is not finite")
    return f


def _int(v: str, what: str, base: int = 10) -> int:
    try:
        return int(v, base)
    except ValueError:
        raise FormatError(f"chronyc: {what} {v[:40]!r} is not an integer") from None


def parse_tracking(line: str) -> Tracking:
    """One ``chronyc -c tracking`` line."""
    f = line.rstrip("\r\n").split(",")
    if len(f) != 14:
        raise FormatError(f"chronyc tracking: {len(f)} fields, expected 14")
    if not _HEX8.fullmatch(f[0]):
        raise FormatError(f"chronyc tracking: reference ID {f[0][:20]!r} is not 8 hex digits")
    if f[13] not in LEAP_STATES:
        raise FormatError(f"chronyc tracking: unknown leap status {f[13][:40]!r}")
    delay = _float(f[10], "root delay")
    disp = _float(f[11], "root dispersion")
    if delay < 0 or disp < 0:
        raise FormatError("chronyc tracking: negative root delay or dispersion")
    return Tracking(
        ref_id=f[0].upper(),
        name=f[1][:64],
        stratum=_int(f[2], "stratum"),
        ref_time=_float(f[3], "reference time"),
        system_time_s=_float(f[4], "system time"),
        root_delay_s=delay,
        root_dispersion_s=disp,
        leap=f[13],
    )


def parse_source(line: str) -> Source:
    """One ``chronyc -c sources`` line."""
    f = line.rstrip("\r\n").split(",")
    if len(f) != 10:
        raise FormatError(f"chronyc sources: {len(f)} fields, expected 10")
    if f[0] not in ("^", "=", "#"):
        raise FormatError(f"chronyc sources: unknown mode {f[0][:8]!r}")
    if f[1] not in ("*", "+", "-", "x", "~", "?"):
        raise FormatError(f"chronyc sources: unknown state {f[1][:8]!r}")
    if not _OCTAL.fullmatch(f[5]):
        raise FormatError(f"chronyc sources: reach {f[5][:8]!r} is not octal")
    for i, what in ((7, "adjusted offset"), (8, "measured offset")):
        _float(f[i], what)
    return Source(
        mode=f[0],
        state=f[1],
        name=f[2][:64],
        stratum=_int(f[3], "stratum"),
        reach=_int(f[5], "reach", 8),
        error_s=_float(f[9], "error bound"),
    )


def parse_output(text: str) -> ChronyReading:
    """``chronyc -c -m tracking sources``: the tracking line, then one line per source."""
    if len(text) > MAX_OUTPUT:
        raise FormatError(f"chronyc: {len(text)} characters of output, more than {MAX_OUTPUT}")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise FormatError("chronyc: no output")
    if len(lines) > MAX_SOURCES + 1:
        raise FormatError(f"chronyc: {len(lines) - 1} sources, more than {MAX_SOURCES}")
    return ChronyReading(parse_tracking(lines[0]), tuple(parse_source(ln) for ln in lines[1:]))


Runner = Callable[[Sequence[str], float], tuple[int, str, str]]


def run_command(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run chronyc: (exit code, stdout, stderr). Raises OSError / TimeoutExpired."""
    res = subprocess.run(
        list(argv), capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )
    return res.returncode, res.stdout, res.stderr


class Health:
    """What the last attempt to read chrony found (``status``, heartbeat, selftest)."""

    STARTING = "starting"
    SYNCED = "synced"
    UNSYNCHRONISED = "unsynchronised"
    UNAVAILABLE = "unavailable"  # chronyd not running, or not reachable
    NOT_INSTALLED = "not-installed"
    BAD_OUTPUT = "bad-output"
    OFF = "off"


class ChronyMonitor:
    """Reads chrony from its own thread; :meth:`state` never blocks and never raises."""

    def __init__(
        self,
        settings: TimeSettings,
        stop: threading.Event,
        *,
        alarm: Callable[[Alarm], None] | None = None,
        run: Runner = run_command,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self._alarm = alarm
        self._run = run
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._reading: ChronyReading | None = None
        self._read_at: float | None = None
        self.health = Health.STARTING if settings.chrony != "off" else Health.OFF
        self.detail = ""
        self.polls = 0
        self.failures = 0
        self._alarmed = False
        self._was_synced = False
        self._thread = threading.Thread(target=self._loop, name="chrony", daemon=True)

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        if self.settings.chrony != "off":
            self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def threads(self) -> list[threading.Thread]:
        """The polling thread, once started (never with ``chrony = "off"``)."""
        return [self._thread] if self._thread.ident is not None else []

    def _loop(self) -> None:
        while True:
            self.poll_once()
            if self.stop.wait(self.settings.poll_s):
                return

    def argv(self) -> list[str]:
        argv = [self.settings.chronyc]
        if self.settings.chrony_socket:
            argv += ["-h", self.settings.chrony_socket]
        return [*argv, "-c", "-m", "tracking", "sources"]

    def poll_once(self) -> None:
        """Ask chronyc once and record what it said (or why it said nothing)."""
        try:
            health, detail, reading = self._read()
        except Exception as exc:  # a bug here must not end the thread or the clock state
            log.exception("chrony: reading failed")
            health, detail, reading = Health.BAD_OUTPUT, f"{type(exc).__name__}: {exc}", None
        self.polls += 1
        with self._lock:
            if reading is not None:
                self._reading, self._read_at = reading, self._monotonic()
            else:
                self.failures += 1
                self._reading = self._read_at = None
        changed = health != self.health or (detail != self.detail and health != Health.SYNCED)
        self.health, self.detail = health, detail
        if changed:
            level = logging.INFO if health == Health.SYNCED else logging.WARNING
            if health == Health.NOT_INSTALLED and self.settings.chrony == "auto":
                level = logging.INFO
            log.log(level, "chrony: %s", detail)
        self._maybe_alarm(health, detail)

    def _read(self) -> tuple[str, str, ChronyReading | None]:
        try:
            code, out, err = self._run(self.argv(), self.settings.timeout_s)
        except FileNotFoundError:
            return Health.NOT_INSTALLED, f"{self.settings.chronyc} is not installed", None
        except subprocess.TimeoutExpired:
            return (
                Health.UNAVAILABLE,
                f"chronyc gave no answer within {self.settings.timeout_s:g} s",
                None,
            )
        except OSError as exc:
            return Health.UNAVAILABLE, f"cannot run {self.settings.chronyc}: {exc}", None
        if code != 0:
            why = (err.strip() or out.strip()).splitlines()
            text = why[-1][:200] if why else f"exit code {code}"
            return Health.UNAVAILABLE, f"chronyd does not answer ({text})", None
        try:
            reading = parse_output(out)
        except FormatError as exc:
            return Health.BAD_OUTPUT, str(exc), None
        health = Health.SYNCED if reading.tracking.synchronised else Health.UNSYNCHRONISED
        return health, reading.describe(), reading

    def _maybe_alarm(self, health: str, detail: str) -> None:
        """An alarm when a synchronised clock loses chrony's reference, or when chrony, where
        it is required, cannot be read; one more when it comes back. (Not synchronised yet
        after a boot is no alarm: that is every cold start until the first fix.)"""
        synced = health == Health.SYNCED
        unreadable = health in (Health.UNAVAILABLE, Health.NOT_INSTALLED, Health.BAD_OUTPUT)
        required = self.settings.chrony == "on"
        bad = not synced and (self._was_synced or (required and unreadable))
        if synced:
            self._was_synced = True
        if self._alarm is None or bad == self._alarmed:
            return
        self._alarmed = bad
        self._alarm(
            Alarm(
                "time_reference_lost" if bad else "time_reference_restored",
                f"time reference: {detail}",
                Severity.WARNING if bad else Severity.INFO,
                wallclock.now(),
                {"chrony": health},
            )
        )

    # ------------------------------------------------------------------ readers

    def reading(self) -> ChronyReading | None:
        """The last good reading, if it is recent (three polls)."""
        with self._lock:
            reading, at = self._reading, self._read_at
        if reading is None or at is None:
            return None
        if self._monotonic() - at > 3 * self.settings.poll_s + self.settings.timeout_s:
            return None  # the thread is stuck: an old reading no longer describes the clock
        return reading

    def state(self) -> ClockState | None:
        """chrony's clock state, or None where chrony could not be read recently."""
        reading = self.reading()
        return None if reading is None else reading.clock_state()

    def to_json(self) -> dict[str, object]:
        reading = self.reading()
        out: dict[str, object] = {"state": self.health, "detail": self.detail}
        if reading is not None:
            sel = reading.selected
            out["reference"] = reading.reference().value
            out["refid"] = reading.tracking.name or reading.tracking.ref_id
            out["stratum"] = reading.tracking.stratum
            out["leap"] = reading.tracking.leap
            if sel is not None:
                out["selected"] = sel.name
        return out


def attach(
    settings: TimeSettings,
    clock: ClockReference,
    stop: threading.Event,
    alarm: Callable[[Alarm], None] | None = None,
) -> ChronyMonitor | None:
    """The composition root's one call: a monitor whose state ``clock`` prefers (or None
    when ``[time] chrony = "off"``). The caller starts it with the other threads."""
    if settings.chrony == "off":
        return None
    monitor = ChronyMonitor(settings, stop, alarm=alarm)
    clock.reference = monitor.state
    return monitor


class ClockReference(Protocol):
    """What :func:`attach` needs of the clock monitor (agent.gps.clock.ClockMonitor)."""

    reference: Callable[[], ClockState | None] | None
