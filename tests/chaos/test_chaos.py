"""The chaos suite, short and seeded for CI (``make soak`` runs the hour-long version).

One run: agent (bodycam), mosquitto, ingest; every kind of fault at least once in a seeded
order; then the invariants: every sealed segment at the platform exactly once and
byte-identical, every chain intact, the live position back within 2 s of the link.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import run_chaos, violations

SOAK = os.environ.get("EDGE_AGENT_SOAK") == "1"
SEED = int(os.environ.get("EDGE_AGENT_CHAOS_SEED", "8"))
MINUTES = float(os.environ.get("EDGE_AGENT_CHAOS_MINUTES", "60" if SOAK else "1.6"))


@pytest.mark.timeout(int(MINUTES * 60) + 600)
def test_chaos_invariants_hold_under_seeded_faults(tmp_path: Path) -> None:
    res = run_chaos(tmp_path / "run", SEED, MINUTES * 60)
    print("\n" + res.table())
    bad = violations(res)
    assert not bad, "\n".join(bad) + f"\nlogs: {tmp_path / 'run'}"
