"""The chaos suite in CI: three fixed seeds that together inject every kind of fault twice, and
every schedule that ever broke an invariant (``tests/chaos/schedule.py``: ``CI``,
``REGRESSIONS``).

All of them run at once, each in its own process (``python -m tests.chaos --ci``, started once
for the module; ``EDGE_AGENT_CHAOS_JOBS`` at a time, all by default: each run mostly waits on
its faults); each test waits for its schedule's result, prints its table and the time it took,
and fails on any invariant broken. A schedule that reproduces an open bug is an expected
failure: xfail strict when the bug always shows (it fails once fixed, so the mark goes); for
a bug that shows only sometimes, its violation alone is an expected failure and any other
violation fails. ``make soak`` runs
many seeds for longer; docs/reliability.md says how to run one seed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Result
from tests.chaos.report import table
from tests.chaos.schedule import CI, REGRESSIONS, Schedule
from tests.fixtures.powercut_fs import fuse_unavailable

REPO = Path(__file__).resolve().parents[2]
# Runs at once: all of them by default (each mostly waits on its faults: ~25 s of CPU in ~2 min).
JOBS = int(os.environ.get("EDGE_AGENT_CHAOS_JOBS", str(len(CI + REGRESSIONS))))
LIMIT_S = 900  # the whole set of runs (each is ~2 min; some wait behind others)


class Runs:
    """The supervisor process running every schedule; each schedule's result when it ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "chaos-ci.log"
        self.began = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos", "--ci", "--jobs", str(JOBS),
                 "--dir", str(root)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def result(self, sched: Schedule) -> Result:
        path = self.root / sched.name.replace(" ", "-") / "result.json"
        while time.monotonic() - self.began < LIMIT_S:
            if path.exists():
                with contextlib.suppress(ValueError):
                    return Result.from_json(path.read_text())
            if self.proc.poll() is not None and not path.exists():
                break
            time.sleep(1)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{sched.name}: no result (see {self.root}):\n{tail}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    why = fuse_unavailable()
    if why is not None:
        pytest.skip(f"the chaos run needs the power-cut file system: {why}")
    r = Runs(tmp_path_factory.mktemp("chaos"))
    try:
        yield r
    finally:
        r.close()


def _param(s: Schedule) -> object:
    strict = s.open_bug is not None and s.strict
    marks = [pytest.mark.xfail(strict=True, reason=s.open_bug)] if strict else []
    return pytest.param(s, id=s.name, marks=marks)


@pytest.mark.timeout(LIMIT_S + 60)
@pytest.mark.parametrize("sched", [_param(s) for s in CI + REGRESSIONS])
def test_chaos_invariants_hold(
    runs: Runs, sched: Schedule, capsys: pytest.CaptureFixture[str]
) -> None:
    res = runs.result(sched)
    with capsys.disabled():  # the time each schedule took, in every CI log
        print(f"\nchaos {sched.name} ({' '.join(sched.args())}): {res.wall_s:.0f} s", end=" ")
    print(table(res))
    broken = [f"{v.invariant}: {v.text}" for v in res.violations]
    bugs = {sched.expected(b) for b in broken}
    if broken and None not in bugs:
        pytest.xfail(f"open bugs reproduced: {sorted(str(b) for b in bugs)}: {broken}")
    assert not broken, (
        "\n".join(broken) + f"\nreplay: python -m tests.chaos {' '.join(sched.args())}"
    )
