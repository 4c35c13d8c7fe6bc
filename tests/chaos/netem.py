"""The device's network: a TCP proxy between the agent and the broker that can be cut or slowed.

- **cut**: nothing is forwarded either way; bytes stay in the kernel's buffers (as a dead
  cellular zone leaves TCP retransmitting) and new connections wait. Long enough, MQTT
  keep-alive gives up on both sides and the clients reconnect after it ends.
- **slow**: each direction is held to ``rate_bps`` and every byte is delayed by ``delay_s``
  (a poor cellular link). The proxy reads only while it holds less than ``QUEUE_BYTES`` of a
  direction (the link's in-flight bytes and a router's queue), so the sender's socket fills and
  it feels the link's speed, as on a real link.

One thread per direction of each connection; each stops with the proxy.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

PIECE = 4096  # bytes sent at once on a slowed link (the pacing's granularity)
QUEUE_BYTES = 48 * 1024


class LinkProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.rate_bps: float | None = None
        self.delay_s = 0.0
        # Bytes forwarded device -> broker and back (both ends of the proxy).
        self.bytes_up = 0
        self.bytes_down = 0
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept, "proxy-accept")

    # -- faults ------------------------------------------------------------------------------

    def cut(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    def slow(self, rate_bps: float, delay_s: float) -> None:
        self.rate_bps, self.delay_s = rate_bps, delay_s

    def fast(self) -> None:
        self.rate_bps, self.delay_s = None, 0.0

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    def close(self) -> None:
        """Every connection closed and every thread of the proxy ended."""
        self._stop.set()
        self._open.set()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    # -- forwarding --------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._listener], [], [], 0.1)
            if not readable:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._connect, "proxy-conn", client)

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._socks.add(client)
        while not self._open.is_set():
            if self._stop.wait(0.05):
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._socks.add(upstream)
        done = threading.Event()
        for src, dst, up in ((client, upstream, True), (upstream, client, False)):
            self._spawn(self._pump, "proxy-pump", src, dst, up, done)
        done.wait()  # one direction ended (EOF, an error, or the proxy closed)
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        with self._lock:
            self._socks.discard(client)
            self._socks.discard(upstream)

    def _pump(
        self, src: socket.socket, dst: socket.socket, up: bool, done: threading.Event
    ) -> None:
        """One direction: read what may be queued, send what is due, at the link's pace."""
        held: deque[tuple[float, bytes]] = deque()
        held_bytes = 0
        free_at = 0.0  # when the link can take the next piece (pacing)
        try:
            while not self._stop.is_set() and not done.is_set():
                if not self._open.is_set():
                    self._stop.wait(0.05)
                    continue
                now = time.monotonic()
                wait = 0.1
                if held:
                    due = max(held[0][0], free_at)
                    wait = max(0.0, due - now)
                want_read = held_bytes < QUEUE_BYTES
                if wait > 0 or not held:
                    readable, _, _ = select.select([src] if want_read else [], [], [], wait)
                    if readable:
                        data = src.recv(65536)
                        if not data:
                            break
                        held.append((time.monotonic() + self.delay_s, data))
                        held_bytes += len(data)
                    continue
                # The head is due and the link is free: send one piece (all of it unslowed).
                t, data = held.popleft()
                rate = self.rate_bps
                piece = data if rate is None else data[:PIECE]
                if len(piece) < len(data):
                    held.appendleft((t, data[len(piece) :]))
                dst.sendall(piece)
                held_bytes -= len(piece)
                if up:
                    self.bytes_up += len(piece)
                else:
                    self.bytes_down += len(piece)
                now = time.monotonic()
                free_at = now if rate is None else max(free_at, now) + len(piece) * 8 / rate
        except OSError:
            pass
        finally:
            done.set()
