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
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent import wallclock
from agent.capture.camera import CaptureLoop
from agent.capture.encoder import EncoderChoice, Fragment, FragmentProducer, H264Encoder
from agent.capture.frames import (
    AccessUnit,
    EncodedSource,
    Frame,
    FrameSource,
    no_huge_page_advice,
)
from agent.capture.jobs import Job, RecorderThreads, SpoolLike
from agent.capture.overlay import Overlay
from agent.capture.recording import Recording, RecordingPipeline
from agent.capture.segmenter import Segment
from agent.capture.settings import VideoSettings
from agent.errors import SourceError
from agent.model import Alarm, ClockState, Severity

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


class VideoPipeline(RecordingPipeline[Fragment]):
    """Encoder-thread state: pts and keyframes, fragments into the ring and the recording
    (:class:`~agent.capture.recording.RecordingPipeline`), commands in frame order."""

    stream = VIDEO_STREAM
    content_type = CONTENT_TYPE

    def __init__(
        self,
        settings: VideoSettings,
        encoder: FragmentProducer,
        emit: Callable[[Job], None],
        *,
        clock: Callable[[], ClockState] = ClockState,
        dropped: Callable[[], int] = lambda: 0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        # slack: half a frame
        super().__init__(settings, emit, slack_s=0.5 / encoder.fps, clock=clock, meta=meta)
        self.settings = settings
        self.encoder = encoder
        self._dropped = dropped
        self._dropped_reported = 0
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
        # Commands stamped later than the newest frame fed (frames still queued): they run
        # when the frame timeline reaches them.
        self._deferred: deque[tuple[int, Callable[[], object]]] = deque()
        self.frames = 0
        self.fragments = 0

    # ------------------------------------------------------------------ frames

    def feed(self, frame: Frame) -> None:
        """One raw frame, in capture order: the pipeline decides where keyframes go."""
        enc = self.encoder
        if not isinstance(enc, H264Encoder):
            raise TypeError(f"{type(enc).__name__} takes access units (feed_unit), not frames")
        if self._t0 is None:
            self._t0 = frame.mono_ns
        pts = max(self._last_pts + 1, round((frame.mono_ns - self._t0) * self._fps / 1e9))
        key = (
            self._last_key_ns is None
            or frame.mono_ns - self._last_key_ns >= self._key_ns - self._half_frame_ns
        )
        if key:
            self._last_key_ns = frame.mono_ns
        self._last_pts = pts
        self._advance(frame.mono_ns, frame.utc, self._next_frag if key else None)
        self._fragments_out(enc.encode(frame, pts, key))

    def _advance(self, mono_ns: int, utc: float, began: int | None) -> None:
        """The capture timeline reached ``mono_ns`` (a frame or an access unit; ``began``: the
        fragment it begins): commands stamped up to it run."""
        if began is not None:
            self._pending_keys.append((began, mono_ns))
            self._next_frag = began + 1
        self.last_mono_ns, self.last_utc = mono_ns, utc
        while self._deferred and self._deferred[0][0] <= mono_ns:
            self._deferred.popleft()[1]()
        self.frames += 1

    def _fragments_out(self, frags: list[Fragment]) -> None:
        for frag in frags:
            self._on_fragment(frag)

    def finish(self, trigger: str = "shutdown") -> None:
        """End of the source or of the agent: drain the encoder, seal the last segment."""
        while self._deferred:
            self._deferred.popleft()[1]()
        self._fragments_out(self.encoder.finish())
        self._stop_cleanly(trigger)
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

    def _record(self, frag: Fragment) -> None:
        assert self.encoder.init is not None
        self._recorded_seq = frag.seq
        self._recorded_end_ns = frag.end_mono_ns
        self._take(frag, self.encoder.init)

    # ------------------------------------------------------------------ commands in frame order

    def _in_order(self, at_mono_ns: int | None, fn: Callable[[], object]) -> None:
        """Run ``fn`` now, or when the frames reach ``at_mono_ns`` (or after the commands
        already waiting for them)."""
        now = self.last_mono_ns
        if (at_mono_ns is None or now is None or at_mono_ns <= now) and not self._deferred:
            fn()
        else:
            self._deferred.append((at_mono_ns or 0, fn))

    def start(
        self, trigger: str, at_mono_ns: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        start = super().start
        self._in_order(at_mono_ns, lambda: start(trigger, at_mono_ns, details))

    def stop(self, trigger: str, at_mono_ns: int | None = None) -> None:
        stop = super().stop
        self._in_order(at_mono_ns, lambda: stop(trigger, at_mono_ns))

    def mark(
        self,
        trigger: str,
        note: str = "",
        at_mono_ns: int | None = None,
        stored: Future[None] | None = None,
    ) -> None:
        mark = super().mark
        self._in_order(at_mono_ns, lambda: mark(trigger, note, at_mono_ns, stored))

    # ------------------------------------------------------------------ hooks

    def _now_ns(self) -> int:
        return self.last_mono_ns or 0

    def _next_seq(self) -> int:
        return self._next_frag

    def _pre_event(self, at: int) -> tuple[int, float | None, list[Fragment]]:
        seq = self.ring.choose_start(at, list(self._pending_keys), self._recorded_seq)
        starts = {f.seq: f.start_mono_ns for f in self.ring.fragments(self._recorded_seq)}
        starts.update(dict(self._pending_keys))
        pre = (at - starts[seq]) / 1e9 if seq in starts and self.last_mono_ns else None
        return seq, pre, self.ring.fragments(seq - 1)

    def _stopping(self, rec: Recording, at: int) -> None:
        if self._recorded_end_ns > at:
            self._end_recording()
        else:
            self._persist()

    def _stop_details(self, rec: Recording) -> dict[str, Any]:
        return {"frames": rec.media}

    def _size(self, frag: Fragment) -> int:
        return frag.frames

    def _media_meta(self, seg: Segment[Fragment]) -> dict[str, Any]:
        dropped = self._dropped()
        enc = self.encoder
        meta: dict[str, Any] = {
            "codec": "h264",
            "encoder": enc.codec,
            "width": enc.width,
            "height": enc.height,
            "fps": self._fps,
            "frames": sum(f.frames for f in seg.fragments),
            "first_frame": seg.first.first_index,
            "last_frame": seg.last.last_index,
            "media_start_s": round(seg.first.start_s, 6),
            "duration_s": round(seg.duration_s, 6),
            "dropped_frames": dropped - self._dropped_reported,
            **enc.segment_meta(),
        }
        self._dropped_reported = dropped
        return meta


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
        encoded = isinstance(source, EncodedSource)
        if encoded:
            from agent.capture.passthrough import LatestPicture

            self._newest = LatestPicture()
        self._capture: CaptureLoop[Any] = CaptureLoop(
            source,
            self._deliver_unit if encoded else self._deliver,
            stop,
            overlay=None if encoded else overlay,
            reopen_s=settings.reopen_s,
            reopen_max_s=settings.reopen_max_s,
            on_event=self._capture_event,
            alarm=self._alarm,
        )
        self._threads = [
            threading.Thread(
                target=self._source_main,
                args=(self._capture.run, self._capture_done, "capture"),
                name="video-capture",
                daemon=True,
            ),
            threading.Thread(
                target=self._remux_main if self._newest is not None else self._encode_main,
                name="video-encode",
                daemon=True,
            ),
            threading.Thread(target=self._write_main, name="video-write", daemon=True),
        ]

    def start_threads(self) -> None:
        if self._newest is None:  # raw frames: a big buffer each (frames.no_huge_page_advice)
            no_huge_page_advice()
        super().start_threads()

    # ------------------------------------------------------------------ control (any thread)

    def start(self, trigger: str = "api", details: dict[str, Any] | None = None) -> None:
        at = self._last_capture_ns
        self._command(lambda p: p.start(trigger, at, details))

    def stop(self, trigger: str = "api") -> None:
        at = self._last_capture_ns
        self._command(lambda p: p.stop(trigger, at))

    def mark(self, trigger: str = "api", note: str = "") -> Future[None]:
        """Queued to the encoder; the result is settled once the mark's event record is in the
        spool (an exception if it could not be stored)."""
        at = self._last_capture_ns
        stored: Future[None] = Future()
        self._command(lambda p: p.mark(trigger, note, at, stored))
        return stored

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
        self._queue_event(kind, details)

    # ------------------------------------------------------------------ encoder thread

    def _encode_main(self) -> None:
        s = self.settings
        try:
            encoder = (
                self._encoder_factory(s)
                if self._encoder_factory is not None
                else H264Encoder.for_video(s)
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
        self._drive(p, self._frames, p.feed, self._capture_done)

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

        def feed(au: AccessUnit) -> None:
            remuxer.codec = self.stats.encoder = src.encoder  # known once the source opened
            try:
                p.feed_unit(au)
            except SourceError as exc:
                self.remux_errors += 1
                if self.remux_errors == 1 or self.remux_errors % 100 == 0:
                    log.error("video: %s (%d so far); waiting for the next IDR", exc,
                              self.remux_errors)  # fmt: skip

        self.ready.set()
        self._drive(p, self._units, feed, self._capture_done)

    def _after_step(self, p: VideoPipeline) -> None:
        st = self.stats
        st.encoded, st.fragments = p.frames, p.fragments
        st.prebuffer_bytes, st.prebuffer_s = p.ring.bytes, p.ring.span_s
        st.recording = p.rec is not None
