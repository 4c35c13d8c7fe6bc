"""A receiver straight off a serial port (USB or UART) with pyserial: NMEA, u-blox UBX or both.

Survives the receiver being unplugged and plugged back: a read error or a port that stays
silent for ``stale_after_s`` closes the port, which is reopened through
:class:`agent.contain.Reconnect` (a capped exponential backoff that ends at once on shutdown;
the outage logged once, its end once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import cast

import serial

from agent.contain import Reconnect
from agent.errors import SourceError
from agent.gps.receiver import ReceiverReader
from agent.gps.source import Emit

log = logging.getLogger(__name__)

#: A pending epoch is emitted when the port has been quiet this long (receiver stopped
#: talking mid-cycle); normally the next epoch's first sentence closes it.
QUIET_FLUSH_S = 1.5
READ_TIMEOUT_S = 0.2
RETRY_MIN_S = 0.1  # the first pause after a loss; it doubles up to reconnect_max_s


class SerialSource:
    """A :class:`~agent.gps.source.FixSource` reading a receiver on ``port`` at ``baud``.

    The port may carry NMEA 0183, u-blox UBX or both (:class:`~agent.gps.receiver.ReceiverReader`).

    ``port`` may be a device path or any pyserial URL (``loop://``, ``socket://host:port``).
    """

    def __init__(
        self,
        port: str,
        baud: int = 9600,
        *,
        reconnect_max_s: float = 30.0,
        stale_after_s: float = 10.0,
    ) -> None:
        self.port = port
        self.baud = baud
        self.reconnect_max_s = reconnect_max_s
        self.stale_after_s = stale_after_s
        self.reader = ReceiverReader(source=self.name)
        self.link: Reconnect | None = None  # while it runs: is the port down?
        self.reopens = 0
        self._receiving = False

    @property
    def name(self) -> str:
        return f"serial:{self.port}"

    def _open(self) -> serial.SerialBase:
        return serial.serial_for_url(self.port, baudrate=self.baud, timeout=READ_TIMEOUT_S)

    def run(self, stop: threading.Event, emit: Emit) -> None:
        link = self.link = Reconnect(
            self.name, stop, log, min_s=RETRY_MIN_S, max_s=self.reconnect_max_s
        )
        first = True
        while not stop.is_set():
            port = link.call(self._open, (serial.SerialException, OSError, ValueError))
            if port is None:
                return
            if not first:
                self.reopens += 1
            first = False
            self.reader.reset()
            try:
                self._pump(port, stop, emit)
            except (serial.SerialException, OSError, SourceError) as exc:
                link.failed(exc)
                link.wait()  # a flapping port cannot spin the CPU
            finally:
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()

    def _up(self) -> None:
        assert self.link is not None
        if not self.link.restored() and not self._receiving:
            log.info("%s: receiving", self.name)
        self._receiving = True

    def _pump(self, port: serial.SerialBase, stop: threading.Event, emit: Emit) -> None:
        last_data = time.monotonic()
        flushed = True
        while not stop.is_set():
            data = port.read(cast(serial.Serial, port).in_waiting or 1)
            now = time.monotonic()
            if data:
                self._up()
                last_data = now
                flushed = False
                for fix in self.reader.feed(data):
                    emit(fix)
                continue
            quiet = now - last_data
            if not flushed and quiet >= QUIET_FLUSH_S:
                flushed = True
                for fix in self.reader.flush():
                    emit(fix)
            if quiet >= self.stale_after_s:
                raise SourceError(f"no data for {quiet:.0f} s")
