"""Protocol 4 on a real mosquitto (mTLS, the shipped ACL) with the ingest: small segments go
compact one by one as a tracker seals them, the platform stores them byte-identical and
answers with compact signed acknowledgements; stream heads do not follow every segment; a
platform without the base asks for a chunk; one of protocol 3 gets chunks."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from agent.ingest.compact_in import CompactSegments
from agent.labs.broker import Mosquitto, Pki
from agent.uplink import compact
from agent.uplink.stream_heads import HEADS_GRACE_S
from tests.uplink.harness import (
    Device,
    assert_delivered,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    unique_id,
    wait_for,
)


def _one_by_one(dev: Device, spool: object, up: object, n: int, start: int = 0) -> None:
    """Seal ``n`` small GPS segments one at a time, each delivered before the next."""
    for i in range(start, start + n):
        dev.put(spool, "gps", f"a minute of fixes {i} ".encode() * 20)  # type: ignore[arg-type]
        up.forwarder.wake.set()  # type: ignore[attr-defined]
        wait_for(
            lambda i=i: up.forwarder.stats.segments_acked >= i + 1,  # type: ignore[attr-defined,misc]
            30,
            f"segment {i}'s acknowledgement",
        )


def test_small_segments_go_compact_and_heads_do_not_follow_each(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = dev.open_spool()
    dev.put(spool, "gps", b"the first minute " * 20)
    kid = spool.items()[0].key_id
    record = spool.key_record(kid)
    store = tmp_path / "store"
    pause = threading.Event()
    with running_ingest(store, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            wait_for(lambda: up.forwarder.stats.heads_sent >= 1, 30, "the connection's heads")
            wait_for(lambda: up.forwarder.stats.segments_acked >= 1, 30, "the first segment")
            _one_by_one(dev, spool, up, 5, start=1)
            pause.wait(HEADS_GRACE_S + 2.5)  # long enough for heads to be due, were they news
            stats = up.forwarder.stats
            assert stats.compact_sent == 6, stats
            assert stats.resends_after_silence == 0, stats
            assert stats.forged_acks == 0 and stats.bad_acks == 0, stats
            # Every head was its own acknowledged segment: the connection's heads only.
            assert stats.heads_sent == 1, stats
            assert not up.forwarder.heads_news()
        assert ingest.compact.rebuilt == 6
        assert ingest.compact.keys >= 1  # the key record went compact too (again, on a reconnect)
        assert ingest.compact.plain_sent == 0
        assert ingest.malformed == 0
    assert (store / dev.id / "keys" / f"{kid}.key").read_bytes() == record
    spool.close()
    assert_delivered(store, dev)


def test_a_platform_without_the_base_asks_for_a_chunk(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers with stores of their own: the base is not where the next segment lands. The
    platform answers ``plain`` (signed), the device sends that segment as a chunk at once (no
    timeout) and that stream's next ones without a base."""
    monkeypatch.setattr(CompactSegments, "_base", lambda self, *a: None)
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port, ack_timeout_s=30.0
    )
    spool = dev.open_spool()
    store = tmp_path / "store"
    with running_ingest(store, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            started = time.monotonic()
            _one_by_one(dev, spool, up, 4)
            assert time.monotonic() - started < 25  # not one ack_timeout_s waited
            stats = up.forwarder.stats
            assert stats.resends_after_silence == 0, stats
            # #0 unbased, #1 based (answered plain, then a chunk), #2 and #3 unbased
            assert stats.compact_sent == 4, stats
            assert stats.chunks_sent == 5, stats
        assert ingest.compact.plain_sent == 1
        assert ingest.compact.rebuilt == 3
    spool.close()
    assert_delivered(store, dev)


def test_a_protocol_3_platform_gets_chunks(
    tmp_path: Path,
    pki: Pki,
    broker_alive: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ingest that does not know the compact forms finds a compact key record unreadable
    and answers nothing: after ack_timeout_s the device sends it plain, and nothing more in
    the compact form on that connection. Everything arrives."""
    monkeypatch.setattr(compact, "is_compact", lambda payload: False)
    monkeypatch.setattr(compact, "is_compact_key", lambda payload: False)
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port, ack_timeout_s=2.0
    )
    spool = dev.open_spool()
    store = tmp_path / "store"
    caplog.set_level(logging.WARNING, logger="agent.uplink.forwarder")
    with running_ingest(store, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            _one_by_one(dev, spool, up, 3)
            stats = up.forwarder.stats
            assert stats.compact_sent == 0, stats
            assert stats.keys_acked == 1, stats
        assert ingest.store.stats.keys == 1
    spool.close()
    assert_delivered(store, dev)
    assert "answered nothing of a compact key record" in caplog.text


def test_a_protocol_3_platform_gets_chunks_of_segments(
    tmp_path: Path,
    pki: Pki,
    broker_alive: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its key record already held (a platform upgraded back, or a key sent plain): a compact
    segment is dropped as a chunk with a bad magic, unanswered; after ack_timeout_s it goes as
    a chunk, and no more compact ones on that connection."""
    monkeypatch.setattr(compact, "is_compact", lambda payload: False)
    monkeypatch.setattr(compact, "encode_key_record", lambda data: None)
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port, ack_timeout_s=2.0
    )
    spool = dev.open_spool()
    store = tmp_path / "store"
    caplog.set_level(logging.WARNING, logger="agent.uplink.forwarder")
    with running_ingest(store, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            _one_by_one(dev, spool, up, 3)
            stats = up.forwarder.stats
            assert stats.compact_sent == 1, stats  # the probe, and no more
            assert stats.resends_after_silence == 1, stats
        assert ingest.malformed == 1
    spool.close()
    assert_delivered(store, dev)
    assert "answered nothing of a compact segment" in caplog.text
