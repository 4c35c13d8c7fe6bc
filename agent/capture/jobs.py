"""What the capture pipelines hand to their writer thread, and how the writer stores it.

The video and audio recorders both run an encoder thread that emits jobs (a sealed segment's
header and plaintext pieces, held in memory only, or an event record) and a writer thread that
puts them into the spool. Refusals (storage full) and failures are counted, logged and
alarmed here, in one place.

With a real spool the writer also keeps the fragment journal
(:mod:`agent.storage.segjournal`): each :class:`FragmentJob` is made durable, encrypted, as
it comes; the :class:`SegmentJob` that completes a part then seals the journaled body in place
(its pieces, kept in memory too, are sealed instead only if the journal failed). A
:class:`RecordingJob` keeps the recording in progress durably, so that after a power cut
:meth:`RecorderThreads.start_threads` recovers the journal and the pipeline resumes the
recording (``interrupted``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from agent import wallclock
from agent.errors import AgentError, EvidenceRefused
from agent.model import Alarm, Severity
from agent.storage.seal import SegmentHeader

if TYPE_CHECKING:
    from agent.storage.segjournal import Interrupted, SegmentJournal

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
    journaled: bool = False  # its fragments went before it as FragmentJobs

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.pieces)


@dataclass(frozen=True)
class EventJob:
    kind: str
    details: dict[str, Any]
    # Settled by the writer once the record is sealed in the spool (or could not be): a
    # command that must not answer ok before its effect is evidence waits on it (bounded).
    stored: Future[None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FragmentJob:
    """One fragment of a recording's part (with the init boxes if it opens the part)."""

    stream: str
    recording: str
    part: int
    data: bytes
    start_utc: float
    start_mono_ns: int


@dataclass(frozen=True)
class RecordingJob:
    """The recording in progress, to keep durably (``state`` None: not recording any more)."""

    stream: str
    state: dict[str, Any] | None


Job = SegmentJob | EventJob | FragmentJob | RecordingJob


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
    journal: SegmentJournal | None = None,
) -> None:
    """Write one job to the spool; refusals and failures are counted, logged and alarmed.

    ``what`` names the pipeline ("video", "audio") in logs and in the alarm kind. A journaled
    segment is sealed from ``journal`` where its part is open there.
    """
    if isinstance(job, FragmentJob | RecordingJob):
        raise TypeError(f"{what}: journal jobs go to JournalWriter, not store()")
    label = (
        f"{what} segment {job.header.meta.get('recording')}/{job.header.meta.get('part')}"
        if isinstance(job, SegmentJob)
        else f"event {job.kind}"
    )
    try:
        if isinstance(job, SegmentJob):
            meta = job.header.meta
            rec, part = str(meta.get("recording")), meta.get("part")
            if (
                journal is not None
                and job.journaled
                and isinstance(part, int)
                and journal.is_open(job.header.stream, rec, part)
            ):
                try:
                    journal.seal(job.header, rec, part)
                except EvidenceRefused:
                    raise
                except (AgentError, OSError) as exc:
                    log.error(
                        "%s: sealing %s from the journal failed (%s); from memory", what, label, exc
                    )
                    spool.put(job.header, job.pieces)
                    journal.discard(job.header.stream, rec, part)
            else:
                spool.put(job.header, job.pieces)
                if journal is not None and isinstance(part, int):
                    journal.discard(job.header.stream, rec, part)
            stats.segments += 1
            stats.segment_bytes += job.size
        else:
            spool.put_event(job.kind, job.details)
            stats.events += 1
            if job.stored is not None:
                job.stored.set_result(None)
    except EvidenceRefused as exc:
        # The spool has already alarmed and recorded the refusal as an event.
        stats.refused += 1
        log.error("%s: %s refused by the spool: %s", what, label, exc)
        if isinstance(job, EventJob) and job.stored is not None:
            job.stored.set_exception(exc)
    except (AgentError, OSError) as exc:
        if isinstance(job, EventJob) and job.stored is not None:
            job.stored.set_exception(exc)
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


class JournalWriter:
    """The writer thread's side of the fragment journal: fragments and recording state made
    durable; a failure is reported once (log + alarm) until the journal works again, and the
    part's segment is then sealed from memory as before."""

    def __init__(self, journal: SegmentJournal, what: str, alarm: Callable[[Alarm], None]):
        self.journal = journal
        self.what = what
        self._alarm = alarm
        self.failing = False

    def handle(self, job: FragmentJob | RecordingJob) -> None:
        try:
            if isinstance(job, FragmentJob):
                journaled = self.journal.append(
                    job.stream,
                    job.recording,
                    job.part,
                    job.data,
                    start_utc=job.start_utc,
                    start_mono_ns=job.start_mono_ns,
                )
                if not journaled:
                    return  # this part's journal failed earlier: still failing, said once
            else:
                self.journal.set_recording(job.stream, job.state)
        except (OSError, AgentError) as exc:
            if not self.failing:
                self.failing = True
                log.critical("%s: the fragment journal failed: %s", self.what, exc)
                self._alarm(
                    Alarm(
                        f"{self.what}_journal_failed",
                        f"fragments are not durable until their segment is sealed: {exc}",
                        Severity.CRITICAL,
                        wallclock.now(),
                    )
                )
            return
        if self.failing:
            self.failing = False
            log.warning("%s: the fragment journal works again", self.what)


