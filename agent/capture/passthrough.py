"""The encoder-thread state machine for encoded sources, and the newest picture for stills.

:class:`PassthroughPipeline` is :class:`agent.capture.recorder.VideoPipeline` fed with access
units instead of frames: its :meth:`~PassthroughPipeline.feed_unit` does what ``feed`` does
for a frame (advance the capture timeline, run the commands stamped up to it, hand completed
fragments to the ring and the segmenter), except that the *stream* decides where fragments
begin (its IDRs, through :class:`agent.capture.remux.StreamRemuxer`) instead of the pipeline
forcing keyframes every ``keyframe_s``. Everything after the fragments (ring, recordings,
segments, manifests, events) is the parent's, unchanged.

:class:`LatestPicture` keeps the access units since the last IDR so a still can decode the
newest picture when one is asked for (in the stills thread; nothing is decoded otherwise).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.capture.frames import AccessUnit, Frame
from agent.capture.recorder import VideoPipeline
from agent.capture.remux import StreamRemuxer
from agent.capture.settings import VideoSettings
from agent.model import ClockState

if TYPE_CHECKING:
    from agent.capture.jobs import Job

log = logging.getLogger(__name__)

MAX_GOP_BYTES = 32 << 20


class PassthroughPipeline(VideoPipeline):
    """VideoPipeline over a :class:`StreamRemuxer`. See the module docstring."""

    def __init__(
        self,
        settings: VideoSettings,
        remuxer: StreamRemuxer,
        emit: Callable[[Job], None],
        *,
        clock: Callable[[], ClockState] = ClockState,
        dropped: Callable[[], int] = lambda: 0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(settings, remuxer, emit, clock=clock, dropped=dropped, meta=meta)
        self.remuxer = remuxer

    def feed_unit(self, au: AccessUnit) -> None:
        """One access unit, in capture order. SourceError from the muxer leaves the pipeline
        usable (the remuxer waits for the next IDR)."""
        pushed = self.remuxer.push(au)
        self._advance(au.mono_ns, au.utc, pushed.began)
        self._fragments_out(pushed.fragments)


class LatestPicture:
    """The access units since the last IDR; :meth:`frame` decodes the newest picture.

    ``add`` runs in the capture thread, ``frame`` in the stills thread or the device page's: a
    lock guards the list. A decoded picture is reused for ``min_interval_s`` (the device page
    may ask for previews often; each decode costs up to a GOP's worth of decoding).
    """

    def __init__(self, max_bytes: int = MAX_GOP_BYTES, min_interval_s: float = 1.0) -> None:
        self.max_bytes = max_bytes
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._units: list[AccessUnit] = []
        self._bytes = 0
        self._last: tuple[float, Frame] | None = None
        self.decodes = 0

    def add(self, au: AccessUnit) -> None:
        with self._lock:
            if au.key:
                self._units, self._bytes = [au], len(au.data)
            elif self._units and not au.resync and self._bytes + len(au.data) <= self.max_bytes:
                self._units.append(au)
                self._bytes += len(au.data)
            else:
                self._units, self._bytes = [], 0  # undecodable until the next IDR

    def frame(self) -> Frame | None:
        """The newest decodable picture as a BGR frame, or None (no IDR yet)."""
        with self._decode_lock:
            last = self._last
            if last is not None and time.monotonic() - last[0] < self.min_interval_s:
                return last[1]
            with self._lock:
                units = list(self._units)
            frame = self._decode(units) if units else None
            if frame is not None:
                self._last = (time.monotonic(), frame)
            return frame

    def _decode(self, units: list[AccessUnit]) -> Frame | None:
        import av

        self.decodes += 1
        ctx: Any = av.CodecContext.create("h264", "r")
        last = None
        try:
            for au in units:
                for vf in ctx.decode(av.Packet(au.data)):
                    last = vf
            for vf in ctx.decode(None):
                last = vf
        except (av.FFmpegError, ValueError) as exc:
            log.warning("video: cannot decode the newest picture for a still: %s", exc)
            return None
        if last is None:
            return None
        newest = units[-1]
        return Frame(last.to_ndarray(format="bgr24"), newest.index, newest.mono_ns, newest.utc)
