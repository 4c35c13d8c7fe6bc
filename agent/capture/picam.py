"""The Pi camera through picamera2: watermark on the mapped buffer, the Pi's own encoder.

Built against picamera2's documented API (raspberrypi/picamera2: ``Picamera2``,
``create_video_configuration``, ``pre_callback`` + ``MappedArray``, ``start_recording(encoder,
output)``, ``encoders.H264Encoder`` / ``LibavH264Encoder``, ``outputs.Output.outputframe``):

- The camera runs at the configured size and rate in ``YUV420`` (what both encoders take
  without conversion). In ``pre_callback``, which picamera2 calls for every completed request
  before it reaches the encoder, the watermark is copied into the mapped buffer: the box is
  rendered once a second (:class:`agent.capture.overlay.Overlay`), converted to I420 once, and
  each frame gets three small plane copies. No other per-frame Python work touches pixels.
- ``encoder``: ``h264_v4l2m2m`` is picamera2's ``H264Encoder`` (the VideoCore hardware
  encoder, Pi 4 / Zero 2 W), ``libx264`` its ``LibavH264Encoder`` (Pi 5, which has none);
  ``auto`` takes the hardware one where its device (``/dev/video11``) exists. Both are told to
  repeat SPS/PPS before every IDR and to make an IDR every ``keyframe_s``.
- The encoded pictures reach an ``Output`` subclass (picamera2's encoder thread), which only
  queues them (bounded; when full, pictures are dropped up to the next IDR and counted);
  :meth:`Picamera2Source.read` (the capture thread) checks them and stamps them on the
  agent's clocks from the encoder's timestamps. No picture for ``stall_s`` is a loss.
- ``picamera2`` is imported only when this source is opened (``python3-picamera2`` from the
  Raspberry Pi archive, in a venv made with ``--system-site-packages``: docs/deploy.md).

The tests here drive this class through a simulated twin of the picamera2 module (the same
calls, frames from the synthetic source, libx264 in place of the camera's encoder); a rig runs
it against the real module (tests/hardware).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import wallclock
from agent.capture.encoder import HARDWARE_DEVICE
from agent.capture.frames import AccessUnit, LiveEncoded
from agent.capture.h264 import StreamChecker, split_nals
from agent.capture.overlay import Overlay
from agent.errors import SourceError

if TYPE_CHECKING:
    from agent.capture.frames import Image

log = logging.getLogger(__name__)

POLL_S = 0.25


@dataclass(frozen=True)
class Picamera2Api:
    """The parts of the picamera2 module this source uses (the real one, or a twin)."""

    Picamera2: Any
    MappedArray: Any
    H264Encoder: Any
    LibavH264Encoder: Any
    Output: Any


def load_picamera2() -> Picamera2Api:
    """Import picamera2 (lazily: only where this source is configured)."""
    try:
        import picamera2  # type: ignore[import-not-found]
        from picamera2.encoders import (  # type: ignore[import-not-found]
            H264Encoder,
            LibavH264Encoder,
        )
        from picamera2.outputs import Output  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or libcamera's bindings failing to load
        raise SourceError(
            f"picamera2 is not available ({exc}): install python3-picamera2 from the Raspberry "
            "Pi archive and reinstall with deploy/install.sh --camera picamera2 (docs/deploy.md)"
        ) from None
    return Picamera2Api(
        picamera2.Picamera2, picamera2.MappedArray, H264Encoder, LibavH264Encoder, Output
    )


class I420Watermark:
    """The overlay's box, converted to I420 once per rendering, copied into I420 buffers."""

    def __init__(self, overlay: Overlay) -> None:
        self.overlay = overlay
        self._box: Image | None = None  # the rendering the planes were made from (held)
        self._planes: tuple[Image, Image, Image] | None = None

    def planes(self, utc: float, height: int) -> tuple[Image, Image, Image]:
        import cv2
        import numpy as np

        box = self.overlay.box(utc, height)  # the same object while the text is unchanged
        if box is not self._box or self._planes is None:
            h, w = box.shape[0] + box.shape[0] % 2, box.shape[1] + box.shape[1] % 2
            even = np.zeros((h, w, 3), np.uint8)
            even[: box.shape[0], : box.shape[1]] = box
            yuv: Any = cv2.cvtColor(even, cv2.COLOR_BGR2YUV_I420)
            y = yuv[:h]
            u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
            v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
            self._box, self._planes = box, (y.copy(), u.copy(), v.copy())
        return self._planes

    def apply(self, buf: Image, width: int, height: int, utc: float) -> tuple[int, int, int, int]:
        """Burn the watermark into an I420 buffer shaped ``(height * 3 // 2, stride)``
        (picamera2's YUV420 array); returns the box (y, x, height, width)."""
        y_pl, u_pl, v_pl = self.planes(utc, height)
        stride = buf.shape[1]
        flat = buf.reshape(-1)
        ph, pw = y_pl.shape
        oy, ox = self.overlay.origin((height, width), (ph, pw))
        oy, ox = oy & ~1, ox & ~1
        h = min(ph, height - oy) & ~1
        w = min(pw, width - ox) & ~1
        if h <= 0 or w <= 0:
            return oy, ox, 0, 0
        luma = flat[: height * stride].reshape(height, stride)
        luma[oy : oy + h, ox : ox + w] = y_pl[:h, :w]
        cs, ch = stride // 2, height // 2
        base = height * stride
        for i, plane in enumerate((u_pl, v_pl)):
            chroma = flat[base + i * cs * ch : base + (i + 1) * cs * ch].reshape(ch, cs)
            chroma[oy // 2 : (oy + h) // 2, ox // 2 : (ox + w) // 2] = plane[: h // 2, : w // 2]
        return oy, ox, h, w


class Picamera2Source(LiveEncoded):
    """The Pi camera through picamera2. See the module docstring."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        bitrate_kbps: int = 4000,
        keyframe_s: float = 1.0,
        encoder: str = "auto",
        preset: str = "ultrafast",
        camera: int = 0,
        overlay: Overlay | None = None,
        stall_s: float = 5.0,
        queue_units: int = 60,
        stop: threading.Event | None = None,
        load: Callable[[], Picamera2Api] = load_picamera2,
        hardware_device: Path = HARDWARE_DEVICE,
    ) -> None:
        self.width, self.height = width, height
        self._fps = float(fps)
        self.bitrate_kbps = bitrate_kbps
        self.keyframe_s = keyframe_s
        self.want_encoder = encoder
        self.preset = preset
        self.camera = camera
        self.stall_s = stall_s
        self._stop = stop or threading.Event()
        self._load = load
        self._hardware_device = hardware_device
        self._watermark = I420Watermark(overlay) if overlay is not None else None
        self._api: Picamera2Api | None = None
        self._cam: Any = None
        self._encoder_name = ""
        self._units: queue.Queue[tuple[bytes, bool, int, int, float, bool]] = queue.Queue(
            maxsize=queue_units
        )
        self._checker = StreamChecker()
        self._anchor: tuple[int, int, float] | None = None  # (encoder us, mono ns, utc)
        self._index = 0
        self._drop_to_idr = False
        self._resync = True
        self._last_unit = 0.0
        self._callback_error: str | None = None
        self.dropped = 0  # pictures dropped in the encoder thread (queue full)
        self.watermark_errors = 0

    @property
    def name(self) -> str:
        return f"picamera2:{self.camera}"

    @property
    def encoder(self) -> str:
        return self._encoder_name or f"picamera2 ({self.want_encoder})"

    @property
    def watermarked(self) -> bool:
        return self._watermark is not None

    def use_hardware(self) -> bool:
        if self.want_encoder == "auto":
            return self._hardware_device.exists()
        return self.want_encoder == "h264_v4l2m2m"

    def open(self) -> None:
        self.close()
        api = self._api = self._api or self._load()
        try:
            cam = api.Picamera2(self.camera)
        except Exception as exc:  # IndexError (no camera), RuntimeError (busy)...
            raise SourceError(f"{self.name}: cannot open the camera: {exc}") from None
        self._cam = cam
        try:
            frame_us = round(1e6 / self._fps)
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "YUV420"},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            cam.configure(config)
            if self._watermark is not None:
                cam.pre_callback = self._pre_callback
            enc = self._make_encoder(api)
            output = type("EdgeAgentOutput", (api.Output,), {"outputframe": self._output_method()})
            self._drain()
            self._checker = StreamChecker()
            self._anchor = None
            self._resync = True
            self._drop_to_idr = False
            self._callback_error = None
            self._last_unit = time.monotonic()
            cam.start_recording(enc, output())
        except SourceError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise SourceError(f"{self.name}: cannot start recording: {exc}") from None
        log.info(
            "video: %s recording %dx%d@%g with %s",
            self.name,
            self.width,
            self.height,
            self._fps,
            self._encoder_name,
        )

    def _make_encoder(self, api: Picamera2Api) -> Any:
        iperiod = max(1, round(self._fps * self.keyframe_s))
        bitrate = self.bitrate_kbps * 1000
        if self.use_hardware():
            self._encoder_name = "picamera2 H264Encoder (VideoCore hardware)"
            return api.H264Encoder(bitrate=bitrate, repeat=True, iperiod=iperiod)
        enc = api.LibavH264Encoder(
            bitrate=bitrate, repeat=True, iperiod=iperiod, framerate=round(self._fps)
        )
        enc.preset = self.preset
        self._encoder_name = f"picamera2 LibavH264Encoder (libx264 {self.preset})"
        return enc

    def _output_method(self) -> Callable[..., None]:
        put = self._on_picture

        def outputframe(
            self: Any,
            frame: Any,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            if not audio:
                put(bytes(frame), bool(keyframe), timestamp)

        return outputframe

    # ------------------------------------------------------------- picamera2's threads

    def _pre_callback(self, request: Any) -> None:
        """Camera thread: burn the watermark into the request's main buffer."""
        api, mark = self._api, self._watermark
        if api is None or mark is None:
            return
        try:
            with api.MappedArray(request, "main") as m:
                mark.apply(m.array, self.width, self.height, wallclock.now())
        except Exception as exc:  # never break picamera2's thread; counted, said once
            self.watermark_errors += 1
            if self.watermark_errors == 1:
                log.error("video: %s: watermark failed: %s", self.name, exc)

    def _on_picture(self, data: bytes, key: bool, timestamp_us: int | None) -> None:
        """Encoder thread: queue the picture; never block, never raise."""
        try:
            now = time.monotonic_ns()
            if self._drop_to_idr and not key:
                self.dropped += 1
                return
            resync = self._drop_to_idr
            self._drop_to_idr = False
            self._units.put_nowait((data, key, timestamp_us or 0, now, wallclock.now(), resync))
        except queue.Full:
            self.dropped += 1
            self._drop_to_idr = True
        except Exception as exc:  # pragma: no cover - defensive: keep picamera2 alive
            self._callback_error = str(exc)

    # ------------------------------------------------------------- the capture thread

    def read(self) -> AccessUnit | None:
        if self._cam is None:
            raise SourceError(f"{self.name}: not open")
        while True:
            if self._callback_error:
                raise SourceError(f"{self.name}: output failed: {self._callback_error}")
            try:
                data, _key, ts_us, arrived, utc_now, dropped = self._units.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return None
                if time.monotonic() - self._last_unit > self.stall_s:
                    raise SourceError(f"{self.name}: no picture for {self.stall_s:g} s") from None
                continue
            self._last_unit = time.monotonic()
            unit = self._checker.check(split_nals(data))
            if self._anchor is None:
                self._anchor = (ts_us, arrived, utc_now)
            a_us, a_mono, a_utc = self._anchor
            mono = a_mono + (ts_us - a_us) * 1000
            utc = a_utc + (ts_us - a_us) / 1e6
            au = AccessUnit(data, unit.key, self._index, mono, utc, self._resync or dropped)
            self._index += 1
            self._resync = False
            return au

    def _drain(self) -> None:
        while True:
            try:
                self._units.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in ("stop_recording", "close"):
            try:
                getattr(cam, step)()
            except Exception as exc:  # a camera that vanished may fail here too
                log.debug("video: %s: %s failed: %s", self.name, step, exc)
