"""The video recorder: camera -> watermark -> encoder -> pre-event ring / segments -> spool.

Threads (each loop waits on the one stop event or on a queue with a timeout, never sleeps)::

    capture thread   source.read() + watermark     --frames (bounded, drop-and-count)-->
    encoder thread   VideoPipeline.feed(): H.264, fragments, ring, segments, commands
                                                   --jobs (bounded)-->
    writer thread    spool.put(segment) / spool.put_event(record)

The capture thread never waits on the encoder: when the frame queue is full, a live source's
frame is dropped and counted (a file is read no faster than it is encoded instead). The encoder
thread waits on the writer when storage is slow, which in turn shows up as dropped frames, never
as frames silently lost. Start, stop and mark may be called from any thread (serial trigger,
platform command, local control socket): they are queued to the encoder thread, which owns all
recording state, and each one becomes an event record in the spool.

:class:`VideoPipeline` is that encoder-thread state machine with no threads of its own, so tests
and benchmarks can drive it frame by frame.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import wallclock
from agent.capture.camera import CaptureLoop
from agent.capture.encoder import EncoderChoice, Fragment, H264Encoder
from agent.capture.frames import AccessUnit, EncodedSource, Frame, FrameSource
from agent.capture.jobs import (
    EventJob,
    FragmentJob,
    Job,
    RecorderThreads,
    RecordingJob,
    SegmentJob,
    SpoolLike,
)
from agent.capture.overlay import Overlay
from agent.capture.prebuffer import FragmentRing
from agent.capture.segmenter import Segment, Segmenter
from agent.capture.settings import VideoSettings
from agent.errors import AgentError, SourceError
from agent.model import Alarm, ClockState, Severity, format_utc
from agent.storage.seal import SegmentHeader
from agent.storage.segjournal import Interrupted

if TYPE_CHECKING:
    from agent.capture.passthrough import LatestPicture

log = logging.getLogger(__name__)

VIDEO_STREAM = "video"
CONTENT_TYPE = "video/mp4"


@dataclass
class RecorderStats:
    """Counters; each has one writer thread (noted), any thread may read them."""

    encoder: str = ""
    captured: int = 0  # capture
    dropped: int = 0  # capture: frames the encoder had no room for
    losses: int = 0  # capture: times the camera was lost
    encoded: int = 0  # encoder
    fragments: int = 0  # encoder
    prebuffer_bytes: int = 0  # encoder
    prebuffer_s: float = 0.0  # encoder
    recording: bool = False  # encoder
    segments: int = 0  # writer
    segment_bytes: int = 0  # writer
    events: int = 0  # writer
    refused: int = 0  # writer: segments or records the spool refused (storage full)
    store_errors: int = 0  # writer


@dataclass
class _Recording:
    id: str
    trigger: str
    start_seq: int
    trigger_mono_ns: int
    stop_at_ns: int | None = None
    stop_trigger: str = ""
    parts: int = 0
    frames: int = 0
    pre_event_s: float | None = None
    marks: list[dict[str, Any]] = field(default_factory=list)
    started_utc: str = ""


class VideoPipeline:
    """Encoder-thread state: pts and keyframes, fragments, the ring, recordings, segments."""

    def __init__(
        self,
        settings: VideoSettings,
        encoder: H264Encoder,
        emit: Callable[[Job], None],
        *,
        clock: Callable[[], ClockState] = ClockState,
        dropped: Callable[[], int] = lambda: 0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self._emit = emit
        self._clock = clock
        self._dropped = dropped
        self._dropped_reported = 0
        self._meta = dict(meta or {})
        self.ring = FragmentRing(settings.prebuffer_s)
        self._segmenter = Segmenter(settings.segment_s)
        self._fps = encoder.fps
        self._key_ns = round(settings.keyframe_s * 1e9)
        self._half_frame_ns = round(0.5e9 / self._fps)
        self._t0: int | None = None
        self._last_pts = -1
        self._last_key_ns: int | None = None
        self._next_frag = 0
        self._pending_keys: deque[tuple[int, int]] = deque()  # (fragment seq, start mono)
        self._recorded_seq = -1
        self._recorded_end_ns = 0
        self.last_mono_ns: int | None = None
        # Commands stamped later than the newest frame fed (frames still queued): they run
        # when the frame timeline reaches them.
        self._deferred: deque[tuple[int, Callable[[], object]]] = deque()
        self.last_utc: float | None = None
        self.rec: _Recording | None = None
        self.frames = 0
        self.fragments = 0
        self.segments_made = 0

    # ------------------------------------------------------------------ frames

    def feed(self, frame: Frame) -> None:
        if self._t0 is None:
            self._t0 = frame.mono_ns
        pts = max(self._last_pts + 1, round((frame.mono_ns - self._t0) * self._fps / 1e9))
        key = (
            self._last_key_ns is None
            or frame.mono_ns - self._last_key_ns >= self._key_ns - self._half_frame_ns
        )
        if key:
            self._pending_keys.append((self._next_frag, frame.mono_ns))
            self._next_frag += 1
            self._last_key_ns = frame.mono_ns
        self._last_pts = pts
        self.last_mono_ns, self.last_utc = frame.mono_ns, frame.utc
        while self._deferred and self._deferred[0][0] <= frame.mono_ns:
            self._deferred.popleft()[1]()
        self.frames += 1
        for frag in self.encoder.encode(frame, pts, key):
            self._on_fragment(frag)

    def finish(self, trigger: str = "shutdown") -> None:
        """End of the source or of the agent: drain the encoder, seal the last segment."""
        while self._deferred:
            self._deferred.popleft()[1]()
        for frag in self.encoder.finish():
            self._on_fragment(frag)
        if self.rec is not None:
            if not self.rec.stop_trigger:
                self.rec.stop_trigger = trigger
            if self.rec.stop_at_ns is None:
                self.rec.stop_at_ns = self.last_mono_ns or 0
                self._persist()  # a clean stop: not resumed at the next start
            self._end_recording()

    def _on_fragment(self, frag: Fragment) -> None:
        self.fragments += 1
        while self._pending_keys and self._pending_keys[0][0] <= frag.seq:
            self._pending_keys.popleft()
        self.ring.push(frag)
        rec = self.rec
        if rec is None or frag.seq < rec.start_seq or frag.seq <= self._recorded_seq:
            return
        if rec.stop_at_ns is not None and frag.start_mono_ns > rec.stop_at_ns:
            self._end_recording()
            return
        self._record(frag)
        if rec.stop_at_ns is not None and frag.end_mono_ns > rec.stop_at_ns:
            self._end_recording()

    def _record(self, frag: Fragment) -> None:
        assert self.rec is not None and self.encoder.init is not None
        self._recorded_seq = frag.seq
        self._recorded_end_ns = frag.end_mono_ns
        self.rec.frames += frag.frames
        opens = self._segmenter.current is None
        self._emit(
            FragmentJob(
                VIDEO_STREAM,
                self.rec.id,
                self.rec.parts,
                self.encoder.init + frag.data if opens else frag.data,
                frag.start_utc,
                frag.start_mono_ns,
            )
        )
        seg = self._segmenter.add(self.encoder.init, frag)
        if seg is not None:
            self._emit_segment(seg, final=False)

    # ------------------------------------------------------------------ recording state

    def begin(self, interrupted: Interrupted | None = None) -> None:
        """Before the first frame: resume the recording a power cut interrupted (same id,
        next part, a ``recording_resumed`` event), or start one in continuous mode."""
        if interrupted is not None and interrupted.resume:
            rec = self.rec = _Recording(
                interrupted.recording,
                interrupted.trigger or "resume",
                self._next_frag,
                self.last_mono_ns or 0,
                parts=interrupted.next_part,
                started_utc=interrupted.started_utc,
            )
            self._persist()
            self.event(
                "recording_resumed",
                {
                    "stream": VIDEO_STREAM,
                    "recording": rec.id,
                    "part": rec.parts,
                    "trigger": rec.trigger,
                    "mode": self.settings.mode,
                    "started_utc": rec.started_utc,
                    "interrupted_utc": None
                    if interrupted.last_durable_utc is None
                    else format_utc(interrupted.last_durable_utc),
                    "at_utc": format_utc(wallclock.now()),
                },
            )
            log.warning("video: recording %s resumed after an interruption", rec.id)
            return
        if self.settings.mode == "continuous":
            self.start("continuous")

    def _persist(self) -> None:
        """Keep the recording in progress durably (resumed after a power cut)."""
        rec = self.rec
        self._emit(
            RecordingJob(
                VIDEO_STREAM,
                None
                if rec is None
                else {
                    "recording": rec.id,
                    "trigger": rec.trigger,
                    "mode": self.settings.mode,
                    "started_utc": rec.started_utc,
                    "stop_requested": rec.stop_at_ns is not None,
                },
            )
        )

    # ------------------------------------------------------------------ commands

    def _defer(self, at_mono_ns: int | None, fn: Callable[[], object]) -> bool:
        now = self.last_mono_ns
        if (at_mono_ns is None or now is None or at_mono_ns <= now) and not self._deferred:
            return False
        self._deferred.append((at_mono_ns or 0, fn))
        return True

    def start(
        self, trigger: str, at_mono_ns: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        """Start recording at ``at_mono_ns`` (default: the newest frame), from the ring."""
        if not self._defer(at_mono_ns, lambda: self._start(trigger, at_mono_ns, details)):
            self._start(trigger, at_mono_ns, details)

    def stop(self, trigger: str, at_mono_ns: int | None = None) -> None:
        """Stop at the end of the fragment holding the moment ``at_mono_ns``."""
        if not self._defer(at_mono_ns, lambda: self._stop(trigger, at_mono_ns)):
            self._stop(trigger, at_mono_ns)

    def mark(self, trigger: str, note: str = "", at_mono_ns: int | None = None) -> None:
        """An event record (and a note in the current segment's manifest)."""
        if not self._defer(at_mono_ns, lambda: self._mark(trigger, note, at_mono_ns)):
            self._mark(trigger, note, at_mono_ns)

    def _start(self, trigger: str, at_mono_ns: int | None, details: dict[str, Any] | None) -> None:
        at = at_mono_ns if at_mono_ns is not None else (self.last_mono_ns or 0)
        rec = self.rec
        if rec is not None:
            resumed = rec.stop_at_ns is not None
            rec.stop_at_ns, rec.stop_trigger = None, ""
            if resumed:
                self._persist()
            self.event(
                "record_start",
                {
                    "recording": rec.id,
                    "trigger": trigger,
                    "already_recording": not resumed,
                    "resumed": resumed,
                    **(details or {}),
                },
            )
            return
        seq = self.ring.choose_start(at, list(self._pending_keys), self._recorded_seq)
        starts = {f.seq: f.start_mono_ns for f in self.ring.fragments(self._recorded_seq)}
        starts.update(dict(self._pending_keys))
        pre = (at - starts[seq]) / 1e9 if seq in starts and self.last_mono_ns else None
        rec = self.rec = _Recording(
            uuid.uuid4().hex[:12], trigger, seq, at, pre_event_s=pre, started_utc=self._utc_at(at)
        )
        self._persist()
        self.event(
            "record_start",
            {
                "recording": rec.id,
                "trigger": trigger,
                "mode": self.settings.mode,
                "at_utc": self._utc_at(at),
                "prebuffer_s": self.settings.prebuffer_s,
                "pre_event_s": None if pre is None else round(pre, 3),
                **(details or {}),
            },
        )
        log.info(
            "video: recording %s started by %s (%s s before the trigger)",
            rec.id,
            trigger,
            "?" if pre is None else f"{pre:.1f}",
        )
        for frag in self.ring.fragments(seq - 1):
            self._record(frag)

    def _stop(self, trigger: str, at_mono_ns: int | None) -> None:
        at = at_mono_ns if at_mono_ns is not None else (self.last_mono_ns or 0)
        rec = self.rec
        if rec is None:
            self.event("record_stop", {"trigger": trigger, "not_recording": True})
            return
        rec.stop_at_ns, rec.stop_trigger = at, trigger
        if self._recorded_end_ns > at:
            self._end_recording()
        else:
            self._persist()

    def _mark(self, trigger: str, note: str, at_mono_ns: int | None) -> None:
        at = at_mono_ns if at_mono_ns is not None else (self.last_mono_ns or 0)
        mark = {"trigger": trigger, "note": note, "at_utc": self._utc_at(at)}
        rec = self.rec
        if rec is not None:
            rec.marks.append(mark)
        self.event("mark", {"recording": rec.id if rec else None, **mark})

    def _utc_at(self, mono_ns: int) -> str:
        if self.last_mono_ns is None or self.last_utc is None:
            return format_utc(wallclock.now())
        return format_utc(self.last_utc + (mono_ns - self.last_mono_ns) / 1e9)

    def _end_recording(self) -> None:
        rec = self.rec
        if rec is None:
            return
        seg = self._segmenter.flush()
        if seg is not None:
            self._emit_segment(seg, final=True)
        self.rec = None
        self.event(
            "record_stop",
            {
                "recording": rec.id,
                "trigger": rec.stop_trigger or "unknown",
                "segments": rec.parts,
                "frames": rec.frames,
                "at_utc": self._utc_at(rec.stop_at_ns or self.last_mono_ns or 0),
            },
        )
        self._persist()  # no recording any more
        log.info("video: recording %s stopped (%d segments)", rec.id, rec.parts)

    # ------------------------------------------------------------------ output

    def event(self, kind: str, details: dict[str, Any]) -> None:
        self._emit(EventJob(kind, details))

    def _emit_segment(self, seg: Segment, final: bool) -> None:
        rec = self.rec
        assert rec is not None
        dropped = self._dropped()
        meta: dict[str, Any] = {
            **self._meta,
            "recording": rec.id,
            "part": rec.parts,
            "final": final,
            "trigger": rec.trigger,
            "mode": self.settings.mode,
            "codec": "h264",
            "encoder": self.encoder.codec,
            "width": self.encoder.width,
            "height": self.encoder.height,
            "fps": self._fps,
            "frames": seg.frames,
            "first_frame": seg.first.first_index,
            "last_frame": seg.last.last_index,
            "media_start_s": round(seg.first.start_s, 6),
            "duration_s": round(seg.duration_s, 6),
            "dropped_frames": dropped - self._dropped_reported,
        }
        meta.update(self.encoder.segment_meta())
        if rec.parts == 0:
            meta["pre_event_s"] = rec.pre_event_s
        if rec.marks:
            meta["marks"], rec.marks = rec.marks, []
        self._dropped_reported = dropped
        header = SegmentHeader(
            stream=VIDEO_STREAM,
            content_type=CONTENT_TYPE,
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


class Recorder(RecorderThreads[VideoPipeline, RecorderStats]):
    """Runs the capture, encoder and writer threads around a :class:`VideoPipeline`.

    ``start``, ``stop``, ``mark`` and ``still`` may be called from any thread.

    A raw source's frames are watermarked and encoded (:class:`H264Encoder`); an encoded
    source's access units (:class:`~agent.capture.frames.EncodedSource`) are remuxed, not
    re-encoded (:class:`agent.capture.passthrough.PassthroughPipeline`). Both end as the same
    fragments, ring, segments and event records.
    """

    what = "video"

    def __init__(
        self,
        settings: VideoSettings,
        source: FrameSource | EncodedSource,
        spool: SpoolLike,
        stop: threading.Event,
        *,
        overlay: Overlay | None = None,
        alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], ClockState] = ClockState,
        meta: dict[str, Any] | None = None,
        on_frame: Callable[[Frame], None] | None = None,
        on_unit: Callable[[AccessUnit], None] | None = None,
        encoder_factory: Callable[[VideoSettings], H264Encoder] | None = None,
    ) -> None:
        self.settings = settings
        self._encoder_factory = encoder_factory
        self.source = source
        self.spool = spool
        self.stop_event = stop
        self.overlay = overlay
        self._alarm = alarm or (lambda a: None)
        self._clock = clock
        self._meta = meta or {}
        self._on_frame = on_frame
        self._on_unit = on_unit
        self.stats = RecorderStats()
        self._frames: queue.Queue[Frame] = queue.Queue(maxsize=settings.queue_frames)
        # Encoded sources: access units (kilobytes, not megabytes: room for 4 s, as network
        # streams come in bursts); after a drop, none until the next IDR.
        self._units: queue.Queue[AccessUnit] = queue.Queue(
            maxsize=max(settings.queue_frames, 4 * settings.fps)
        )
        self._drop_to_idr = False
        self._newest: LatestPicture | None = None
        self.remux_errors = 0
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=8)
        self._commands: queue.Queue[Callable[[VideoPipeline], object]] = queue.Queue(maxsize=256)
        self._capture_done = threading.Event()
        self._latest: Frame | None = None
        self._last_capture_ns: int | None = None
        self.pipeline: VideoPipeline | None = None
        self.ready = threading.Event()  # the encoder is open (or failed to open)
        self.error: BaseException | None = None
        self._capture: CaptureLoop[Frame] | CaptureLoop[AccessUnit]
        if isinstance(source, EncodedSource):
            from agent.capture.passthrough import LatestPicture

            self._newest = LatestPicture()
            self._capture = CaptureLoop[AccessUnit](
                source,
                self._deliver_unit,
                stop,
                reopen_s=settings.reopen_s,
                reopen_max_s=settings.reopen_max_s,
                on_event=self._capture_event,
                alarm=self._alarm,
            )
        else:
            self._capture = CaptureLoop[Frame](
                source,
                self._deliver,
                stop,
                overlay=overlay,
                reopen_s=settings.reopen_s,
                reopen_max_s=settings.reopen_max_s,
                on_event=self._capture_event,
                alarm=self._alarm,
            )
        self._threads = [
            threading.Thread(target=self._capture_main, name="video-capture", daemon=True),
            threading.Thread(
                target=self._remux_main if self._newest is not None else self._encode_main,
                name="video-encode",
                daemon=True,
            ),
            threading.Thread(target=self._write_main, name="video-write", daemon=True),
        ]

    # ------------------------------------------------------------------ control (any thread)

    def start(self, trigger: str = "api", details: dict[str, Any] | None = None) -> None:
        at = self._last_capture_ns
        self._command(lambda p: p.start(trigger, at, details))

    def stop(self, trigger: str = "api") -> None:
        at = self._last_capture_ns
        self._command(lambda p: p.stop(trigger, at))

    def mark(self, trigger: str = "api", note: str = "") -> None:
        at = self._last_capture_ns
        self._command(lambda p: p.mark(trigger, note, at))

    def latest_frame(self) -> Frame | None:
        """The newest watermarked frame (for stills); an encoded source's newest picture is
        decoded here, on request."""
        if self._newest is not None:
            return self._newest.frame()
        return self._latest

    @property
    def recording(self) -> bool:
        return self.stats.recording

    # ------------------------------------------------------------------ capture thread

    def _capture_main(self) -> None:
        try:
            self._capture.run()
        except Exception as exc:
            log.exception("video: capture thread failed")
            self._fail(exc)
        finally:
            self._capture_done.set()

    def _deliver(self, frame: Frame) -> None:
        self.stats.captured += 1
        self._latest = frame
        self._last_capture_ns = frame.mono_ns
        if self._on_frame is not None:
            self._on_frame(frame)
        if self.source.live:
            try:
                self._frames.put_nowait(frame)
            except queue.Full:
                self.stats.dropped += 1
                n = self.stats.dropped
                if n == 1 or n % 100 == 0:
                    log.warning("video: encoder behind, %d frames dropped so far", n)
            return
        while not self.stop_event.is_set():
            try:
                self._frames.put(frame, timeout=0.2)
                return
            except queue.Full:
                continue

    def _deliver_unit(self, au: AccessUnit) -> None:
        """Capture thread, encoded sources: queue the access unit. When the queue is full,
        it and every unit up to the next IDR are dropped and counted (a P picture without
        its predecessors cannot be decoded)."""
        self.stats.captured += 1
        self._last_capture_ns = au.mono_ns
        assert self._newest is not None
        self._newest.add(au)
        if self._on_unit is not None:
            self._on_unit(au)
        if self._drop_to_idr:
            if not au.key:
                self.stats.dropped += 1
                return
            au = dataclasses.replace(au, resync=True)
        while True:
            try:
                self._units.put_nowait(au)
                self._drop_to_idr = False
                return
            except queue.Full:
                if self.source.live:
                    break
            if self.stop_event.wait(0.05):
                return
        self.stats.dropped += 1
        self._drop_to_idr = True
        n = self.stats.dropped
        if n == 1 or n % 100 == 0:
            log.warning("video: remuxer behind, %d pictures dropped so far", n)

    def _capture_event(self, kind: str, details: dict[str, Any]) -> None:
        if kind == "camera_lost":
            self.stats.losses += 1
        try:
            self._command(lambda p: p.event(kind, details))
        except AgentError:
            log.error("video: could not queue the %s event record %s", kind, details)

    # ------------------------------------------------------------------ encoder thread

    def _encode_main(self) -> None:
        s = self.settings
        try:
            encoder = (
                self._encoder_factory(s)
                if self._encoder_factory is not None
                else H264Encoder(
                    s.width,
                    s.height,
                    s.fps,
                    codec=s.encoder,
                    bitrate_kbps=s.bitrate_kbps,
                    preset=s.preset,
                )
            )
        except Exception as exc:
            log.critical("video: cannot open the H.264 encoder: %s", exc)
            self._fail(exc)
            self.ready.set()
            self._jobs.put(None)
            return
        self.stats.encoder = encoder.codec
        log.info(
            "video: encoding H.264 with %s at %dx%d@%d", encoder.codec, s.width, s.height, s.fps
        )
        choice = getattr(encoder, "choice", None)
        if isinstance(choice, EncoderChoice) and choice.fallback:
            log.warning("video: %s", choice.reason)
            self._alarm(
                Alarm(
                    "video_encoder_fallback",
                    f"video encoder: {choice.reason}",
                    Severity.WARNING,
                    wallclock.now(),
                    {"encoder": choice.codec, "reason": choice.reason},
                )
            )
        p = self.pipeline = VideoPipeline(
            s,
            encoder,
            self._jobs.put,
            clock=self._clock,
            dropped=lambda: self.stats.dropped,
            meta=self._meta,
        )
        self.ready.set()
        p.begin(self.interrupted)
        try:
            while True:
                self._run_commands(p)
                try:
                    frame = self._frames.get(timeout=0.1)
                except queue.Empty:
                    if self._capture_done.is_set() and self._frames.empty():
                        break
                    continue
                p.feed(frame)
                self._update(p)
            self._run_commands(p)
            p.finish("shutdown" if self.stop_event.is_set() else "end_of_source")
            self._update(p)
        except Exception as exc:
            log.exception("video: encoder thread failed")
            self._fail(exc)
        finally:
            self._jobs.put(None)

    def _remux_main(self) -> None:
        """Encoder thread, encoded sources: access units -> remuxer -> the same pipeline."""
        from agent.capture.passthrough import PassthroughPipeline
        from agent.capture.remux import StreamRemuxer

        s = self.settings
        src = self.source
        assert isinstance(src, EncodedSource)
        remuxer = StreamRemuxer(
            s.fps,
            width=s.width,
            height=s.height,
            encoder=src.encoder,
            watermarked=src.watermarked,
        )
        self.stats.encoder = remuxer.codec
        log.info("video: passing %s's H.264 through (no re-encoding)", src.name)
        p = PassthroughPipeline(
            s,
            remuxer,
            self._jobs.put,
            clock=self._clock,
            dropped=lambda: self.stats.dropped,
            meta=self._meta,
        )
        self.pipeline = p
        self.ready.set()
        p.begin(self.interrupted)
        try:
            while True:
                self._run_commands(p)
                try:
                    au = self._units.get(timeout=0.1)
                except queue.Empty:
                    if self._capture_done.is_set() and self._units.empty():
                        break
                    continue
                remuxer.codec = self.stats.encoder = src.encoder  # known once the source opened
                try:
                    p.feed_unit(au)
                except SourceError as exc:
                    self.remux_errors += 1
                    if self.remux_errors == 1 or self.remux_errors % 100 == 0:
                        log.error("video: %s (%d so far); waiting for the next IDR", exc,
                                  self.remux_errors)  # fmt: skip
                self._update(p)
            self._run_commands(p)
            p.finish("shutdown" if self.stop_event.is_set() else "end_of_source")
            self._update(p)
        except Exception as exc:
            log.exception("video: remux thread failed")
            self._fail(exc)
        finally:
            self._jobs.put(None)

    def _run_commands(self, p: VideoPipeline) -> None:
        while True:
            try:
                fn = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn(p)
            except AgentError as exc:
                log.error("video: command failed: %s", exc)
            self._update(p)

    def _update(self, p: VideoPipeline) -> None:
        st = self.stats
        st.encoded, st.fragments = p.frames, p.fragments
        st.prebuffer_bytes, st.prebuffer_s = p.ring.bytes, p.ring.span_s
        st.recording = p.rec is not None

    # ------------------------------------------------------------------ writer thread
