"""The one small interface every GNSS source implements, and the factory that picks one.

Integration points (used by the composition root and by ``edge-agent gps watch``)::

    from agent.gps.source import open_source, SourceThread

    source = open_source(cfg.gps)              # SerialSource | GpsdSource | ReplaySource
    pump = SourceThread(source, stop, maxsize=cfg.gps.queue_size)
    pump.start()                               # one thread per source
    fix = pump.queue.get(timeout=1.0)          # agent.model.Fix, oldest first

A :class:`FixSource` blocks in :meth:`FixSource.run` until ``stop`` is set (a replay also
returns at the end of its file), calling ``emit`` once per epoch with a
:class:`~agent.model.Fix` that carries a real date. Sources handle their own reconnects: a
vanished serial port or a restarted gpsd is retried with a capped exponential backoff that
ends at once when ``stop`` is set, and is logged once per state change.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from agent.errors import ConfigError
from agent.gps.settings import GpsSettings
from agent.model import Fix

Emit = Callable[[Fix], None]
T = TypeVar("T")


class FixSource(Protocol):
    """A GNSS receiver, gpsd or a recorded log, seen as a stream of Fixes."""

    @property
    def name(self) -> str:
        """Where the fixes come from, e.g. ``serial:/dev/ttyACM0`` (copied into Fix.source)."""
        ...

    def run(self, stop: threading.Event, emit: Emit) -> None:
        """Deliver fixes to ``emit`` until ``stop`` is set (or a replay ends). Never raises
        for a lost device: it reconnects. Raises :class:`~agent.errors.SourceError` only for
        what retrying cannot fix (e.g. a replay file that does not exist)."""
        ...


def open_source(settings: GpsSettings) -> FixSource:
    """Build the source named by ``settings.source`` (imports only what that source needs)."""
    kind = settings.source
    if kind == "serial":
        from agent.gps.serial_source import SerialSource

        return SerialSource(
            settings.serial_port,
            settings.baud,
            reconnect_max_s=settings.reconnect_max_s,
            stale_after_s=settings.stale_after_s,
        )
    if kind == "gpsd":
        from agent.gps.gpsd_source import GpsdSource

        return GpsdSource(
            settings.gpsd_host,
            settings.gpsd_port,
            reconnect_max_s=settings.reconnect_max_s,
            stale_after_s=settings.stale_after_s,
        )
    if kind == "replay":
        from agent.gps.replay import ReplaySource

        if settings.replay_file is None:
            raise ConfigError("gps.replay_file: required when gps.source is 'replay'")
        return ReplaySource(
            settings.replay_file, speed=settings.replay_speed, loop=settings.replay_loop
        )
    raise ConfigError(f"gps.source: {kind!r} has no fixes to read (use serial, gpsd or replay)")


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


class LinkLog:
    """Logs a source's link state once per change, not once per retry."""

    def __init__(self, log: logging.Logger, name: str) -> None:
        self._log = log
        self._name = name
        self.state = LinkState.CONNECTING
        self.changes = 0

    def up(self) -> None:
        if self.state is not LinkState.UP:
            self._log.info("%s: receiving", self._name)
            self.state = LinkState.UP
            self.changes += 1

    def down(self, why: object) -> None:
        if self.state is not LinkState.DOWN:
            self._log.warning("%s: lost (%s); retrying with backoff", self._name, why)
            self.state = LinkState.DOWN
            self.changes += 1
        else:
            self._log.debug("%s: still down (%s)", self._name, why)


class SourceThread:
    """Runs one :class:`FixSource` in its own thread, feeding a bounded queue.

    When the consumer falls behind, the oldest fix is dropped (and counted in ``dropped``):
    the live lane wants the newest position, and a GNSS source must never block.
    """

    def __init__(self, source: FixSource, stop: threading.Event, maxsize: int = 256) -> None:
        self.source = source
        self.stop = stop
        self.queue: queue.Queue[Fix] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.error: BaseException | None = None
        # A finite source (a replayed log) that reached the end of its input before the stop.
        self.finished = False
        self._thread = threading.Thread(target=self._run, name=f"gps:{source.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _put(self, fix: Fix) -> None:
        while True:
            try:
                self.queue.put_nowait(fix)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _run(self) -> None:
        try:
            self.source.run(self.stop, self._put)
            if not self.stop.is_set() and getattr(self.source, "finite", False):
                logging.getLogger(__name__).info("%s: end of its input", self.source.name)
                self.finished = True
        except BaseException as exc:  # reported to the owner, who decides
            logging.getLogger(__name__).error("%s: stopped: %s", self.source.name, exc)
            self.error = exc


def open_with_backoff(
    opener: Callable[[], T],
    stop: threading.Event,
    *,
    max_s: float,
    errors: tuple[type[BaseException], ...],
    link: LinkLog,
) -> T | None:
    """Call ``opener`` until it succeeds (capped exponential backoff), or return None once
    ``stop`` is set. Every wait ends at once on shutdown (tenacity's ``sleep_using_event``)."""
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_when_event_set(stop),
        wait=tenacity.wait_exponential(multiplier=0.1, min=0.05, max=max_s),
        sleep=tenacity.sleep_using_event(stop),
        retry=tenacity.retry_if_exception_type(errors),
        before_sleep=lambda rs: link.down(rs.outcome.exception() if rs.outcome else "?"),
        reraise=False,
    )
    try:
        for attempt in retrying:
            with attempt:
                if stop.is_set():
                    return None
                return opener()
    except tenacity.RetryError:
        return None
    return None
