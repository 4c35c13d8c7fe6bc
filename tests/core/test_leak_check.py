"""The leak check every test runs under (tests/fixtures/leaks.py) sees what a test leaves."""

from __future__ import annotations

import subprocess
import threading

from tests.fixtures.leaks import _leftovers, children


def test_a_thread_and_a_child_left_running_are_seen_and_forgotten_once_ended() -> None:
    threads_before = set(threading.enumerate())
    children_before = set(children())
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="ingest")
    worker.start()
    child = subprocess.Popen(["sleep", "30"])
    try:
        threads, procs = _leftovers(threads_before, children_before, [])
        assert [t.name for t in threads] == ["ingest"]
        assert list(procs) == [child.pid] and procs[child.pid] == "sleep 30"
        # A process a session fixture owns (the session broker, restarted by a test) is not.
        assert _leftovers(threads_before, children_before, ["sleep 3"])[1] == {}
    finally:
        stop.set()
        worker.join()
        child.kill()
        child.wait()
    assert _leftovers(threads_before, children_before, []) == ([], {})
