"""Fuzzing helpers: the CI profile, per-target input counts, and the corpus of found cases.

Profile ``ci`` (the default) is derandomized with no deadline, so CI runs the same inputs every
time within its budget; ``EDGE_AGENT_FUZZ_PROFILE=deep`` tries many more, randomized. An input
that breaks a property is written to ``tests/fuzz/corpus/<target>/`` before the test fails, so
it becomes a regression case that ``test_corpus.py`` replays on every run.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings

CORPUS = Path(__file__).resolve().parent / "corpus"

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "deep",
    deadline=None,
    max_examples=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("EDGE_AGENT_FUZZ_PROFILE", "ci"))

TRIED: Counter[str] = Counter()
FOUND: Counter[str] = Counter()


def keep(target: str, data: bytes) -> Path:
    """Save a failing input as a regression case (named by its hash, so saved once)."""
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"found-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    if not path.exists():
        path.write_bytes(data)
    FOUND[target] += 1
    return path


def report() -> str:
    targets = sorted(set(TRIED) | set(FOUND))
    return "\n".join(
        f"fuzz {t}: {TRIED[t]} inputs tried, {FOUND[t]} failures found" for t in targets
    )
