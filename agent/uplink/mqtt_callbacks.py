"""What paho's callbacks record for :class:`agent.uplink.mqtt.MqttLink`: the CONNACK (and its
limits: maximum packet size, topic alias maximum), a loss, the broker's PUBACKs and refusals,
SUBACKs (the link counts as subscribed once every route's subscription on this connection is
acknowledged), paho's socket errors, and received messages routed to bounded per-filter queues.

Callbacks only record facts under the link's lock and set its ``wake`` event. A received
message that finds its queue full is not acknowledged: the broker redelivers it on the next
connection.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from agent.uplink.mqtt import LinkConfig

# The link's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.uplink.mqtt")


@dataclass(frozen=True)
class Inbound:
    """A received message; hand it back to :meth:`MqttLink.ack` once handled."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    generation: int
    retain: bool = False


class Route:
    def __init__(self, pattern: str, qos: int, maxsize: int) -> None:
        self.pattern = pattern
        self.qos = qos
        self.queue: queue.Queue[Inbound] = queue.Queue(maxsize)


def strip_share(pattern: str) -> str:
    if pattern.startswith("$share/"):
        return pattern.split("/", 2)[2]
    return pattern


class PahoCallbacks:
    """paho's callbacks (a part of MqttLink: its ``__init__`` sets these attributes;
    ``_lock`` guards every one of them but ``cfg``, ``wake`` and ``_routes``)."""

    cfg: LinkConfig
    wake: threading.Event
    _lock: threading.Lock
    _routes: list[Route]
    _generation: int
    _connected: bool
    _connack: ReasonCode | None
    _session_present: bool
    _max_packet: int | None
    _pending: dict[int, float]  # mid -> time published (current generation)
    _failed: dict[int, str]  # mid -> reason the broker gave
    _lost_reason: str
    _last_socket_error: str
    _done_early: set[int]
    _alias_max: int  # topic aliases usable on this connection (CONNACK)
    _sub_mids: set[int]  # SUBSCRIBEs of this connection not yet acknowledged
    _subscribed_gen: int  # the connection whose every route the broker acknowledged
    _sub_refused: dict[str, str]  # route -> the reason the broker gave
    dropped_inbound: int

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        alias_max = getattr(props, "TopicAliasMaximum", 0) if props is not None else 0
        with self._lock:
            self._connack = reason
            if not reason.is_failure:
                self._connected = True
                self._session_present = bool(flags.session_present)
                self._max_packet = int(max_packet) if max_packet else None
                self._alias_max = min(self.cfg.topic_aliases, int(alias_max or 0))
        self.wake.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self._lock:
            self._connected = False
            self._lost_reason = str(reason)
        self.wake.set()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self._lock:
            if self._pending.pop(mid, None) is None:
                self._done_early.add(mid)
            if reason.is_failure:
                self._failed[mid] = str(reason)
        self.wake.set()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        with self._lock:
            if mid not in self._sub_mids:
                return
            self._sub_mids.discard(mid)
            for reason in reasons:
                if reason.is_failure:
                    self._sub_refused[str(mid)] = str(reason)
            if not self._sub_mids and not self._sub_refused:
                self._subscribed_gen = self._generation
        for reason in reasons:
            if reason.is_failure:
                log.error(
                    "mqtt %s: the broker refused a subscription: %s", self.cfg.client_id, reason
                )
        self.wake.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            generation = self._generation
        inbound = Inbound(msg.topic, bytes(msg.payload), msg.qos, msg.mid, generation, msg.retain)
        for r in self._routes:
            if paho.topic_matches_sub(strip_share(r.pattern), msg.topic):
                try:
                    r.queue.put_nowait(inbound)
                except queue.Full:
                    # Not acknowledged: the broker redelivers it on the next connection.
                    with self._lock:
                        self.dropped_inbound += 1
                break
        else:
            if msg.qos:
                client.ack(msg.mid, msg.qos)
        self.wake.set()

    def _on_error_log(self, buf: str) -> None:
        with self._lock:
            self._last_socket_error = buf
