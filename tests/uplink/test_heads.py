"""Signed stream heads tell a deleted last segment from one not yet sent (issue 15).

End to end (mosquitto with the shipped config and ACL, the ingest, two devices): one device
loses its last GPS segment without the platform ever having it (here: removed from its spool
as a forged acknowledgement would have had it removed); the other delivers everything. The
chain alone cannot show the first case (nothing after the missing segment names it); the
devices' signed heads do: ``edge-agent heads`` names that stream and seq, and nothing of the
other device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.uplink.forwarder import HEADS_EVERY_S
from tests.uplink.harness import (
    ROOT,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    stored,
    unique_id,
)


def _heads(store: Path, device: str) -> dict[str, object]:
    try:
        book: dict[str, object] = json.loads((store / device / "heads.json").read_text())
    except (OSError, ValueError):
        return {}
    return book


def _pending(store: Path, device: str, stream: str) -> object:
    streams = _heads(store, device).get("streams") or {}
    assert isinstance(streams, dict)
    return (streams.get(stream) or {}).get("pending")


def test_a_deleted_last_segment_is_reported(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    base = unique_id(tmp_path)[:20]
    lost = make_device(tmp_path / "lost", base + "-l", pki, platform, broker_alive.port)
    whole = make_device(tmp_path / "whole", base + "-w", pki, platform, broker_alive.port)
    spools = {}
    for dev in (lost, whole):
        spool = spools[dev.id] = dev.open_spool()
        for i in range(3):
            dev.put(spool, "gps", f"{dev.id} fix {i} ".encode() * 30)
    last = spools[lost.id].items("gps")[-1]
    assert last.seq == 2
    assert spools[lost.id].ack("gps", 2, last.manifest_hash)  # gone from the device, never sent
    store = tmp_path / "store"
    try:
        with (
            running_ingest(store, pki, broker_alive.port, platform),
            running_uplink(lost, spools[lost.id]),
            running_uplink(whole, spools[whole.id]),
        ):
            for dev in (lost, whole):
                wait_for(lambda d=dev: not spools[d.id].items(), 60, f"{dev.id}'s spool")  # type: ignore[misc]
            # The lost head was never acknowledged by the platform: news, signed heads follow
            # (protocol 4); the whole device's head is its acknowledged segment: no news.
            wait_for(lambda: _pending(store, lost.id, "gps") == 0, 30, "the lost one's heads")
    finally:
        for s in spools.values():
            s.close()
    assert set(stored(store, lost.id)) == {("gps", 0), ("gps", 1)}
    assert set(stored(store, whole.id)) == {("gps", 0), ("gps", 1), ("gps", 2)}
    heads = _heads(store, lost.id)
    assert heads["missing"] == {"gps": {"seq": 2, "hash": last.manifest_hash, "stored_max": 1}}, (
        heads
    )
    assert not _heads(store, whole.id).get("missing")
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "heads", "--store", str(store)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{lost.id}/gps: the device's signed head is #2" in res.stdout
    assert "holds up to #1" in res.stdout
    assert whole.id not in res.stdout


def test_the_heads_go_out_once_a_connection(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """Unchanged heads are published once per connection, and again on a new one (a signed
    retained message of ~300 bytes: sending it twice is the link's cost, a truck's bytes)."""
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = dev.open_spool()
    pause = threading.Event()
    try:
        with running_uplink(dev, spool) as up:
            wait_for(lambda: up.forwarder.stats.heads_sent >= 1, 30, "the first heads")
            pause.wait(2.5 * HEADS_EVERY_S)  # long enough for a second one to be due
            assert up.forwarder.stats.heads_sent == 1
            gen = up.link.generation
            broker_alive.kill()
            wait_for(lambda: not up.link.connected, 20, "the device to notice")
            broker_alive.start()
            wait_for(lambda: up.link.generation > gen, 30, "the device to reconnect")
            wait_for(lambda: up.forwarder.stats.heads_sent >= 2, 30, "the heads again")
            pause.wait(2.5 * HEADS_EVERY_S)
            assert up.forwarder.stats.heads_sent == 2
    finally:
        spool.close()
