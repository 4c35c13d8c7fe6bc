"""A serial line that speaks a line protocol: one request line in, one reply line out.

Buttons and microcontrollers (the body camera's record button, a push-to-talk button) sit on
a serial port or a pyserial URL (``loop://``, ``socket://``, ``rfc2217://``). The server reads
in its own thread; a vanished port is reported once and reopened with a growing pause on the
stop event. Subclasses say what a line means (:meth:`LineServer.handle`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 256


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
        self._reopen_s = reopen_s
        self._reopen_max_s = reopen_max_s
        self._port = port
        self.lines = 0
        self.losses = 0
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def handle(self, line: str) -> str:
        """The reply to one request line (without its newline)."""
        raise NotImplementedError

    def lost(self) -> None:
        """Called when the line vanishes (e.g. release what a held button was doing)."""

    def _open(self) -> Any:
        import serial

        return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.2)

    def run(self) -> None:
        import serial

        pause = self._reopen_s
        lost = False
        while not self._stop.is_set():
            port = self._port
            if port is None:
                try:
                    port = self._port = self._open()
                except (serial.SerialException, OSError, ValueError) as exc:
                    if not lost:
                        lost = True
                        self.losses += 1
                        log.error("%s: cannot open %s: %s; retrying", self.name, self.url, exc)
                    self._stop.wait(pause)
                    pause = min(pause * 2, self._reopen_max_s)
                    continue
                if lost:
                    log.warning("%s: %s is back", self.name, self.url)
                lost = False
                pause = self._reopen_s
            try:
                self._serve(port)
            except (serial.SerialException, OSError) as exc:
                if not lost:
                    lost = True
                    self.losses += 1
                    log.error("%s: %s lost: %s; reopening", self.name, self.url, exc)
                self._close()
                self.lost()
                self._stop.wait(pause)
        self._close()

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
                reply = self.handle(line)
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
