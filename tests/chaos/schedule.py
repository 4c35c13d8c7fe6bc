"""Fault schedules: what a seed injects, in which order, for how long; kept regressions.

A schedule is drawn whole from its seed before the run starts (:func:`plan`), so it does not
depend on how fast the machine is: the same seed and length inject the same faults with the
same durations everywhere, and a prefix of it can be replayed (:class:`Regression`). Every
kind of fault once per round, the rounds in seeded orders, until the schedule's estimated
length reaches the minutes asked for.

``generator`` names the drawing rules. ``"v2"`` is today's. ``"v1"`` reproduces the draws
of the suite before issue 21 (nine kinds, the first round always completed), so a schedule
found with it (seed 4242, 4 min) is still the same schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# Every kind of fault (docs/reliability.md, "Faults").
FAULTS = (
    "net_cut",
    "net_flap",
    "net_slow",
    "broker_kill",
    "broker_wipe",
    "ingest_kill",
    "store_full",
    "agent_kill",
    "disk_full",
    "gps_unplug",
    "camera_lost",
    "clock_jump",
)
FAULTS_V1 = (
    "net_cut",
    "net_flap",
    "broker_kill",
    "ingest_kill",
    "agent_kill",
    "disk_full",
    "gps_unplug",
    "camera_lost",
    "clock_jump",
)
# The clock_jump fault steps the agent's wall clock to true time -1 h, then +2 h.
CLOCK_JUMPS_S = (-3600.0, 7200.0)
# The slow link: what a poor cellular link gives (each direction).
SLOW_RATE_BPS = 1_000_000
SLOW_DELAY_S = 0.150
# Seconds a fault costs beyond its holds (restarts, waiting for the live fix), for the
# estimate that decides how many faults fit in a schedule's length.
_OVERHEAD_S = {"agent_kill": 6.0, "net_cut": 1.0, "net_flap": 1.0, "gps_unplug": 2.0}


@dataclass(frozen=True)
class Step:
    """One fault: its kind, its drawn parameters (seconds), and the quiet time after it."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    gap_s: float = 0.0

    def estimate_s(self) -> float:
        p = self.params
        held = sum(v for k, v in p.items() if k.endswith("_s") and isinstance(v, float))
        held += sum(a + b for a, b in p.get("flaps", []))
        held += sum(p.get("holds", []))
        return held + _OVERHEAD_S.get(self.kind, 0.5) + self.gap_s

    def describe(self) -> str:
        p = self.params
        if self.kind == "net_flap":
            return f"net_flap x{len(p['flaps'])}"
        if self.kind == "clock_jump":
            steps = zip(CLOCK_JUMPS_S, p["holds"], strict=True)
            return "clock_jump " + " ".join(f"{j:+g}s for {h:.1f}s" for j, h in steps)
        held = ", ".join(f"{k}={v:.1f}" for k, v in p.items() if isinstance(v, float))
        return f"{self.kind} ({held})" if held else self.kind


@dataclass(frozen=True)
class Plan:
    seed: int
    minutes: float
    generator: str
    lead_s: float  # evidence recorded before the first fault
    steps: tuple[Step, ...]

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.steps:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out

    def estimate_s(self) -> float:
        return self.lead_s + sum(s.estimate_s() for s in self.steps)

    def prefix(self, n: int) -> Plan:
        return Plan(self.seed, self.minutes, self.generator, self.lead_s, self.steps[:n])


def _draw(rng: random.Random, kind: str) -> dict[str, Any]:
    """Today's parameters of one fault (generator v2)."""
    u = rng.uniform
    if kind == "net_cut":
        return {"cut_s": u(8, 12)}  # beyond keep-alive (5 s): both ends drop the session
    if kind == "net_flap":
        return {"flaps": [(u(0.3, 2.0), u(0.3, 1.5)) for _ in range(rng.randint(3, 5))]}
    if kind == "net_slow":
        return {"slow_s": u(12, 18)}
    if kind in ("broker_kill", "ingest_kill"):
        return {"down_s": u(0.5, 3)}
    if kind == "broker_wipe":
        return {"down_s": u(0.5, 2)}
    if kind == "agent_kill":
        return {"off_s": u(0.2, 2)}
    if kind in ("disk_full", "store_full"):
        return {"full_s": u(5, 9)}
    if kind in ("gps_unplug", "camera_lost"):
        return {"away_s": u(3, 7)}
    if kind == "clock_jump":
        # Each step held long enough for the ClockMonitor's median (15 fixes at 1 Hz) to
        # follow it and for a few 2 s video segments to be sealed after that.
        return {"holds": [u(11, 13) for _ in CLOCK_JUMPS_S]}
    raise ValueError(kind)


