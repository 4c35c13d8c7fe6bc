"""What the capture pipelines hand to their writer thread, and how the writer stores it.

The video and audio recorders both run an encoder thread that emits jobs (a sealed segment's
header and plaintext pieces, held in memory only, or an event record) and a writer thread that
puts them into the spool. Refusals (storage full) and failures are counted, logged and
alarmed here, in one place.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

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


P = TypeVar("P")
S = TypeVar("S", bound=StoreCounters)


class RecorderThreads(Generic[P, S]):
    """The thread skeleton both recorders share: a source thread, an encoder thread that owns
    the pipeline ``P`` (commands reach it through a bounded queue), and a writer thread that
    stores jobs, counting in ``S``. Subclasses set the attributes below in ``__init__``."""

    what: str  # "video" | "audio"
    spool: SpoolLike
    stats: S
    error: BaseException | None
    _alarm: Callable[[Alarm], None]
    _threads: list[threading.Thread]
    _jobs: queue.Queue[Job | None]
    _commands: queue.Queue[Callable[[P], object]]

    def start_threads(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads (after the stop event, or the end of a file); True if they
        all ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _command(self, fn: Callable[[P], object]) -> None:
        try:
            self._commands.put_nowait(fn)
        except queue.Full:
            raise AgentError(f"{self.what}: too many commands waiting for the encoder") from None

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._alarm(
            Alarm(
                f"{self.what}_failed",
                f"{self.what} recording failed: {exc}",
                Severity.CRITICAL,
                wallclock.now(),
            )
        )

    def _write_main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            store(self.spool, job, self.stats, self._alarm, what=self.what)
