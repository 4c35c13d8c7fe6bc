"""Faults against a real mosquitto: broker SIGKILL, network cut, agent SIGKILL, ingest SIGKILL.

Every time: every sealed segment is at the platform exactly once and byte-identical, and the
spool ends empty. Waits have deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from agent.labs.broker import BlackHole, Mosquitto, Pki
from agent.labs.waiting import wait_for
from tests.uplink.harness import (
    all_delivered,
    assert_delivered,
    broker_queue_shipped,
    forwarder_process,
    ingest_process,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    sigkill,
    stored,
    terminate,
    unique_id,
)

# A 30 s cut, as a dead cellular zone: it outlasts MQTT keep-alive on both sides (5 s here:
# the device gives up after at most 2x, the broker after 1.5x), so both ends drop the
# connection and the upload must resume afterwards. EDGE_AGENT_CUT_S changes it.
CUT_S = float(os.environ.get("EDGE_AGENT_CUT_S", "30"))


def _partial_chunks(store_dir: Path, device: str) -> int:
    """Chunks (128 KiB) held in the store's unfinished uploads: bytes, not files (chunks that
    arrive in order grow one file per upload)."""
    base = store_dir / device / "partial"
    held = 0
    for f in base.glob("*/*/*") if base.exists() else ():
        try:
            held += f.stat().st_size
        except FileNotFoundError:  # completed meanwhile
            continue
    return held // (128 * 1024)


def test_broker_sigkill_during_chunked_upload(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    assert broker_queue_shipped(broker_alive), "this test runs with the shipped queue limits"
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev",
        unique_id(tmp_path),
        pki,
        platform,
        broker_alive.port,
        bandwidth_bps=3_000_000,
    )
    spool = dev.open_spool()
    dev.fill(spool, video_mib=3, videos=3, gps=200)
    store_dir = tmp_path / "store"
    with (
        running_ingest(store_dir, pki, broker_alive.port, platform) as ingest,
        running_uplink(dev, spool) as up,
    ):
        for _ in range(2):
            before = ingest.store.stats.chunks
            wait_for(
                lambda b=before: ingest.store.stats.chunks > b + 10,  # type: ignore[misc]
                60,
                "chunks to flow",
            )
            assert spool.items(), "the upload finished before the broker could be killed"
            gen = up.link.generation
            broker_alive.kill()
            wait_for(lambda: not up.link.connected, 20, "the device to notice")
            broker_alive.start()
            wait_for(lambda g=gen: up.link.generation > g, 30, "the device to reconnect")  # type: ignore[misc]
        wait_for(lambda: not spool.items(), 120, "the spool to drain")
    spool.close()
    assert_delivered(store_dir, dev)


def test_network_cut_mid_transfer(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    proxy = BlackHole(("127.0.0.1", broker_alive.port))
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, proxy.port, bandwidth_bps=2_000_000
    )
    spool = dev.open_spool()
    dev.fill(spool, video_mib=2, videos=3, gps=20)
    store_dir = tmp_path / "store"
    try:
        with (
            running_ingest(store_dir, pki, broker_alive.port, platform) as ingest,
            running_uplink(dev, spool) as up,
        ):
            wait_for(lambda: _partial_chunks(store_dir, dev.id) >= 3, 60, "a video mid-way")
            gen = up.link.generation
            proxy.cut()
            cut_at = time.monotonic()
            stop_at = ingest.store.stats.chunks
            wait_for(lambda: not up.link.connected, CUT_S + 15, "keep-alive to give up")
            # Hold the cut for the rest of CUT_S (keep-alive took part of it).
            threading.Event().wait(max(0.0, CUT_S - (time.monotonic() - cut_at)))
            proxy.restore()
            wait_for(lambda: up.link.generation > gen, 60, "the device to reconnect")
            assert ingest.store.stats.chunks >= stop_at
            wait_for(lambda: not spool.items(), 120, "the spool to drain")
    finally:
        proxy.close()
    spool.close()
    assert_delivered(store_dir, dev)


def test_agent_sigkill_mid_chunk_resumes(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev",
        unique_id(tmp_path),
        pki,
        platform,
        broker_alive.port,
        bandwidth_bps=1_500_000,
    )
    spool = dev.open_spool()
    dev.put(spool, "event", b'{"type":"boot"}')
    dev.put(spool, "video", os.urandom(6 * 1024 * 1024))  # 48 chunks of 128 KiB
    spool.close()
    config = dev.toml()
    log = tmp_path / "forwarder.log"
    store_dir = tmp_path / "store"
    with running_ingest(store_dir, pki, broker_alive.port, platform) as ingest:
        proc = forwarder_process(config, log)
        try:
            wait_for(lambda: _partial_chunks(store_dir, dev.id) >= 20, 60, "the video half-way up")
            sigkill(proc)
            held = _partial_chunks(store_dir, dev.id)
            dup_before = ingest.store.stats.chunks_duplicate
            proc = forwarder_process(config, log)
            wait_for(lambda: all_delivered(store_dir, dev), 90, "the upload to finish")
            wait_for(lambda: proc.poll() is not None or _spool_empty(dev), 30, "acks")
        finally:
            terminate(proc)
        resent = ingest.store.stats.chunks_duplicate - dup_before
    print(f"\nagent SIGKILL at {held}/48 chunks: {resent} chunks resent after restart")
    # Resumed from the platform's last confirmed byte: at most the progress interval (8 chunks)
    # plus the broker window (8) plus what was in flight, never the whole segment again.
    assert resent <= 24, f"{resent} chunks resent: the upload restarted from zero?"
    assert "resuming video#" in log.read_text()
    assert_delivered(store_dir, dev)


def _spool_empty(dev: object) -> bool:
    from tests.uplink.harness import Device

    assert isinstance(dev, Device)
    spool = dev.open_spool(boot="peek")
    try:
        return not spool.items()
    finally:
        spool.close()


def test_ingest_sigkill_mid_stream(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev",
        unique_id(tmp_path),
        pki,
        platform,
        broker_alive.port,
        bandwidth_bps=3_000_000,
    )
    spool = dev.open_spool()
    dev.fill(spool, video_mib=3, videos=2, gps=100)
    store_dir = tmp_path / "store"
    ingest = ingest_process(store_dir, pki, broker_alive.port, platform)
    try:
        with running_uplink(dev, spool):
            wait_for(lambda: _partial_chunks(store_dir, dev.id) >= 4, 60, "a video mid-way")
            sigkill(ingest)
            n = len(stored(store_dir, dev.id))
            assert n < len(dev.expected)
            ingest = ingest_process(store_dir, pki, broker_alive.port, platform)
            wait_for(lambda: not spool.items(), 120, "the spool to drain")
    finally:
        terminate(ingest)
    spool.close()
    assert_delivered(store_dir, dev)
