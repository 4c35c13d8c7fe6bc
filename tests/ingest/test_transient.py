"""A transient store error eats no broker slot and loses nothing (issue 15, finding 1).

On real parts (mosquitto with the shipped config, the ingest, a device): the store cannot
write the device's upload for a while (a file sits where its ``partial/`` directory must go:
every write there fails with an OSError, as on a failing disk). Each chunk is retried by the
worker, then answered ``retry`` and acknowledged to the broker; more than the ingest's receive
maximum (64) of them fail so, and the device holds the segment (nothing deleted). Once the
store can write again the next resend goes through: with unacknowledged messages holding the
64 slots, nothing would arrive any more on that connection.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from agent.ingest.receiver import Ingest
from agent.ingest.store import Store
from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.storage.keys import load_platform_private
from agent.uplink.control import load_ack_private
from tests.uplink.harness import (
    assert_delivered,
    ingest_config,
    make_device,
    make_platform,
    running_uplink,
    unique_id,
)

RECEIVE_MAXIMUM = 64


def test_store_errors_are_answered_retry_and_lose_nothing(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port, max_chunk_kib=4
    )
    spool = dev.open_spool()
    dev.put(spool, "still", os.urandom(400 * 1024))  # ~100 chunks
    store_dir = tmp_path / "store"
    blocker = store_dir / dev.id / "partial"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a directory")
    stop = threading.Event()
    store = Store(
        store_dir,
        platform_key=load_platform_private(platform.key),
        devices=platform.devices,
    )
    ingest = Ingest(
        store,
        ingest_config(pki, broker_alive.port),
        stop,
        ack_key=load_ack_private(platform.ack_key),
        retry_after_s=1,
    )
    ingest.start()
    try:
        with running_uplink(dev, spool) as up:
            wait_for(
                lambda: ingest.retries_sent > RECEIVE_MAXIMUM + 8,
                90,
                "more failed chunks than the receive maximum",
            )
            assert up.forwarder.stats.retries > 0
            assert len(spool.items()) == 1, "the device let go of a segment the store lacks"
            assert ingest.dead() == []
            blocker.unlink()
            wait_for(lambda: not spool.items(), 90, "delivery once the store can write")
    finally:
        stop.set()
        ingest.join()
        spool.close()
    assert_delivered(store_dir, dev)
