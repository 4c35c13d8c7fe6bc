"""A loopback TCP proxy that counts every byte both ways and can play a cellular link.

    proxy = LinkProxy(("127.0.0.1", broker_port), Link(rtt_s=0.08, rate_bps=20e6 / 8,
                                                          stall_every_bytes=2e6, stall_s=0.2))
    ... connect the device to 127.0.0.1:proxy.port ...
    proxy.counts()   # Counts(up=bytes device->server, down=bytes server->device)
    proxy.close()

The bytes counted are TCP payload: TLS records and everything inside them (MQTT, keepalives,
acknowledgements), not IP/TCP headers. Each direction is a pipe with its own clock:

- ``rtt_s``: every byte reaches the other side ``rtt_s / 2`` after it was read;
- ``rate_bps`` (bytes/s): a direction carries at most that many bytes a second (serialised as
  a real link does: a byte leaves when the bytes before it have left);
- loss: TCP over a lossy radio shows loss as a stall (the retransmission timeout, or a fast
  retransmit after 3 duplicate acknowledgements, holds everything behind the lost segment);
  every ``stall_every_bytes`` (drawn from an exponential distribution, seeded) a direction
  stalls for ``stall_s``, and the time lost is counted (``stalled_s``).

Each direction runs in its own thread (reader) plus a writer thread; one stop event ends them
all. For benchmarks and tests only: nothing here runs on a device.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    rtt_s: float = 0.0
    rate_bps: float = 0.0  # bytes per second per direction; 0 = unlimited
    stall_every_bytes: float = 0.0  # mean bytes between stalls; 0 = none
    stall_s: float = 0.0
    seed: int = 1
    # Bytes a direction holds before it stops reading (the radio's queue; TCP then pushes
    # back on the sender, as a modem's full buffer does).
    buffer_bytes: int = 256 * 1024


@dataclass(frozen=True)
class Counts:
    up: int
    down: int
    stalled_s: float  # both directions' stalls added up
    stalled_up_s: float = 0.0

    @property
    def total(self) -> int:
        return self.up + self.down


class _Pipe:
    """One direction: read from ``src``, deliver to ``dst`` as the link would."""

    def __init__(
        self, src: socket.socket, dst: socket.socket, link: Link, stop: threading.Event, seed: int
    ) -> None:
        self.src, self.dst, self.link, self.stop = src, dst, link, stop
        self.bytes = 0
        self.stalled_s = 0.0
        self._rng = random.Random(seed)
        self._queue: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._free_at = 0.0  # when the link finishes sending what it has
        self._next_stall = self._draw()
        self.closed = threading.Event()

    def _draw(self) -> float:
        if self.link.stall_every_bytes <= 0:
            return float("inf")
        return self._rng.expovariate(1.0 / self.link.stall_every_bytes)

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True, name="netem-read").start()
        threading.Thread(target=self._write, daemon=True, name="netem-write").start()

    def _read(self) -> None:
        link = self.link
        try:
            while not self.stop.is_set():
                with self._cond:
                    while self._queued >= link.buffer_bytes and not self.stop.is_set():
                        self._cond.wait(0.1)
                ready, _, _ = select.select([self.src], [], [], 0.1)
                if not ready:
                    continue
                data = self.src.recv(16384)
                if not data:
                    break
                now = time.monotonic()
                with self._cond:
                    self.bytes += len(data)
                    start = max(now, self._free_at)
                    if link.rate_bps > 0:
                        self._free_at = start + len(data) / link.rate_bps
                    else:
                        self._free_at = start
                    self._next_stall -= len(data)
                    if self._next_stall <= 0:
                        self._free_at += link.stall_s
                        self.stalled_s += link.stall_s
                        self._next_stall = self._draw()
                    self._queue.append((self._free_at + link.rtt_s / 2, data))
                    self._queued += len(data)
                    self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self._queue.append((0.0, b""))
                self._cond.notify()

    def _write(self) -> None:
        try:
            while not self.stop.is_set():
                with self._cond:
                    while not self._queue and not self.stop.is_set():
                        self._cond.wait(0.1)
                    if not self._queue:
                        continue
                    due, data = self._queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                    self._queue.popleft()
                    self._queued -= len(data)
                    self._cond.notify_all()
                if not data:
                    break
                self.dst.sendall(data)
        except OSError:
            pass
        finally:
            self.closed.set()
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)


class LinkProxy:
    """Listens on 127.0.0.1 (a random port) and forwards each connection to ``target``."""

    def __init__(self, target: tuple[str, int], link: Link | None = None) -> None:
        self.target = target
        self.link = link or Link()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pipes: list[tuple[_Pipe, _Pipe]] = []
        self._socks: list[socket.socket] = []
        self._connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="netem-accept")
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            with self._lock:
                n = self._connections = self._connections + 1
                up = _Pipe(client, upstream, self.link, self._stop, self.link.seed * 1000 + 2 * n)
                down = _Pipe(
                    upstream, client, self.link, self._stop, self.link.seed * 1000 + 2 * n + 1
                )
                self._pipes.append((up, down))
                self._socks += [client, upstream]
            up.start()
            down.start()

    def counts(self) -> Counts:
        with self._lock:
            pipes = list(self._pipes)
        return Counts(
            sum(u.bytes for u, _ in pipes),
            sum(d.bytes for _, d in pipes),
            sum(u.stalled_s + d.stalled_s for u, d in pipes),
            sum(u.stalled_s for u, _ in pipes),
        )

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()
        self._thread.join(5)
