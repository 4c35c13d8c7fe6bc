"""``MqttLink.subscribed``: true once the broker acknowledged every route's subscription on the
current connection (``connected`` is true a round trip earlier, at the CONNACK: a message
published in between reaches no subscription unless an old session kept one)."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.uplink import protocol as proto
from agent.uplink.mqtt import MqttLink
from agent.uplink.service import link_config
from tests.uplink.harness import (
    ingest_config,
    make_device,
    make_platform,
    unique_id,
    wait_for,
)


def test_a_message_published_once_subscribed_arrives_also_after_a_broker_restart(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    stop = threading.Event()
    platform_link = MqttLink(ingest_config(pki, broker_alive.port), stop)
    inbox = platform_link.route(f"$share/sub-test/{proto.UP_FILTER}")
    device = MqttLink(link_config(dev.uplink, dev.id), stop)
    topic = proto.Topics(dev.id).segment("gps")  # under devices/+/up/#
    try:
        platform_link.start()
        device.start()
        for round_ in range(2):
            wait_for(lambda: platform_link.subscribed and device.connected, 30, "subscribed")
            assert device.publish(topic, f'{{"round":{round_}}}'.encode(), qos=1) is not None
            msg = inbox.get(timeout=30)
            platform_link.ack(msg)
            assert msg.payload == f'{{"round":{round_}}}'.encode()
            if round_ == 0:
                broker_alive.kill()
                wait_for(lambda: not platform_link.subscribed, 30, "the link to notice")
                broker_alive.start()
    finally:
        stop.set()
        platform_link.join()
        device.join()
