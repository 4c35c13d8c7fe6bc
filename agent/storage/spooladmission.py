"""Admission to the spool: each retention class's quota, refusals, telemetry eviction.

The policy itself is pure (:mod:`agent.storage.retention`); this applies it to the spool. New
evidence that finds no room is refused, never dropped silently: the refusal raises an alarm,
is recorded as an ``evidence_refused`` event, and raises :class:`EvidenceRefused`. Telemetry
over its quota overwrites its own oldest unsent segments, recorded as a ``telemetry_evicted``
event that names the gap in its signed manifest. Event records (tiny, they say why a gap
exists) only need the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent import wallclock
from agent.errors import EvidenceRefused, SpoolError
from agent.model import Alarm, Severity
from agent.storage.ballast import Ballast
from agent.storage.manifest import EVENT_STREAM
from agent.storage.retention import Candidate, Retention, admit
from agent.storage.settings import MIB, SpoolSettings
from agent.storage.spoolindex import SpoolIndex

log = logging.getLogger(__name__)


class EventRecorder(Protocol):
    """Records an event in the spool; never raises (a failure is logged)."""

    def __call__(
        self, kind: str, details: dict[str, Any], evicted: dict[str, Any] | None = None
    ) -> None: ...


class SpoolAdmission:
    """Decides whether a new segment enters the spool, and makes room for it."""

    def __init__(
        self,
        settings: SpoolSettings,
        index: SpoolIndex,
        ballast: Ballast,
        alarm: Callable[[Alarm], None],
        record_event: EventRecorder,
    ) -> None:
        self.settings = settings
        self._index = index
        self._ballast = ballast
        self._alarm = alarm
        self._put_event_safe = record_event

    def quota(self, cls: Retention) -> int:
        mb = (
            self.settings.evidence_quota_mb
            if cls is Retention.EVIDENCE
            else self.settings.telemetry_quota_mb
        )
        return mb * MIB

    def refuse(self, stream: str, reason: str) -> None:
        log.error("spool: refusing new %s evidence: %s", stream, reason)
        self._alarm(
            Alarm(
                "evidence_refused",
                f"new {stream} evidence refused: {reason}",
                Severity.CRITICAL,
                wallclock.now(),
                {"stream": stream, "reason": reason},
            )
        )
        if stream != EVENT_STREAM:
            self._put_event_safe("evidence_refused", {"stream": stream, "reason": reason})
        raise EvidenceRefused(f"{stream}: {reason}")

    def make_room(self, stream: str, cls: Retention, size: int, tmp: Path) -> None:
        """Admit a sealed segment of ``size`` bytes (its file ``tmp`` already on disk, removed
        when it is not admitted), evicting telemetry when that makes room."""
        if stream == EVENT_STREAM:
            # Event records are tiny and say why a gap exists: they only need the disk.
            if self._ballast.disk_free() <= 0:
                tmp.unlink(missing_ok=True)
                raise EvidenceRefused("event: disk full")
            return

        def evictable() -> Iterator[Candidate]:
            # Read only when telemetry must make room (not at every put).
            yield from (Candidate(*r) for r in self._index.evictable_telemetry())

        decision = admit(
            retention=cls,
            size=size,
            used=self._index.used[cls],
            quota=self.quota(cls),
            disk_free=self._ballast.disk_free(),
            reserve=self.settings.reserve_mb * MIB,
            evictable=evictable() if cls is Retention.TELEMETRY else (),
        )
        if not decision.admit:
            tmp.unlink(missing_ok=True)
            if cls is Retention.EVIDENCE:
                self.refuse(stream, decision.reason)
            log.warning("spool: dropping new %s segment: %s", stream, decision.reason)
            raise SpoolError(f"{stream}: {decision.reason}")
        if decision.evict:
            self._evict(decision.evict)

    def _evict(self, victims: Sequence[Candidate]) -> None:
        by_stream: dict[str, list[int]] = {}
        for v in victims:
            self._index.remove_many([(v.id, v.stream, v.seq, v.size, Retention.TELEMETRY)])
            by_stream.setdefault(v.stream, []).append(v.seq)
        for stream, seqs in by_stream.items():
            log.warning(
                "spool: telemetry quota full: overwrote %d oldest %s segments", len(seqs), stream
            )
            gap = {"stream": stream, "seqs": sorted(seqs)}
            self._put_event_safe(
                "telemetry_evicted", {**gap, "reason": "telemetry quota full"}, evicted=gap
            )
