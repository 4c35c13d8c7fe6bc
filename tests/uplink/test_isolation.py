"""A device certificate cannot publish or read as another device; nor can its data claim to."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.model import Alarm
from agent.uplink import protocol as proto
from agent.uplink.forwarder import Forwarder
from agent.uplink.mqtt import Inbound, LinkConfig, MqttLink
from agent.uplink.service import link_config
from tests.fixtures.pki import DEVICE_A, DEVICE_B
from tests.uplink.harness import (
    ingest_config,
    make_device,
    make_platform,
    running_ingest,
    stored,
)


def _link(cfg: LinkConfig, stop: threading.Event) -> MqttLink:
    return MqttLink(cfg, stop)


def test_device_cannot_publish_or_read_as_another(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    a = make_device(tmp_path / "a", DEVICE_A, pki, platform, broker_alive.port)
    b = make_device(tmp_path / "b", DEVICE_B, pki, platform, broker_alive.port)
    stop = threading.Event()
    # The platform listens to everything device A would receive or send.
    spy = _link(ingest_config(pki, broker_alive.port, "ingest"), stop)
    spied: queue.Queue[Inbound] = spy.route(f"devices/{DEVICE_A}/#")
    # Device B (its own certificate) subscribes to A's downlink and claims A's client id.
    evil = _link(link_config(b.uplink, DEVICE_A), stop)
    evil_inbox = evil.route(f"devices/{DEVICE_A}/#")
    good = _link(link_config(a.uplink, DEVICE_A), stop)
    try:
        spy.start()
        evil.start()
        good.start()
        wait_for(lambda: spy.connected and evil.connected and good.connected, 20, "connections")
        # Retained state and whatever earlier tests left in the ingest session: not ours.
        threading.Event().wait(0.5)
        while not spied.empty():
            spy.ack(spied.get())
        # The broker forces client id = certificate identity: B did not kick A off.
        assert good.connected
        topics = proto.Topics(DEVICE_A)
        evil.publish(topics.segment("video"), b"forged", qos=1)
        evil.publish(topics.ack, b'{"type":"key","key_id":"0011223344556677"}', qos=1)
        wait_for(lambda: evil.outstanding() == 0, 10, "PUBACKs for B's publishes")
        failures = evil.failures()
        assert len(failures) == 2 and all("authori" in r.lower() for r in failures.values())
        # A publishes on its own tree: the platform sees it, B does not.
        good.publish(topics.live("status"), b'{"ok":true}', qos=1)
        good.publish(topics.live("fix"), b"{}", qos=1)
        got: list[bytes] = []
        while not {b'{"ok":true}', b"{}"} <= set(got):
            msg = spied.get(timeout=10)
            spy.ack(msg)
            got.append(msg.payload)
        threading.Event().wait(0.5)
        while not spied.empty():
            got.append(spied.get().payload)
        assert b"forged" not in got, "device B's forged publish reached the platform"
        assert evil_inbox.empty(), "device B read device A's messages (even retained ones)"
    finally:
        stop.set()
        for link in (spy, evil, good):
            link.join()


def test_segments_claiming_another_device_are_refused(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """B's certificate, B's topics, but records sealed as A: the platform refuses them."""
    platform = make_platform(tmp_path / "platform")
    b = make_device(tmp_path / "b", DEVICE_B, pki, platform, broker_alive.port)
    spool = b.open_spool(sealed_as=DEVICE_A)
    b.put(spool, "gps", b"x" * 100)
    alarms: list[Alarm] = []
    stop = threading.Event()
    store_dir = tmp_path / "store"
    with running_ingest(store_dir, pki, broker_alive.port, platform) as ingest:
        link = MqttLink(link_config(b.uplink, DEVICE_B), stop)
        fwd = Forwarder(spool, link, DEVICE_B, b.uplink, stop, alarm=alarms.append)
        link.start()
        fwd.start()
        try:
            wait_for(lambda: bool(alarms), 30, "the platform's refusal")
        finally:
            stop.set()
            fwd.join()
            link.join()
        assert ingest.store.stats.stored == 0
    assert "claims device" in alarms[0].message
    assert stored(store_dir, DEVICE_A) == {} and stored(store_dir, DEVICE_B) == {}
    assert len(spool.items()) == 1, "refused evidence stays in the spool"
    spool.close()
