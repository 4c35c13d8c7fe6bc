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


def _partial_files(store: Store, item_stream: str, seq: int, mhash: str, size: int) -> list[str]:
    h = proto.ChunkHeader(item_stream, seq, "boot1", mhash, size, 0)
    return sorted(p.name for p in store._partial_dir("cam-1", h).iterdir())


def test_chunks_in_order_grow_one_file_that_becomes_the_segment(
    tmp_path: Path, device: Device
) -> None:
    """In-order chunks are appended to one file per upload (no file per chunk), which is
    checked and named as the stored segment; a progress report still comes only for bytes on
    disk, and the bytes stored are the device's, whole."""
    spool = device.open_spool()
    device.put(spool, "video", b"v" * (5 * CS + 10))
    store = Store(tmp_path / "store", progress_every=CS)
    _keys(store, spool)
    item = spool.items("video")[0]
    data = item.path.read_bytes()
    for off in range(0, 3 * CS, CS):
        h = proto.ChunkHeader("video", 0, "boot1", item.manifest_hash, len(data), off)
        (progress,) = store.put_chunk("cam-1", h, data[off : off + CS])
        assert isinstance(progress, proto.Progress) and progress.next == off + CS
    assert _partial_files(store, "video", 0, item.manifest_hash, len(data)) == ["000000000000"]
    (run,) = store._partial_dir("cam-1", h).iterdir()
    assert run.read_bytes() == data[: 3 * CS]
    acks = []
    for off in range(3 * CS, len(data), CS):
        h = proto.ChunkHeader("video", 0, "boot1", item.manifest_hash, len(data), off)
        acks += store.put_chunk("cam-1", h, data[off : off + CS])
    assert acks[-1] == proto.SegmentAck("video", 0, item.manifest_hash, "stored")
    assert store.seg_path("cam-1", "video", 0).read_bytes() == data
    assert not store._partial_dir("cam-1", h).exists()
    assert list(store.tmp.iterdir()) == []
    spool.close()


def test_chunks_out_of_order_or_beside_a_short_run_still_make_the_segment(
    tmp_path: Path, device: Device
) -> None:
    """A chunk that does not continue a run gets a file of its own (out of order, or a run
    file shorter than the store believes, e.g. cut by a crash): the segment is assembled
    from the pieces and stored whole."""
    spool = device.open_spool()
    device.put(spool, "video", b"w" * (6 * CS))
    store = Store(tmp_path / "store")
    _keys(store, spool)
    item = spool.items("video")[0]
    data = item.path.read_bytes()

    def put(off: int) -> list[proto.Ack]:
        h = proto.ChunkHeader("video", 0, "boot1", item.manifest_hash, len(data), off)
        return store.put_chunk("cam-1", h, data[off : off + CS])

    assert put(0) == [] and put(CS) == []
    gap = put(3 * CS)  # chunk 2 not here yet
    assert isinstance(gap[0], proto.Progress) and (gap[0].next, gap[0].got) == (2 * CS, 3 * CS)
    (gap,) = put(4 * CS)  # continues the second run (the gap is still there)
    assert isinstance(gap, proto.Progress) and (gap.next, gap.got) == (2 * CS, 4 * CS)
    run_dir = store._partial_dir(
        "cam-1", proto.ChunkHeader("video", 0, "b", item.manifest_hash, 1, 0)
    )
    assert sorted(p.name for p in run_dir.iterdir()) == [f"{0:012d}", f"{3 * CS:012d}"]
    # The first run's file loses its tail behind the store's back: chunk 2, which would
    # continue it, cannot (the file is not as long as known) and gets a file of its own.
    with (run_dir / f"{0:012d}").open("r+b") as f:
        f.truncate(CS)
    assert put(2 * CS) == []
    assert sorted(p.name for p in run_dir.iterdir()) == [f"{o * CS:012d}" for o in (0, 2, 3)]
    assert (run_dir / f"{0:012d}").stat().st_size == CS  # not written into
    # The store believed [0, 2 CS) was there: the reassembled bytes fail their check, the
    # device is asked again from byte 0, and then the segment is stored whole.
    acks = [a for off in range(5 * CS, len(data), CS) for a in put(off)]
    assert isinstance(acks[-1], proto.Progress) and acks[-1].next == 0
    for off in range(0, len(data), CS):
        acks = put(off)
    assert acks == [proto.SegmentAck("video", 0, item.manifest_hash, "stored")]
    assert store.seg_path("cam-1", "video", 0).read_bytes() == data
    spool.close()
