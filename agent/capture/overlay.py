"""The watermark burned into every frame, as GA/T 947 expects of enforcement recorders.

Lines (each optional, in the configured order): UTC date and time to the second, the device id,
the officer number, the vehicle id, the unit, and the latest GPS position. The text is white on
a black box in a configurable corner. Because the text changes once a second, the rendered box
is cached and each frame only receives a copy of it: a few hundred microseconds at 1080p.

``fix`` is a callable returning the latest :class:`~agent.model.Fix` or ``None``; it is called
once per frame from the capture thread, so it must only read a shared value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.model import Fix

if TYPE_CHECKING:
    from agent.capture.frames import Image

STALE_FIX_S = 30.0


class Overlay:
    """Renders and applies the watermark. See the module docstring."""

    def __init__(
        self,
        *,
        fields: Sequence[str] = ("time", "device", "officer", "vehicle", "position"),
        position: str = "bottom-left",
        scale: float = 1.0,
        device_id: str = "",
        officer: str = "",
        vehicle: str = "",
        unit: str = "",
        fix: Callable[[], Fix | None] = lambda: None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.fields = tuple(fields)
        self.position = position
        self.scale = scale
        self.device_id = device_id
        self.officer = officer
        self.vehicle = vehicle
        self.unit = unit
        self._fix = fix
        self._now = now
        self._cache_key: tuple[tuple[str, ...], int] | None = None
        self._cache_patch: Image | None = None

    def lines(self, utc: float, fix: Fix | None) -> tuple[str, ...]:
        out: list[str] = []
        for name in self.fields:
            if name == "time":
                when = datetime.fromtimestamp(int(utc), tz=UTC)
                out.append(when.strftime("%Y-%m-%d %H:%M:%S UTC"))
            elif name == "device" and self.device_id:
                out.append(f"DEV {self.device_id}")
            elif name == "officer" and self.officer:
                out.append(f"OFC {self.officer}")
            elif name == "vehicle" and self.vehicle:
                out.append(f"VEH {self.vehicle}")
            elif name == "unit" and self.unit:
                out.append(f"UNIT {self.unit}")
            elif name == "position":
                out.append(_position(fix, utc))
        return tuple(out)

    def font_scale(self, height: int) -> float:
        return max(0.35, height / 720 * 0.6) * self.scale

    def patch(self, lines: tuple[str, ...], height: int) -> Image:
        """The watermark box for ``lines`` on frames ``height`` pixels high (cached)."""
        key = (lines, height)
        if key == self._cache_key and self._cache_patch is not None:
            return self._cache_patch
        import cv2
        import numpy as np

        font = cv2.FONT_HERSHEY_SIMPLEX
        fs = self.font_scale(height)
        thick = max(1, round(fs * 1.6))
        sizes = [cv2.getTextSize(t, font, fs, thick) for t in lines]
        line_h = max([h + b for (_w, h), b in sizes] + [1]) + max(2, round(6 * fs))
        pad = max(2, round(6 * fs))
        w = max([tw for (tw, _h), _b in sizes] + [1]) + 2 * pad
        h = line_h * len(lines) + 2 * pad
        box = np.zeros((h, w, 3), np.uint8)
        for i, text in enumerate(lines):
            (_tw, th), _b = sizes[i]
            y = pad + i * line_h + th + (line_h - th) // 3
            cv2.putText(box, text, (pad, y), font, fs, (255, 255, 255), thick, cv2.LINE_AA)
        self._cache_key, self._cache_patch = key, box
        return box

    def box(self, utc: float, height: int) -> Image:
        """The watermark box for frames ``height`` high at ``utc`` (cached while unchanged)."""
        return self.patch(self.lines(utc, self._fix()), height)

    def origin(self, frame_shape: tuple[int, ...], patch_shape: tuple[int, ...]) -> tuple[int, int]:
        """Top-left (y, x) of the watermark box in a frame."""
        fh, fw = frame_shape[0], frame_shape[1]
        ph, pw = patch_shape[0], patch_shape[1]
        margin = max(2, fh // 60)
        y = margin if self.position.startswith("top") else fh - ph - margin
        x = margin if self.position.endswith("left") else fw - pw - margin
        return max(0, y), max(0, x)

    def apply(self, image: Image, utc: float | None = None) -> tuple[int, int, int, int]:
        """Burn the watermark into ``image`` in place; return its box (y, x, height, width)."""
        when = self._now() if utc is None else utc
        box = self.patch(self.lines(when, self._fix()), image.shape[0])
        y, x = self.origin(image.shape, box.shape)
        h = min(box.shape[0], image.shape[0] - y)
        w = min(box.shape[1], image.shape[1] - x)
        image[y : y + h, x : x + w] = box[:h, :w]
        return y, x, h, w


def _position(fix: Fix | None, utc: float) -> str:
    if fix is None or not fix.has_position or fix.lat is None or fix.lon is None:
        return "GPS no fix"
    ns = "N" if fix.lat >= 0 else "S"
    ew = "E" if fix.lon >= 0 else "W"
    text = f"{ns}{abs(fix.lat):.5f} {ew}{abs(fix.lon):.5f}"
    if utc - fix.time > STALE_FIX_S:
        text += f" ({int(utc - fix.time)}s old)"
    return text
