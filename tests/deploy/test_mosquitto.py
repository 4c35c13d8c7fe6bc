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

from agent.labs.broker import INGEST_IDENTITY, Pki, free_port, make_pki

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


# --------------------------------------------------------------------------- issue 15

DEVICE_SUFFIXES = {
    "write": ("state", "heads", "live/fix", "live/alarm", "live/status", "up/key", "up/seg/+",
              "up/cmd", "talk/out", "talk/receipt"),
    "read": ("down/ack", "down/cmd", "talk/in", "talk/ctl"),
}  # fmt: skip


def _patterns() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"write": [], "read": [], "readwrite": []}
    for line in ACL.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "pattern":
            out[parts[1]].append(parts[2])
    return out


def _level_matches(a: str, b: str) -> bool:
    """Can one topic level match both? '+' (a stream, the ACL's one wildcard) matches any
    name the platform accepts as a stream."""
    from agent.errors import FormatError
    from agent.uplink.protocol import check_stream

    if "+" not in (a, b):
        return a == b
    other = b if a == "+" else a
    try:
        check_stream(other)
    except FormatError:
        return other == "+"
    return True


def _ends_with(longer: list[str], shorter: list[str]) -> bool:
    tail = longer[len(longer) - len(shorter) :]
    return all(_level_matches(a, b) for a, b in zip(tail, shorter, strict=True))


def test_acl_names_each_device_topic_and_no_suffix_ends_another() -> None:
    """A CN with k '/' reaches devices/<k+1 levels>/<suffix>; that is another device's topic
    only if some suffix ends with another one (issue 15, finding 4). None does, no pattern is
    a wildcard tree, and devices can write nothing under down/."""
    pats = _patterns()
    assert not pats["readwrite"], pats["readwrite"]
    for mode in ("write", "read"):
        assert sorted(pats[mode]) == sorted(f"devices/%u/{s}" for s in DEVICE_SUFFIXES[mode])
    suffixes = [s.split("/") for mode in DEVICE_SUFFIXES.values() for s in mode]
    for a in suffixes:
        for b in suffixes:
            if len(a) > len(b):
                assert not _ends_with(a, b), f"{'/'.join(a)} ends with {'/'.join(b)}"
    assert all("#" not in p for ps in pats.values() for p in ps)
    # The check can fail: a stream named like a suffix would make up/seg/+ end with it.
    assert _ends_with(["up", "seg", "+"], ["video"])


def test_a_cn_with_a_slash_cannot_publish_into_another_devices_tree(
    broker: tuple[Pki, int, Path],
) -> None:
    """Finding 4 on the broker: certificates whose CN is 'cam-a/up', 'cam-a/live', '+', '#'."""
    pki, port, _log = broker
    for cn, name in (("cam-a/up", "slash-up"), ("cam-a/live", "slash-live"), ("+", "plus"),
                     ("#", "hash")):  # fmt: skip
        if not pki.client(name).cert.exists():
            pki.issue(cn, name=name)
    ingest = Client(pki, port, INGEST_IDENTITY)
    evil: list[Client] = []
    try:
        assert ingest.subscribe(f"devices/{A}/#") == 1
        tries = {
            "slash-up": [f"devices/{A}/up/seg/video", f"devices/{A}/up/key", f"devices/{A}/up/cmd"],
            "slash-live": [f"devices/{A}/live/fix", f"devices/{A}/live/status"],
            "plus": [f"devices/{A}/up/key", f"devices/{A}/state"],
            "hash": [f"devices/{A}/up/key", f"devices/{A}/state"],
        }  # fmt: skip
        for name, topics in tries.items():
            c = Client(pki, port, name)  # certificate files named `name`, CN `cn`
            evil.append(c)
            for topic in topics:
                assert c.publish(topic, b"forged") == NOT_AUTHORIZED, (name, topic)
            # ... nor read the device's downlink.
            c.subscribe(f"devices/{A}/#")
        assert ingest.publish(f"devices/{A}/down/ack", b"for a") == 0
        time.sleep(0.5)
        for c in evil:
            assert c.messages.empty(), "a forged identity read cam-a's downlink"
        got = []
        while not ingest.messages.empty():
            got.append(ingest.messages.get())
        assert all(m.payload != b"forged" for m in got), [m.topic for m in got]
    finally:
        for c in [ingest, *evil]:
            c.close()


def test_shipped_queue_and_packet_limits() -> None:
    conf = dict(
        line.split(None, 1) for line in CONF.read_text().splitlines() if line and line[0] != "#"
    )
    assert int(conf["max_queued_bytes"]) == 256 * 1024 * 1024
    assert 1000 <= int(conf["max_queued_messages"]) <= 100_000
    assert int(conf["max_packet_size"]) == 1024 * 1024


def test_a_device_cannot_make_the_broker_hold_without_bound(tmp_path: Path) -> None:
    """Finding 9: the shipped configuration with only max_queued_bytes scaled down (1 MiB, not
    256 MiB, so that CI need not push a quarter gigabyte): while the ingest is away, what one
    device sends is held up to the limit and no further; a packet above max_packet_size (as
    shipped) ends the sender's connection and reaches nobody."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    pki = make_pki(tmp_path / "pki", (A, INGEST_IDENTITY))
    port = free_port()
    conf = site_config(tmp_path, pki, port)
    text = conf.read_text()
    assert text.count("\nmax_queued_bytes 268435456\n") == 1
    conf.write_text(text.replace("\nmax_queued_bytes 268435456\n", "\nmax_queued_bytes 1048576\n"))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)
        # The ingest subscribes with a persistent session, then goes away.
        ing = _session(pki, port, INGEST_IDENTITY)
        ing.subscribe("devices/+/up/#", qos=1)
        time.sleep(0.5)
        ing.disconnect()
        ing.loop_stop()
        dev = Client(pki, port, A)
        chunk = b"x" * 100_000
        for _ in range(40):  # 4 MB
            assert dev.publish(f"devices/{A}/up/seg/video", chunk) == 0
        # One packet beyond max_packet_size: the broker ends the device's connection.
        dev.c.publish(f"devices/{A}/up/seg/video", b"y" * (1024 * 1024 + 1), qos=1)
        deadline = time.monotonic() + 10
        while dev.c.is_connected():
            assert time.monotonic() < deadline, "an oversized packet was accepted"
            time.sleep(0.05)
        dev.c.loop_stop()
        got: queue.Queue[paho.MQTTMessage] = queue.Queue()
        ing = _session(pki, port, INGEST_IDENTITY, got)
        time.sleep(2.0)
        ing.disconnect()
        ing.loop_stop()
        sizes = []
        while not got.empty():
            sizes.append(len(got.get().payload))
        assert sizes and max(sizes) == len(chunk), "nothing was held, or the oversized packet"
        assert sum(sizes) <= 1_048_576 + 2 * len(chunk), f"held {sum(sizes)} bytes"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def _session(
    pki: Pki, port: int, identity: str, into: queue.Queue[paho.MQTTMessage] | None = None
) -> paho.Client:
    """A persistent MQTT 5 session (clean_start False, one hour of expiry)."""
    cert = pki.client(identity)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=identity, protocol=paho.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=str(cert.cert), keyfile=str(cert.key))
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    if into is not None:
        c.on_message = lambda _c, _u, m: into.put(m)
    props = Properties(paho.PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    assert connected.wait(10)
    return c
