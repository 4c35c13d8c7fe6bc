"""The video side assembled: source, watermark, recorder, stills and the serial trigger.

``agent/app.py`` (the composition root) builds one :class:`VideoService` from the config and
passes it, as :class:`~agent.capture.triggers.Controls`, to the other trigger channels::

    video = VideoService.from_config(cfg, spool, stop, fix=gps.latest, alarm=alarms.raise_,
                                     clock=clock.state)
    commands.register_all(command_handlers(video))   # platform command channel
    video.start_threads()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from agent.capture.camera import CameraSource
from agent.capture.encoder import H264Encoder
from agent.capture.frames import FrameSource
from agent.capture.jobs import SpoolLike
from agent.capture.overlay import Overlay
from agent.capture.recorder import Recorder
from agent.capture.settings import VideoSettings
from agent.capture.stills import Stills, StillSpool
from agent.capture.triggers import SerialTrigger
from agent.model import Alarm, ClockState, Fix

if TYPE_CHECKING:
    from agent.config import AgentConfig


class VideoSpool(SpoolLike, StillSpool, Protocol):
    """A spool that takes segments, event records and stills (agent.storage.spool.Spool)."""


def open_source(settings: VideoSettings, stop: threading.Event) -> FrameSource:
    """The configured source: ``synthetic`` (paced, live) or a camera/file/URL."""
    if settings.source == "synthetic":
        from agent.capture.sim import SyntheticSource

        return SyntheticSource(settings.width, settings.height, settings.fps, paced=True, stop=stop)
    return CameraSource(settings.source, settings.width, settings.height, settings.fps)


class VideoService:
    """Recorder + stills + serial trigger; implements the Controls interface."""

    def __init__(
        self,
        settings: VideoSettings,
        source: FrameSource,
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
    ) -> None:
        self.settings = settings
        overlay = None
        if settings.watermark:
            overlay = Overlay(
                fields=settings.watermark_fields,
                position=settings.watermark_position,
                scale=settings.watermark_scale,
                device_id=device_id,
                officer=officer,
                vehicle=vehicle,
                unit=unit,
                fix=fix,
            )
        meta: dict[str, Any] = {
            k: v
            for k, v in (("device", device_id), ("officer", officer), ("vehicle", vehicle))
            if v
        }
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
        return cls(
            cfg.video,
            open_source(cfg.video, stop),
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
        )

    def start_threads(self) -> None:
        self.recorder.start_threads()
        self.stills.thread.start()
        if self.trigger is not None:
            self.trigger.thread.start()

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

    def mark(self, trigger: str = "api", note: str = "") -> None:
        self.recorder.mark(trigger, note)

    def still(self, trigger: str = "api") -> None:
        self.stills.request(trigger)
