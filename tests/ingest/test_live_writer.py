"""The live recorder writes a device's fix.json at most every few hundred milliseconds: the
newest fix in between is held and written when its time comes, superseded ones never."""

from __future__ import annotations

import json
from pathlib import Path

from agent.ingest.livestate import LatestWriter


def _entry(n: int) -> dict[str, object]:
    return {"received": n, "topic": "devices/d/live/fix", "payload": {"n": n}}


def _read(path: Path) -> object:
    return json.loads(path.read_text())["payload"]["n"]


def test_the_newest_fix_is_written_at_most_every_interval(tmp_path: Path) -> None:
    w = LatestWriter(0.25)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    w.put(a, _entry(1), now=10.0)  # a quiet file: at once
    assert _read(a) == 1
    w.put(a, _entry(2), now=10.05)
    w.put(a, _entry(3), now=10.10)  # supersedes 2
    w.put(b, _entry(7), now=10.10)  # another device's file is not held back
    assert _read(a) == 1 and _read(b) == 7
    assert abs(w.flush(10.2) - 0.05) < 1e-9  # a's next is due in 0.05 s
    assert _read(a) == 1
    assert w.flush(10.26) == 0.25
    assert _read(a) == 3
    assert w.flush(11.0) == 0.25 and _read(a) == 3  # nothing held: nothing written again
    w.put(a, _entry(4), now=11.0)  # quiet since: at once
    assert _read(a) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_held_fix_is_written_when_the_recorder_stops(tmp_path: Path) -> None:
    w = LatestWriter(0.25)
    a = tmp_path / "a.json"
    w.put(a, _entry(1), now=5.0)
    w.put(a, _entry(2), now=5.01)
    w.flush(float("inf"))
    assert _read(a) == 2


def test_its_memory_of_files_is_bounded(tmp_path: Path) -> None:
    w = LatestWriter(0.25, max_files=3)
    for i in range(10):
        w.put(tmp_path / f"{i}.json", _entry(i), now=100.0 + i)
    assert len(w._written) <= 3
