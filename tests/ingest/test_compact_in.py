"""The platform's side of compact segments, without a broker: rebuilt byte for byte and stored
as any chunk, a missing base answered ``plain``, malformed messages refused by FormatError."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import FormatError
from agent.ingest.compact_in import CompactSegments
from agent.ingest.store import Store
from agent.storage.keys import init_device_keys
from agent.storage.spool import Spool
from agent.uplink import compact
from agent.uplink import protocol as proto
from agent.uplink.settings import UplinkSettings
from tests.uplink.harness import Device, make_platform


@pytest.fixture
def device(tmp_path: Path) -> Device:
    platform = make_platform(tmp_path / "platform")
    init_device_keys(tmp_path / "dev" / "keys")
    return Device("trk-1", tmp_path / "dev", None, platform, 0, UplinkSettings())  # type: ignore[arg-type]


def _setup(tmp_path: Path, device: Device, n: int) -> tuple[Spool, Store, CompactSegments]:
    spool = device.open_spool()
    for i in range(n):
        device.put(spool, "gps", f"fixes {i} ".encode() * 40)
    store = Store(tmp_path / "store", devices=device.platform.devices)
    device.platform.register(device.id, device.dir / "keys" / "device.pub")
    for kid in {i.key_id for i in spool.items()}:
        assert isinstance(store.put_key(device.id, spool.key_record(kid)), proto.KeyAck)
    return spool, store, CompactSegments(store)


def _data(device: Device, seq: int) -> bytes:
    return device.expected[("gps", seq)]


def test_compact_segments_are_stored_byte_identical(tmp_path: Path, device: Device) -> None:
    spool, store, cs = _setup(tmp_path, device, 4)
    base = None
    for seq in range(4):
        payload = compact.encode_segment(_data(device, seq), seq, base)
        assert payload is not None
        acks = cs.put(device.id, "gps", payload)
        assert [type(a) for a in acks] == [proto.SegmentAck], acks
        assert acks[0].result == "stored"
        assert store.seg_path(device.id, "gps", seq).read_bytes() == _data(device, seq)
        base = compact.Base(seq, compact.split_segment(_data(device, seq))[1])
    # Sent again (the device did not hear the answer): a duplicate, not stored twice.
    again = cs.put(device.id, "gps", payload)
    assert isinstance(again[0], proto.SegmentAck) and again[0].result == "duplicate"
    assert store.stats.stored == 4
    # A worker that did not rebuild the previous one reads the base from the store.
    fresh = CompactSegments(store)
    device.put(spool, "gps", b"one more " * 40)
    payload = compact.encode_segment(_data(device, 4), 4, base)
    assert payload is not None
    acks = fresh.put(device.id, "gps", payload)
    assert acks == [proto.SegmentAck("gps", 4, acks[0].hash, "stored")], acks  # type: ignore[union-attr]
    assert store.seg_path(device.id, "gps", 4).read_bytes() == _data(device, 4)
    spool.close()


def test_a_missing_base_is_answered_plain(tmp_path: Path, device: Device) -> None:
    spool, store, cs = _setup(tmp_path, device, 3)
    base = compact.Base(1, compact.split_segment(_data(device, 1))[1])
    payload = compact.encode_segment(_data(device, 2), 2, base)
    assert payload is not None
    cs.begin_batch()
    assert cs.put(device.id, "gps", payload) == []  # seg 1 is not in this store
    assert cs.plain == {device.id: [compact.CompactAck(compact.PLAIN, "gps", 2)]}
    key = Ed25519PrivateKey.generate()
    msgs, rest = cs.answers(device.id, [], key)
    assert rest == [] and len(msgs) == 1
    parsed = compact.parse_acks(msgs[0], device.id, key.public_key(), lambda s, q: None)
    assert parsed == [compact.CompactAck(compact.PLAIN, "gps", 2)]
    assert not store.seg_path(device.id, "gps", 2).exists()
    # The base is here, but the message names another manifest under its seq: plain too.
    for seq in (0, 1):
        first = compact.encode_segment(_data(device, seq), seq, None)
        assert first is not None
        assert isinstance(cs.put(device.id, "gps", first)[0], proto.SegmentAck)
    forged = bytearray(payload)
    forged[7] ^= 0xFF  # the first byte of the base check
    other = CompactSegments(store)
    assert other.put(device.id, "gps", bytes(forged)) == []
    assert other.plain == {device.id: [compact.CompactAck(compact.PLAIN, "gps", 2)]}
    assert other.put(device.id, "gps", payload)[0].result == "stored"  # type: ignore[union-attr]
    spool.close()


def test_answers_split_compact_and_json(tmp_path: Path, device: Device) -> None:
    spool, _store, cs = _setup(tmp_path, device, 1)
    key = Ed25519PrivateKey.generate()
    acks: list[proto.Ack] = [
        proto.SegmentAck("gps", 0, "11" * 32, "stored"),
        proto.Progress("video", 1, "22" * 32, 1024),
    ]
    # A device that sent nothing compact in this batch is answered in JSON only.
    cs.begin_batch()
    assert cs.answers(device.id, acks, key) == ([], acks)
    cs.devices.add(device.id)
    msgs, rest = cs.answers(device.id, acks, key)
    assert rest == [acks[1]] and len(msgs) == 1
    # Without an ack key (a laboratory) everything goes as JSON.
    assert cs.answers(device.id, acks, None) == ([], acks)
    spool.close()


def test_malformed_or_misplaced_compact_segments(tmp_path: Path, device: Device) -> None:
    spool, store, cs = _setup(tmp_path, device, 2)
    payload = compact.encode_segment(_data(device, 0), 0, None)
    assert payload is not None
    with pytest.raises(FormatError, match="topic of event"):
        cs.put(device.id, "event", payload)
    with pytest.raises(FormatError):
        cs.put(device.id, "gps", payload[:-500])  # the body cut: its hash, so the manifest
    with pytest.raises(FormatError):
        cs.put(device.id, "gps", b"EAM1\x00\x00\x00")
    # seq in the message that is not the manifest's
    other = bytearray(payload)
    other[5] = 1
    with pytest.raises(FormatError, match="seq"):
        cs.put(device.id, "gps", bytes(other))
    assert store.stats.stored == 0
    # A body altered on the way (same length) is rebuilt, and refused by the store's checks.
    bad = bytearray(payload)
    bad[-10] ^= 0x01
    acks = cs.put(device.id, "gps", bytes(bad))
    assert all(not isinstance(a, proto.SegmentAck) for a in acks), acks
    assert not store.seg_path(device.id, "gps", 0).exists()
    spool.close()
