"""Stills: a JPEG of the newest watermarked frame, on trigger, command or interval.

Each still is sealed as one segment of the ``still`` stream; its manifest meta carries the
capture time, the device id and the position (``None`` without a fix), plus what asked for it.
JPEG encoding runs in the stills thread, never in the capture thread.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.capture.frames import Frame
from agent.errors import AgentError, EvidenceRefused, SourceError
from agent.loops.guard import Guard
from agent.model import Fix, format_utc

log = logging.getLogger(__name__)

STILL_STREAM = "still"


class StillSpool(Protocol):
    def put_bytes(
        self,
        stream: str,
        data: bytes,
        *,
        content_type: str = ...,
        meta: dict[str, Any] | None = ...,
        start_utc: float | None = ...,
        end_utc: float | None = ...,
    ) -> Any: ...


class Stills:
    """Takes stills on request (any thread) and every ``interval_s`` (0: never)."""

    def __init__(
        self,
        spool: StillSpool,
        latest: Callable[[], Frame | None],
        stop: threading.Event,
        *,
        device_id: str = "",
        fix: Callable[[], Fix | None] = lambda: None,
        quality: int = 90,
        interval_s: float = 0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self._spool = spool
        self._latest = latest
        self._stop = stop
        self.device_id = device_id
        self._fix = fix
        self.quality = quality
        self.interval_s = interval_s
        self._meta = meta or {}
        self._requests: queue.Queue[str] = queue.Queue(maxsize=16)
        self.taken = 0
        self.failed = 0
        self.thread = threading.Thread(target=self.run, name="video-stills", daemon=True)

    def request(self, trigger: str = "api") -> None:
        """Ask for a still as soon as possible (returns at once)."""
        try:
            self._requests.put_nowait(trigger)
        except queue.Full:
            self.failed += 1
            log.error("stills: too many requests waiting; %s request dropped", trigger)

    def snap(self, trigger: str = "api") -> Any:
        """Encode and seal the newest frame now; returns the spool's result or None."""
        import cv2

        frame = self._latest()
        if frame is None:
            self.failed += 1
            log.error("stills: no frame yet for a %s still", trigger)
            return None
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            self.failed += 1
            raise SourceError(f"stills: JPEG encoding of frame {frame.index} failed")
        fix = self._fix()
        position = None
        if fix is not None and fix.has_position:
            position = {"lat": fix.lat, "lon": fix.lon, "time": format_utc(fix.time)}
        meta = {
            **self._meta,
            "time": format_utc(frame.utc),
            "device": self.device_id,
            "position": position,
            "trigger": trigger,
            "frame": frame.index,
            "width": int(frame.image.shape[1]),
            "height": int(frame.image.shape[0]),
        }
        try:
            result = self._spool.put_bytes(
                STILL_STREAM,
                jpeg.tobytes(),
                content_type="image/jpeg",
                meta=meta,
                start_utc=frame.utc,
                end_utc=frame.utc,
            )
        except EvidenceRefused as exc:
            self.failed += 1
            log.error("stills: %s still refused by the spool: %s", trigger, exc)
            return None
        self.taken += 1
        log.info("stills: %s still of frame %d sealed", trigger, frame.index)
        return result

    def run(self) -> None:
        # Each still under the one loop guard: one that fails unexpectedly (a bug, an OpenCV
        # error) is reported once and waited out; the next request is served.
        guard = Guard("video-stills", self._stop, log)
        next_due = time.monotonic() + self.interval_s if self.interval_s > 0 else None
        while not self._stop.is_set():
            wait = 0.5 if next_due is None else max(0.0, min(0.5, next_due - time.monotonic()))
            try:
                trigger: str | None = self._requests.get(timeout=wait)
            except queue.Empty:
                trigger = None
            if trigger is None and next_due is not None and time.monotonic() >= next_due:
                trigger = "interval"
                next_due += self.interval_s
                next_due = max(next_due, time.monotonic())
            if trigger is not None:
                guard.attempt(functools.partial(self._snap, trigger))

    def _snap(self, trigger: str) -> None:
        try:
            self.snap(trigger)
        except (AgentError, OSError) as exc:
            log.error("stills: %s still failed: %s", trigger, exc)
