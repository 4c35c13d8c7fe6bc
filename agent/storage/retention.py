"""Retention policy, kept pure so it can be tested without a disk.

Two classes share the spool:

* **evidence** (video, audio, still, event, and any stream not named below) is never evicted
  before the platform acknowledges it. When its quota is full, new evidence is refused (the
  spool records the refusal as an event and raises an alarm); nothing is dropped silently.
* **telemetry** (gps, status) overwrites its own oldest unsent segments when over its quota.

A reserve of free disk is always left for the operating system.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Retention(enum.StrEnum):
    EVIDENCE = "evidence"
    TELEMETRY = "telemetry"


TELEMETRY_STREAMS = frozenset({"gps", "status"})


def classify(stream: str) -> Retention:
    return Retention.TELEMETRY if stream in TELEMETRY_STREAMS else Retention.EVIDENCE


@dataclass(frozen=True)
class Candidate:
    """A stored telemetry segment that could be evicted (oldest first)."""

    id: int
    stream: str
    seq: int
    size: int


@dataclass(frozen=True)
class Admission:
    admit: bool
    evict: tuple[Candidate, ...] = ()
    reason: str = ""


def admit(
    *,
    retention: Retention,
    size: int,
    used: int,
    quota: int,
    disk_free: int,
    reserve: int,
    evictable: Iterable[Candidate] = (),
) -> Admission:
    """Decide whether a new segment of ``size`` bytes may enter its class.

    ``disk_free`` is measured with the new segment's temporary file already on disk.
    """
    if retention is Retention.EVIDENCE:
        if used + size > quota:
            return Admission(False, reason=f"evidence quota full ({used + size} of {quota} bytes)")
        if disk_free < reserve:
            return Admission(False, reason=f"disk nearly full ({disk_free} bytes free)")
        return Admission(True)
    evict: list[Candidate] = []
    freed = 0
    over = used + size - quota
    short = reserve - disk_free
    need = max(over, short, 0)
    if need > 0:
        for c in evictable:
            if freed >= need:
                break
            evict.append(c)
            freed += c.size
        if freed < need:
            if size > quota:
                return Admission(False, reason=f"segment of {size} bytes exceeds quota {quota}")
            return Admission(False, reason=f"cannot free {need} bytes of telemetry")
    return Admission(True, tuple(evict))
