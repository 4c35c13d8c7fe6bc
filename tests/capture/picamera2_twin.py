"""A simulated twin of the picamera2 module, for driving the real Picamera2Source here.

It offers what :class:`agent.capture.picam.Picamera2Source` calls, with picamera2's documented
behaviour (raspberrypi/picamera2: ``picamera2.py``, ``request.py``, ``encoders/``,
``outputs/output.py``):

- ``Picamera2(camera_num)``; ``create_video_configuration(main=..., controls=...)`` returns a
  dict; ``configure``; ``pre_callback`` is called with each completed request *before* the
  encoder sees it; ``start_recording(encoder, output)`` starts the camera and the encoder,
  ``stop_recording`` / ``close`` stop them.
- ``MappedArray(request, "main")`` maps the request's YUV420 buffer as picamera2 does: a
  writable ``(height * 3 // 2, stride)`` uint8 array shared with the buffer.
- ``H264Encoder(bitrate, repeat, iperiod)`` and ``LibavH264Encoder(...)``: here both are
  libx264 through PyAV with no global header (parameter sets in-band before every IDR, as
  ``repeat=True`` gives), an IDR every ``iperiod`` frames, no B-frames; each encoded picture
  goes to ``output.outputframe(bytes, keyframe, timestamp_us)`` from the encoder's own thread,
  timestamps relative to the first frame, as picamera2's encoders do.

Frames are the synthetic test card (frame counter as a bar code) at the configured rate, in
real time. ``fail_after`` makes the first camera opened stop delivering after that many frames
(a sensor or cable fault; the reopened one works); ``missing`` makes ``Picamera2()`` raise as
with no camera attached.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import numpy as np

from agent.capture.picam import Picamera2Api
from agent.capture.sim import SyntheticSource


class Output:
    """picamera2.outputs.Output: the base class outputs derive from."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        pass

    def _add_stream(self, *args: Any, **kwargs: Any) -> None:
        pass


class H264Encoder:
    label = "hardware"

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.bitrate, self.repeat, self.iperiod, self.framerate = (
            bitrate,
            repeat,
            iperiod,
            framerate,
        )
        self.preset: str | None = None
        self._ctx: Any = None
        self._first_us: int | None = None

    def _start(self, width: int, height: int, fps: float) -> None:
        import av

        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, 1_000_000)
        ctx.framerate = Fraction(round(fps), 1)
        ctx.bit_rate = self.bitrate or 2_000_000
        gop = str(self.iperiod or 30)
        ctx.options = {
            "preset": "ultrafast", "tune": "zerolatency", "bf": "0", "g": gop,
            "keyint_min": gop, "sc_threshold": "0",
            "x264-params": "repeat-headers=1" if self.repeat else "",
        }  # fmt: skip
        ctx.open()
        self._ctx = ctx

    def _encode(self, i420: np.ndarray, width: int, sensor_us: int, output: Any) -> None:
        import av

        frame = av.VideoFrame.from_numpy_buffer(i420, format="yuv420p", width=width)
        if self._first_us is None:
            self._first_us = sensor_us
        frame.pts = sensor_us - self._first_us
        for packet in self._ctx.encode(frame):
            output.outputframe(bytes(packet), packet.is_keyframe, int(packet.pts))


class LibavH264Encoder(H264Encoder):
    label = "libav"


class Request:
    def __init__(self, buffer: np.ndarray, sensor_ns: int) -> None:
        self.buffer = buffer
        self.metadata = {"SensorTimestamp": sensor_ns}

    def get_metadata(self) -> dict[str, Any]:
        return dict(self.metadata)


class MappedArray:
    def __init__(self, request: Request, stream: str, reshape: bool = True, write: bool = True):
        assert stream == "main"
        self._request = request
        self.array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        self.array = self._request.buffer
        return self

    def __exit__(self, *exc: object) -> None:
        self.array = None


class Twin:
    """One simulated camera module: what the tests set, what the source did."""

    def __init__(self, *, fail_after: int | None = None, missing: bool = False) -> None:
        self.fail_after = fail_after
        self.missing = missing
        self.cameras: list[Picamera2] = []
        self.encoders: list[H264Encoder] = []

    def api(self) -> Picamera2Api:
        twin = self

        class _Picamera2(Picamera2):
            def __init__(self, camera_num: int = 0) -> None:
                if twin.missing:
                    raise IndexError("list index out of range")  # picamera2 with no camera
                super().__init__(twin, camera_num)

        return Picamera2Api(_Picamera2, MappedArray, H264Encoder, LibavH264Encoder, Output)


class Picamera2:
    def __init__(self, twin: Twin, camera_num: int = 0) -> None:
        self.twin = twin
        self.camera_num = camera_num
        self.pre_callback: Any = None
        self.config: dict[str, Any] = {}
        self.frames = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        twin.cameras.append(self)

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        main["stride"] = main["size"][0]
        return {"main": main, "controls": dict(controls or {}), **kw}

    def configure(self, config: dict[str, Any]) -> None:
        assert config["main"]["format"] == "YUV420"
        self.config = config

    def start_recording(self, encoder: H264Encoder, output: Output) -> None:
        w, h = self.config["main"]["size"]
        lo, hi = self.config["controls"]["FrameDurationLimits"]
        assert lo == hi
        fps = 1e6 / lo
        encoder._start(w, h, fps)
        self.twin.encoders.append(encoder)
        output.start()
        self._thread = threading.Thread(
            target=self._run, args=(encoder, output, w, h, fps), daemon=True
        )
        self._thread.start()

    def _run(self, encoder: H264Encoder, output: Output, w: int, h: int, fps: float) -> None:
        import cv2

        src = SyntheticSource(w, h, fps, text=False)
        period = 1.0 / fps
        due = time.monotonic()
        while not self._stop.is_set():
            failing = self.twin.fail_after is not None and self is self.twin.cameras[0]
            if failing and self.frames >= (self.twin.fail_after or 0):
                self._stop.wait(0.05)  # the sensor stopped delivering
                continue
            frame = src.read()
            assert frame is not None
            i420: Any = cv2.cvtColor(frame.image, cv2.COLOR_BGR2YUV_I420)
            request = Request(np.ascontiguousarray(i420), time.monotonic_ns())
            if self.pre_callback is not None:
                self.pre_callback(request)
            encoder._encode(request.buffer, w, request.metadata["SensorTimestamp"] // 1000, output)
            self.frames += 1
            due += period
            self._stop.wait(max(0.0, due - time.monotonic()))

    def stop_recording(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def close(self) -> None:
        self.stop_recording()


def namespace() -> SimpleNamespace:
    """For tests that want the classes by name."""
    return SimpleNamespace(H264Encoder=H264Encoder, LibavH264Encoder=LibavH264Encoder)
