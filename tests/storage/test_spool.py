"""The spool on a real filesystem: order, acks, recovery and retention."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from agent.errors import EvidenceRefused
from agent.model import Alarm
from agent.storage.seal import read_segment_info
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer
from tests.storage.helpers import open_sealed


def test_put_then_read_back_through_the_platform_key(spool: Spool, keyset: KeySet) -> None:
    data = os.urandom(300_000)
    r = spool.put_bytes("video", data, content_type="video/mp4")
    assert r.path.exists() and r.seq == 0
    assert open_sealed(r.path, spool.root / "keys", keyset.platform_private) == data
    # Nothing but ciphertext is on disk.
    for p in spool.root.rglob("*"):
        if p.is_file():
            assert data[1000:1032] not in p.read_bytes()


def test_chain_links_each_segment_to_the_previous(spool: Spool) -> None:
    results = [spool.put_bytes("still", f"img{i}".encode()) for i in range(4)]
    infos = []
    for r in results:
        with r.path.open("rb") as f:
            infos.append(read_segment_info(f))
    assert [i.seq for i in infos] == [0, 1, 2, 3]
    assert infos[0].manifest["prev"] is None
    for a, b in itertools.pairwise(infos):
        assert b.manifest["prev"] == a.manifest_hash


def test_next_ready_follows_priority_then_age(spool: Spool) -> None:
    spool.put_bytes("video", b"v0")
    spool.put_bytes("gps", b"g0")
    spool.put_bytes("video", b"v1")
    spool.put_bytes("event", b"e0")
    order = [(i.stream, i.seq) for i in spool.next_ready(("event", "gps", "video"), limit=10)]
    assert order == [("event", 0), ("gps", 0), ("video", 0), ("video", 1)]


def test_ack_removes_only_with_the_right_hash(spool: Spool) -> None:
    r = spool.put_bytes("video", b"abc")
    assert not spool.ack("video", 0, "0" * 64)
    assert r.path.exists()
    assert spool.ack("video", 0, r.manifest_hash)
    assert not r.path.exists()
    assert spool.items() == []
    assert not spool.ack("video", 0, r.manifest_hash)  # a second ack is harmless


def test_reopen_resets_inflight_and_keeps_chain(tmp_path: Path, keyset: KeySet) -> None:
    settings = SpoolSettings(dir=tmp_path / "sp", reserve_mb=0)
    sp = Spool(settings, make_sealer(keyset))
    sp.put_bytes("video", b"a")
    item = sp.next_ready()[0]
    sp.mark_inflight(item.id)
    sp.set_progress(item.id, 3)
    assert sp.next_ready() == []  # in flight: not offered twice
    sp.close()
    sp2 = Spool(settings, make_sealer(keyset, boot_id="boot-b"))
    again = sp2.next_ready()[0]  # after a stop, everything unacknowledged is ready again
    assert (again.seq, again.progress) == (0, 3)
    r = sp2.put_bytes("video", b"b")
    assert r.seq == 1
    with r.path.open("rb") as f:
        info = read_segment_info(f)
    assert info.manifest["prev"] == item.manifest_hash
    assert info.manifest["boot"] == "boot-b"
    sp2.close()


def test_recovery_adopts_a_sealed_file_cut_before_its_index_row(
    tmp_path: Path, keyset: KeySet
) -> None:
    """A put cut between rename and index commit: the sealed file is kept, not lost."""
    settings = SpoolSettings(dir=tmp_path / "sp", reserve_mb=0)
    sp = Spool(settings, make_sealer(keyset))
    sp.put_bytes("video", b"first")
    r2 = sp.put_bytes("video", b"second")
    # Simulate the cut: forget the index row and chain advance of seq 1.
    with sp._index.tx() as db:
        db.execute("DELETE FROM segments WHERE seq=1")
        db.execute("UPDATE chains SET next_seq=1, last_hash=(SELECT manifest_hash FROM segments)")
    sp.close()
    sp2 = Spool(settings, make_sealer(keyset))
    assert sp2.recovery["adopted"] == 1
    assert [i.seq for i in sp2.items("video")] == [0, 1]
    assert sp2.put_bytes("video", b"third").seq == 2
    assert r2.path.exists()
    sp2.close()


def test_recovery_quarantines_garbage_and_clears_temp(tmp_path: Path, keyset: KeySet) -> None:
    settings = SpoolSettings(dir=tmp_path / "sp", reserve_mb=0)
    sp = Spool(settings, make_sealer(keyset))
    r = sp.put_bytes("video", b"x" * 5000)
    sp.close()
    (settings.dir / "tmp" / "video-9-abc.part").write_bytes(b"half")
    (settings.dir / "seg" / "video" / "000000000007.seg").write_bytes(b"not a segment")
    with r.path.open("r+b") as f:
        f.truncate(100)
    sp2 = Spool(settings, make_sealer(keyset))
    assert sp2.recovery["tmp_removed"] == 1
    assert sp2.recovery["quarantined"] == 2
    assert sp2.recovery["lost"] == 1
    quarantined = sorted(p.name for p in (settings.dir / "quarantine").iterdir())
    assert len(quarantined) == 2 and all(q.endswith(".seg") for q in quarantined)
    assert list((settings.dir / "tmp").iterdir()) == []
    # The loss is itself on record, in the event stream.
    events = sp2.items("event")
    assert len(events) == 1
    sp2.close()


def test_evidence_quota_refuses_with_event_and_alarm(tmp_path: Path, keyset: KeySet) -> None:
    alarms: list[Alarm] = []
    settings = SpoolSettings(dir=tmp_path / "sp", evidence_quota_mb=1, reserve_mb=0)
    sp = Spool(settings, make_sealer(keyset), alarm=alarms.append)
    sp.put_bytes("video", os.urandom(600_000))
    with pytest.raises(EvidenceRefused, match="evidence quota full"):
        sp.put_bytes("video", os.urandom(600_000))
    assert [a.kind for a in alarms] == ["evidence_refused"]
    # Nothing already stored was touched; the refusal is an event record.
    assert [i.seq for i in sp.items("video")] == [0]
    assert len(sp.items("event")) == 1
    # The refused segment consumed no sequence number: the chain has no gap.
    sp.ack("video", 0, sp.items("video")[0].manifest_hash)
    assert sp.put_bytes("video", b"fits now").seq == 1
    sp.close()


def test_telemetry_overwrites_its_oldest_and_says_so(tmp_path: Path, keyset: KeySet) -> None:
    import shutil

    settings = SpoolSettings(dir=tmp_path / "sp", telemetry_quota_mb=1, reserve_mb=0)
    sp = Spool(settings, make_sealer(keyset))
    ev = sp.put_bytes("video", b"evidence stays")
    # The platform already has gps seq 0 (delivered, acknowledged).
    platform = tmp_path / "platform"
    platform.mkdir()
    first = sp.put_bytes("gps", b"fix")
    shutil.copy(first.path, platform / "gps-0.seg")
    shutil.copytree(settings.dir / "keys", platform / "keys")
    assert sp.ack("gps", 0, first.manifest_hash)
    for _ in range(5):
        sp.put_bytes("gps", os.urandom(300_000))
    assert [i.seq for i in sp.items("gps")] == [3, 4, 5]
    assert sp.usage()["telemetry"] <= 1024 * 1024
    assert ev.path.exists()
    # seq 1 and 2 are gone from the middle of the chain, but the device said why (in the
    # signed manifest of its event records), so a verifier without the key accepts the gap.
    report = verify_paths([platform, settings.dir])
    assert report.ok, report.problems
    evicted = [i.evicted for _p, i in report.segments if i.evicted is not None]
    assert evicted == [("gps", [1]), ("gps", [2])]
    # Without those event records the same gap is a failure, named.
    bare = verify_paths([platform, settings.dir / "seg" / "gps"])
    assert [(p.kind, p.where) for p in bare.problems] == [("gap", "dev-1/gps#1")]
    sp.close()


def test_key_records_collected_after_ack(tmp_path: Path, keyset: KeySet) -> None:
    settings = SpoolSettings(dir=tmp_path / "sp", reserve_mb=0)
    sp1 = Spool(settings, make_sealer(keyset, boot_id="b1"))
    r = sp1.put_bytes("still", b"a")
    old_key = sp1.items()[0].key_id
    sp1.close()
    sp2 = Spool(settings, make_sealer(keyset, boot_id="b2"))
    sp2.put_bytes("still", b"b")
    assert set(sp2.unacked_keys()) == {old_key, sp2.sealer.current_key().key_id}
    sp2.ack_key(old_key)
    assert (settings.dir / "keys" / f"{old_key}.key").exists()  # still needed by seq 0
    sp2.ack("still", 0, r.manifest_hash)
    assert sp2.collect_keys() == 1
    assert not (settings.dir / "keys" / f"{old_key}.key").exists()
    sp2.close()


def test_backlog_figures(spool: Spool) -> None:
    spool.put_bytes("gps", b"x" * 10)
    spool.put_bytes("gps", b"y" * 10)
    b = spool.backlog()["gps"]
    assert b.count == 2 and b.bytes > 20 and b.oldest_age_s is not None


def test_one_writer_and_one_reader_at_once(spool: Spool) -> None:
    """The uplink acks while producers put: nothing lost, nothing acked twice."""
    import threading

    done = threading.Event()
    acked: list[int] = []

    def reader() -> None:
        while not done.is_set() or spool.next_ready():
            for item in spool.next_ready(limit=5):
                spool.mark_inflight(item.id)
                assert spool.ack(item.stream, item.seq, item.manifest_hash)
                acked.append(item.seq)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(200):
        spool.put_bytes("gps", i.to_bytes(4, "big") * 100)
    done.set()
    t.join(timeout=60)
    assert sorted(acked) == list(range(200))
    assert spool.items() == []


def test_refused_segments_are_parked_until_retried(spool: Spool) -> None:
    spool.put_bytes("video", b"a")
    spool.put_bytes("video", b"b")
    first = spool.next_ready()[0]
    spool.park(first.id, "platform says: unknown device")
    assert [i.seq for i in spool.next_ready(limit=5)] == [1]
    assert [i.seq for i in spool.items("video")] == [0, 1]  # kept: it is evidence
    assert spool.retry_refused() == 1
    assert [i.seq for i in spool.next_ready(limit=5)] == [0, 1]


def test_ack_many_in_one_go(spool: Spool) -> None:
    rs = [spool.put_bytes("gps", bytes([i]) * 50) for i in range(5)]
    acks = [(r.stream, r.seq, r.manifest_hash) for r in rs[:3]] + [("gps", 4, "bad")]
    assert spool.ack_many(acks) == [True, True, True, False]
    assert [i.seq for i in spool.items("gps")] == [3, 4]
    assert not rs[0].path.exists() and rs[4].path.exists()


def test_ack_many_removes_a_segment_acknowledged_twice_once(spool: Spool) -> None:
    """An acknowledgement delivered twice in one batch (the platform's ingest saw the segment
    twice) removed one segment: the second says so, as a second call would."""
    rs = [spool.put_bytes("gps", bytes([i]) * 50) for i in range(3)]
    acks = [(r.stream, r.seq, r.manifest_hash) for r in rs]
    assert spool.ack_many([acks[0], acks[1], acks[0], acks[1]]) == [True, True, False, False]
    assert [i.seq for i in spool.items("gps")] == [2]
    assert spool.ack_many([acks[0], acks[2], acks[2]]) == [False, True, False]
    assert spool.items("gps") == []


def test_acked_file_left_by_a_cut_is_removed_at_open(tmp_path: Path, keyset: KeySet) -> None:
    """Ack deletes the row, then the file: a cut between leaves a file recovery removes."""
    import shutil

    settings = SpoolSettings(dir=tmp_path / "sp", reserve_mb=0)
    sp = Spool(settings, make_sealer(keyset))
    r = sp.put_bytes("video", b"delivered")
    sp.put_bytes("video", b"waiting")
    keep = tmp_path / "copy.seg"
    shutil.copy(r.path, keep)
    assert sp.ack("video", 0, r.manifest_hash)
    sp.close()
    shutil.copy(keep, r.path)  # as if the stop came before the unlink
    sp2 = Spool(settings, make_sealer(keyset))
    assert sp2.recovery.get("removed_acked") == 1 and sp2.recovery["quarantined"] == 0
    assert not r.path.exists()
    assert [i.seq for i in sp2.items("video")] == [1]
    sp2.close()


def test_events_from_several_threads_are_stamped_in_seq_order(spool: Spool) -> None:
    """Chaos soak seed 10: an event stamped before it took its seq, sealed after one another
    thread stamped later, made verify report genuine evidence as ``reordered``."""
    import threading

    def writer(n: int) -> None:
        for i in range(40):
            spool.put_event("note", {"writer": n, "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = spool.items("event")
    assert len(items) == 160
    starts = []
    for i in items:
        with i.path.open("rb") as f:
            starts.append(read_segment_info(f).manifest["start_mono_ns"])
    assert starts == sorted(starts)
    report = verify_paths([spool.root])
    assert [p for p in report.problems if p.kind == "reordered"] == []