def _draw_v1(rng: random.Random, kind: str) -> dict[str, Any]:
    """The parameters as the suite before issue 21 drew them, in the same order."""
    u = rng.uniform
    if kind == "net_cut":
        return {"cut_s": u(8, 14)}
    if kind == "net_flap":
        n = rng.randint(3, 6)
        return {"flaps": [(u(0.3, 2.5), u(0.3, 2.0)) for _ in range(n)]}
    if kind in ("broker_kill", "ingest_kill"):
        return {"down_s": u(0.5, 4)}
    if kind == "agent_kill":
        return {"off_s": u(0.2, 2)}
    if kind == "disk_full":
        return {"full_s": u(5, 10)}
    if kind in ("gps_unplug", "camera_lost"):
        return {"away_s": u(3, 8)}
    if kind == "clock_jump":
        return {"holds": [u(11, 14) for _ in CLOCK_JUMPS_S]}
    raise ValueError(kind)


def plan(seed: int, minutes: float, generator: str = "v2") -> Plan:
    """The schedule of ``seed`` for a run of about ``minutes`` of faults."""
    rng = random.Random(seed)
    seconds = minutes * 60
    if generator == "v1":
        lead = rng.uniform(4, 8)
        kinds, draw, gap, whole_first_round = FAULTS_V1, _draw_v1, (2.0, 6.0), True
    elif generator == "v2":
        lead = rng.uniform(4, 6)
        kinds, draw, gap, whole_first_round = FAULTS, _draw, (1.5, 4.0), False
    else:
        raise ValueError(f"unknown schedule generator {generator!r}")
    steps: list[Step] = []
    order: list[str] = []
    total = lead
    rounds = 0
    while total < seconds or (whole_first_round and rounds == 1 and order):
        if not order:
            order = list(kinds)
            rng.shuffle(order)
            rounds += 1
        kind = order.pop()
        params = draw(rng, kind)
        step = Step(kind, params, rng.uniform(*gap))
        steps.append(step)
        total += step.estimate_s()
    return Plan(seed, minutes, generator, lead, tuple(steps))


# --------------------------------------------------------------------------- open bugs

# Open bugs that show only sometimes, in any schedule: the words of the violation each causes.
# A run whose only violations are these is an expected failure (the test says which); any
# other violation fails it. Each is reproduced by a named regression below and listed in
# docs/reliability.md ("Open"); remove it once fixed so every run guards the fix.
OPEN_BUGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "live-lane-store-full": (
        "cause not established: while the platform's disk is full (the ingest answers retry), "
        "live fixes reached the monitor 2.9 and 5.3 s old in two of nine runs at once on a "
        "loaded machine; the live lane does not go through the ingest",
        ("while the platform's disk was full",),
    ),
}


def open_bug_of(violation: str) -> str | None:
    for key, (_text, words) in OPEN_BUGS.items():
        if any(w in violation for w in words):
            return key
    return None


# --------------------------------------------------------------------------- CI and regressions


@dataclass(frozen=True)
class Schedule:
    """A schedule to run: a seed's plan, whole or up to the fault that broke an invariant."""

    name: str
    seed: int
    minutes: float
    generator: str = "v2"
    upto: int | None = None  # replay the first ``upto`` faults only
    # What it broke, how to reproduce it, and whether it is still open (an expected failure
    # naming the bug).
    fault: str = ""  # the kind of fault that broke it (the last one replayed)
    found: str = ""
    open_bug: str | None = None
    # How an open bug shows: ``strict`` (it always does, e.g. a thread that dies: xfail
    # strict naming the thread, so the test fails once it is fixed and the mark goes) or, for
    # a bug that shows only sometimes (a timing: ``strict=False``, ``open_bug`` a key of
    # OPEN_BUGS), the words of the violations it causes (OPEN_BUGS, or ``expect``): those are
    # an expected failure, any other violation fails the test, and a run without them passes.
    strict: bool = True
    expect: tuple[str, ...] = ()

    def expected(self, violation: str) -> str | None:
        """The open bug ``violation`` is the known sign of (this schedule's or any run's)."""
        if self.open_bug is not None and any(e in violation for e in self.expect):
            return self.open_bug
        return open_bug_of(violation)

    def plan(self) -> Plan:
        p = plan(self.seed, self.minutes, self.generator)
        return p if self.upto is None else p.prefix(self.upto)

    def args(self) -> list[str]:
        """The arguments of ``python -m tests.chaos`` that run it."""
        out = ["--seed", str(self.seed), "--minutes", f"{self.minutes:g}"]
        if self.generator != "v2":
            out += ["--generator", self.generator]
        if self.upto is not None:
            out += ["--upto", str(self.upto)]
        return out


