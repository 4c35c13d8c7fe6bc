"""The terminal's TCP session with the JT/T 808 platform (TLS optional). One thread.

::

    connect (tenacity backoff, ends at once on stop) -> [0x0100 -> 0x8100: code kept]
      -> 0x0102 -> 0x8001 -> serve:
           every loop: platform frames in (FrameReader: resync on 0x7e, bounded)
                       live reports (0x0200) first, as soon as they are stored
                       then the backlog, oldest first, in 0x0704 batches (blind-area type),
                       within a byte rate and a few batches in flight
                       0x0002 when nothing was sent for the heartbeat interval
                       any message unanswered after ``response_timeout_s``: reconnect

**Live and backlog.** Each session notes the next report id when it is authenticated: reports
stored from then on are *live* (sent at once as 0x0200), those stored before are the
*backlog* (sent as 0x0704). A report leaves the queue only when the platform's 0x8001 answers
the message that carried it with 0 (success) or 4 (alarm handling confirmed). An answer 1/2/3
keeps it, out of this session's sends (a 0x0704 answered 3 "not supported" switches the
session to one 0x0200 per stored report). A report in flight when the link dies is sent again
in the next session, in a batch: delivery is at least once; the one case of a duplicate is a
report the platform had received whose answer was lost with the link.

**Platform messages.** Every frame is checked (escapes, BCC, lengths, phone number) before its
body is read; a body that does not parse is answered 0x0001 result 2, an unknown or
unsupported message result 3, a failure to apply result 1. Responses (0x8001, 0x8100, 0x8003,
0x8004) are never answered. Nothing a platform sends ends the session except by closing the
connection: exceptions are caught per frame, logged once per kind, counted.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.errors import FormatError, UplinkError
from agent.jt808 import messages as m
from agent.jt808.codec import (
    Frame,
    FrameReader,
    Reassembler,
    decode_frame,
    encode_message,
)
from agent.jt808.settings import Jt808Settings

if TYPE_CHECKING:
    from agent.jt808.terminal import Jt808Terminal

log = logging.getLogger(__name__)

#: Batches of the backlog in flight at once (each answered before it leaves the queue).
BATCH_WINDOW = 4
#: A session that ends sooner than this counts as a failed attempt (backoff grows).
SHORT_SESSION_S = 10.0
POLL_S = 0.25
#: Platform messages that are answers: never answered back.
RESPONSES = {m.P_GENERAL_RESPONSE, m.P_REGISTER_RESPONSE, m.P_RESEND_REQUEST, 0x8004}
#: Sub-packaged messages of ours kept for a platform's 0x8003.
KEEP_SENT_PACKAGES = 8
#: A platform message still missing packages after this long is asked for once (0x0005).
REASSEMBLY_TIMEOUT_S = 30.0


class LinkFailed(UplinkError):
    """The session cannot go on (connection lost, no answer, refused)."""


@dataclass
class Pending:
    msg_id: int
    deadline: float
    ids: list[int] = field(default_factory=list)
    size: int = 0
    backlog: bool = False


@dataclass
class ClientStats:
    state: str = "connecting"
    connected: bool = False
    authenticated: bool = False
    sessions: int = 0
    live_sent: int = 0
    batches_sent: int = 0
    reports_in_batches: int = 0
    reports_acked: int = 0
    refused: int = 0
    heartbeats: int = 0
    platform_messages: int = 0
    malformed: int = 0
    unsupported: int = 0
    foreign: int = 0
    last_error: str = ""
    last_error_at: float = 0.0


class Session:
    """One connection: the socket, its frame reader, the messages awaiting an answer."""

    def __init__(self, sock: socket.socket, settings: Jt808Settings) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.reassembler = Reassembler(timeout_s=REASSEMBLY_TIMEOUT_S)
        self.pending: dict[int, Pending] = {}
        self.parked: set[int] = set()
        self.live_from = 0
        self.batch_ok = True
        self.last_tx = time.monotonic()
        self.started = time.monotonic()
        self.tokens = 0.0
        self.token_at = time.monotonic()
        self.sent_packages: OrderedDict[int, dict[int, bytes]] = OrderedDict()
        self.inbox: deque[Frame] = deque()
        self.settings = settings

    def in_flight(self) -> set[int]:
        out: set[int] = set()
        for p in self.pending.values():
            out.update(p.ids)
        return out

    def send(self, msg_id: int, body: bytes, next_serial: Callable[[], int]) -> int:
        """Send a message (in packages if long); returns the serial of its first frame."""
        s = self.settings
        frames = encode_message(
            msg_id, body, phone=s.phone, next_serial=next_serial, version=1 if s.v2019 else None
        )
        data = b"".join(f for _, f in frames)
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise LinkFailed(f"send failed: {exc}") from exc
        self.last_tx = time.monotonic()
        first = frames[0][0]
        if len(frames) > 1:
            self.sent_packages[first] = {i: f for i, (_, f) in enumerate(frames, 1)}
            while len(self.sent_packages) > KEEP_SENT_PACKAGES:
                self.sent_packages.popitem(last=False)
        return first

    def expect(
        self,
        serial: int,
        msg_id: int,
        ids: list[int] | None = None,
        *,
        size: int = 0,
        backlog: bool = False,
    ) -> None:
        """An answer (0x8001) to ``serial`` is due within ``response_timeout_s``."""
        deadline = time.monotonic() + self.settings.response_timeout_s
        self.pending[serial] = Pending(msg_id, deadline, list(ids or []), size, backlog)


class Reports:
    """What a session sends of the terminal's queue: the live reports first, then the backlog."""

    def __init__(
        self,
        settings: Jt808Settings,
        terminal: Jt808Terminal,
        stats: ClientStats,
        next_serial: Callable[[], int],
    ) -> None:
        self.s = settings
        self.t = terminal
        self.stats = stats
        self.next_serial = next_serial

    def live(self, sess: Session) -> None:
        """Every report stored since the session started, at once."""
        skip = sess.in_flight() | sess.parked
        for rec in self.t.queue.newer(sess.live_from, skip):
            serial = sess.send(m.T_LOCATION, rec.body, self.next_serial)
            sess.expect(serial, m.T_LOCATION, [rec.id], size=len(rec.body))
            self.stats.live_sent += 1

    def backlog(self, sess: Session) -> None:
        """The oldest reports from before the session, in batches (0x0704) within
        ``BATCH_WINDOW`` unanswered ones and ``backlog_bytes_per_s``; one 0x0200 each where the
        platform does not take batches."""
        batches = sum(1 for p in sess.pending.values() if p.backlog)
        if batches >= BATCH_WINDOW:
            return
        now = time.monotonic()
        rate = float(self.s.backlog_bytes_per_s)
        sess.tokens = min(sess.tokens + (now - sess.token_at) * rate, max(rate, 2048.0))
        sess.token_at = now
        skip = sess.in_flight() | sess.parked
        recs = [r for r in self.t.queue.oldest(self.s.batch_max, skip) if r.id < sess.live_from]
        if not recs:
            return
        if not sess.batch_ok:  # the platform does not take 0x0704: one 0x0200 each
            rec = recs[0]
            if sess.tokens < len(rec.body) + 20:
                return
            serial = sess.send(m.T_LOCATION, rec.body, self.next_serial)
            sess.expect(serial, m.T_LOCATION, [rec.id], size=len(rec.body), backlog=True)
            sess.tokens -= len(rec.body) + 20
            return
        bodies: list[bytes] = []
        chosen = []
        for r in recs:
            if m.batch_size([*bodies, r.body]) > 1023:
                break
            bodies.append(r.body)
            chosen.append(r)
        size = m.batch_size(bodies) + 25
        if sess.tokens < size:
            return
        body = m.encode_batch(bodies, m.BATCH_BLIND_AREA)
        serial = sess.send(m.T_BATCH, body, self.next_serial)
        sess.expect(serial, m.T_BATCH, [r.id for r in chosen], size=size, backlog=True)
        sess.tokens -= size
        self.stats.batches_sent += 1
        self.stats.reports_in_batches += len(chosen)


