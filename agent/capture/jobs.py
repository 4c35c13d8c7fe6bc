"""What the capture pipelines hand to their writer thread, and how the writer stores it.

The video and audio recorders both run an encoder thread that emits jobs (a sealed segment's
header and plaintext pieces, held in memory only, or an event record) and a writer thread that
puts them into the spool. Refusals (storage full) and failures are counted, logged and
alarmed here, in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from agent import wallclock
from agent.errors import AgentError, EvidenceRefused
from agent.model import Alarm, Severity
from agent.storage.seal import SegmentHeader

log = logging.getLogger(__name__)


class SpoolLike(Protocol):
    """What the recorders need of :class:`agent.storage.spool.Spool`."""

    def put(
        self, header: SegmentHeader, pieces: Iterable[bytes], *, batch_id: str | None = None
    ) -> Any: ...

    def put_event(self, kind: str, details: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class SegmentJob:
    header: SegmentHeader
    pieces: tuple[bytes, ...]  # the plaintext (an MP4), in memory only

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.pieces)


@dataclass(frozen=True)
class EventJob:
    kind: str
    details: dict[str, Any]


Job = SegmentJob | EventJob


class StoreCounters(Protocol):
    segments: int
    segment_bytes: int
    events: int
    refused: int
    store_errors: int


def store(
    spool: SpoolLike,
    job: Job,
    stats: StoreCounters,
    alarm: Callable[[Alarm], None] = lambda a: None,
    *,
    what: str,
) -> None:
    """Write one job to the spool; refusals and failures are counted, logged and alarmed.

    ``what`` names the pipeline ("video", "audio") in logs and in the alarm kind.
    """
    label = (
        f"{what} segment {job.header.meta.get('recording')}/{job.header.meta.get('part')}"
        if isinstance(job, SegmentJob)
        else f"event {job.kind}"
    )
    try:
        if isinstance(job, SegmentJob):
            spool.put(job.header, job.pieces)
            stats.segments += 1
            stats.segment_bytes += job.size
        else:
            spool.put_event(job.kind, job.details)
            stats.events += 1
    except EvidenceRefused as exc:
        # The spool has already alarmed and recorded the refusal as an event.
        stats.refused += 1
        log.error("%s: %s refused by the spool: %s", what, label, exc)
    except (AgentError, OSError) as exc:
        stats.store_errors += 1
        log.critical("%s: cannot store %s: %s", what, label, exc)
        alarm(
            Alarm(
                f"{what}_store_failed",
                f"cannot store {label}: {exc}",
                Severity.CRITICAL,
                wallclock.now(),
            )
        )
