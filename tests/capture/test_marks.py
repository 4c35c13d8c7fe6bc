"""A mark is answered ``recorded`` only once its event record is in the spool.

Chaos soak seed 7 (docs/reliability.md): a ``record.mark`` was answered ok as soon as it was
queued to the recorder; the disk was full, the event waited in memory, and a power cut lost it
while the platform had been told ok.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture.recorder import Recorder
from agent.capture.sim import SyntheticSource
from agent.capture.triggers import mark_recorded
from agent.runtime.routing import record_handlers
from agent.storage.keys import load_platform_private
from agent.storage.spool import Spool
from tests.fixtures.full_disk import fill, small_tmpfs
from tests.storage.helpers import open_sealed

from .conftest import FPS, H, Keys, W, small_settings


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "24m") as mnt:
        yield mnt


def _events(spool: Spool, keys: Keys) -> list[dict[str, object]]:
    key = load_platform_private(keys.platform_key_path)
    return [json.loads(open_sealed(i.path, spool.root / "keys", key)) for i in spool.items("event")]


def _recorder(spool: Spool, stop: threading.Event) -> Recorder:
    rec = Recorder(
        small_settings(mode="event"), SyntheticSource(W, H, FPS, paced=True, stop=stop), spool, stop
    )
    rec.start_threads()
    return rec


def test_a_mark_is_recorded_once_its_event_is_in_the_spool(keys: Keys, tmp_path: Path) -> None:
    spool = keys.spool(tmp_path / "spool")
    stop = threading.Event()
    rec = _recorder(spool, stop)
    try:
        assert mark_recorded(rec.mark("button", "door kicked in"), timeout=60) is None
        marks = [e for e in _events(spool, keys) if e["type"] == "mark"]
        assert [m["note"] for m in marks] == ["door kicked in"]
    finally:
        stop.set()
        rec.join(60)
        spool.close()


def test_a_mark_the_full_disk_refuses_is_not_answered_recorded(
    keys: Keys, small_disk: Path
) -> None:
    spool = keys.spool(small_disk / "spool", reserve_mb=0)
    spool.put_event("start", {})  # this epoch's key record is on the disk
    stop = threading.Event()
    rec = _recorder(spool, stop)
    try:
        assert mark_recorded(rec.mark("button", "before"), timeout=60) is None
        os.unlink(spool.root / ".ballast")  # nothing left to give back either
        fill(small_disk)
        why = mark_recorded(rec.mark("button", "on a full disk"), timeout=60)
        assert why is not None and "full" in why, why
        # The command channel's answer says so (a device without a camera: the spool directly).
        answer = record_handlers("platform", spool=spool)["record.mark"]({"note": "no camera"})
        assert answer["ok"] is True and answer["recorded"] is False, answer
        assert "full" in str(answer["reason"])
    finally:
        stop.set()
        rec.join(60)
        (small_disk / "filler").unlink(missing_ok=True)
    notes = [e["note"] for e in _events(spool, keys) if e["type"] == "mark"]
    assert notes == ["before"]
    spool.close()