class Jt808Client:
    """Connects, registers, authenticates and serves until ``stop``; reconnects with backoff."""

    def __init__(self, settings: Jt808Settings, terminal: Jt808Terminal, stop: threading.Event):
        self.s = settings
        self.t = terminal
        self.stop = stop
        self.stats = ClientStats()
        self._serial = -1
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._errors_logged: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="jt808", daemon=True)
        self.session: Session | None = None
        self.reports = Reports(settings, terminal, self.stats, self.next_serial)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.wake()
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def wake(self) -> None:
        """A report was stored: let the session send it now (from any thread)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\x00")

    def next_serial(self) -> int:
        self._serial = (self._serial + 1) & 0xFFFF
        return self._serial

    def _run(self) -> None:
        import tenacity

        while not self.stop.is_set():
            retrying = tenacity.Retrying(
                stop=tenacity.stop_when_event_set(self.stop),
                wait=tenacity.wait_exponential(multiplier=0.5, min=0.5, max=self.s.reconnect_max_s)
                + tenacity.wait_random(0, 0.5),
                sleep=tenacity.sleep_using_event(self.stop),
                retry=tenacity.retry_if_exception_type(Exception),
                before_sleep=self._before_sleep,
                reraise=False,
            )
            try:
                for attempt in retrying:
                    with attempt:
                        self._connect_and_serve()
            except tenacity.RetryError:
                pass  # stopped while retrying
            except Exception as exc:  # pragma: no cover - tenacity hands every error back
                log.exception("jt808: unexpected: %s", exc)
                self.stop.wait(1.0)
        self.stats.state = "stopped"
        self.stats.connected = False

    def _before_sleep(self, rs: object) -> None:
        outcome = getattr(rs, "outcome", None)
        exc = outcome.exception() if outcome is not None else None
        nxt = getattr(getattr(rs, "next_action", None), "sleep", 0.0)
        self._report(exc, f"retrying in {nxt:.1f} s")

    def _report(self, exc: BaseException | None, then: str) -> None:
        text = f"{type(exc).__name__}: {exc}" if exc is not None else "?"
        self.stats.last_error = text
        self.stats.last_error_at = time.time()
        key = type(exc).__name__ + str(exc)[:60]
        if isinstance(exc, (OSError, UplinkError, FormatError)):
            if key not in self._errors_logged:
                log.warning("jt808: %s: %s (%s)", self.s.server, text, then)
            else:
                log.debug("jt808: %s: %s (%s)", self.s.server, text, then)
        elif key not in self._errors_logged:
            log.error("jt808: unexpected %s (%s)", text, then, exc_info=exc)
        if len(self._errors_logged) > 64:
            self._errors_logged.clear()
        self._errors_logged.add(key)

    # ------------------------------------------------------------------ connection

    def _open(self) -> socket.socket:
        s = self.s
        self.stats.state = "connecting"
        sock = socket.create_connection((s.host, s.port), timeout=s.response_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if s.tls:
                ctx = ssl.create_default_context(cafile=str(s.ca) if s.ca else None)
                if s.cert is not None and s.key is not None:
                    ctx.load_cert_chain(str(s.cert), str(s.key))
                sock = ctx.wrap_socket(sock, server_hostname=s.host)
            sock.settimeout(s.response_timeout_s)
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect_and_serve(self) -> None:
        if self.stop.is_set():
            return
        sock = self._open()
        sess = Session(sock, self.s)
        self.session = sess
        self.stats.connected = True
        try:
            self._handshake(sess)
            self.stats.sessions += 1
            self.stats.authenticated = True
            self.stats.state = "up"
            self._errors_logged.clear()
            log.info("jt808: authenticated with %s (phone %s)", self.s.server, self.s.phone)
            self._serve(sess)
        except LinkFailed as exc:
            if time.monotonic() - sess.started >= SHORT_SESSION_S and self.stats.authenticated:
                self._report(exc, "reconnecting")
                return  # a good session ended: the next attempt starts the backoff afresh
            raise
        finally:
            self.stats.connected = False
            self.stats.authenticated = False
            if self.stats.state != "stopped":
                self.stats.state = "down"
            self.session = None
            self.t.session_ended()
            with contextlib.suppress(OSError):
                sock.close()

    # ------------------------------------------------------------------ sending

    def _send(self, sess: Session, msg_id: int, body: bytes) -> int:
        return sess.send(msg_id, body, self.next_serial)

    def _respond(self, sess: Session, frame: Frame, result: int) -> None:
        body = m.encode_general_response(m.GeneralResponse(frame.serial, frame.msg_id, result))
        self._send(sess, m.T_GENERAL_RESPONSE, body)

    # ------------------------------------------------------------------ receiving

    def _read(self, sess: Session, timeout: float) -> None:
        """Wait up to ``timeout`` for platform bytes (or a wake-up); queue the frames read."""
        sock = sess.sock
        ready: list[socket.socket]
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            ready = [sock]
        else:
            try:
                ready, _, _ = select.select([sock, self._wake_r], [], [], timeout)
            except (OSError, ValueError) as exc:
                raise LinkFailed(f"select: {exc}") from exc
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
        if sock not in ready:
            return
        try:
            data = sock.recv(65536)
        except ssl.SSLWantReadError:
            return
        except (OSError, ssl.SSLError) as exc:
            raise LinkFailed(f"receive failed: {exc}") from exc
        if not data:
            raise LinkFailed("the platform closed the connection")
        for raw in sess.reader.feed(data):
            frame = self._parse(sess, raw)
            if frame is not None:
                sess.inbox.append(frame)

    def _parse(self, sess: Session, raw: bytes) -> Frame | None:
        try:
            frame = decode_frame(raw)
        except FormatError as exc:
            self.stats.malformed += 1
            self._note("frame", f"jt808: dropped a damaged frame from the platform: {exc}")
            return None
        if frame.header.phone.lstrip("0") != self.s.phone.lstrip("0"):
            self.stats.foreign += 1
            self._note("phone", f"jt808: a frame for phone {frame.header.phone}, not ours")
            return None
        if frame.header.package is None:
            return frame
        try:
            whole = sess.reassembler.add(frame)
        except FormatError as exc:
            self.stats.malformed += 1
            self._note("package", f"jt808: sub-packaged message dropped: {exc}")
            return None
        if whole is None:
            return None
        return Frame(whole.header, whole.body)

    def _note(self, kind: str, text: str) -> None:
        if kind not in self._errors_logged:
            log.warning("%s (further ones at debug level)", text)
            self._errors_logged.add(kind)
        else:
            log.debug("%s", text)

    # ------------------------------------------------------------------ handshake

    def _await(self, sess: Session, want: Callable[[Frame], bool], what: str) -> Frame:
        deadline = time.monotonic() + self.s.response_timeout_s
        while not self.stop.is_set():
            while sess.inbox:
                f = sess.inbox.popleft()
                if want(f):
                    return f
                self._dispatch(sess, f)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._read(sess, min(left, POLL_S))
        if self.stop.is_set():
            raise LinkFailed("stopping")
        raise LinkFailed(f"no {what} within {self.s.response_timeout_s:.0f} s")

    def _handshake(self, sess: Session) -> None:
        code = self.t.auth_code()
        if code is None:
            self.stats.state = "registering"
            self._send(sess, m.T_REGISTER, self.t.registration_body())
            # Any 0x8100 answers it: platforms in the field do not all echo our serial.
            frame = self._await(
                sess, lambda f: f.msg_id == m.P_REGISTER_RESPONSE, "registration response (0x8100)"
            )
            try:
                rr = m.decode_register_response(frame.body)
            except FormatError as exc:
                raise LinkFailed(f"registration response: {exc}") from exc
            if rr.result != 0:
                why = m.REGISTER_RESULTS.get(rr.result, f"result {rr.result}")
                raise LinkFailed(f"registration refused: {why}")
            self.t.store_auth_code(rr.code)
            code = rr.code
            log.info("jt808: registered with %s; authentication code kept", self.s.server)
        self.stats.state = "authenticating"
        self._send(sess, m.T_AUTH, self.t.authentication_body(code))
        frame = self._await(
            sess,
            lambda f: f.msg_id == m.P_GENERAL_RESPONSE and f.body[2:4] == b"\x01\x02",
            "answer to the authentication (0x8001 for 0x0102)",
        )
        try:
            r = m.decode_general_response(frame.body)
        except FormatError as exc:
            raise LinkFailed(f"authentication answer: {exc}") from exc
        if r.result != m.OK:
            self.t.forget_auth_code()
            raise LinkFailed(
                f"authentication refused ({m.RESULTS.get(r.result, r.result)}): the code is "
                "forgotten, the next connection registers again"
            )
        sess.live_from = self.t.session_started()

    # ------------------------------------------------------------------ serving

    def _serve(self, sess: Session) -> None:
        while not self.stop.is_set():
            while sess.inbox:
                self._dispatch(sess, sess.inbox.popleft())
            self.reports.live(sess)
            self.reports.backlog(sess)
            now = time.monotonic()
            if now - sess.last_tx >= self.t.heartbeat_s():
                serial = self._send(sess, m.T_HEARTBEAT, b"")
                sess.expect(serial, m.T_HEARTBEAT)
                self.stats.heartbeats += 1
            for serial, p in list(sess.pending.items()):
                if now > p.deadline:
                    raise LinkFailed(
                        f"no answer to 0x{p.msg_id:04x} (serial {serial}) within "
                        f"{self.s.response_timeout_s:.0f} s"
                    )
            for msg_id, first, missing in sess.reassembler.missing():
                if not self.s.v2019:
                    continue  # 2013 has no request for the platform's missing packages
                self._send(sess, m.T_RESEND_REQUEST, m.encode_resend_request(first, missing))
                log.info("jt808: asked for %d missing packages of 0x%04x", len(missing), msg_id)
            self._read(sess, POLL_S)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, sess: Session, frame: Frame) -> None:
        try:
            self._handle(sess, frame)
        except LinkFailed:
            raise
        except FormatError as exc:
            self.stats.malformed += 1
            self._note(
                f"body{frame.msg_id}", f"jt808: 0x{frame.msg_id:04x} from the platform: {exc}"
            )
            if frame.msg_id not in RESPONSES:
                self._respond(sess, frame, m.MESSAGE_ERROR)
        except Exception as exc:  # a bug must not end the terminal: answer "failure", go on
            key = f"bug{frame.msg_id}{type(exc).__name__}"
            if key not in self._errors_logged:
                log.exception("jt808: handling 0x%04x failed", frame.msg_id)
                self._errors_logged.add(key)
            if frame.msg_id not in RESPONSES:
                self._respond(sess, frame, m.FAILURE)

    def _handle(self, sess: Session, frame: Frame) -> None:
        msg_id = frame.msg_id
        if msg_id == m.P_GENERAL_RESPONSE:
            self._on_answer(sess, m.decode_general_response(frame.body, "0x8001"))
            return
        if msg_id == m.P_RESEND_REQUEST:
            serial, numbers = m.decode_resend_request(frame.body, frame.header.is_2019)
            kept = sess.sent_packages.get(serial)
            if kept is None:
                log.info("jt808: platform asks for packages of serial %d, no longer kept", serial)
                return
            for n in numbers:
                if n in kept:
                    sess.sock.sendall(kept[n])
            return
        if msg_id in RESPONSES:
            return  # an answer nobody asked for (e.g. a late 0x8100): ignored
        self.stats.platform_messages += 1
        if frame.header.encryption:
            self.stats.unsupported += 1
            self._respond(sess, frame, m.NOT_SUPPORTED)
            return
        replies = self.t.handle_platform(frame)
        if replies is None:
            self.stats.unsupported += 1
            self._note(f"unsupported{msg_id}", f"jt808: 0x{msg_id:04x} is not supported")
            self._respond(sess, frame, m.NOT_SUPPORTED)
            return
        for reply_id, body in replies:
            self._send(sess, reply_id, body)

    def _on_answer(self, sess: Session, r: m.GeneralResponse) -> None:
        p = sess.pending.get(r.serial)
        if p is None or p.msg_id != r.msg_id:
            return  # late, or for another message
        del sess.pending[r.serial]
        if not p.ids:
            return
        if r.result in (m.OK, m.ALARM_CONFIRMED):
            n = self.t.acknowledged(p.ids, r.result)
            self.stats.reports_acked += n
            return
        self.stats.refused += len(p.ids)
        if r.msg_id == m.T_BATCH and r.result == m.NOT_SUPPORTED:
            if sess.batch_ok:
                log.warning(
                    "jt808: the platform does not take 0x0704: sending the backlog one by one"
                )
            sess.batch_ok = False
            return
        sess.parked.update(p.ids)
        log.warning(
            "jt808: the platform answered 0x%04x (%d reports) with %s: kept, sent again at the "
            "next connection",
            r.msg_id,
            len(p.ids),
            m.RESULTS.get(r.result, r.result),
        )
