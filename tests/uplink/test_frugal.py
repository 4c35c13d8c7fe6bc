"""Protocol 3 on a real mosquitto: bundles of small segments, binary live fixes with a topic
alias, and what an older platform (protocol 2) gets instead.

The bytes are counted by a loopback proxy between the device and the broker (bench/netem.py):
TCP payload, i.e. TLS records with MQTT inside.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.labs.broker import Mosquitto, Pki
from agent.model import Fix, FixMode
from agent.uplink import protocol as proto
from bench.netem import LinkProxy
from tests.uplink.harness import (
    assert_delivered,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    unique_id,
    wait_for,
)

T0 = 1_750_000_000.0
INPUTS = {"inputs": {"brush": True, "pump": False, "lift": True, "ignition": True}, "in": []}


def _fix(i: int) -> Fix:
    return Fix(
        time=T0 + i,
        mode=FixMode.FIX_3D,
        lat=22.54 + i * 1e-4,
        lon=113.95 - i * 1e-4,
        alt=12.5,
        speed=8.25,
        track=91.5,
        sats_used=12,
        hdop=0.9,
    )


def _live_fix(store: Path, device: str) -> dict[str, object] | None:
    path = store / device / "live" / "fix.json"
    if not path.exists():
        return None
    payload: dict[str, object] = json.loads(path.read_text())["payload"]
    return payload


def _live_form(store: Path, device: str) -> str:
    form: str = json.loads((store / device / "live" / "fix.json").read_text())["form"]
    return form


def _recorded(store: Path, device: str, i: int) -> Callable[[], bool]:
    def check() -> bool:
        payload = _live_fix(store, device)
        return payload is not None and payload.get("time") == _fix(i).iso_time()

    return check


def test_live_fixes_go_binary_with_a_topic_alias(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """A live fix is 28 bytes + the vehicle's 2-byte trailer, its topic named once per
    connection: at most 64 bytes on the wire, TLS record included; the platform records the
    same JSON object protocol 2 carried."""
    proxy = LinkProxy(("127.0.0.1", broker_alive.port))
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, proxy.port, keepalive_s=60
    )
    spool = dev.open_spool()
    store = tmp_path / "store"
    sizes: list[int] = []
    try:
        with (
            running_ingest(store, pki, broker_alive.port, platform),
            running_uplink(dev, spool) as up,
        ):
            wait_for(lambda: up.link.connected, 15, "the device to connect")
            wait_for(lambda: up.forwarder.stats.heads_sent > 0, 15, "the first heads")
            for i in range(4):
                before = proxy.counts().up
                up.forwarder.report_fix(_fix(i), INPUTS)
                wait_for(_recorded(store, dev.id, i), 15, f"live fix {i} at the platform")
                sizes.append(proxy.counts().up - before)
    finally:
        spool.close()
        proxy.close()
    payload = _live_fix(store, dev.id)
    assert payload is not None and _live_form(store, dev.id) == "binary"
    assert payload["lat"] == pytest.approx(22.5403, abs=1e-7)
    assert payload["lon"] == pytest.approx(113.9497, abs=1e-7)
    assert payload["inputs"] == INPUTS["inputs"] and payload["in"] == []
    assert payload["speed"] == 8.25 and payload["nSat"] == 12
    # The first names its topic (devices/<id>/live/fix) and sets the alias; the rest do not.
    assert sizes[0] > sizes[1] + len(dev.id), sizes
    assert all(n <= 64 for n in sizes[1:]), sizes
    print(f"\nlive fix on the wire: {sizes} bytes (first one names the topic)")


def test_a_json_device_still_reaches_the_live_view(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """uplink.live_fix = "json" (for a protocol 2 platform): the same record at the platform."""
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port, live_fix="json"
    )
    spool = dev.open_spool()
    store = tmp_path / "store"
    try:
        with (
            running_ingest(store, pki, broker_alive.port, platform),
            running_uplink(dev, spool) as up,
        ):
            wait_for(lambda: up.link.connected, 15, "the device to connect")
            up.forwarder.report_fix(_fix(7), INPUTS)
            wait_for(_recorded(store, dev.id, 7), 15, "the JSON live fix at the platform")
    finally:
        spool.close()
    payload = _live_fix(store, dev.id)
    assert payload == json.loads(proto.live_fix_json(_fix(7), INPUTS))
    assert _live_form(store, dev.id) == "json"


def _small_segments(n: int) -> list[bytes]:
    return [os.urandom(900 + 13 * i) for i in range(n)]


def test_small_segments_travel_in_bundles(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = dev.open_spool()
    for data in _small_segments(120):
        dev.put(spool, "gps", data)
    dev.put(spool, "video", os.urandom(600_000))  # chunks, beside the bundles
    store = tmp_path / "store"
    with running_ingest(store, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            wait_for(lambda: up.forwarder.stats.segments_acked >= 121, 60, "the spool to drain")
            stats = up.forwarder.stats
            assert stats.bundles_sent >= 1
            assert stats.segments_bundled >= 100, stats
            # A bundle costs one message for all its segments: far fewer than one each.
            assert stats.chunks_sent < 60, stats
            assert stats.resends_after_silence == 0, stats
        assert ingest.store.stats.stored == 121
        assert ingest.malformed == 0
    spool.close()
    assert_delivered(store, dev)


def test_a_protocol_2_platform_gets_single_chunks(
    tmp_path: Path,
    pki: Pki,
    broker_alive: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ingest that does not know bundles drops them as malformed (bad chunk magic) and
    answers nothing: after ack_timeout_s the device sends those segments as chunks, and no
    more bundles on that connection. Everything arrives."""
    # The platform of protocol 2: a bundle is not a chunk it can read.
    monkeypatch.setattr(proto, "is_bundle", lambda payload: False)
    platform = make_platform(tmp_path / "platform")
    dev = make_device(
        tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port, ack_timeout_s=2.0
    )
    spool = dev.open_spool()
    for data in _small_segments(40):
        dev.put(spool, "gps", data)
    store = tmp_path / "store"
    caplog.set_level(logging.WARNING, logger="agent.uplink.forwarder")
    started = time.monotonic()
    with running_ingest(store, pki, broker_alive.port, platform) as ingest:
        with running_uplink(dev, spool) as up:
            wait_for(lambda: up.forwarder.stats.segments_acked >= 40, 60, "the spool to drain")
            stats = up.forwarder.stats
            assert stats.bundles_sent == 1, stats  # the probe, and no more
            assert stats.resends_after_silence == stats.segments_bundled, stats
        assert ingest.malformed == 1
    spool.close()
    assert_delivered(store, dev)
    assert "answered nothing of a bundle" in caplog.text
    assert time.monotonic() - started >= 2.0


def test_bundled_segments_are_acknowledged_one_by_one_signed(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """The platform answers each of a bundle's segments (a seg acknowledgement each, in its
    signed batch): the device deletes exactly what was stored, on signed word only."""
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = dev.open_spool()
    for data in _small_segments(30):
        dev.put(spool, "gps", data)
    store = tmp_path / "store"
    with running_ingest(store, pki, broker_alive.port, platform), running_uplink(dev, spool) as up:
        wait_for(lambda: up.forwarder.stats.segments_acked >= 30, 60, "the spool to drain")
        assert up.forwarder.stats.segments_acked == 30
        assert up.forwarder.stats.bundles_sent >= 1
        assert up.forwarder.stats.forged_acks == 0
        assert up.forwarder.acks_signed
    spool.close()
    assert_delivered(store, dev)
