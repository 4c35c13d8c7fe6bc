"""A small, thread-safe wrapper around one paho-mqtt 2.x connection that never gives up.

- Callback API version 2; MQTT 5 by default, 3.1.1 selectable.
- Mutual TLS (TLS 1.2+, the broker's name checked against ``server_name`` or the host).
- Client id = the identity (device id); a persistent session (MQTT 5: ``clean_start=False`` and a
  ``SessionExpiryInterval``; 3.1.1: ``clean_session=False``).
- An optional retained birth message on connect and a retained last will.
- MQTT 5 topic aliases (``LinkConfig.topic_aliases``, at most the broker's Topic Alias
  Maximum): the first publish of a topic on a connection names it and sets an alias, every
  later one sends the 2-byte alias instead of the topic. Aliases live as long as a connection.
- Reconnects through :class:`agent.contain.Reconnect` (tenacity: exponential backoff with
  jitter), forever, cut short at once by the stop event; each change of state (and each new
  kind of error) is logged once.
- A fresh paho client per connection: paho keeps unacknowledged messages in memory and would
  resend stale ones after a reconnect; our spool is the real queue, so we start clean each time.
- Callbacks only record facts under a lock and set the ``wake`` event. Received messages go to
  bounded per-filter queues and are acknowledged (PUBACK) by the consumer with :meth:`ack`,
  after it has handled them: the broker redelivers whatever we did not finish. The broker sends
  at most ``receive_maximum`` unacknowledged messages, which bounds the queues.

Thread use: one thread (started by :meth:`start`) runs the network loop; any thread may call
:meth:`publish`, :meth:`ack`, :meth:`outstanding`; ``self._lock`` guards every field below it.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.contain import Failures, Reconnect
from agent.errors import UplinkError
from agent.uplink.mqtt_callbacks import Inbound, PahoCallbacks, Route

# Inbound lives beside the callbacks that make it; consumers import it from here.
__all__ = [
    "Inbound",
    "LinkConfig",
    "MqttLink",
    "Sent",
    "Will",
    "check_certificate",
    "explain_connack",
    "explain_tls_error",
    "paho_client",
    "tls_context",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkConfig:
    """Everything one connection needs (built from UplinkSettings or the ingest CLI)."""

    host: str
    port: int
    client_id: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""
    protocol: str = "mqtt5"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    connect_timeout_s: float = 10.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    receive_maximum: int = 64
    max_inflight: int = 64
    tls: bool = True
    # Topic aliases this client sets (MQTT 5 only; 0 = none); capped by the broker's maximum.
    topic_aliases: int = 0


@dataclass(frozen=True)
class Sent:
    """A publish in flight on connection ``generation``."""

    mid: int
    generation: int


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes


def explain_tls_error(exc: BaseException, cfg: LinkConfig) -> str:
    """A message a technician can act on, from an ssl/socket error."""
    name = cfg.server_name or cfg.host
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in (2, 18, 19, 20, 21):
            return (
                f"the broker's certificate at {cfg.host}:{cfg.port} is not signed by the CA in "
                f"{cfg.ca} (wrong CA file?): {exc.verify_message}"
            )
        if code == 10:
            return f"the broker's certificate at {cfg.host}:{cfg.port} has expired"
        if code == 62:
            return (
                f"the broker's certificate does not name {name!r} (server name check failed); "
                "set uplink.server_name to a name in the certificate"
            )
        return f"the broker's certificate was refused: {exc.verify_message}"
    text = str(exc)
    low = text.lower()
    if "certificate expired" in low:
        return f"the broker refused our certificate {cfg.cert}: it has expired"
    if "unknown ca" in low or "bad certificate" in low or "certificate unknown" in low:
        return (
            f"the broker refused our certificate {cfg.cert}: not issued by a CA it trusts ({text})"
        )
    if "certificate required" in low:
        return "the broker requires a client certificate; set uplink.cert and uplink.key"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {cfg.host}:{cfg.port} (is the broker running there?)"
    if isinstance(exc, TimeoutError | socket_timeout()):
        return f"no answer from {cfg.host}:{cfg.port} within {cfg.connect_timeout_s:g} s"
    return f"cannot reach the broker at {cfg.host}:{cfg.port}: {text or type(exc).__name__}"


def socket_timeout() -> type[BaseException]:
    import socket

    return socket.timeout


def explain_connack(reason: ReasonCode | int, cfg: LinkConfig) -> str:
    text = str(reason)
    value = reason.value if isinstance(reason, ReasonCode) else int(reason)
    if value in (135, 5):
        return (
            f"the broker refused the session for {cfg.client_id!r}: not authorised "
            "(is the certificate's CN the device id, and is it allowed by the broker's ACL?)"
        )
    if value in (134, 4):
        return f"the broker refused the session for {cfg.client_id!r}: bad user name or password"
    if value in (133, 2):
        return f"the broker refused the client id {cfg.client_id!r}"
    if value in (132, 1):
        return f"the broker does not speak {cfg.protocol}"
    return f"the broker refused the session for {cfg.client_id!r}: {text} ({value})"


def check_certificate(path: Path | None, now: dt.datetime | None = None) -> None:
    """Refuse, with a clear message, a client certificate that is missing or out of date."""
    if path is None:
        return
    from agent.uplink.cert_dates import load_pem_x509_certificate  # not x509: docs/scale.md

    try:
        cert = load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise UplinkError(f"certificate {path}: cannot read: {exc}") from None
    except ValueError as exc:
        raise UplinkError(f"certificate {path}: not a PEM certificate: {exc}") from None
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise UplinkError(
            f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "renew it (or check the device clock)"
        )
    if cert.not_valid_before_utc > now:
        raise UplinkError(
            f"certificate {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC; check the device clock"
        )


class _NamedContext(ssl.SSLContext):
    """An SSLContext that checks a configured server name instead of the host we dial."""

    server_name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(cfg: LinkConfig) -> ssl.SSLContext:
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = cfg.server_name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if cfg.ca is not None:
            ctx.load_verify_locations(cafile=str(cfg.ca))
        else:
            ctx.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"CA file {cfg.ca}: cannot load: {exc}") from None
    if cfg.cert is not None:
        try:
            ctx.load_cert_chain(str(cfg.cert), str(cfg.key) if cfg.key else None)
        except (OSError, ssl.SSLError) as exc:
            raise UplinkError(
                f"client certificate {cfg.cert} / key {cfg.key}: cannot load: {exc}"
            ) from None
    return ctx


class MqttLink(PahoCallbacks):
    """One MQTT identity's connection, kept up until ``stop`` is set. See the module docstring."""

    def __init__(
        self,
        cfg: LinkConfig,
        stop: threading.Event,
        *,
        will: Will | None = None,
        birth: Callable[[], tuple[str, bytes]] | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.stop = stop
        self.wake = wake or threading.Event()
        self._will = will
        self._birth = birth
        self._routes: list[Route] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # guarded by _lock:
        self._client: paho.Client | None = None
        self._generation = 0
        self._connected = False
        self._connack: ReasonCode | None = None
        self._session_present = False
        self._max_packet: int | None = None
        self._pending: dict[int, float] = {}  # mid -> time published (current generation)
        self._failed: dict[int, str] = {}  # mid -> reason the broker gave
        self._lost_reason = ""
        self._last_socket_error = ""
        self._done_early: set[int] = set()
        self._alias_max = 0  # topic aliases usable on this connection (CONNACK)
        self._sub_mids: set[int] = set()  # SUBSCRIBEs of this connection not yet acknowledged
        self._subscribed_gen = 0  # the connection whose every route the broker acknowledged
        self._sub_refused: dict[str, str] = {}  # route -> the reason the broker gave
        self._state_logged = ""
        self._aliases = _TopicAliases()
        self._failures = Failures(f"mqtt {cfg.client_id}", log)
        self._retry = Reconnect(
            f"mqtt {cfg.client_id}",
            stop,
            log,
            min_s=cfg.backoff_min_s,
            max_s=cfg.backoff_max_s,
            jitter_s=cfg.backoff_min_s,
            on_lost=lambda why: self._log_state(f"cannot connect: {why}"),
            on_retry=lambda why: self._log_state(f"cannot connect: {why}"),
            on_restored=lambda gap_s, attempts: None,  # _serve logs "connected"
        )
        self.dropped_inbound = 0
        # Told (topic, payload bytes) of every message handed to the broker connection, e.g.
        # agent.cellular.traffic.TrafficMeter.count: what was sent per lane and per day.
        self.meter: Callable[[str, int], None] | None = None

    # ------------------------------------------------------------------ setup

    def route(self, pattern: str, qos: int = 1) -> queue.Queue[Inbound]:
        """Subscribe to ``pattern`` (on every connect); its messages arrive in the queue."""
        if self._thread is not None:
            raise UplinkError("route() must be called before start()")
        r = Route(pattern, qos, maxsize=max(16, 4 * self.cfg.receive_maximum))
        self._routes.append(r)
        return r.queue

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.cfg.client_id}")
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ facts

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    @property
    def subscribed(self) -> bool:
        """True once the broker acknowledged every route's subscription on this connection:
        from then on it delivers what matches them (``connected`` comes one round trip
        earlier, at the CONNACK; a message published in between reaches no subscription)."""
        with self._lock:
            return self._connected and self._subscribed_gen == self._generation

    @property
    def max_packet(self) -> int | None:
        with self._lock:
            return self._max_packet

    @property
    def session_present(self) -> bool:
        with self._lock:
            return self._session_present

    def outstanding(self) -> int:
        """Publishes on the current connection not yet acknowledged by the broker."""
        with self._lock:
            return len(self._pending)

    def pending(self, sent: Sent) -> bool:
        """True while the broker has not acknowledged ``sent`` on its connection."""
        with self._lock:
            return sent.generation == self._generation and sent.mid in self._pending

    def failures(self) -> dict[int, str]:
        """Publishes the broker refused (MQTT 5 reason codes such as 135, not authorised)."""
        with self._lock:
            out, self._failed = self._failed, {}
            return out

    # ------------------------------------------------------------------ actions

    def publish(
        self, topic: str, payload: bytes | bytearray, qos: int = 1, retain: bool = False
    ) -> Sent | None:
        """Publish now on the current connection; None when not connected."""
        with self._lock:
            client = self._client if self._connected else None
            generation = self._generation
        if client is None:
            return None
        try:
            if self.cfg.topic_aliases and self.cfg.protocol == "mqtt5":
                with self._lock:
                    usable = self._alias_max if generation == self._generation else 0
                info = self._aliases.publish(
                    client, generation, usable, topic, payload, qos, retain
                )
            else:
                info = client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, OSError) as exc:
            raise UplinkError(f"publish to {topic}: {exc}") from exc
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS,):
            return None
        if self.meter is not None:
            self.meter(topic, len(payload))
        if qos == 0:
            return Sent(info.mid, generation)
        with self._lock:
            if self._generation == generation and info.mid not in self._done_early:
                self._pending[info.mid] = time.monotonic()
            self._done_early.discard(info.mid)
        return Sent(info.mid, generation)

    def ack(self, msg: Inbound) -> None:
        """Acknowledge a handled message to the broker (on its own connection only)."""
        if msg.qos == 0:
            return
        with self._lock:
            client = self._client if msg.generation == self._generation else None
        if client is not None:
            client.ack(msg.mid, msg.qos)

    # ------------------------------------------------------------------ the loop

    def _new_client(self) -> paho.Client:
        client = paho_client(self.cfg, self._will)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        # paho's errors (the reason a TLS socket failed), without an on_log callback: with one,
        # paho formats a debug line for every packet sent and received.
        client.enable_logger(_ErrorTap(self._on_error_log))
        return client

    def _connect_once(self) -> paho.Client:
        cfg = self.cfg
        if cfg.tls:
            check_certificate(cfg.cert)
        client = self._new_client()
        props: Properties | None = None
        if cfg.protocol == "mqtt5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
        with self._lock:
            self._connack = None
            self._connected = False
            self._last_socket_error = ""
        try:
            if cfg.protocol == "mqtt5":
                client.connect(
                    cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=props
                )
            else:
                client.connect(cfg.host, cfg.port, cfg.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            _close(client)
            raise UplinkError(explain_tls_error(exc, cfg)) from None
        except ValueError as exc:  # e.g. a host name the IDNA codec refuses (label too long)
            _close(client)
            raise UplinkError(f"cannot connect to {cfg.host[:80]!r}:{cfg.port}: {exc}") from None
        deadline = time.monotonic() + cfg.connect_timeout_s
        while True:
            rc = client.loop(0.1)
            with self._lock:
                connack, err = self._connack, self._last_socket_error
            if connack is not None:
                if connack.is_failure:
                    _close(client)
                    raise UplinkError(explain_connack(connack, cfg))
                return client
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                _close(client)
                raise UplinkError(explain_loss(err, "the connection closed during setup", cfg))
            if self.stop.is_set():
                _close(client)
                raise UplinkError("stopping")
            if time.monotonic() > deadline:
                _close(client)
                raise UplinkError(
                    f"no CONNACK from {cfg.host}:{cfg.port} within {cfg.connect_timeout_s:g} s"
                )

    def _log_state(self, state: str, level: int = logging.WARNING) -> None:
        """Log a change of state (or of error) once, not once per attempt."""
        if state != self._state_logged:
            self._state_logged = state
            log.log(level, "mqtt %s: %s", self.cfg.client_id, state)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                client = self._retry.call(self._connect_once, (UplinkError,))
            except Exception as exc:  # a bug: reported, waited out, never the link's end
                self._failures("connecting", exc)
                self.stop.wait(self.cfg.backoff_max_s)
                continue
            if client is None:
                continue  # only when stopping
            self._retry.restored()
            began = time.monotonic()
            try:
                self._serve(client)
            except Exception as exc:
                self._failures("serving the connection", exc)
                _close(client)
                with self._lock:
                    self._connected = False
                    self._client = None
                self.wake.set()
            if time.monotonic() - began < self.cfg.backoff_min_s:
                # A connection that drops at once (e.g. a refused certificate under TLS 1.3):
                # wait before trying again rather than spinning.
                self.stop.wait(self.cfg.backoff_min_s)
        with self._lock:
            self._connected = False
        self.wake.set()

    def _serve(self, client: paho.Client) -> None:
        cfg = self.cfg
        mids = {client.subscribe(r.pattern, qos=r.qos)[1] for r in self._routes}
        with self._lock:
            self._generation += 1
            self._sub_mids = {m for m in mids if m is not None}
            self._sub_refused.clear()
            if not self._routes:
                self._subscribed_gen = self._generation
            self._client = client
            self._pending.clear()
            self._failed.clear()
            self._done_early.clear()
            self._connected = True
            session = self._session_present
        self._log_state(
            f"connected to {cfg.host}:{cfg.port} ({cfg.protocol}, session "
            f"{'resumed' if session else 'new'})",
            logging.INFO,
        )
        if self._birth is not None:
            topic, payload = self._birth()
            client.publish(topic, payload, qos=1, retain=True)
        self.wake.set()
        while not self.stop.is_set():
            rc = client.loop(0.2)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        with self._lock:
            self._connected = False
            self._client = None
            err, lost = self._last_socket_error, self._lost_reason
            self._pending.clear()
        if self.stop.is_set():
            try:
                if self._will is not None:
                    # A clean DISCONNECT suppresses the will: say "offline" ourselves.
                    client.publish(self._will.topic, self._will.payload, qos=1, retain=True)
                    client.loop(0.2)
                client.disconnect()
                client.loop(0.2)
            except (OSError, ValueError):
                pass
            self._log_state("disconnected (stopping)", logging.INFO)
        else:
            default = f"closed by {cfg.host}:{cfg.port} ({lost or 'no reason given'})"
            self._log_state(f"connection lost: {explain_loss(err, default, cfg)}")
        _close(client)
        self.wake.set()


def paho_client(cfg: LinkConfig, will: Will | None) -> paho.Client:
    """A paho client for ``cfg``, its callbacks not yet set."""
    v5 = cfg.protocol == "mqtt5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else False,
        manual_ack=True,
    )
    # Only the loop thread touches the socket: with a write-registration callback set, paho
    # queues packets published from other threads and wakes the loop instead of writing
    # inline (an SSL socket must not be read and written by two threads at once; doing so
    # stalled the link for a second at a time).
    client.on_socket_register_write = _no_op
    client.on_socket_unregister_write = _no_op
    client.max_inflight_messages_set(cfg.max_inflight)
    client.max_queued_messages_set(0)
    client.connect_timeout = cfg.connect_timeout_s
    if cfg.tls:
        client.tls_set_context(tls_context(cfg))
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=True)
    return client


