"""``python -m bench [GROUP]``: run one benchmark group or all of them."""

from __future__ import annotations

import importlib
import sys

from bench import GROUPS, Reporter


def main(argv: list[str]) -> int:
    wanted = argv[1:] or list(GROUPS)
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        print(f"unknown benchmark group(s): {', '.join(unknown)}; groups: {', '.join(GROUPS)}")
        return 2
    report = Reporter()
    for group in wanted:
        importlib.import_module(f"bench.bench_{group}").run(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
