"""What a chaos run prints: one run's table, and the summary of many (``make soak``)."""

from __future__ import annotations

import time
from typing import Any

from tests.chaos.harness import LIVE_RESUME_LIMIT_S, Result, Violation, percentile
from tests.chaos.schedule import FAULTS, open_bug_of


def _stats(values: list[float]) -> str:
    finite = [v for v in values if v != float("inf")]
    if not values:
        return "-"
    never = len(values) - len(finite)
    if not finite:
        return f"never x{never}"
    text = f"n {len(values)}, median {percentile(finite, 50):.2f}, max {max(finite):.2f}"
    return text + (f", never x{never}" if never else "")


def table(res: Result) -> str:
    """One run, as ``python -m tests.chaos`` prints it."""
    name = f"{res.name}: " if res.name and not res.name.startswith("seed") else ""
    upto = f", first {res.upto} faults" if res.upto is not None else ""
    out = [
        f"chaos {name}seed {res.seed}, {res.minutes:g} min ({res.generator}{upto}); "
        f"{res.wall_s:.0f} s wall, {res.cpu_s:.0f} s CPU"
    ]
    rows = [("fault", "injected")]
    rows += [(k, str(res.faults.get(k, 0))) for k in FAULTS if res.faults.get(k)]
    rows += [(f"{k} (NOT EXERCISED)", "0") for k in sorted(res.not_exercised)]
    w = max(len(r[0]) for r in rows)
    out += [f"  {a:<{w}}  {b}" for a, b in rows]
    c, t = res.commands, res.talk
    figures: list[tuple[str, Any]] = [
        ("segments sealed", res.sealed),
        ("  of which copied out of the spool while alive", res.observed),
        ("segments delivered (at the platform)", res.delivered),
        ("  acknowledgements seen by the platform's monitor", res.acks),
        ("segments duplicated at the platform", res.duplicated),
        ("segments lost", len(res.lost)),
        ("  taken back by a power cut before they were durable", res.lost_unpromised),
        ("segments differing from what was sealed", len(res.mismatched)),
        ("acknowledged but not in the store", len(res.acked_not_stored)),
        ("chain problems", len(res.chain_problems)),
        ("per stream", res.streams),
        ("events in the evidence", res.events),
        ("alarms seen on the live lane", res.alarms),
        (
            "video parts missing inside recordings: total / durable event / "
            "live alarm only / unexplained",
            f"{res.parts_missing} / {res.parts_explained_by_event} / "
            f"{res.parts_explained_by_live_alarm_only} / {res.parts_unexplained}",
        ),
        (
            f"live fix after the link came back (s, limit {LIVE_RESUME_LIMIT_S})",
            _stats([r[2] for r in res.live_resume]),
        ),
        ("live fix after the GNSS receiver came back (s)", _stats([r[2] for r in res.gps_resume])),
        ("live fix after every fault was repaired (s)", res.final_live_s),
        ("age of live fixes on the slow link (s)", _stats(res.slow_ages)),
        ("age of live fixes while the device's disk was full (s)", _stats(res.disk_ages)),
        ("age of live fixes while the platform's disk was full (s)", _stats(res.store_ages)),
        (
            "age of live fixes, no fault of their path in effect (s): n / p50 / p95 / max",
            f"{len(res.quiet_ages)} / {percentile(res.quiet_ages, 50):.2f} / "
            f"{percentile(res.quiet_ages, 95):.2f} / {max(res.quiet_ages):.2f}"
            if res.quiet_ages
            else "-",
        ),
        ("power cuts (recording before, recording again after s)", res.power_cuts),
        ("  recording interrupted / resumed events", res.resumes),
        ("platform disk full (next segment stored after s)", res.store_full),
    ]
    for key, cs in sorted(res.clock_segments.items()):
        figures.append(
            (
                f"clock jump {key} s: segments sealed during it / offset shows the jump / "
                "no offset / stale offset",
                "not judged"
                if cs.get("not_judged")
                else f"{cs.get('sealed', 0)} / {cs.get('shows', 0)} / {cs.get('none', 0)} / "
                f"{cs.get('stale', 0)}",
            )
        )
    if res.clock_jumps:
        figures.append(
            ("segments sealed on the true clock with a jump's offset", res.clock_stale_after_repair)
        )
    figures += [
        (
            "commands sent / resends / outcomes",
            f"{c.get('sent')} / {c.get('resends')} / {c.get('outcomes')}",
        ),
        ("  sent while a fault was in effect", c.get("during")),
        (
            "push-to-talk messages sent / resends / played / last receipt",
            f"{t.get('sent')} / {t.get('resends')} / {t.get('played')} / {t.get('last_status')}",
        ),
        ("  sent while a fault was in effect", t.get("during")),
        ("hostile device: messages sent, connections", res.hostile),
    ]
    if res.thread_deaths:
        figures.append(
            ("threads that died", [f"{d['process']}/{d['thread']}" for d in res.thread_deaths])
        )
    if res.not_judged:
        figures.append(("not judged (a part was dead)", res.not_judged))
    out += [f"  {a}: {b}" for a, b in figures]
    for d in res.thread_deaths:
        when = time.strftime("%X", time.localtime(d["at"]))
        out.append(
            f"  THREAD DIED at {when}: {d['process']} {d['thread']}: {d['exception']} "
            f"({d['where']})"
        )
    for k, v in res.not_exercised.items():
        out.append(f"  NOT EXERCISED {k}: {v}")
    for v in res.violations:
        bug = f"  [open bug {_bug(v)[2:-1]}]" if _bug(v) else ""
        out.append(f"INVARIANT BROKEN ({v.invariant}): {v.text}{bug}")
    return "\n".join(out)


