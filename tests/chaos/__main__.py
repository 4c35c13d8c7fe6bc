"""``python -m tests.chaos``: chaos runs from the command line.

    python -m tests.chaos --seed 4242 --minutes 4          one run, its table
    python -m tests.chaos --seeds 1-20 --minutes 4 --jobs 2  many (make soak), then a summary
    python -m tests.chaos --regressions                     every kept regression
    python -m tests.chaos --ci --jobs 3                     CI's three seeds and the regressions
    python -m tests.chaos --summary DIR                     the table again, from DIR/*/result.json
    python -m tests.chaos --seed 4242 --minutes 4 --generator v1 --upto 7   a prefix

Each run is a child process of its own (``--one``), so several run at once (``--jobs``);
each writes its log and result under ``--dir``. Exits non-zero when an invariant does not
hold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import Result, run_chaos
from tests.chaos.report import summary, table
from tests.chaos.schedule import CI, REGRESSIONS, Schedule, plan

REPO = Path(__file__).resolve().parents[2]
STAGGER_S = 8.0


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def run_one(a: argparse.Namespace) -> int:
    """One run in this process (what each child of :func:`run_many` does)."""
    sched = Schedule(a.name or f"seed {a.seed}", a.seed, a.minutes, a.generator, a.upto)
    root = a.dir or Path(tempfile.mkdtemp(prefix="edge-agent-chaos-"))
    p = sched.plan()
    print(f"schedule: seed {p.seed}, {p.minutes:g} min ({p.generator}), ~{p.estimate_s():.0f} s")
    for i, step in enumerate(p.steps):
        print(f"  {i:2d} {step.describe()}", flush=True)
    res = run_chaos(root / "run", p, sched.name)
    res.upto = a.upto
    (root / "result.json").write_text(res.to_json())
    print(table(res))
    print(f"logs and stores under {root}")
    return 1 if res.violations else 0


def run_many(schedules: list[Schedule], root: Path, jobs: int, timeout: float) -> list[Result]:
    """Each schedule in its own process, ``jobs`` at a time; their results."""
    root.mkdir(parents=True, exist_ok=True)
    todo = list(schedules)
    # Longest first: the runs at once end close together.
    todo.sort(key=lambda s: -s.plan().estimate_s())
    running: list[tuple[Schedule, subprocess.Popen[bytes], float, Path]] = []
    next_start = 0.0
    results: list[Result] = []
    while todo or running:
        while todo and len(running) < jobs and time.monotonic() >= next_start:
            # Starts STAGGER_S apart: an agent's start is its busiest moment, and runs that all
            # start at once slow each other's first live fixes.
            next_start = time.monotonic() + STAGGER_S
            s = todo.pop(0)
            d = root / s.name.replace(" ", "-")
            d.mkdir(parents=True, exist_ok=True)
            with (d / "chaos.log").open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.chaos", "--one", "--name", s.name,
                     "--dir", str(d), *s.args()],
                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )  # fmt: skip
            running.append((s, proc, time.monotonic(), d))
        for item in list(running):
            s, proc, began, d = item
            if proc.poll() is None and time.monotonic() - began < timeout:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            running.remove(item)
            try:
                res = Result.from_json((d / "result.json").read_text())
            except (OSError, ValueError):
                res = Result(s.name, s.seed, s.minutes, s.generator, s.upto)
                tail = (d / "chaos.log").read_text(errors="replace")[-2000:]
                from tests.chaos.harness import Violation

                res.violations = [Violation("the run ends", f"no result (see {d}): {tail}")]
                res.wall_s = round(time.monotonic() - began, 1)
                (d / "result.json").write_text(res.to_json())
            results.append(res)
            print(
                f"[{time.strftime('%X')}] {s.name}: {res.wall_s:.0f} s, "
                f"{len(res.violations)} invariants broken",
                flush=True,
            )
        time.sleep(1)
    return results


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos")
    p.add_argument("--minutes", type=float, default=4.0, help="minutes of faults (about)")
    p.add_argument("--seed", type=int, default=8, help="fault schedule seed")
    p.add_argument("--seeds", help="many seeds: 1-20 or 3,5,8 (each its own process)")
    p.add_argument("--regressions", action="store_true", help="every kept regression")
    p.add_argument("--ci", action="store_true", help="CI's seeds and every kept regression")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (with --seeds)")
    p.add_argument("--generator", default="v2", help="schedule rules (v1: before issue 21)")
    p.add_argument("--upto", type=int, default=None, help="only the first N faults")
    p.add_argument("--plan", action="store_true", help="print the schedule and exit")
    p.add_argument("--summary", type=Path, help="the summary table of the runs kept under a dir")
    p.add_argument("--dir", type=Path, default=None, help="keep everything here")
    p.add_argument("--name", default="", help=argparse.SUPPRESS)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.summary:
        found = sorted(a.summary.glob("*/result.json"), key=lambda f: f.stat().st_mtime)
        print(summary([Result.from_json(f.read_text()) for f in found]))
        return 0
    if a.plan:
        sched = plan(a.seed, a.minutes, a.generator)
        steps = sched.steps if a.upto is None else sched.steps[: a.upto]
        for i, step in enumerate(steps):
            print(f"{i:2d} {step.describe()}")
        return 0
    if not a.seeds and not a.regressions and not a.ci:
        return run_one(a)
    seeds = _seeds(a.seeds) if a.seeds else []
    schedules = (
        [Schedule(f"seed {s}", s, a.minutes, a.generator) for s in seeds]
        + (list(CI) if a.ci else [])
        + (list(REGRESSIONS) if a.regressions or a.ci else [])
    )
    root = a.dir or Path(tempfile.mkdtemp(prefix="edge-agent-chaos-"))
    longest = max(sc.plan().estimate_s() for sc in schedules)
    results = run_many(schedules, root, a.jobs, timeout=longest * 3 + 900)
    print(summary(results))
    print(f"logs and stores under {root}")
    return 1 if any(r.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
