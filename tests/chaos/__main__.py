"""``python -m tests.chaos --minutes 60``: the soak version of the chaos suite.

Prints the table of faults injected and segments sealed, delivered, duplicated and lost, and
exits non-zero when an invariant does not hold.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import known_bug, run_chaos, violations


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos")
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of faults")
    p.add_argument("--seed", type=int, default=8, help="fault schedule seed")
    p.add_argument("--dir", type=Path, default=None, help="keep everything here")
    a = p.parse_args()
    root = a.dir or Path(tempfile.mkdtemp(prefix="edge-agent-chaos-"))
    res = run_chaos(root / "run", a.seed, a.minutes * 60)
    print(res.table())
    bad = violations(res)
    for v in bad:
        bug = known_bug(v)
        print(f"INVARIANT BROKEN: {v}" + (f"\n  known bug: {bug}" if bug else ""))
    print(f"logs and stores under {root}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