# CI's schedules: three seeds that together inject every kind of fault exactly twice (24
# faults, ~90 s of faults each; tests/chaos/test_parts.py holds the coverage), run at once.
CI: tuple[Schedule, ...] = (
    Schedule("ci-169", 169, 1.4),
    Schedule("ci-176", 176, 1.4),
    Schedule("ci-201", 201, 1.4),
)

# Every schedule that ever broke an invariant, replayed up to (and including) the fault that
# broke it: docs/reliability.md ("Regressions") says what each found and what fixed it.
REGRESSIONS: tuple[Schedule, ...] = (
    Schedule(
        "uplink-dies-on-full-disk",
        11,
        8,
        "v1",
        upto=5,
        fault="disk_full",
        found="the 8-minute soak before issue 21: the forwarder thread died on the first "
        "disk_full (sqlite 'database or disk is full' acknowledging segments); fixed by the "
        "spool's ballast (1c66532)",
    ),
    Schedule(
        "gps-consumer-dies-on-full-disk",
        4242,
        4,
        "v1",
        upto=6,
        fault="disk_full",
        found="issue 21: during disk_full (fault 5) the gps-consumer thread died with OSError "
        "ENOSPC from RecordLog (agent/storage/records.py) called by GpsService.handle; fixed "
        "on main (GpsService._consume contains OSError, 58419ae)",
    ),
    Schedule(
        "live-lane-behind-backlog-on-slow-link",
        6,
        4,
        upto=10,
        fault="net_slow",
        found="make soak (issue 21), seed 6: on the slow link (1 Mbit/s, 150 ms) live fixes "
        "3.2-3.9 s old (limit 3 s)",
    ),
    Schedule(
        "sealed-file-replaced-after-index-failure",
        7,
        4,
        upto=9,
        fault="agent_kill",
        found="make soak (issue 21), seed 7: three segments sealed as the disk filled (fault 4) "
        "reached the platform with other bytes than the copy taken when they appeared; and a "
        "record.mark answered ok never reached the evidence (the power cut of fault 8 follows); "
        "the replaced files fixed on main (Spool: a placed file whose index row fails is taken "
        "out again, tests/storage/test_index_full.py); the mark fixed too (answered "
        "'recorded' only once its event is in the spool, tests/capture/test_marks.py)",
    ),
    Schedule(
        "live-lane-lags-on-full-disk",
        13,
        4,
        upto=16,
        fault="disk_full",
        found="make soak (issue 21), seed 13: during its second disk_full (fault 15) live fixes "
        "5.8 s old, then 4.3 and 3.4 s after the disk had room (limit p95 1.5 s)",
    ),
    Schedule(
        "event-reordered-by-mark-capture-time",
        10,
        4,
        upto=14,
        fault="agent_kill",
        found="make soak (issue 21), seed 10: verify reports 'reordered: event#34 recorded "
        "before seq 33' on genuine evidence: a video record.mark is stamped with the last "
        "frame's capture time (start_mono_ns), which can be older than an event another thread "
        "sealed before it (settings_changed); fixed: the cause was that Spool.put_event read "
        "the clock before it took the event stream's lock (its seq), now under it "
        "(tests/storage/test_spool.py::test_events_from_several_threads_are_stamped_in_seq_order)",
    ),
)


def by_name(name: str) -> Schedule:
    for s in CI + REGRESSIONS:
        if s.name == name:
            return s
    raise KeyError(name)
