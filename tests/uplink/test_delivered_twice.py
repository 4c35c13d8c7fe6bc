"""Every message delivered twice to the platform: each segment is stored once and counted once.

An ingest worker's persistent session keeps every subscription it ever made: restarted with
another ``--group`` under the same client id, it is subscribed with both groups and the broker
hands it each device message twice (the same happened between tests on the shared broker).
The platform answers the second copy "duplicate", often in the same batch of acknowledgements
as the first: the device must remove the segment once and count it once.
"""

from __future__ import annotations

import threading
from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.uplink import protocol as proto
from agent.uplink.mqtt import MqttLink
from tests.uplink.harness import (
    assert_delivered,
    ingest_config,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    unique_id,
    wait_for,
)


def _leave_a_second_group_in_the_ingest_session(pki: Pki, port: int) -> None:
    """What a worker run with ``--group other`` leaves behind: its session's subscription."""
    stop = threading.Event()
    link = MqttLink(ingest_config(pki, port), stop)
    link.route(f"$share/other/{proto.UP_FILTER}", qos=1)
    link.start()
    try:
        wait_for(lambda: link.connected, 20, "the other group's connection")
    finally:
        stop.set()
        link.join()


def test_a_segment_acknowledged_twice_is_removed_and_counted_once(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    _leave_a_second_group_in_the_ingest_session(pki, broker_alive.port)
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = dev.open_spool()
    dev.fill(spool, video_mib=1, videos=1, gps=20)
    store_dir = tmp_path / "store"
    with running_ingest(store_dir, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            wait_for(lambda: not spool.items(), 60, "the spool to drain")
            wait_for(
                lambda: up.forwarder.stats.segments_acked >= len(dev.expected), 10, "the counters"
            )
            # Each message came twice: the control that this test shows what it claims.
            assert ingest.store.stats.duplicates >= len(dev.expected) // 2, ingest.store.stats
            assert up.forwarder.stats.segments_acked == len(dev.expected)
        assert ingest.store.stats.stored == len(dev.expected)
    spool.close()
    assert_delivered(store_dir, dev)
