"""The platform store without a broker: resume, gaps, duplicates, conflicts, chain, identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.ingest.store import Store
from agent.storage.keys import load_platform_private
from agent.storage.spool import Spool
from agent.uplink import protocol as proto
from tests.uplink.harness import Device, make_platform

CS = 64 * 1024


@pytest.fixture
def device(tmp_path: Path) -> Device:
    from agent.storage.keys import init_device_keys
    from agent.uplink.settings import UplinkSettings

    platform = make_platform(tmp_path / "platform")
    init_device_keys(tmp_path / "dev" / "keys")
    return Device("cam-1", tmp_path / "dev", None, platform, 0, UplinkSettings())  # type: ignore[arg-type]


def _send(
    store: Store,
    spool: Spool,
    stream: str,
    seq: int,
    device: str = "cam-1",
    skip: set[int] | None = None,
) -> list[proto.Ack]:
    item = next(i for i in spool.items(stream) if i.seq == seq)
    data = item.path.read_bytes()
    acks: list[proto.Ack] = []
    for off in range(0, len(data), CS):
        if skip and off in skip:
            continue
        h = proto.ChunkHeader(stream, seq, "boot1", item.manifest_hash, len(data), off)
        acks += store.put_chunk(device, h, data[off : off + CS])
    return acks


def _keys(store: Store, spool: Spool, device: str = "cam-1") -> None:
    for kid in {i.key_id for i in spool.items()}:
        assert isinstance(store.put_key(device, spool.key_record(kid)), proto.KeyAck)


def test_store_resume_dedupe_and_decrypt(tmp_path: Path, device: Device) -> None:
    spool = device.open_spool()
    device.put(spool, "video", b"v" * (5 * CS + 10))
    store = Store(tmp_path / "store", platform_key=load_platform_private(device.platform.key))
    _keys(store, spool)
    # A gap (chunk 2 lost) is reported with what revealed it.
    acks = _send(store, spool, "video", 0, skip={2 * CS})
    gaps = [a for a in acks if isinstance(a, proto.Progress) and a.got is not None]
    assert gaps and gaps[0].next == 2 * CS
    # A restarted store (memory lost) finishes from the chunks on disk.
    store = Store(tmp_path / "store", platform_key=load_platform_private(device.platform.key))
    item = spool.items("video")[0]
    data = item.path.read_bytes()
    h = proto.ChunkHeader("video", 0, "boot1", item.manifest_hash, len(data), 2 * CS)
    acks = store.put_chunk("cam-1", h, data[2 * CS : 3 * CS])
    assert acks == [proto.SegmentAck("video", 0, item.manifest_hash, "stored")]
    assert store.seg_path("cam-1", "video", 0).read_bytes() == data
    assert store.plain_path("cam-1", "video", 0).read_bytes() == b"v" * (5 * CS + 10)
    # Sent again: a duplicate, acknowledged, not stored twice.
    again = _send(store, spool, "video", 0)
    assert all(isinstance(a, proto.SegmentAck) and a.result == "duplicate" for a in again)
    assert store.stats.stored == 1
    spool.close()


def test_claims_of_another_device_are_refused(tmp_path: Path, device: Device) -> None:
    spool = device.open_spool(sealed_as="cam-2")
    device.put(spool, "gps", b"g" * 100)
    store = Store(tmp_path / "store")
    rej = store.put_key("cam-1", spool.key_record(spool.items()[0].key_id))
    assert isinstance(rej, proto.Reject) and "claims device" in rej.reason
    acks = _send(store, spool, "gps", 0)
    assert isinstance(acks[0], proto.Reject) and "claims device" in acks[0].reason
    spool.close()


def test_pinned_key_and_broken_chain(tmp_path: Path, device: Device) -> None:
    spool = device.open_spool()
    for i in range(3):
        device.put(spool, "gps", f"{i}".encode() * 50)
    store = Store(tmp_path / "store")
    assert isinstance(_send(store, spool, "gps", 0)[0], proto.SegmentAck)
    assert isinstance(_send(store, spool, "gps", 2)[0], proto.SegmentAck)  # a gap is fine
    # A different segment claiming seq 1 whose prev does not match stored #0: refused.
    other = Device("cam-1", tmp_path / "other", None, device.platform, 0, device.uplink)  # type: ignore[arg-type]
    from agent.storage.keys import init_device_keys

    init_device_keys(other.dir / "keys")
    ospool = other.open_spool()
    for _ in range(2):
        other.put(ospool, "gps", b"evil" * 10)
    acks = _send(store, ospool, "gps", 1)
    # Signed by another key than the one pinned for cam-1: refused before the chain check.
    assert isinstance(acks[0], proto.Reject) and "pinned" in acks[0].reason
    # Same device key, but a different history: seq 1's prev is not the stored #0.
    import shutil

    fork = Device("cam-1", tmp_path / "fork", None, device.platform, 0, device.uplink)  # type: ignore[arg-type]
    shutil.copytree(device.dir / "keys", fork.dir / "keys")
    fspool = fork.open_spool()
    for _ in range(2):
        fork.put(fspool, "gps", b"fork" * 10)
    acks = _send(store, fspool, "gps", 1)
    assert isinstance(acks[0], proto.Reject) and "chain broken" in acks[0].reason
    spool.close()
    ospool.close()
    fspool.close()


def test_conflicting_seq_is_not_replaced(tmp_path: Path, device: Device) -> None:
    spool = device.open_spool()
    device.put(spool, "gps", b"a" * 100)
    store = Store(tmp_path / "store")
    _send(store, spool, "gps", 0)
    item = spool.items("gps")[0]
    h = proto.ChunkHeader("gps", 0, "boot1", "cd" * 32, item.size, 0)
    acks = store.put_chunk("cam-1", h, item.path.read_bytes())
    assert isinstance(acks[0], proto.Reject) and "different manifest" in acks[0].reason
    spool.close()
