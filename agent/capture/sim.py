"""The synthetic video source, for the demo, CI and benchmarks where no camera exists.

Each frame shows colour bars sliding sideways, the frame number and the time in large text,
and the frame number again as a bar code (:func:`agent.capture.frames.draw_counter`) that tests
read back from decoded video to prove that no frame was lost or repeated.

Paced, it is a live source that delivers ``fps`` frames per second of real time. Unpaced, it
delivers frames as fast as they are taken and stamps them on a nominal timeline (frame ``i``
at ``start + i / fps``), so tests are exact and free of timing.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from agent import wallclock
from agent.capture.frames import Frame, draw_counter
from agent.model import format_utc

if TYPE_CHECKING:
    from agent.capture.frames import Image

# Eight colour bars (BGR), as on a test card.
BARS = (
    (235, 235, 235),
    (16, 235, 235),
    (235, 235, 16),
    (16, 235, 16),
    (235, 16, 235),
    (16, 16, 235),
    (235, 16, 16),
    (16, 16, 16),
)


class SyntheticSource:
    """A moving test pattern with a running frame counter. See the module docstring."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        paced: bool = False,
        stop: threading.Event | None = None,
        start_utc: float | None = None,
        limit: int | None = None,
        text: bool = True,
    ) -> None:
        self.width = width
        self.height = height
        self._fps = float(fps)
        self.paced = paced
        self._stop = stop or threading.Event()
        self._start_utc = wallclock.now() if start_utc is None else start_utc
        self._start_mono = time.monotonic_ns()
        self.limit = limit
        self.text = text
        self._index = 0
        self._base: Image | None = None
        self._period = 0
        self._next_due = 0.0

    @property
    def name(self) -> str:
        return f"synthetic:{self.width}x{self.height}@{self._fps:g}"

    @property
    def live(self) -> bool:
        return self.paced

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def index(self) -> int:
        """The number the next frame will carry."""
        return self._index

    def open(self) -> None:
        if self._base is None:
            self._base, self._period = _pattern(self.width, self.height)
        self._next_due = time.monotonic()

    def close(self) -> None:
        pass

    def utc_of(self, index: int) -> float:
        """The nominal capture time of frame ``index`` (unpaced sources)."""
        return self._start_utc + index / self._fps

    def mono_ns_of(self, index: int) -> int:
        return self._start_mono + round(index * 1e9 / self._fps)

    def read(self) -> Frame | None:
        if self._base is None:
            self.open()
        assert self._base is not None
        i = self._index
        if self.limit is not None and i >= self.limit:
            return None
        if self.paced:
            delay = self._next_due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return None
            self._next_due = max(self._next_due + 1.0 / self._fps, time.monotonic() - 1.0)
            mono, utc = time.monotonic_ns(), wallclock.now()
        else:
            mono, utc = self.mono_ns_of(i), self.utc_of(i)
        self._index = i + 1
        return Frame(self.render(i, utc), i, mono, utc)

    def render(self, index: int, utc: float) -> Image:
        """Frame ``index`` as captured at ``utc`` (a new array each call)."""
        import cv2

        if self._base is None:
            self._base, self._period = _pattern(self.width, self.height)
        off = (index * max(2, self.width // 160)) % self._period
        img = self._base[:, off : off + self.width].copy()
        draw_counter(img, index)
        if self.text:
            scale = self.height / 240
            thick = max(1, round(scale * 2))
            y = self.height // 2
            at, font = (self.width // 8, y), cv2.FONT_HERSHEY_SIMPLEX
            # the frame number: black outline first, then the white figure over it
            for colour, width in (((0, 0, 0), thick + 2), ((255, 255, 255), thick)):
                cv2.putText(img, f"#{index}", at, font, scale * 1.2, colour, width, cv2.LINE_8)
            cv2.putText(
                img,
                format_utc(utc),
                (self.width // 8, y + round(30 * scale)),
                font,
                scale * 0.5,
                (255, 255, 255),
                max(1, thick // 2),
                cv2.LINE_8,
            )
        return img


def _pattern(width: int, height: int) -> tuple[Image, int]:
    """Colour bars with a diagonal ramp, twice as wide as needed so any slice wraps around."""
    import numpy as np

    period = width
    bar_w = max(1, period // len(BARS))
    row = np.zeros((period, 3), np.uint8)
    for i, colour in enumerate(BARS):
        row[i * bar_w : (i + 1) * bar_w] = colour
    row[len(BARS) * bar_w :] = BARS[-1]
    ramp = (np.arange(height, dtype=np.int16)[:, None] * 96 // max(1, height)).astype(np.int16)
    one = np.clip(row[None, :, :].astype(np.int16) - ramp[:, :, None], 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.concatenate([one, one], axis=1)), period


def counter_lavfi(width: int, height: int, fps: float, *, bits: int = 20) -> str:
    """An ffmpeg ``lavfi`` graph: a moving test card with the frame number burned in as the
    :func:`agent.capture.frames.draw_counter` bar code (the low ``bits`` bits), for encoded
    sources made by ffmpeg itself (``rpicam-vid`` and IP-camera twins in tests, benchmarks).
    """
    from agent.capture.frames import COUNTER_BITS, counter_cell

    cell = counter_cell(width)
    parts = [
        f"testsrc2=size={width}x{height}:rate={fps:g}",
        "format=yuv420p",
        f"drawbox=x=0:y=0:w={COUNTER_BITS * cell}:h={cell}:color=black:t=fill",
    ]
    for k in range(bits):
        x = (COUNTER_BITS - 1 - k) * cell
        parts.append(
            f"drawbox=x={x}:y=0:w={cell}:h={cell}:color=white:t=fill"
            f":enable='eq(mod(floor(n/{1 << k}),2),1)'"
        )
    return ",".join(parts)
