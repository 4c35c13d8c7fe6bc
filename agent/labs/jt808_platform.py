"""A reference JT/T 808 platform and a link-cutting proxy, for tests, the demo and the bench.

Nothing here runs on a device (like :mod:`agent.labs.broker`, it lives in the package so that
the demo and the benchmarks can start what the tests use).

:class:`ReferencePlatform` listens on 127.0.0.1 (a random port by default) and, per terminal
connection (one thread each, bounded reads, the same codec as the terminal):

* answers 0x0100 with 0x8100 (success and an authentication code, or the result it is told
  to refuse with), 0x0102 with 0x8001 (success only for the code it gave), 0x0002, 0x0200 and
  0x0704 with 0x8001; anything else from a terminal with 0x8001 result 3;
* records every location (``received``: live 0x0200 and 0x0704 items, in arrival order, with
  the batch type) and what the terminal answered to its own messages (``answers``);
* sends platform messages (:meth:`send`, :meth:`request`), sub-packaged when long, resends
  packages a terminal asks for (0x0005);
* can be told to drop answers (``drop_answer``), to refuse batches with 3 (``batch_result``),
  to refuse registration (``register_result``).

:class:`CutProxy` forwards a TCP port to the platform; :meth:`CutProxy.cut` closes every
connection (both sides) and refuses new ones (accepted then closed) until
:meth:`CutProxy.restore`: a truck driving out of coverage, whose modem drops the connection.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import FormatError
from agent.jt808 import messages as m
from agent.jt808.codec import (
    Frame,
    FrameReader,
    Reassembler,
    decode_frame,
    encode_message,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """One location the platform received."""

    index: int  # arrival order over the platform's life
    kind: str  # "live" (0x0200) or "batch" (a 0x0704 item)
    batch_type: int | None  # 0 normal, 1 blind-area supplement (batches only)
    serial: int  # of the frame that carried it
    phone: str
    location: m.Location
    at: float  # time.monotonic() of arrival

    @property
    def key(self) -> tuple[str, int, int]:
        """What identifies a position: its time and place (used to spot duplicates)."""
        return (self.location.time_bcd, self.location.lat_e6, self.location.lon_e6)


@dataclass
class Terminal:
    """What the platform knows of one connected terminal."""

    phone: str
    sock: socket.socket
    v2019: bool
    authenticated: bool = False
    sent_packages: dict[int, dict[int, bytes]] = field(default_factory=dict)


class ReferencePlatform:
    """See the module docstring. Thread-safe; ``stop()`` ends every thread."""

    def __init__(
        self, *, port: int = 0, code: str = "EA-LAB-AUTH-1", tls: ssl.SSLContext | None = None
    ) -> None:
        self.code = code
        self.tls = tls
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._serial = 0
        self._threads: list[threading.Thread] = []
        self.terminals: dict[str, Terminal] = {}
        self.received: list[Received] = []
        self.registrations: list[m.Registration] = []
        self.authentications: list[m.Authentication] = []
        self.heartbeats = 0
        self.answers: dict[int, Frame] = {}  # our serial -> the terminal's answer
        self.other: list[Frame] = []  # anything else the terminal sent
        self.connections = 0
        self.malformed = 0
        # behaviour switches (tests)
        self.register_result = 0
        self.batch_result = m.OK
        self.drop_answer: Callable[[Frame], bool] = lambda f: False
        self.answer_delay_s = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ReferencePlatform:
        t = threading.Thread(target=self._accept, name="jt808-platform", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for term in self.terminals.values():
                with contextlib.suppress(OSError):
                    term.sock.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> ReferencePlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ queries

    def _await(self, cond: Callable[[], bool], timeout: float) -> bool:
        """Wait (up to ``timeout``) until ``cond()`` holds; re-checked at every arrival (tests
        wait with :func:`agent.labs.waiting.wait_for`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not cond():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def locations(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def duplicates(self) -> list[tuple[str, int, int]]:
        seen: set[tuple[str, int, int]] = set()
        dup = []
        for r in self.locations():
            if r.key in seen:
                dup.append(r.key)
            seen.add(r.key)
        return dup

    # ------------------------------------------------------------------ sending

    def _next_serial(self) -> int:
        self._serial = (self._serial + 1) & 0xFFFF
        return self._serial

    def send(
        self,
        msg_id: int,
        body: bytes,
        phone: str | None = None,
        *,
        skip_packages: tuple[int, ...] = (),
    ) -> int:
        """Send a platform message to a terminal (the only one, or ``phone``); returns the
        serial of its first frame. ``skip_packages``: package numbers not sent (lost), for
        the terminal to ask for."""
        with self._lock:
            term = self._terminal(phone)
            frames = encode_message(
                msg_id,
                body,
                phone=term.phone,
                next_serial=self._next_serial,
                version=1 if term.v2019 else None,
            )
            if len(frames) > 1:
                term.sent_packages[frames[0][0]] = {i: f for i, (_, f) in enumerate(frames, 1)}
            term.sock.sendall(
                b"".join(f for i, (_, f) in enumerate(frames, 1) if i not in skip_packages)
            )
            return frames[0][0]

    def send_raw(self, data: bytes, phone: str | None = None) -> None:
        """Bytes as they are (hostile frames, garbage)."""
        with self._lock:
            self._terminal(phone).sock.sendall(data)

    def request(self, msg_id: int, body: bytes, timeout: float = 10.0) -> Frame:
        """Send, and wait for the terminal's answer to that serial."""
        serial = self.send(msg_id, body)
        if not self._await(lambda: serial in self.answers, timeout):
            raise TimeoutError(f"no answer to 0x{msg_id:04x} (serial {serial})")
        with self._lock:
            return self.answers[serial]

    def _terminal(self, phone: str | None) -> Terminal:
        terms = [t for t in self.terminals.values() if t.authenticated]
        if phone is not None:
            terms = [t for t in terms if t.phone.lstrip("0") == phone.lstrip("0")]
        if not terms:
            raise LookupError("no authenticated terminal connected")
        return terms[-1]

    # ------------------------------------------------------------------ serving

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            t.start()
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
                self.connections += 1

    def _serve(self, sock: socket.socket) -> None:
        reader = FrameReader()
        packages = Reassembler()
        term: Terminal | None = None
        try:
            if self.tls is not None:
                sock.settimeout(10)
                sock = self.tls.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
            while not self._stop.is_set():
                pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
                if not pending:
                    ready, _, _ = select.select([sock], [], [], 0.2)
                    if not ready:
                        continue
                data = sock.recv(65536)
                if not data:
                    return
                for raw in reader.feed(data):
                    try:
                        frame = decode_frame(raw)
                        if frame.header.package is not None:
                            whole = packages.add(frame)
                            if whole is None:
                                continue
                            frame = Frame(whole.header, whole.body)
                    except FormatError as exc:
                        log.debug("platform: bad frame: %s", exc)
                        with self._lock:
                            self.malformed += 1
                        continue
                    term = self._on_frame(sock, term, frame)
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._cond:
                if term is not None and self.terminals.get(term.phone) is term:
                    term.authenticated = False
                self._cond.notify_all()

    def _reply(self, term: Terminal, frame: Frame, msg_id: int, body: bytes) -> None:
        if self.drop_answer(frame):
            return
        if self.answer_delay_s:
            time.sleep(self.answer_delay_s)
        for _, f in encode_message(
            msg_id,
            body,
            phone=term.phone,
            next_serial=self._next_serial,
            version=1 if term.v2019 else None,
        ):
            term.sock.sendall(f)

    def _general(self, term: Terminal, frame: Frame, result: int) -> None:
        body = m.encode_general_response(m.GeneralResponse(frame.serial, frame.msg_id, result))
        self._reply(term, frame, m.P_GENERAL_RESPONSE, body)

    def _on_frame(self, sock: socket.socket, term: Terminal | None, frame: Frame) -> Terminal:
        h = frame.header
        with self._cond:
            if term is None or term.phone != h.phone:
                term = Terminal(h.phone, sock, h.is_2019)
                self.terminals[h.phone] = term
            mid = frame.msg_id
            try:
                if mid == m.T_REGISTER:
                    self.registrations.append(m.decode_registration(frame.body, h.is_2019))
                    rr = m.RegisterResponse(frame.serial, self.register_result, self.code)
                    self._reply(term, frame, m.P_REGISTER_RESPONSE, m.encode_register_response(rr))
                elif mid == m.T_AUTH:
                    auth = m.decode_authentication(frame.body, h.is_2019)
                    self.authentications.append(auth)
                    ok = auth.code == self.code
                    term.authenticated = ok
                    self._general(term, frame, m.OK if ok else m.FAILURE)
                elif not term.authenticated:
                    self._general(term, frame, m.FAILURE)
                elif mid == m.T_HEARTBEAT:
                    self.heartbeats += 1
                    self._general(term, frame, m.OK)
                elif mid == m.T_LOCATION:
                    loc = m.decode_location(frame.body)
                    self._record("live", None, frame, loc)
                    self._general(term, frame, m.OK)
                elif mid == m.T_BATCH:
                    kind, locs = m.decode_batch(frame.body)
                    if self.batch_result == m.OK:
                        for loc in locs:
                            self._record("batch", kind, frame, loc)
                    self._general(term, frame, self.batch_result)
                elif mid in (m.T_GENERAL_RESPONSE, m.T_PARAMS, m.T_LOCATION_ANSWER):
                    answered = int.from_bytes(frame.body[:2], "big")
                    self.answers[answered] = frame
                elif mid == m.T_RESEND_REQUEST:
                    serial, numbers = m.decode_resend_request(frame.body, h.is_2019)
                    kept = term.sent_packages.get(serial, {})
                    for n in numbers:
                        if n in kept:
                            term.sock.sendall(kept[n])
                else:
                    self.other.append(frame)
                    self._general(term, frame, m.NOT_SUPPORTED)
            except FormatError as exc:
                log.debug("platform: bad body of 0x%04x: %s", mid, exc)
                self.malformed += 1
                self._general(term, frame, m.MESSAGE_ERROR)
            self._cond.notify_all()
        return term

    def _record(self, kind: str, batch_type: int | None, frame: Frame, loc: m.Location) -> None:
        self.received.append(
            Received(
                len(self.received),
                kind,
                batch_type,
                frame.serial,
                frame.header.phone,
                loc,
                time.monotonic(),
            )
        )


class CutProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``cut()`` drops the link (see module doc)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="jt808-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            for s in list(self._socks):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            self._socks.clear()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                self.refused += 1
                with contextlib.suppress(OSError):
                    client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        pair = {a: b, b: a}
        try:
            while not self._stop.is_set() and self._up.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._socks.discard(a)
                self._socks.discard(b)
