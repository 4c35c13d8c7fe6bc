"""Who may talk to the broker, and about what (mosquitto with the shipped configuration and ACL,
``deploy/mosquitto/``, as ``agent.labs.broker`` runs it).

- no client certificate, a certificate from another CA, or an expired one: refused at the TLS
  handshake (no MQTT session at all);
- another device's certificate cannot read or write this device's topics: its subscription to
  ``devices/#`` receives nothing of another device's, and its publishes there are refused
  (MQTT 5 reason 135). tests/uplink/test_isolation.py covers the client-id takeover and forged
  segments; together they are the isolation evidence.
"""

from __future__ import annotations

import datetime as dt
import queue
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from agent.labs.broker import Mosquitto, Pki, other_ca
from tests.fixtures.pki import DEVICE_A, DEVICE_B, OPERATOR


def _tls_handshake(
    port: int, ca: Path, cert: Path | None = None, key: Path | None = None
) -> str | None:
    """None when the broker accepts the handshake (and answers MQTT), else the refusal."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            # MQTT 3.1.1 CONNECT with client id "probe"; a refused client gets no CONNACK.
            s.sendall(bytes.fromhex("101100044d5154540402003c000570726f6265"))
            data = s.recv(4)
            return None if data[:1] == b"\x20" else f"no CONNACK ({data!r})"
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        raw.close()


def test_client_certificates_are_required(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    port = broker_alive.port
    a = pki.client(DEVICE_A)
    assert _tls_handshake(port, pki.ca, a.cert, a.key) is None, "the genuine device is refused"
    assert _tls_handshake(port, pki.ca) is not None, "a client without a certificate got in"
    # A certificate with the right name, signed by a CA the broker does not trust.
    foreign_dir = tmp_path / "foreign"
    foreign_ca = other_ca(foreign_dir)
    from agent.labs.broker import Pki as LabPki

    foreign = LabPki(
        foreign_dir, foreign_ca, foreign_dir / "other-ca.key", pki.server_cert, pki.server_key
    ).issue(DEVICE_A, name="forged")
    assert _tls_handshake(port, pki.ca, foreign.cert, foreign.key) is not None
    # Our CA, but expired.
    now = dt.datetime.now(dt.UTC)
    old = pki.issue(
        DEVICE_A,
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
        name="expired-a",
    )
    assert _tls_handshake(port, pki.ca, old.cert, old.key) is not None


class Client:
    def __init__(self, pki: Pki, identity: str, port: int) -> None:
        c = pki.client(identity)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self.connected = threading.Event()
        m = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=identity, protocol=mqtt.MQTTv5)
        m.tls_set(ca_certs=str(pki.ca), certfile=str(c.cert), keyfile=str(c.key))
        m.on_connect = lambda *_a: self.connected.set()
        m.on_message = lambda _c, _u, msg: self.messages.put(msg)
        m.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(list(codes))

        def on_publish(_c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            self.pubacks[mid] = rc

        m.on_publish = on_publish
        self.m = m
        m.connect("127.0.0.1", port, keepalive=10)
        m.loop_start()
        assert self.connected.wait(10), f"{identity} did not connect"

    def close(self) -> None:
        self.m.loop_stop()
        self.m.disconnect()


def test_one_device_cannot_read_or_write_anothers_topics(pki: Pki, broker_alive: Mosquitto) -> None:
    a = Client(pki, DEVICE_A, broker_alive.port)
    b = Client(pki, DEVICE_B, broker_alive.port)
    try:
        # B asks for everything, and for A's tree by name.
        b.m.subscribe([("devices/#", 1), (f"devices/{DEVICE_A}/#", 1)])
        b.subacks.get(timeout=10)  # mosquitto grants it and filters each message by the ACL
        threading.Event().wait(0.3)
        while not b.messages.empty():  # B's own retained state may arrive: only its own
            msg = b.messages.get()
            assert msg.topic.startswith(f"devices/{DEVICE_B}/"), msg.topic
        # A publishes on its own tree: B must see none of it.
        for topic in ("live/fix", "up/cmd", "down/ack", "state"):
            info = a.m.publish(f"devices/{DEVICE_A}/{topic}", b'{"secret":1}', qos=1)
            info.wait_for_publish(10)
        # B writes into A's tree (a forged command answer, a forged ack for A): refused.
        mids = [
            b.m.publish(f"devices/{DEVICE_A}/{t}", b"forged", qos=1).mid
            for t in ("down/cmd", "down/ack", "up/seg/video", "live/fix")
        ]
        threading.Event().wait(1.0)
        for mid in mids:
            rc = b.pubacks.get(mid)
            assert rc is not None and rc.is_failure and rc.value == 135, (mid, rc)
        while not b.messages.empty():
            msg = b.messages.get()
            assert not msg.topic.startswith(f"devices/{DEVICE_A}/"), f"device B read {msg.topic}"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("identity", [DEVICE_A])
def test_a_device_reads_its_own_topics(pki: Pki, broker_alive: Mosquitto, identity: str) -> None:
    """The control for the test above: the same subscriptions do see the device's own downlink
    (the platform's command), and the device may write its own uplink."""
    a = Client(pki, identity, broker_alive.port)
    ops = Client(pki, OPERATOR, broker_alive.port)
    try:
        a.m.subscribe([("devices/#", 1), (f"devices/{identity}/#", 1)])
        a.subacks.get(timeout=10)
        ops.m.publish(f"devices/{identity}/down/cmd", b"mine", qos=1).wait_for_publish(10)
        got = a.messages.get(timeout=10)
        while got.topic != f"devices/{identity}/down/cmd":  # its own retained state, first
            got = a.messages.get(timeout=10)
        assert got.payload == b"mine"
        info = a.m.publish(f"devices/{identity}/live/fix", b"{}", qos=1)
        info.wait_for_publish(10)
        threading.Event().wait(0.3)
        rc = a.pubacks.get(info.mid)
        assert rc is not None and not rc.is_failure, rc
    finally:
        a.close()
        ops.close()
