"""Read-only figures of a spool, safe to take while the agent is running."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SpoolError


@dataclass(frozen=True)
class StreamFigures:
    stream: str
    count: int
    bytes: int
    refused: int  # refused by the platform, parked until `edge-agent spool --retry`
    oldest_age_s: float | None


def read_figures(spool_dir: Path) -> list[StreamFigures]:
    db_path = spool_dir / "index.sqlite3"
    if not db_path.exists():
        raise SpoolError(f"{spool_dir}: no spool here (no index.sqlite3)")
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT stream, COUNT(*), COALESCE(SUM(size), 0),"
                " SUM(CASE WHEN state='refused' THEN 1 ELSE 0 END), MIN(created)"
                " FROM segments WHERE state != 'acked' GROUP BY stream ORDER BY stream"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SpoolError(f"{db_path}: cannot read the spool index: {exc}") from exc
    now = time.time()
    return [
        StreamFigures(s, n, int(b), int(f or 0), (now - o) if o else None) for s, n, b, f, o in rows
    ]


def format_figures(figures: list[StreamFigures]) -> str:
    if not figures:
        return "spool empty: everything sealed has been acknowledged by the platform"
    lines = [f"{'stream':<10} {'segments':>9} {'bytes':>14} {'in flight':>10} {'oldest':>10}"]
    for f in figures:
        age = "-" if f.oldest_age_s is None else f"{f.oldest_age_s:.0f}s"
        lines.append(f"{f.stream:<10} {f.count:>9} {f.bytes:>14} {f.refused:>10} {age:>10}")
    return "\n".join(lines)


def retry_refused(spool_dir: Path) -> int:
    """Offer segments the platform refused again (safe while the agent runs: one UPDATE)."""
    db_path = spool_dir / "index.sqlite3"
    if not db_path.exists():
        raise SpoolError(f"{spool_dir}: no spool here (no index.sqlite3)")
    try:
        db = sqlite3.connect(db_path, timeout=10)
        try:
            with db:
                n = db.execute("UPDATE segments SET state='ready' WHERE state='refused'").rowcount
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SpoolError(f"{db_path}: cannot update the spool index: {exc}") from exc
    return int(n)
