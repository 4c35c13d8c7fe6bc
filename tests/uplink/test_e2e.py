"""End to end against a real mosquitto: every stream delivered exactly once, spool emptied."""

from __future__ import annotations

from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from tests.uplink.harness import (
    all_delivered,
    assert_delivered,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    unique_id,
)


def test_every_stream_delivered_once(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = dev.open_spool()
    dev.fill(spool, video_mib=2, videos=2, gps=30)
    store_dir = tmp_path / "store"
    with running_ingest(store_dir, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            wait_for(lambda: not spool.items(), 60, "the spool to drain")
            # The spool empties inside a batch of acknowledgements; the counters follow it.
            wait_for(
                lambda: up.forwarder.stats.segments_acked >= len(dev.expected), 10, "the counters"
            )
            assert up.forwarder.stats.segments_acked == len(dev.expected)
        assert ingest.store.stats.stored == len(dev.expected)
        assert ingest.store.stats.decrypted == len(dev.expected)
    assert all_delivered(store_dir, dev)
    spool.close()
    assert_delivered(store_dir, dev)


def test_mqtt311_device_delivers_every_stream(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """MQTT 3.1.1 is selectable on the device (ingest stays on MQTT 5 for $share)."""
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port, protocol="mqtt311"
    )
    spool = dev.open_spool()
    dev.fill(spool, video_mib=1, videos=1, gps=5)
    store_dir = tmp_path / "store"
    with running_ingest(store_dir, pki, broker_alive.port, platform), running_uplink(dev, spool):
        wait_for(lambda: not spool.items(), 60, "the spool to drain over MQTT 3.1.1")
    spool.close()
    assert_delivered(store_dir, dev)
