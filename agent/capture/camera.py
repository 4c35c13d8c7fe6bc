"""Cameras through OpenCV (USB UVC cameras, files, decoded streams), and the capture loop that
reopens any source, raw or encoded, after a loss.

:class:`CameraSource` wraps ``cv2.VideoCapture`` for a V4L2 device (``/dev/video0``, a USB
camera), a video file, or a network stream URL. (On Raspberry Pi OS bookworm the Pi's CSI
camera goes through libcamera, which OpenCV's V4L2 capture cannot read: see
:mod:`agent.capture.picam` and :mod:`agent.capture.rpicam`.) It asks for the configured size
and frame rate, and resizes frames that come in another size so the encoder always sees one
size.

:class:`CaptureLoop` is the body of the capture thread: it reads frames, burns in the watermark,
hands them on, and when the source fails it reports the loss once (log, alarm, event record),
retries with a growing pause on the stop event, and reports the recovery with the gap's length
(:class:`agent.contain.Reconnect`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent import wallclock
from agent.capture.frames import Frame, Source
from agent.capture.overlay import Overlay
from agent.contain import Reconnect, Why
from agent.errors import SourceError
from agent.model import Alarm, Severity

log = logging.getLogger(__name__)

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


def source_kind(source: str) -> str:
    """``device`` (V4L2 path or index), ``url``, or ``file``."""
    if source.isdigit() or source.startswith("/dev/video") or source.startswith("/dev/v4l/"):
        return "device"
    if source.startswith(STREAM_PREFIXES):
        return "url"
    return "file"


class CameraSource:
    """An OpenCV ``VideoCapture`` behind the :class:`FrameSource` interface."""

    def __init__(
        self,
        source: str,
        width: int,
        height: int,
        fps: float,
        *,
        opener: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.source = source
        self.kind = source_kind(source)
        self.width, self.height = width, height
        self._fps = float(fps)
        self._opener = opener or _open_cv
        self._cap: Any = None
        self._index = 0
        self._file_t0_mono = 0
        self._file_t0_utc = 0.0

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.source}"

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def fps(self) -> float:
        return self._fps

    def open(self) -> None:
        import cv2

        self.close()
        if self.kind == "file" and not Path(self.source).is_file():
            raise SourceError(f"video file {self.source}: not found")
        cap = self._opener(self.source, self.kind)
        if cap is None or not cap.isOpened():
            raise SourceError(f"camera {self.source}: cannot open")
        if self.kind == "device":
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self._fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif self.kind == "file":
            file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
            if file_fps > 0:
                self._fps = file_fps
            self._file_t0_mono = time.monotonic_ns()
            self._file_t0_utc = wallclock.now()
        self._cap = cap
        got_w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        got_h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        log.info(
            "video: opened %s (%dx%d, want %dx%d@%g)",
            self.name,
            got_w,
            got_h,
            self.width,
            self.height,
            self._fps,
        )

    def read(self) -> Frame | None:
        import cv2

        cap = self._cap
        if cap is None:
            raise SourceError(f"camera {self.source}: not open")
        ok, image = cap.read()
        if not ok or image is None:
            if self.kind == "file":
                return None
            raise SourceError(f"camera {self.source}: no frame (unplugged or stream lost)")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.shape[0] != self.height or image.shape[1] != self.width:
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        i = self._index
        self._index += 1
        if self.kind == "file":
            # A file is not real time: frames sit on its own timeline, from its frame rate.
            mono = self._file_t0_mono + round(i * 1e9 / self._fps)
            utc = self._file_t0_utc + i / self._fps
        else:
            mono, utc = time.monotonic_ns(), wallclock.now()
        return Frame(image, i, mono, utc)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            try:
                cap.release()
            except Exception as exc:  # a vanished device may fail even here
                log.debug("video: release of %s failed: %s", self.source, exc)


def _open_cv(source: str, kind: str) -> Any:
    import cv2

    if kind == "device":
        target: int | str = int(source) if source.isdigit() else source
        return cv2.VideoCapture(target, cv2.CAP_V4L2)
    return cv2.VideoCapture(source)


T = TypeVar("T")


class CaptureLoop(Generic[T]):
    """The capture thread's loop. ``run`` returns on the stop event or at a source's end.

    ``T`` is :class:`~agent.capture.frames.Frame` (raw sources: the overlay is burned into each
    frame here) or :class:`~agent.capture.frames.AccessUnit` (encoded sources: pictures are
    already encoded; picamera2 burns the watermark in before its encoder).
    """

    def __init__(
        self,
        source: Source[T],
        deliver: Callable[[T], None],
        stop: threading.Event,
        *,
        overlay: Overlay | None = None,
        reopen_s: float = 1.0,
        reopen_max_s: float = 10.0,
        on_event: Callable[[str, dict[str, Any]], None] = lambda k, d: None,
        alarm: Callable[[Alarm], None] = lambda a: None,
    ) -> None:
        self.source = source
        self._deliver = deliver
        self._stop = stop
        self._overlay = overlay
        self._on_event = on_event
        self._alarm = alarm
        self.retry = Reconnect(
            f"video: camera {source.name}",
            stop,
            log,
            min_s=reopen_s,
            max_s=reopen_max_s,
            on_lost=self._lost,
            on_retry=lambda why: log.debug(
                "video: %s still unavailable (attempt %d): %s",
                source.name,
                self.retry.failures,
                why,
            ),
            on_restored=self._restored,
        )

    @property
    def losses(self) -> int:
        return self.retry.losses

    @property
    def attempts(self) -> int:
        """Failed attempts in the current outage."""
        return self.retry.failures

    def run(self) -> None:
        """A source counts as restored once it delivers again (not merely opens), and the pause
        keeps doubling while it fails before delivering anything, so a source that opens but
        always fails at once (garbage from the first byte) is reported once, not every retry.
        Any exception from a source is a loss: the thread outlives whatever a camera sends."""
        src = self.source
        opened = delivered = False
        try:
            while not self._stop.is_set():
                try:
                    if not opened:
                        src.open()
                        opened, delivered = True, False
                    frame = src.read()
                except Exception as exc:
                    src.close()
                    opened = False
                    self.retry.failed(_source_error(src, exc))
                    self.retry.wait()
                    continue
                if frame is None:
                    log.info("video: end of %s", src.name)
                    return
                if not delivered:
                    delivered = True
                    self.retry.restored()
                if self._overlay is not None and isinstance(frame, Frame):
                    self._overlay.apply(frame.image, frame.utc)
                self._deliver(frame)
        finally:
            src.close()

    def _lost(self, exc: Why) -> None:
        """The loss, once (log, alarm, event); later failures until it is back: debug."""
        log.error("video: camera %s lost: %s; reopening", self.source.name, exc)
        details: dict[str, Any] = {"source": self.source.name, "error": str(exc)}
        self._alarm(
            Alarm(
                "camera_lost",
                f"camera {self.source.name} lost: {exc}",
                Severity.CRITICAL,
                wallclock.now(),
                details,
            )
        )
        self._on_event("camera_lost", details)

    def _restored(self, gap: float, attempts: int) -> None:
        log.warning(
            "video: camera %s back after %.1f s (%d attempts)", self.source.name, gap, attempts
        )
        self._on_event(
            "camera_restored",
            {"source": self.source.name, "lost_s": round(gap, 3), "attempts": attempts},
        )


def _source_error(src: Source[Any], exc: Exception) -> SourceError:
    if isinstance(exc, SourceError):
        return exc
    log.error("video: %s failed unexpectedly", src.name, exc_info=exc)
    return SourceError(f"{src.name}: {type(exc).__name__}: {exc}")
