"""deploy/mosquitto/: the shipped broker configuration and ACL, run by the Debian mosquitto.

The files are used as shipped; only what is site-specific is rewritten (certificate paths to a
throw-away PKI, the listener to a free loopback port) and what Debian's main mosquitto.conf
would add is prepended (user, log, persistence). Checks: per-device isolation (a publish
refused with MQTT 5 reason 135, nothing of another device delivered), the ingest identity's
shared subscription, no connection without a client certificate, nothing below TLS 1.2.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from agent.uplink.lab import INGEST_IDENTITY, Pki, free_port, make_pki

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "mosquitto" / "edge-agent.conf"
ACL = REPO / "deploy" / "mosquitto" / "edge-agent.acl"
A, B = "cam-a", "truck-b"
NOT_AUTHORIZED = 135


def site_config(directory: Path, pki: Pki, port: int) -> Path:
    text = CONF.read_text()
    replacements = {
        "/etc/mosquitto/certs/ca.crt": str(pki.ca),
        "/etc/mosquitto/certs/broker.crt": str(pki.server_cert),
        "/etc/mosquitto/certs/broker.key": str(pki.server_key),
        "/etc/mosquitto/edge-agent.acl": str(directory / "edge-agent.acl"),
        "\nlistener 8883\n": f"\nlistener {port} 127.0.0.1\n",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    shutil.copy2(ACL, directory / "edge-agent.acl")
    (directory / "data").mkdir()
    # What Debian's /etc/mosquitto/mosquitto.conf adds around conf.d (and stay our own user).
    main = [
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        "persistence true",
        f"persistence_location {directory / 'data'}/",
        f"log_dest file {directory / 'mosquitto.log'}",
        "log_type all",
    ]
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(main) + "\n" + text)
    return conf


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, int, Path]]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is missing: install the Debian package mosquitto (make setup)")
    d = tmp_path_factory.mktemp("broker")
    pki = make_pki(d / "pki", (A, B, INGEST_IDENTITY))
    port = free_port()
    conf = site_config(d, pki, port)
    proc = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)
        yield pki, port, d / "mosquitto.log"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


class Client:
    """A paho MQTT 5 client that records what the broker answered."""

    def __init__(self, pki: Pki, port: int, identity: str) -> None:
        cert = pki.client(identity)
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=identity, protocol=paho.MQTTv5)
        self.c.tls_set(ca_certs=str(pki.ca), certfile=str(cert.cert), keyfile=str(cert.key))
        self.connected = threading.Event()
        self.acks: queue.Queue[tuple[str, int, int]] = queue.Queue()
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: (
            self.connected.set() if not rc.is_failure else None
        )
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.put(("pub", mid, rc.value))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.acks.put(("sub", mid, rcs[0].value))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.connect("127.0.0.1", port, properties=Properties(paho.PacketTypes.CONNECT))
        self.c.loop_start()
        assert self.connected.wait(10), f"{identity} did not connect"

    def ack(self, kind: str, mid: int) -> int:
        got = self.acks.get(timeout=10)
        assert got[:2] == (kind, mid), got
        return got[2]

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        return self.ack("pub", self.c.publish(topic, payload, qos=1).mid)

    def subscribe(self, topic: str) -> int:
        _rc, mid = self.c.subscribe(topic, qos=1)
        assert mid is not None
        return self.ack("sub", mid)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_device_isolation_and_shared_ingest(broker: tuple[Pki, int, Path]) -> None:
    pki, port, _log = broker
    ingest = Client(pki, port, INGEST_IDENTITY)
    a = Client(pki, port, A)
    b = Client(pki, port, B)
    try:
        assert ingest.subscribe("$share/ingest/devices/+/up/#") == 1
        assert ingest.subscribe("devices/+/state") == 1
        # A device writes under its own tree and reads its own downlink.
        assert a.subscribe(f"devices/{A}/down/#") == 1
        assert a.publish(f"devices/{A}/up/seg/gps", b"chunk") == 0
        m = ingest.messages.get(timeout=10)
        assert (m.topic, m.payload) == (f"devices/{A}/up/seg/gps", b"chunk")
        # Not under another device's tree, either way.
        assert a.publish(f"devices/{B}/up/seg/gps", b"forged") == NOT_AUTHORIZED
        # mosquitto 2.0 grants any subscription and applies the read ACL to each delivery:
        # A's wildcards over B's tree (or everyone's) must bring nothing of B's.
        a.subscribe(f"devices/{B}/#")
        a.subscribe("devices/+/down/#")
        b.subscribe(f"devices/{B}/down/#")
        # The ingest identity answers on each device's downlink; only the owner hears it.
        assert ingest.publish(f"devices/{B}/down/cmd", b"for b") == 0
        assert ingest.publish(f"devices/{A}/down/ack", b"for a") == 0
        m = b.messages.get(timeout=10)
        assert (m.topic, m.payload) == (f"devices/{B}/down/cmd", b"for b")
        got = [a.messages.get(timeout=10)]
        time.sleep(0.5)
        while not a.messages.empty():
            got.append(a.messages.get())
        # (Once per matching subscription: overlapping filters may each deliver a copy.)
        assert {(m.topic, m.payload) for m in got} == {(f"devices/{A}/down/ack", b"for a")}
        assert ingest.messages.empty(), "the forged publish reached the platform"
    finally:
        for c in (a, b, ingest):
            c.close()


def tls_handshake(port: int, ctx: ssl.SSLContext) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        # TLS 1.3 reports a missing client certificate only after the handshake.
        tls.sendall(b"\x10\x00")
        if tls.recv(1) == b"":
            raise ssl.SSLError("closed by the broker")


def test_no_client_certificate_no_connection(broker: tuple[Pki, int, Path]) -> None:
    pki, port, _log = broker
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_handshake(port, ctx)


def test_tls_below_1_2_refused(broker: tuple[Pki, int, Path]) -> None:
    pki, port, _log = broker
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    cert = pki.client(A)
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point of this test
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_handshake(port, ctx)
    # The same certificate over TLS 1.2 is accepted (the refusal above is the version's).
    ctx12 = ssl.create_default_context(cafile=str(pki.ca))
    ctx12.load_cert_chain(str(cert.cert), str(cert.key))
    ctx12.minimum_version = ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx12.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.2"
