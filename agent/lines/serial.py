"""A serial line that speaks a line protocol: one request line in, one reply line out.

Buttons and microcontrollers (the body camera's record button, a push-to-talk button) sit on
a serial port or a pyserial URL (``loop://``, ``socket://``, ``rfc2217://``). The server reads
in its own thread; a vanished port is reported once and reopened through
:class:`agent.contain.Reconnect` (a growing pause on the stop event). Subclasses say what a
line means (:meth:`LineServer.handle`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TypedDict

from agent.contain import Failures, Reconnect, Why
from agent.loops.guard import Guard

log = logging.getLogger(__name__)

MAX_LINE = 256


class LineOptions(TypedDict, total=False):
    """How a line is opened and reopened (what a :class:`LineServer` subclass passes on)."""

    baudrate: int
    reopen_s: float
    reopen_max_s: float
    port: Any  # an open port (tests); else opened from the URL


class LineServer:
    """Serves one serial line until ``stop`` is set. Thread-safe counters: ``lines``,
    ``losses``."""

    def __init__(
        self,
        url: str,
        stop: threading.Event,
        *,
        name: str,
        baudrate: int = 9600,
        reopen_s: float = 1.0,
        reopen_max_s: float = 10.0,
        port: Any = None,
    ) -> None:
        self.url = url
        self.name = name
        self._stop = stop
        self.baudrate = baudrate
        self._port = port
        self.lines = 0
        self.retry = Reconnect(
            name,
            stop,
            log,
            min_s=reopen_s,
            max_s=reopen_max_s,
            on_lost=self._report_lost,
            on_restored=lambda gap, attempts: log.warning("%s: %s is back", name, url),
        )
        self._failures = Failures(name, log)
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def handle(self, line: str) -> str:
        """The reply to one request line (without its newline)."""
        raise NotImplementedError

    def lost(self) -> None:
        """Called when the line vanishes (e.g. release what a held button was doing)."""

    def _open(self) -> Any:
        import serial

        return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.2)

    @property
    def losses(self) -> int:
        return self.retry.losses

    def _report_lost(self, why: Why) -> None:
        if self._port is None:
            log.error("%s: cannot open %s: %s; retrying", self.name, self.url, why)
        else:
            log.error("%s: %s lost: %s; reopening", self.name, self.url, why)

    def run(self) -> None:
        # Under the one loop guard: anything but the port's own errors (handled here: reopen
        # with backoff) is reported once, waited out, and the line is served again.
        Guard(self.name, self._stop, log).run(self._round)
        self._close()

    def _round(self) -> None:
        errors = serial_errors()
        port = self._port or self.retry.call(self._open, (*errors, ValueError))
        if port is None:
            return  # stopping
        self._port = port
        self.retry.restored()
        try:
            self._serve(port)
        except errors as exc:
            self.retry.failed(exc)
            self._close()
            self.lost()
            self.retry.wait()

    def _serve(self, port: Any) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            data = port.read(max(1, getattr(port, "in_waiting", 0) or 1))
            if not data:
                continue
            buf += data
            while b"\n" in buf:
                raw, _, rest = bytes(buf).partition(b"\n")
                buf = bytearray(rest)
                if len(raw) > MAX_LINE:
                    port.write(b"ERR line too long\n")
                    continue
                self.lines += 1
                line = raw.decode("ascii", "replace")
                try:
                    reply = self.handle(line)
                except Exception as exc:  # contained (agent.contain): the next line is served
                    self._failures("a request", exc)
                    reply = "ERR internal error"
                log.info("%s: %r -> %s", self.name, line.strip(), reply)
                port.write(reply.encode("ascii", "replace") + b"\n")
            if len(buf) > MAX_LINE:
                buf.clear()
                port.write(b"ERR line too long\n")

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (OSError, ValueError) as exc:
                log.debug("%s: close of %s failed: %s", self.name, self.url, exc)


def serial_errors() -> tuple[type[BaseException], ...]:
    """What a vanished port raises (pyserial imported only when a line is used)."""
    import serial

    return (serial.SerialException, OSError)