def open_journal(spool: SpoolLike, what: str) -> SegmentJournal | None:
    """The fragment journal of a real spool (a test double spool has none)."""
    from agent.storage.segjournal import SegmentJournal
    from agent.storage.spool import Spool

    if not isinstance(spool, Spool):
        return None
    return SegmentJournal(spool)


class Pipeline(Protocol):
    """What the encoder thread's loop needs of a pipeline
    (:class:`agent.capture.recording.RecordingPipeline`)."""

    def begin(self, interrupted: Interrupted | None = None, /) -> None: ...

    def finish(self, reason: str, /) -> None: ...

    def event(self, kind: str, details: dict[str, Any], /) -> None: ...


P = TypeVar("P", bound=Pipeline)
S = TypeVar("S", bound=StoreCounters)
T = TypeVar("T")


class RecorderThreads(Generic[P, S]):
    """The thread skeleton both recorders share: a source thread, an encoder thread that owns
    the pipeline ``P`` (commands reach it through a bounded queue; :meth:`_drive`), and a
    writer thread that stores jobs, counting in ``S``. Subclasses set the attributes below in
    ``__init__``."""

    what: str  # "video" | "audio"
    spool: SpoolLike
    stop_event: threading.Event
    stats: S
    error: BaseException | None
    _alarm: Callable[[Alarm], None]
    _threads: list[threading.Thread]
    _jobs: queue.Queue[Job | None]
    _commands: queue.Queue[Callable[[P], object]]

    journal: SegmentJournal | None = None
    interrupted: Interrupted | None = None  # a recording cut by a power cut, to resume

    def start_threads(self) -> None:
        self._recover()
        for t in self._threads:
            if t.ident is None:  # a shared source's thread may be running already
                t.start()

    def threads(self) -> list[threading.Thread]:
        """The recorder's threads (the composition root watches each: agent/runtime/liveness.py)."""
        return list(self._threads)

    def _recover(self) -> None:
        """Seal what the fragment journal kept from before a power cut; never block a start."""
        try:
            self.journal = open_journal(self.spool, self.what)
            if self.journal is not None:
                self.interrupted = self.journal.recover(self.what)
        except (OSError, AgentError) as exc:
            log.critical("%s: journal recovery failed: %s", self.what, exc)
            self._alarm(
                Alarm(
                    f"{self.what}_journal_failed",
                    f"journal recovery failed: {exc}",
                    Severity.CRITICAL,
                    wallclock.now(),
                )
            )

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

    def _queue_event(self, kind: str, details: dict[str, Any]) -> None:
        """An event record from the source's side (camera lost, microphone back ...), written
        in order with the pipeline's own."""
        try:
            self._command(lambda p: p.event(kind, details))
        except AgentError:
            log.error("%s: could not queue the %s event record %s", self.what, kind, details)

    def _source_main(self, run: Callable[[], None], done: threading.Event, what: str) -> None:
        """Body of a source thread (``run`` reads, reports and reopens; ``done`` tells the
        encoder thread that no more media will come)."""
        try:
            run()
        except Exception as exc:
            log.exception("%s: %s thread failed", self.what, what)
            self._fail(exc)
        finally:
            done.set()

    def _drive(
        self,
        p: P,
        items: queue.Queue[T],
        feed: Callable[[T], None],
        done: threading.Event,
        *,
        idle: Callable[[], None] | None = None,
    ) -> None:
        """Body of the encoder thread: the commands waiting, then the next media item (frame,
        access unit, audio block; ``idle`` when none came for 0.1 s), until the source has
        ended and its queue is empty; then the commands left and a clean finish. The writer
        is always told to end."""
        try:
            p.begin(self.interrupted)
            while True:
                self._run_commands(p)
                try:
                    item = items.get(timeout=0.1)
                except queue.Empty:
                    if done.is_set() and items.empty():
                        break
                    if idle is not None:
                        idle()
                    continue
                feed(item)
                self._after_step(p)
            self._run_commands(p)
            p.finish("shutdown" if self.stop_event.is_set() else "end_of_source")
            self._after_step(p)
        except Exception as exc:
            log.exception("%s: encoder thread failed", self.what)
            self._fail(exc)
        finally:
            self._jobs.put(None)

    def _run_commands(self, p: P) -> None:
        while True:
            try:
                fn = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn(p)
            except AgentError as exc:
                log.error("%s: command failed: %s", self.what, exc)
            self._after_step(p)

    def _after_step(self, p: P) -> None:
        """After each command and each media item (e.g. counters for the status)."""

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
        journal = self.journal
        writer = JournalWriter(journal, self.what, self._alarm) if journal is not None else None
        failed = False
        while True:
            job = self._jobs.get()
            if job is None:
                if journal is not None:
                    journal.close()
                return
            try:
                if isinstance(job, FragmentJob | RecordingJob):
                    if writer is not None:
                        writer.handle(job)
                    continue
                store(self.spool, job, self.stats, self._alarm, what=self.what, journal=journal)
                failed = False
            except Exception as exc:
                # Never let the writer die: the encoder would block on a full queue.
                if isinstance(job, EventJob) and job.stored is not None and not job.stored.done():
                    job.stored.set_exception(exc)
                if not failed:
                    log.exception("%s: writer failed on a job (going on)", self.what)
                failed = True
