"""What each command channel may ask of the running agent, and of which part.

Two channels carry the same **commands** (the platform's and the device's: not the CLI, whose
modules are the ``cli.py`` of each package): the platform's signed commands over MQTT
(agent/uplink/control.py, ``origin = "platform"``) and the device's own control socket
(agent/runtime/local_control.py, ``origin = "device"``: ``edge-agent record start`` ...).
:func:`channel_handlers` builds one channel's table from the parts that run; ``origin`` is
recorded as the trigger of what a command starts. ``record.start|stop|mark`` go to the camera
when there is one, else to the microphone, else (a mark) to an event record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config.remote import RemoteSettings, default_overrides_path
from agent.errors import AgentError, CommandError
from agent.gps.time_sync import TimeSync

if TYPE_CHECKING:
    from agent.capture.audio_recorder import AudioRecorder
    from agent.capture.service import VideoService
    from agent.config.schema import AgentConfig
    from agent.fleet.service import FleetService
    from agent.gps.clock import ClockMonitor
    from agent.gps.service import GpsService
    from agent.storage.spool import Spool
    from agent.talk.device import Talk

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class RemoteCommands:
    """Built once per agent (one overrides file, one lock); ``handlers(origin)`` gives the
    command table for each channel ("platform": signed commands; "device": the local socket).
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        spool: Any,
        clock: ClockMonitor,
        gps: GpsService | None = None,
        config_path: Path | None = None,
        overrides_path: Path | None = None,
        may_step_clock: bool = False,
    ) -> None:
        self.settings = RemoteSettings(
            config_path=config_path,
            running=config,
            overrides_path=overrides_path or default_overrides_path(config),
            spool=spool,
            gps=gps,
        )
        self.time_sync = TimeSync(clock, spool=spool, may_step_clock=may_step_clock)

    def handlers(self, origin: str = "platform") -> dict[str, Handler]:
        return {
            "settings.get": self.settings.get,
            "settings.set": lambda args: self.settings.set(args, origin=origin),
            "time.sync": self.time_sync,
        }


def remote_command_handlers(
    *,
    config: AgentConfig,
    spool: Any,
    clock: ClockMonitor,
    gps: GpsService | None = None,
    overrides_path: Path | None = None,
    config_path: Path | None = None,
    origin: str = "platform",
    may_step_clock: bool = False,
) -> dict[str, Handler]:
    """``settings.get``, ``settings.set`` and ``time.sync`` for one channel. (For two channels
    sharing one overrides file, build one :class:`RemoteCommands` and call ``handlers``.)"""
    return RemoteCommands(
        config_path=config_path,
        config=config,
        spool=spool,
        clock=clock,
        gps=gps,
        overrides_path=overrides_path,
        may_step_clock=may_step_clock,
    ).handlers(origin)


def channel_handlers(
    origin: str,
    *,
    status: Callable[[], dict[str, Any]],
    remote: RemoteCommands,
    spool: Spool,
    talk: Talk | None = None,
    fleet: FleetService | None = None,
    video: VideoService | None = None,
    audio: AudioRecorder | None = None,
) -> dict[str, Handler]:
    """What the platform (signed) or the device's own control socket may ask; ``origin``
    ("platform" or "device") is recorded as the trigger of what they start."""
    handlers: dict[str, Handler] = {"status": lambda _args: status()}
    handlers.update(remote.handlers(origin))
    if talk is not None:
        from agent.talk.device import command_handlers as talk_handlers

        handlers.update(talk_handlers(talk, origin))
    if fleet is not None:
        fleet_handlers = fleet.command_handlers()
        if origin != "platform":
            fleet_handlers.pop("fleet.set_areas", None)  # the plan comes signed, or not at all
        handlers.update(fleet_handlers)
    if video is not None:
        from agent.capture.triggers import command_handlers

        handlers.update(command_handlers(video, trigger=origin))
    if audio is not None:
        from agent.capture.audio_recorder import command_handlers as audio_handlers

        handlers.update(audio_handlers(audio, source=origin))
    handlers.update(record_handlers(origin, spool=spool, video=video, audio=audio))
    return handlers


def record_handlers(
    origin: str,
    *,
    spool: Spool,
    video: VideoService | None = None,
    audio: AudioRecorder | None = None,
) -> dict[str, Handler]:
    """``record.start``, ``record.stop``, ``record.mark``: whatever this device records with."""

    def record(action: str) -> Handler:
        def handle(args: dict[str, Any]) -> dict[str, Any]:
            trigger = origin
            note = str(args.get("note", ""))[:200]
            if action == "mark":
                # ok with "recorded" true only once the mark is evidence (in the spool).
                why = None
                if video is not None:
                    from agent.capture.triggers import mark_recorded  # a camera's modules only

                    why = mark_recorded(video.mark(trigger, note))
                else:
                    try:
                        spool.put_event("mark", {"trigger": trigger, "note": note})
                    except (AgentError, OSError) as exc:
                        why = str(exc)
                answer = {"ok": True, "action": action, "recorded": why is None}
                return answer | ({"reason": why} if why else {})
            if video is not None:
                (video.start if action == "start" else video.stop)(trigger)
            elif audio is not None:
                (audio.start if action == "start" else audio.stop)(trigger)
            else:
                raise CommandError("this device has no camera or microphone to record")
            return {"ok": True, "action": action}

        return handle

    return {f"record.{action}": record(action) for action in ("start", "stop", "mark")}
