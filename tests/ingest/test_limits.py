"""The store's bounds and defaults (issue 15, findings 4, 9, 10): registered device keys unless
trust on first use is asked for; per-device quota and expiry for unfinished uploads; files 0600
and directories 0700 whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ingest.heads import HeadsBook
from agent.ingest.livestate import LiveRecorder
from agent.ingest.store import PartialLimits, Store
from agent.storage.keys import init_device_keys, load_platform_private, load_signing_key
from agent.storage.spool import Spool
from agent.uplink import heads as heads_msg
from agent.uplink import protocol as proto
from agent.uplink.mqtt import LinkConfig, MqttLink
from agent.uplink.settings import UplinkSettings
from tests.uplink.harness import Device, make_platform

CS = 16 * 1024
DEV = "cam-1"


@pytest.fixture
def device(tmp_path: Path) -> Device:
    platform = make_platform(tmp_path / "platform")
    init_device_keys(tmp_path / "dev" / "keys")
    platform.register(DEV, tmp_path / "dev" / "keys" / "device.pub")
    return Device(DEV, tmp_path / "dev", None, platform, 0, UplinkSettings())  # type: ignore[arg-type]


@pytest.fixture
def spool(device: Device) -> Iterator[Spool]:
    s = device.open_spool()
    yield s
    s.close()


def _chunks(spool: Spool, stream: str, seq: int) -> list[tuple[proto.ChunkHeader, bytes]]:
    item = next(i for i in spool.items(stream) if i.seq == seq)
    data = item.path.read_bytes()
    return [
        (proto.ChunkHeader(stream, seq, "boot1", item.manifest_hash, len(data), off),
         data[off : off + CS])
        for off in range(0, len(data), CS)
    ]  # fmt: skip


def _deliver(store: Store, spool: Spool, stream: str, seq: int) -> list[proto.Ack]:
    for kid in {i.key_id for i in spool.items()}:
        store.put_key(DEV, spool.key_record(kid))
    acks: list[proto.Ack] = []
    for h, data in _chunks(spool, stream, seq):
        acks += store.put_chunk(DEV, h, data)
    return acks


def test_registered_keys_unless_trust_on_first_use_is_asked_for(
    tmp_path: Path, device: Device, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    device.put(spool, "gps", b"g" * 100)
    record = spool.key_record(spool.items()[0].key_id)
    # Registered: the device's key is in --devices.
    store = Store(tmp_path / "s1", devices=device.platform.devices)
    assert isinstance(store.put_key(DEV, record), proto.KeyAck)
    # Not registered, no trust on first use: refused, nothing pinned.
    empty = tmp_path / "none"
    empty.mkdir()
    for s in (
        Store(tmp_path / "s2", devices=empty),
        Store(tmp_path / "s3", trust_on_first_use=False),
    ):
        ack = s.put_key(DEV, record)
        assert isinstance(ack, proto.Reject) and "not registered" in ack.reason, ack
        assert not (s.root / DEV / "device.pub").exists()
    # Trust on first use, asked for: pinned, and said loudly.
    with caplog.at_level(logging.WARNING):
        tofu = Store(tmp_path / "s4", trust_on_first_use=True)
        assert isinstance(tofu.put_key(DEV, record), proto.KeyAck)
    assert (tofu.root / DEV / "device.pub").exists()
    loud = [r.getMessage() for r in caplog.records if "TRUST ON FIRST USE" in r.getMessage()]
    assert len(loud) == 2 and DEV in loud[1], loud


def test_an_announced_size_beyond_the_quota_is_refused_up_front(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", limits=PartialLimits(quota_bytes=1 << 20))
    h = proto.ChunkHeader("video", 0, "b", "ab" * 32, 2 << 20, 0)
    (ack,) = store.put_chunk(DEV, h, b"x" * 1000)
    assert isinstance(ack, proto.Reject) and "quota" in ack.reason
    assert not (store.root / DEV).exists()


def test_quota_makes_room_from_idle_uploads_else_says_retry(
    tmp_path: Path, device: Device, spool: Spool
) -> None:
    now = [time.time()]
    limits = PartialLimits(quota_bytes=4 * CS, max_uploads=4, idle_s=60, retry_after_s=7)
    store = Store(tmp_path / "s", limits=limits, clock=lambda: now[0])
    for _ in range(2):
        device.put(spool, "still", os.urandom(2 * CS))  # sealed: two full chunks and a bit
    a, b = _chunks(spool, "still", 0), _chunks(spool, "still", 1)
    assert len(a) == len(b) == 3
    for h, data in a[:2] + b[:2]:  # exactly the quota
        assert not any(isinstance(x, proto.Retry) for x in store.put_chunk(DEV, h, data))
    # B's last bytes would exceed the quota while A is fresh: retry later, nothing kept.
    (retry,) = store.put_chunk(DEV, *b[2])
    assert isinstance(retry, proto.Retry) and retry.after_s == 7 and retry.what == "seg"
    assert (retry.stream, retry.seq, retry.hash, retry.next) == ("still", 1, b[0][0].hash, 0)
    assert store.stats.quota_refusals == 1 and not store.seg_path(DEV, "still", 1).exists()
    # A has been idle for idle_s: it is dropped to make room (the device still has it).
    now[0] += 61
    (stored,) = store.put_chunk(DEV, *b[2])
    assert stored == proto.SegmentAck("still", 1, b[0][0].hash, "stored")
    assert not store._partial_dir(DEV, a[0][0]).exists()
    # A's next chunk finds nothing before it: the platform asks for it from byte 0 ...
    (gap,) = store.put_chunk(DEV, *a[2])
    assert isinstance(gap, proto.Progress) and (gap.next, gap.got) == (0, a[2][0].offset)
    # ... and then has it whole.
    acks = [x for h, data in a[:2] for x in store.put_chunk(DEV, h, data)]
    assert acks == [proto.SegmentAck("still", 0, a[0][0].hash, "stored")], acks


def test_too_many_uploads_say_retry(tmp_path: Path, device: Device, spool: Spool) -> None:
    store = Store(tmp_path / "s", limits=PartialLimits(max_uploads=2))
    for _ in range(3):
        device.put(spool, "still", os.urandom(2 * CS))
    first = [_chunks(spool, "still", seq)[0] for seq in range(3)]
    assert store.put_chunk(DEV, *first[0]) == [] and store.put_chunk(DEV, *first[1]) == []
    (retry,) = store.put_chunk(DEV, *first[2])
    assert isinstance(retry, proto.Retry) and "2 uploads" in retry.reason


def test_idle_uploads_expire(tmp_path: Path, device: Device, spool: Spool) -> None:
    now = [time.time()]
    store = Store(tmp_path / "s", limits=PartialLimits(expiry_s=3600), clock=lambda: now[0])
    device.put(spool, "still", os.urandom(3 * CS))
    (h, data), *_ = _chunks(spool, "still", 0)
    store.put_chunk(DEV, h, data)
    pdir = store._partial_dir(DEV, h)
    assert pdir.is_dir()
    now[0] += 3500
    assert store.expire_partials() == 0 and pdir.is_dir()
    # After a restart too: a new Store finds it on disk and goes by its age.
    now[0] += 200
    again = Store(tmp_path / "s", limits=PartialLimits(expiry_s=3600), clock=lambda: now[0])
    assert again.expire_partials() == 1
    assert not pdir.exists() and again.stats.partials_expired == 1


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_store_files_are_private_whatever_the_umask(
    tmp_path: Path, device: Device, spool: Spool, umask: int
) -> None:
    device.put(spool, "still", os.urandom(3 * CS))
    device.put(spool, "gps", b"fix" * 30)
    old = os.umask(umask)
    try:
        store = Store(
            tmp_path / "s",
            platform_key=load_platform_private(device.platform.key),
            devices=device.platform.devices,
        )
        acks = _deliver(store, spool, "still", 0)[-1:] + _deliver(store, spool, "gps", 0)[-1:]
        assert all(isinstance(a, proto.SegmentAck) for a in acks), acks
        # a partial upload, the live lane and the signed heads too
        h, data = _chunks(spool, "still", 0)[0]
        store.put_chunk(DEV, proto.ChunkHeader("still", 5, "b", "cd" * 32, h.size, 0), data)
        link = MqttLink(LinkConfig("127.0.0.1", 1, "ingest", tls=False), threading.Event())
        live = LiveRecorder(store.root, link, link.stop)
        assert live.record(f"devices/{DEV}/live/status", b'{"ok": true}')
        assert live.record(f"devices/{DEV}/live/alarm", b'{"kind": "x"}')
        signed = heads_msg.sign_heads(
            load_signing_key(device.dir / "keys" / "device.key"), DEV, "boot1", 1.0,
            spool.chain_state(), {},
        )  # fmt: skip
        HeadsBook(store).record(DEV, signed)
    finally:
        os.umask(old)
    seen = {"file": 0, "dir": 0}
    for dirpath, dirnames, filenames in os.walk(store.root):
        for d in dirnames:
            assert stat.S_IMODE(os.stat(Path(dirpath) / d).st_mode) == 0o700, (dirpath, d)
            seen["dir"] += 1
        for f in filenames:
            assert stat.S_IMODE(os.stat(Path(dirpath) / f).st_mode) == 0o600, (dirpath, f)
            seen["file"] += 1
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert seen["file"] >= 8 and seen["dir"] >= 8, seen
    assert (store.root / DEV / "plain" / "still" / f"{0:012d}.bin").exists()
