"""The recording state machine the video and the audio pipelines share.

A pipeline is the encoder thread's state, with no threads of its own (tests and benchmarks drive
it directly): media in, jobs out (:mod:`agent.capture.jobs`). What a recording is does not
depend on the medium, and is written here once:

- **start** at a moment (monotonic ns): the recording takes the pre-event ring from the fragment
  that covers ``prebuffer_s`` before that moment (as far as the ring reaches); an event record
  ``record_start`` says how much came before the trigger (``pre_event_s``). A start while
  recording says ``already_recording``, or ``resumed`` when a stop was pending;
- **stop** at a moment: the recording ends with the fragment that covers it; ``record_stop``;
- **mark**: an event record, and a note in the manifest of the part being filled;
- **parts**: each fragment is made durable as it comes (a :class:`FragmentJob`, which the writer
  puts into the fragment journal, encrypted), and cut into segments of ``segment_s``
  (:class:`SegmentJob`, sealed from the journal), numbered from 0; the last one is ``final``;
- **power cuts**: the recording in progress is kept durably (:class:`RecordingJob`), so that at
  the next start :meth:`RecordingPipeline.begin` resumes it (same id, next part,
  ``recording_resumed``) after the writer recovered the journal;
- **continuous** mode: one recording from :meth:`~RecordingPipeline.begin` to
  :meth:`~RecordingPipeline.finish`.

Subclasses say what differs: how media becomes fragments, what "now" is (video: the newest
frame; audio: the monotonic clock), where a recording starts in the ring, when a fragment
covers a moment, the manifest's media fields, and (audio) the prefix of the event kinds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol

from agent import wallclock
from agent.capture.jobs import EventJob, FragmentJob, Job, RecordingJob, SegmentJob
from agent.capture.prebuffer import FragmentRing
from agent.capture.segmenter import F, Segment, Segmenter
from agent.model import ClockState, format_utc
from agent.storage.seal import SegmentHeader
from agent.storage.segjournal import Interrupted

log = logging.getLogger(__name__)


@dataclass
class Recording:
    id: str
    trigger: str
    start_at_ns: int  # the moment it was asked to start (monotonic)
    start_seq: int = 0  # the first fragment it takes (video; audio takes the ring's)
    stop_at_ns: int | None = None
    stop_trigger: str = ""
    stop_seen_ns: int | None = None  # when the stop was asked (monotonic)
    parts: int = 0
    media: int = 0  # frames (video) or samples (audio) taken
    pre_event_s: float | None = None
    marks: list[dict[str, Any]] = field(default_factory=list)
    started_utc: str = ""


class Timing(Protocol):
    """What a recording's timing takes from its part's settings (``[video]``, ``[audio]``)."""

    @property
    def mode(self) -> str: ...  # "event" or "continuous"

    @property
    def prebuffer_s(self) -> float: ...

    @property
    def segment_s(self) -> float: ...


class RecordingPipeline(Generic[F]):
    """Recordings, parts and their records over a stream of fragments ``F``. See the module
    docstring; subclasses implement the hooks at the end."""

    stream: ClassVar[str]  # the spool stream ("video", "audio") and the journal's
    content_type: ClassVar[str]
    kinds: ClassVar[str] = ""  # prefix of the event kinds ("audio_" -> audio_record_start)

    def __init__(
        self,
        timing: Timing,
        emit: Callable[[Job], None],
        *,
        slack_s: float,
        clock: Callable[[], ClockState] = ClockState,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.mode = timing.mode
        self.prebuffer_s = prebuffer_s = timing.prebuffer_s
        segment_s = timing.segment_s
        self._emit = emit
        self._clock = clock
        self._meta = dict(meta or {})
        self.ring: FragmentRing[F] = FragmentRing(prebuffer_s)
        self._segmenter: Segmenter[F] = Segmenter(segment_s, slack_s)
        self.rec: Recording | None = None
        self.last_mono_ns: int | None = None  # the newest media moment fed
        self.last_utc: float | None = None
        self.segments_made = 0

    # ------------------------------------------------------------------ commands

    def begin(self, interrupted: Interrupted | None = None) -> None:
        """Before the first media: resume the recording a power cut interrupted (same id, next
        part, a ``recording_resumed`` event), or start one in continuous mode."""
        if interrupted is not None and interrupted.resume:
            rec = Recording(
                interrupted.recording,
                interrupted.trigger or "resume",
                self._now_ns(),
                self._next_seq(),
                parts=interrupted.next_part,
                started_utc=interrupted.started_utc,
            )
            self._set_recording(rec)
            self._persist()
            last = interrupted.last_durable_utc
            self.event(
                "recording_resumed",
                {
                    "stream": self.stream,
                    "recording": rec.id,
                    "part": rec.parts,
                    "trigger": rec.trigger,
                    "mode": self.mode,
                    "started_utc": rec.started_utc,
                    "interrupted_utc": None if last is None else format_utc(last),
                    "at_utc": format_utc(wallclock.now()),
                },
            )
            log.warning("%s: recording %s resumed after an interruption", self.stream, rec.id)
            return
        if self.mode == "continuous":
            self.start("continuous")

    def start(
        self, trigger: str, at_mono_ns: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        """Start recording at ``at_mono_ns`` (default: now), from the pre-event ring."""
        at = at_mono_ns if at_mono_ns is not None else self._now_ns()
        kind = self.kinds + "record_start"
        rec = self.rec
        if rec is not None:
            resumed = rec.stop_at_ns is not None
            rec.stop_at_ns, rec.stop_trigger, rec.stop_seen_ns = None, "", None
            if resumed:
                self._persist()
            self.event(
                kind,
                {
                    "recording": rec.id,
                    "trigger": trigger,
                    "already_recording": not resumed,
                    "resumed": resumed,
                    **(details or {}),
                },
            )
            return
        seq, pre, backlog = self._pre_event(at)
        rec = Recording(
            uuid.uuid4().hex[:12], trigger, at, seq, pre_event_s=pre, started_utc=self._utc_at(at)
        )
        self._set_recording(rec)
        self._persist()
        self.event(
            kind,
            {
                "recording": rec.id,
                "trigger": trigger,
                "mode": self.mode,
                "at_utc": rec.started_utc,
                "prebuffer_s": self.prebuffer_s,
                "pre_event_s": None if pre is None else round(pre, 3),
                **(details or {}),
            },
        )
        log.info(
            "%s: recording %s started by %s (%s s before the trigger)",
            self.stream,
            rec.id,
            trigger,
            "?" if pre is None else f"{pre:.1f}",
        )
        for frag in backlog:
            self._record(frag)

    def stop(self, trigger: str, at_mono_ns: int | None = None) -> None:
        """Stop with the fragment that covers the moment ``at_mono_ns`` (default: now)."""
        at = at_mono_ns if at_mono_ns is not None else self._now_ns()
        rec = self.rec
        if rec is None:
            self.event(self.kinds + "record_stop", {"trigger": trigger, "not_recording": True})
            return
        rec.stop_at_ns, rec.stop_trigger, rec.stop_seen_ns = at, trigger, time.monotonic_ns()
        self._stopping(rec, at)

    def mark(
        self,
        trigger: str,
        note: str = "",
        at_mono_ns: int | None = None,
        stored: Future[None] | None = None,
    ) -> None:
        """An event record (and a note in the current part's manifest); ``stored`` is settled
        once the record is in the spool."""
        at = at_mono_ns if at_mono_ns is not None else self._now_ns()
        mark = {"trigger": trigger, "note": note, "at_utc": self._utc_at(at)}
        rec = self.rec
        if rec is not None:
            rec.marks.append(mark)
        self._emit(EventJob("mark", {"recording": rec.id if rec else None, **mark}, stored))

    def event(self, kind: str, details: dict[str, Any]) -> None:
        self._emit(EventJob(kind, details))

    def _stop_cleanly(self, reason: str) -> None:
        """The end of the source or of the agent: the recording stops at the newest media and
        is not resumed at the next start (the caller then drains the encoder and ends it)."""
        rec = self.rec
        if rec is not None and rec.stop_at_ns is None:
            rec.stop_at_ns, rec.stop_trigger = self.last_mono_ns or self._now_ns(), reason
            self._persist()

    # ------------------------------------------------------------------ parts

    def _take(self, frag: F, init: bytes, *, discontinuity: bool = False) -> bool:
        """A fragment of the recording: durable at once (the journal; the init boxes open each
        part), then into the part being filled. The recording ends once a fragment covers the
        stop moment; the part once it is ``segment_s`` long. True if it opened a part."""
        rec = self.rec
        assert rec is not None
        opens = self._segmenter.current is None
        data = init + frag.data if opens else frag.data
        self._emit(
            FragmentJob(self.stream, rec.id, rec.parts, data, frag.start_utc, frag.start_mono_ns)
        )
        self._segmenter.add(init, frag, discontinuity=discontinuity)
        rec.media += self._size(frag)
        if rec.stop_at_ns is not None and self._covers(frag.end_mono_ns, rec.stop_at_ns):
            self._end_recording()
        elif self._segmenter.full():
            self._seal_part(final=False)
        return opens

    def _seal_part(self, final: bool) -> None:
        """Seal the part being filled (if any) as the recording's next segment."""
        seg = self._segmenter.cut()
        rec = self.rec
        if seg is None or rec is None:
            return
        media = self._media_meta(seg)
        meta: dict[str, Any] = {
            **self._meta,
            "recording": rec.id,
            "part": rec.parts,
            "final": final,
            "trigger": rec.trigger,
            "mode": self.mode,
            **media,
        }
        if seg.discontinuity:
            meta["discontinuity"] = True
        if rec.parts == 0:
            meta["pre_event_s"] = rec.pre_event_s
        if rec.marks:
            meta["marks"], rec.marks = rec.marks, []
        header = SegmentHeader(
            stream=self.stream,
            content_type=self.content_type,
            start_utc=seg.first.start_utc,
            end_utc=seg.last.end_utc,
            start_mono_ns=seg.first.start_mono_ns,
            end_mono_ns=seg.last.end_mono_ns,
            clock=self._clock(),
            meta=meta,
        )
        rec.parts += 1
        self.segments_made += 1
        self._emit(SegmentJob(header, tuple(seg.pieces()), journaled=True))

    def _end_recording(self) -> None:
        rec = self.rec
        if rec is None:
            return
        self._seal_part(final=True)
        self._set_recording(None)
        self._ended()
        self.event(
            self.kinds + "record_stop",
            {
                "recording": rec.id,
                "trigger": rec.stop_trigger or "unknown",
                "segments": rec.parts,
                **self._stop_details(rec),
                "at_utc": self._utc_at(rec.stop_at_ns or self.last_mono_ns or 0),
            },
        )
        self._persist()  # no recording any more
        log.info("%s: recording %s stopped (%d segments)", self.stream, rec.id, rec.parts)

    def _persist(self) -> None:
        """Keep the recording in progress durably (resumed after a power cut)."""
        rec = self.rec
        state = None
        if rec is not None:
            state = {
                "recording": rec.id,
                "trigger": rec.trigger,
                "mode": self.mode,
                "started_utc": rec.started_utc,
                "stop_requested": rec.stop_at_ns is not None,
            }
        self._emit(RecordingJob(self.stream, state))

    def _utc_at(self, mono_ns: int) -> str:
        """The wall-clock time of a monotonic moment (0: unknown, now)."""
        if self.last_mono_ns is None or self.last_utc is None:
            back = (time.monotonic_ns() - mono_ns) / 1e9 if mono_ns else 0.0
            return format_utc(wallclock.now() - back)
        return format_utc(self.last_utc + (mono_ns - self.last_mono_ns) / 1e9)

    def _set_recording(self, rec: Recording | None) -> None:
        self.rec = rec

    # ------------------------------------------------------------------ hooks

    def _now_ns(self) -> int:
        """The moment a command without one means."""
        raise NotImplementedError

    def _next_seq(self) -> int:
        """The number of the next fragment to come (where a resumed recording begins)."""
        return 0

    def _pre_event(self, at: int) -> tuple[int, float | None, list[F]]:
        """For a recording starting at ``at``: its first fragment's number, how many seconds
        of it come before ``at`` (None: unknown), and the ring's fragments it takes."""
        raise NotImplementedError

    def _record(self, frag: F) -> None:
        """Take one fragment into the recording (the ring's, at a start)."""
        raise NotImplementedError

    def _covers(self, end_ns: int, at_ns: int) -> bool:
        """Whether media ending at ``end_ns`` covers the moment ``at_ns`` (a video frame at
        ``at_ns`` needs ``end_ns`` after it)."""
        return end_ns > at_ns

    def _stopping(self, rec: Recording, at: int) -> None:
        """A stop was asked for ``at``: end now if what was recorded covers it, else later."""
        raise NotImplementedError

    def _size(self, frag: F) -> int:
        """A fragment's frames or samples."""
        raise NotImplementedError

    def _media_meta(self, seg: Segment[F]) -> dict[str, Any]:
        """The manifest's media fields of a segment."""
        raise NotImplementedError

    def _stop_details(self, rec: Recording) -> dict[str, Any]:
        """What ``record_stop`` says of the recording's length."""
        return {}

    def _ended(self) -> None:
        """After a recording ended (its last part sealed)."""
