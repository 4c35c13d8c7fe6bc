"""Benchmarks: each figure is a ratio against a baseline measured in the same run.

Run ``make bench`` (all groups) or ``make bench B=GROUP``. A group is a module
``bench/bench_GROUP.py`` with a ``run(report: Reporter) -> None`` function.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

GROUPS = (
    "seal",
    "spool",
    "gps",
    "uplink",
    "link",
    "video",
    "audio",
    "fleet",
    "geofence",
    "talk",
    "jt808",
)


@dataclass
class Reporter:
    """Prints one line per figure in the project's benchmark format."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    misses: int = 0

    def figure(
        self,
        group: str,
        name: str,
        value: float,
        unit: str,
        *,
        ratio: float,
        baseline: str,
        target: float,
        higher_is_better: bool = True,
    ) -> bool:
        """``bench GROUP/NAME: <value> <unit>, ratio <r> vs <baseline> (target >= <t>) ok``.

        For latencies (``higher_is_better=False``) the target reads ``<=``.
        """
        ok = ratio >= target if higher_is_better else ratio <= target
        op = ">=" if higher_is_better else "<="
        if not ok:
            self.misses += 1
        print(
            f"bench {group}/{name}: {_fmt(value)} {unit}, ratio {ratio:.3g} vs {baseline} "
            f"(target {op} {_fmt(target)}) {'ok' if ok else 'MISS'}",
            file=self.out,
            flush=True,
        )
        return ok

    def info(self, group: str, name: str, value: float, unit: str, note: str = "") -> None:
        """A figure with no target (context for the reader), in the same shape."""
        extra = f", {note}" if note else ""
        print(f"bench {group}/{name}: {_fmt(value)} {unit}{extra}", file=self.out, flush=True)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"