def summary(results: list[Result]) -> str:
    """One line per run (``make soak``): faults per kind, segments, live lane, invariants."""
    short = {k: "".join(w[0] for w in k.split("_")) for k in FAULTS}
    head = (
        f"{'run':<32} {'seed':>6} {'min':>4} "
        + " ".join(f"{short[k]:>3}" for k in FAULTS)
        + f" {'sealed':>6} {'deliv':>5} {'lost':>4} {'dup':>3} {'live med/max s':>14}"
        + f" {'cmds':>4} {'ptt':>3} {'wall s':>6}  invariants broken"
    )
    lines = ["fault kinds: " + ", ".join(f"{short[k]} {k}" for k in FAULTS), head]
    for r in results:
        live = [x[2] for x in r.live_resume if x[2] != float("inf")]
        lr = f"{percentile(live, 50):.2f}/{max(live):.2f}" if live else "-"
        broken = "; ".join(f"{v.invariant}" + _bug(v) for v in r.violations)
        lines.append(
            f"{_label(r):<32} {r.seed:>6} {r.minutes:>4g} "
            + " ".join(f"{r.faults.get(k, 0):>3}" for k in FAULTS)
            + f" {r.sealed:>6} {r.delivered:>5} {len(r.lost):>4} {r.duplicated:>3} {lr:>14}"
            + f" {r.commands.get('sent', 0):>4} {r.talk.get('sent', 0):>3} {r.wall_s:>6.0f}"
            + f"  {broken or 'none'}"
        )
    total = sum(len(r.violations) for r in results)
    failed = sum(1 for r in results if r.violations)
    lines.append(
        f"{len(results)} runs, {failed} with invariants broken ({total} in all); "
        f"{sum(r.wall_s for r in results):.0f} s of runs"
    )
    return "\n".join(lines)


def _label(r: Result) -> str:
    upto = f" (first {r.upto})" if r.upto is not None else ""
    return (r.name + upto)[:32]


def _bug(v: Violation) -> str:
    """The open bug a violation is the known sign of, as ``[key]``."""
    bug = v.bug or open_bug_of(f"{v.invariant}: {v.text}")
    return f" [{bug}]" if bug else ""