def explain_loss(err: str, default: str, cfg: LinkConfig) -> str:
    """Why a connection was lost, from paho's last error line (``default`` without one)."""
    if not err:
        return default
    low = err.lower()
    if "certificate" in low or "alert" in low:
        return explain_tls_error(ssl.SSLError(err), cfg)
    return err


def _no_op(client: paho.Client, userdata: Any, sock: Any) -> None:
    return None


class _ErrorTap(logging.Logger):
    """The logger paho is given: hands its error lines to ``sink``, drops the rest at once."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__("paho")
        self._sink = sink

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            try:
                self._sink(str(msg) % args if args else str(msg))
            except (TypeError, ValueError):
                self._sink(str(msg))


class _TopicAliases:
    """The topic aliases of one connection (``generation``), assigned and handed to paho under
    one lock, so a topic's naming publish always goes out before its aliased ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, int] = {}
        self._generation = 0
        self._props: dict[int, _AliasProperties] = {}

    def publish(
        self,
        client: paho.Client,
        generation: int,
        usable: int,
        topic: str,
        payload: bytes | bytearray,
        qos: int,
        retain: bool,
    ) -> paho.MQTTMessageInfo:
        """Publish with a topic alias where the connection allows ``usable`` of them."""
        with self._lock:
            if generation > self._generation:
                self._generation, self._names = generation, {}
            if not usable or generation != self._generation:
                return client.publish(topic, payload, qos=qos, retain=retain)
            alias = self._names.get(topic)
            if alias is not None:
                props = self._properties(alias)
                return client.publish("", payload, qos=qos, retain=retain, properties=props)
            if len(self._names) < usable:
                alias = self._names[topic] = len(self._names) + 1
                props = self._properties(alias)
                return client.publish(topic, payload, qos=qos, retain=retain, properties=props)
            return client.publish(topic, payload, qos=qos, retain=retain)

    def _properties(self, alias: int) -> _AliasProperties:
        props = self._props.get(alias)
        if props is None:
            props = self._props[alias] = _AliasProperties(alias)
        return props


class _AliasProperties(Properties):
    """A PUBLISH's Topic Alias property, packed once (paho packs properties by walking every
    property name on each publish, and formats them for its debug line)."""

    def __init__(self, alias: int) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.TopicAlias = alias
        # Properties refuses attributes that are not property names: set ours past it.
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_text", f"[TopicAlias : {alias}]")

    def pack(self) -> bytes:
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed

    def __str__(self) -> str:
        text: str = object.__getattribute__(self, "_text")
        return text


def _close(client: paho.Client) -> None:
    try:
        sock = client.socket()
        if sock is not None:
            sock.close()
    except OSError:
        pass
