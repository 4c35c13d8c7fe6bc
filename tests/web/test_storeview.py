"""Pure parts of the review page: gaps and their reasons, the live/state recorder's files."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from agent.ingest.livestate import LiveRecorder
from agent.web.storeview import DeviceReview, EventMark, SegmentView, StoreView, _gaps


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
    gaps = _gaps(r)
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
    (gap,) = _gaps(r)["gps"]
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
