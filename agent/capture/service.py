"""The video side assembled: source, watermark, recorder, stills and the serial trigger.

``agent/runtime/app.py`` (the composition root) builds one :class:`VideoService` from the config
and passes it, as :class:`~agent.capture.triggers.Controls`, to the other trigger channels::

    video = VideoService.from_config(cfg, spool, stop, fix=gps.latest, alarm=alarms.raise_,
                                     clock=clock.state)
    commands.register_all(command_handlers(video))   # platform command channel
    video.start_threads()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.capture.boards import Board, SourceChoice, choose_source, detect
from agent.capture.camera import CameraSource
from agent.capture.encoder import H264Encoder
from agent.capture.frames import EncodedSource, FrameSource
from agent.capture.jobs import SpoolLike
from agent.capture.overlay import Overlay
from agent.capture.recorder import Recorder
from agent.capture.settings import VideoSettings
from agent.capture.stills import Stills, StillSpool
from agent.capture.triggers import SerialTrigger
from agent.errors import ConfigError
from agent.model import Alarm, ClockState, Fix

if TYPE_CHECKING:
    from agent.config.schema import AgentConfig

log = logging.getLogger(__name__)


class VideoSpool(SpoolLike, StillSpool, Protocol):
    """A spool that takes segments, event records and stills (agent.storage.spool.Spool)."""


def open_source(
    settings: VideoSettings,
    stop: threading.Event,
    *,
    overlay: Overlay | None = None,
    board: Board | None = None,
) -> FrameSource | EncodedSource:
    """The configured source (``auto`` settled for this board, see :func:`build_source`)."""
    return build_source(settings, stop, overlay=overlay, board=board)[0]


def build_source(
    settings: VideoSettings,
    stop: threading.Event,
    *,
    overlay: Overlay | None = None,
    board: Board | None = None,
) -> tuple[FrameSource | EncodedSource, SourceChoice]:
    """The source for ``settings.source`` and why it was chosen:

    ``synthetic`` (paced, live), ``picamera2`` (``overlay`` burned in before its encoder),
    ``rpicam`` (rpicam-vid's stream), ``encoded`` (``stream_url`` passed through), else a
    V4L2 camera, file or URL through OpenCV. ``auto``: :func:`agent.capture.boards.choose_source`.
    """
    if board is None:
        board = detect()[1]
    choice = choose_source(settings, board)
    s = settings
    kind = choice.source
    if kind == "synthetic":
        from agent.capture.sim import SyntheticSource

        return SyntheticSource(s.width, s.height, s.fps, paced=True, stop=stop), choice
    if kind == "picamera2":
        from agent.capture.picam import Picamera2Source

        cam = Picamera2Source(
            s.width,
            s.height,
            s.fps,
            bitrate_kbps=s.bitrate_kbps,
            keyframe_s=s.keyframe_s,
            encoder=s.encoder,
            preset=s.preset,
            camera=s.camera,
            overlay=overlay,
            stall_s=s.stall_s,
            stop=stop,
        )
        return cam, choice
    if kind == "rpicam":
        from agent.capture.rpicam import PipeSource, rpicam_command

        cmd = rpicam_command(s)
        label = "rpicam-vid" if not s.rpicam_command else Path(cmd[0]).name
        src = PipeSource(cmd, s.fps, name="rpicam", encoder=label, stall_s=s.stall_s, stop=stop)
        return src, choice
    if kind == "encoded":
        from agent.capture.netstream import NetStreamSource, check_stream_url

        problem = check_stream_url(s.stream_url)
        if problem:
            raise ConfigError(f"video.stream_url: {problem}")
        return NetStreamSource(s.stream_url, s.fps, stall_s=s.stall_s), choice
    return CameraSource(kind, s.width, s.height, s.fps), choice


ENCODED_SOURCES = ("picamera2", "rpicam", "encoded")


def encoded_source(settings: VideoSettings, board: Board | None = None) -> bool:
    """Whether the source the settings name (``auto`` settled) yields encoded pictures."""
    return choose_source(settings, board or detect()[1]).source in ENCODED_SOURCES


def make_overlay(
    settings: VideoSettings,
    *,
    device_id: str = "",
    officer: str = "",
    vehicle: str = "",
    unit: str = "",
    fix: Callable[[], Fix | None] = lambda: None,
) -> Overlay | None:
    """The watermark the settings ask for (None with ``watermark = false``)."""
    if not settings.watermark:
        return None
    return Overlay(
        fields=settings.watermark_fields,
        position=settings.watermark_position,
        scale=settings.watermark_scale,
        device_id=device_id,
        officer=officer,
        vehicle=vehicle,
        unit=unit,
        fix=fix,
    )


class VideoService:
    """Recorder + stills + serial trigger; implements the Controls interface."""

    def __init__(
        self,
        settings: VideoSettings,
        source: FrameSource | EncodedSource,
        spool: VideoSpool,
        stop: threading.Event,
        *,
        device_id: str = "",
        officer: str = "",
        vehicle: str = "",
        unit: str = "",
        fix: Callable[[], Fix | None] = lambda: None,
        alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], ClockState] = ClockState,
        encoder_factory: Callable[[VideoSettings], H264Encoder] | None = None,
        overlay: Overlay | None = None,
    ) -> None:
        self.settings = settings
        if overlay is None:
            overlay = make_overlay(
                settings, device_id=device_id, officer=officer, vehicle=vehicle, unit=unit, fix=fix
            )
        meta: dict[str, Any] = {
            k: v
            for k, v in (("device", device_id), ("officer", officer), ("vehicle", vehicle))
            if v
        }
        if isinstance(source, EncodedSource):
            meta["source"] = source.name
        self.recorder = Recorder(
            settings,
            source,
            spool,
            stop,
            overlay=overlay,
            alarm=alarm,
            clock=clock,
            meta=meta,
            encoder_factory=encoder_factory,
        )
        self.stills = Stills(
            spool,
            self.recorder.latest_frame,
            stop,
            device_id=device_id,
            fix=fix,
            quality=settings.stills_quality,
            interval_s=settings.stills_interval_s,
            meta={k: v for k, v in meta.items() if k != "device"},
        )
        self.trigger: SerialTrigger | None = None
        if settings.trigger_port:
            self.trigger = SerialTrigger(
                settings.trigger_port, self, stop, baudrate=settings.trigger_baud
            )

    @classmethod
    def from_config(
        cls,
        cfg: AgentConfig,
        spool: VideoSpool,
        stop: threading.Event,
        *,
        fix: Callable[[], Fix | None] = lambda: None,
        alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], ClockState] = ClockState,
        encoder_factory: Callable[[VideoSettings], H264Encoder] | None = None,
    ) -> VideoService:
        d = cfg.device
        overlay = make_overlay(
            cfg.video, device_id=d.id, officer=d.officer, vehicle=d.vehicle, unit=d.unit, fix=fix
        )
        source, choice = build_source(cfg.video, stop, overlay=overlay)
        log.info("video: source %s (%s)", source.name, choice.reason)
        return cls(
            cfg.video,
            source,
            spool,
            stop,
            device_id=d.id,
            officer=d.officer,
            vehicle=d.vehicle,
            unit=d.unit,
            fix=fix,
            alarm=alarm,
            clock=clock,
            encoder_factory=encoder_factory,
            overlay=overlay,
        )

    def start_threads(self) -> None:
        self.recorder.start_threads()
        self.stills.thread.start()
        if self.trigger is not None:
            self.trigger.thread.start()

    def threads(self) -> list[threading.Thread]:
        """Every thread of the video side: the recorder's, the stills', the serial trigger's."""
        extra = [self.stills.thread] + ([self.trigger.thread] if self.trigger is not None else [])
        return self.recorder.threads() + extra

    def join(self, timeout: float | None = None) -> bool:
        ok = self.recorder.join(timeout)
        for t in (self.stills.thread, self.trigger.thread if self.trigger else None):
            if t is not None and t.is_alive():
                t.join(timeout)
                ok = ok and not t.is_alive()
        return ok

    # Controls
    def start(self, trigger: str = "api", details: dict[str, Any] | None = None) -> None:
        self.recorder.start(trigger, details)

    def stop(self, trigger: str = "api") -> None:
        self.recorder.stop(trigger)

    def mark(self, trigger: str = "api", note: str = "") -> Future[None]:
        return self.recorder.mark(trigger, note)

    def still(self, trigger: str = "api") -> None:
        self.stills.request(trigger)
