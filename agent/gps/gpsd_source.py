"""Fixes from a gpsd daemon, through gpsd-py3 with its module-level socket contained.

gpsd-py3 keeps one socket in module globals (``gpsd.gpsd_socket``/``gpsd_stream``), has no
reconnect, polls with ``?POLL`` (faster than the receiver reports, if asked to) and reads only
the old ``alt`` key. So:

* every connection loads a **private copy** of the gpsd-py3 module
  (:func:`_private_gpsd_module`): its globals belong to this source alone and are dropped with
  the connection; the process-wide ``gpsd`` module is never touched;
* gpsd-py3 does the handshake (VERSION, ``?WATCH``); we then ask gpsd to stream its JSON
  reports, read them from the socket ourselves (with a timeout, so ``stop`` is honoured) and
  decode TPV/SKY with :class:`~agent.gps.tpv.TpvAssembler` (``altMSL``, then ``alt``);
* streaming means one report per receiver cycle: we never poll faster than the receiver;
* EOF, a socket error or ``stale_after_s`` of silence (gpsd killed, restarted, hung) closes
  the connection; it is reopened through :class:`agent.contain.Reconnect` (a capped
  exponential backoff; the outage logged once, its end once).
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import threading
import time
import types

from agent.contain import Reconnect
from agent.errors import SourceError
from agent.gps.source import Emit
from agent.gps.tpv import TpvAssembler

log = logging.getLogger(__name__)

WATCH = b'?WATCH={"enable":true,"json":true}\n'
READ_TIMEOUT_S = 0.25
QUIET_FLUSH_S = 1.5
MAX_LINE = 65536
HANDSHAKE_TIMEOUT_S = 5.0
RETRY_MIN_S = 0.1  # the first pause after a loss; it doubles up to reconnect_max_s


def _private_gpsd_module() -> types.ModuleType:
    """A fresh, unregistered instance of the gpsd-py3 module (its own globals)."""
    spec = importlib.util.find_spec("gpsd")
    if spec is None or spec.loader is None:
        raise SourceError("gpsd-py3 is not installed (pip install 'edge-agent[gps]')")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _TimeoutSockets:
    """Stands in for the ``socket`` module inside a private gpsd-py3 copy."""

    AF_INET = socket.AF_INET
    SOCK_STREAM = socket.SOCK_STREAM

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def socket(self, family: int, kind: int) -> socket.socket:
        sock = socket.socket(family, kind)
        sock.settimeout(self.timeout)
        return sock


class _Connection:
    """One gpsd session: a private gpsd-py3 module and the socket it opened."""

    def __init__(self, host: str, port: int) -> None:
        self.module = _private_gpsd_module()
        # Its sockets get a timeout, so a gpsd that accepts but never answers cannot hang us.
        setattr(self.module, "socket", _TimeoutSockets(HANDSHAKE_TIMEOUT_S))  # noqa: B010
        self.module.connect(host=host, port=port)  # handshake + ?WATCH, in its own globals
        sock = getattr(self.module, "gpsd_socket", None)
        if not isinstance(sock, socket.socket):
            raise SourceError("gpsd-py3 did not open a socket")
        self.sock = sock
        self.sock.settimeout(READ_TIMEOUT_S)
        self.sock.sendall(WATCH)  # make sure gpsd streams JSON reports
        self.buffer = bytearray()

    def close(self) -> None:
        for closer in (getattr(self.module, "gpsd_stream", None), self.sock):
            try:
                if closer is not None:
                    closer.close()
            except OSError:
                pass
        setattr(self.module, "gpsd_socket", None)  # noqa: B010 - a module's globals
        setattr(self.module, "gpsd_stream", None)  # noqa: B010


class GpsdSource:
    """A :class:`~agent.gps.source.FixSource` reading a gpsd daemon at ``host:port``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2947,
        *,
        reconnect_max_s: float = 30.0,
        stale_after_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.reconnect_max_s = reconnect_max_s
        self.stale_after_s = stale_after_s
        self.link: Reconnect | None = None  # while it runs: is gpsd out of reach?
        self.connects = 0
        self._receiving = False

    @property
    def name(self) -> str:
        return f"gpsd:{self.host}:{self.port}"

    def _open(self) -> _Connection:
        try:
            return _Connection(self.host, self.port)
        except (ValueError, KeyError) as exc:  # gpsd-py3 choked on the handshake
            raise OSError(f"bad gpsd handshake: {exc}") from exc
        except Exception as exc:
            if isinstance(exc, OSError | SourceError):
                raise
            raise OSError(f"gpsd handshake failed: {exc}") from exc

    def run(self, stop: threading.Event, emit: Emit) -> None:
        link = self.link = Reconnect(
            self.name, stop, log, min_s=RETRY_MIN_S, max_s=self.reconnect_max_s
        )
        while not stop.is_set():
            conn = link.call(self._open, (OSError,))
            if conn is None:
                return
            self.connects += 1
            tpv = TpvAssembler(self.name)
            try:
                self._pump(conn, tpv, stop, emit)
            except (OSError, SourceError) as exc:
                link.failed(exc)
                link.wait()
            finally:
                conn.close()
                for fix in tpv.flush():  # gpsd's last report was complete
                    emit(fix)

    def _up(self) -> None:
        assert self.link is not None
        if not self.link.restored() and not self._receiving:
            log.info("%s: receiving", self.name)
        self._receiving = True

    def _pump(
        self, conn: _Connection, tpv: TpvAssembler, stop: threading.Event, emit: Emit
    ) -> None:
        last_data = time.monotonic()
        flushed = True
        while not stop.is_set():
            try:
                data = conn.sock.recv(65536)
            except TimeoutError:
                data = None
            now = time.monotonic()
            if data == b"":
                raise SourceError("gpsd closed the connection")
            if data:
                self._up()
                last_data = now
                flushed = False
                conn.buffer += data
                *lines, rest = conn.buffer.split(b"\n")
                conn.buffer = bytearray(rest[-MAX_LINE:])
                for line in lines:
                    for fix in tpv.feed_line(bytes(line)):
                        emit(fix)
                continue
            quiet = now - last_data
            if not flushed and quiet >= QUIET_FLUSH_S:
                flushed = True
                for fix in tpv.flush():
                    emit(fix)
            if quiet >= self.stale_after_s:
                raise SourceError(f"no report from gpsd for {quiet:.0f} s")
