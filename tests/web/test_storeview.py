"""Parts of the review page below HTTP: gaps and their reasons, the live/state recorder's
files, recovered journals, identifiers and paths."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.ingest.livestate import LiveRecorder
from agent.web.evidence import DeviceReview, EventMark, SegmentView, chain_gaps
from agent.web.storeview import StoreView
from agent.web.track import read_track
from tests.fixtures.keys import KeySet, make_sealer


def _seg(stream: str, seq: int, t: float) -> SegmentView:
    return SegmentView(stream, seq, t, t + 1, "", {}, 100, "verified", (), True, {})


def test_gaps_carry_the_reason_the_device_recorded() -> None:
    r = DeviceReview("d")
    r.streams["gps"] = [_seg("gps", 0, 0), _seg("gps", 4, 10), _seg("gps", 9, 20)]
    r.streams["video"] = [_seg("video", 0, 0)]
    r.events = [
        EventMark(12, "telemetry_evicted", 3, {"stream": "gps", "seqs": [5, 6], "reason": "full"}),
        EventMark(5, "evidence_refused", 4, {"stream": "video", "reason": "quota"}),
    ]
    gaps = chain_gaps(r)
    got = [(g.first, g.last, g.reason) for g in gaps["gps"]]
    assert got == [
        (1, 3, ""),
        (5, 6, "telemetry_evicted (event #3): full"),
        (7, 8, ""),
    ]
    (refused,) = gaps["video"]
    assert (
        refused.first == -1 and "evidence_refused" in refused.reason and "quota" in refused.reason
    )


def test_a_huge_seq_jump_is_one_gap() -> None:
    r = DeviceReview("d")
    r.streams["gps"] = [_seg("gps", 0, 0), _seg("gps", 999_999_999_999, 10)]
    (gap,) = chain_gaps(r)["gps"]
    assert (gap.first, gap.last) == (1, 999_999_999_998)


class _Link:
    def __init__(self) -> None:
        self.routes: list[str] = []

    def route(self, pattern: str, qos: int = 1) -> Any:
        import queue

        self.routes.append(pattern)
        return queue.Queue()

    def ack(self, msg: Any) -> None:
        pass


def test_live_recorder_writes_what_the_review_page_reads(tmp_path: Path) -> None:
    link = _Link()
    rec = LiveRecorder(tmp_path, link, threading.Event())  # type: ignore[arg-type]
    assert link.routes == ["devices/+/state", "devices/+/live/#"]  # not shared: retained state
    birth = {"state": "online", "boot": "b1", "backlog": {"gps": {"count": 3, "bytes": 10}}}
    assert rec.record("devices/cam-1/state", json.dumps(birth).encode(), retain=True)
    alarm = {"kind": "storage_nearly_full", "message": "m", "severity": "warning", "time": "t"}
    assert rec.record("devices/cam-1/live/alarm", json.dumps(alarm).encode())
    assert rec.record("devices/cam-1/live/alarm", json.dumps(alarm).encode())  # redelivered
    assert not rec.record("devices/cam-1/live/fix", b"not json")
    assert not rec.record("devices/../live/fix", b"{}")
    assert not rec.record("devices/cam-1/up/key", b"{}")
    view = StoreView(tmp_path).live("cam-1")
    assert view.online is True and [(b.stream, b.count) for b in view.backlog()] == [("gps", 3)]
    assert len(view.alarms) == 1 and view.alarms[0].payload["kind"] == "storage_nearly_full"
    rec.record("devices/cam-1/state", json.dumps({"state": "offline", "boot": "b1"}).encode())
    assert StoreView(tmp_path).live("cam-1").online is False


def test_a_journal_recovered_under_another_cipher_reads_back(
    tmp_path: Path, keyset: KeySet
) -> None:
    """Written under ChaCha20-Poly1305, cut off by a power loss, recovered at the next start
    by an agent now set to AES-256-GCM: the platform reads every fix out of it."""
    from agent.gps.wire import encode_fix
    from agent.model import Fix, FixMode
    from agent.storage.records import JOURNAL_CONTENT_TYPE, RecordLog
    from agent.storage.settings import SpoolSettings
    from agent.storage.spool import Spool

    dev = "cam-jnl"
    spool_dir = tmp_path / "spool"
    fixes = [Fix(1.79e9 + i, FixMode.FIX_3D, 52.0 + i / 1e4, 5.0, speed=3.0) for i in range(7)]
    first = Spool(
        SpoolSettings(dir=spool_dir, reserve_mb=0),
        make_sealer(keyset, dev, "boot-1", cipher="chacha20-poly1305"),
    )
    journal = RecordLog(first, "gps", content_type="application/x-edge-fix", batch_max_records=99)
    for f in fixes:
        journal.append(encode_fix(f))
    # The power goes: nothing is closed or rolled. At the next start the cipher setting is new.
    second = Spool(
        SpoolSettings(dir=spool_dir, reserve_mb=0),
        make_sealer(keyset, dev, "boot-2", cipher="aes-256-gcm"),
    )
    recovered = RecordLog(second, "gps", content_type="application/x-edge-fix").recovered
    assert recovered is not None
    store = tmp_path / "store"
    (store / dev / "seg" / "gps").mkdir(parents=True)
    shutil.copytree(spool_dir / "keys", store / dev / "keys")
    shutil.copy(recovered.path, store / dev / "seg" / "gps" / recovered.path.name)
    second.close()
    first.close()

    view = StoreView(store, platform_key=keyset.platform_private)
    (seg,) = view.review(dev).streams["gps"]
    assert seg.verified and seg.content_type == JOURNAL_CONTENT_TYPE
    assert seg.manifest["cipher"] == "aes-256-gcm"  # the outer segment's, not the journal's
    track = read_track(view, dev, None, None)
    assert track.skipped_segments == []
    assert [round(p.lat, 4) for p in track.points] == [round(f.lat or 0, 4) for f in fixes]


def test_ids_and_paths_from_requests_stay_in_the_store(tmp_path: Path) -> None:
    from agent.web.httpbase import WebError
    from agent.web.storeview import check_device, check_seq, check_stream

    (tmp_path / "store" / "cam-1" / "seg").mkdir(parents=True)
    (tmp_path / "store" / "partial" / "seg").mkdir(parents=True)  # the ingest's, not a device
    (tmp_path / "outside" / "seg").mkdir(parents=True)
    (tmp_path / "store" / "link").symlink_to(tmp_path / "outside")
    view = StoreView(tmp_path / "store")
    assert view.devices() == ["cam-1"]
    for bad in ("..", ".", ".hidden", "-x", "a/b", "partial", "link\x00", "é"):
        with pytest.raises(WebError):
            view.device_dir(bad)
    with pytest.raises(WebError):
        view.device_dir("link")  # a symlink out of the store
    assert check_device("cam-1") == "cam-1"
    for bad in ("Video", "1x", "", "a" * 33):
        with pytest.raises(WebError):
            check_stream(bad)
    for bad in ("-1", "1e3", "0x1", "1" * 13, ""):
        with pytest.raises(WebError):
            check_seq(bad)
    assert check_seq("000000000042") == 42
