"""The composition root: every long-lived part of the agent is built here, and only here.

``Agent`` starts what the config enables, by profile (``tracker``: GPS only, never imports
OpenCV or numpy; ``dashcam``: continuous video and GPS; ``bodycam``: video with pre-event
buffer, stills and GPS), owns the one stop event, and on SIGTERM stops every part, seals what
they hold and closes the spool.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent import __version__, wallclock
from agent.config import AgentConfig
from agent.errors import AgentError, CommandError, ConfigError
from agent.model import Alarm, ClockState, Fix, Severity
from agent.storage.durable import write_atomic
from agent.storage.keys import load_platform_public, load_signing_key
from agent.storage.sealer import Sealer
from agent.storage.spool import Spool
from agent.systemd import Notifier

if TYPE_CHECKING:
    from agent.capture.audio import AudioBlock, Microphone
    from agent.capture.audio_recorder import AudioRecorder
    from agent.capture.av_mux import AvEncoder
    from agent.capture.encoder import H264Encoder
    from agent.capture.service import VideoService
    from agent.capture.settings import VideoSettings
    from agent.cellular.monitor import LinkMonitor
    from agent.fleet.service import FleetService
    from agent.gps.clock import ClockMonitor
    from agent.gps.service import GpsService
    from agent.jt808.terminal import Jt808Terminal
    from agent.power.monitor import PowerMonitor
    from agent.power.poweroff import CriticalShutdown, PowerOff
    from agent.power.reading import PowerSource
    from agent.talk.device import Talk
    from agent.uplink.service import Uplink
    from agent.web.device import DevicePage

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")
TICK_S = 5.0


def config_path(given: str | None) -> Path:
    """The config file: ``--config``, else $EDGE_AGENT_CONFIG, else /etc/edge-agent/agent.toml."""
    if given:
        return Path(given)
    env = os.environ.get("EDGE_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def read_config(given: str | None) -> AgentConfig:
    """The config file with the platform's remote overrides merged over it."""
    from agent.remote_settings import load_with_overrides

    return load_with_overrides(config_path(given))


def boot_id() -> str:
    """The kernel's id of this boot (so segments say which power-on they belong to)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return uuid.uuid4().hex


def build_sealer(cfg: AgentConfig, boot: str | None = None) -> Sealer:
    return Sealer(
        device_id=cfg.device.id,
        boot_id=boot or boot_id(),
        signing_key=load_signing_key(cfg.keys.device_key),
        platform_public=load_platform_public(cfg.keys.platform_public),
        settings=cfg.seal,
    )


def _log_alarm(alarm: Alarm) -> None:
    log.warning("alarm %s: %s", alarm.kind, alarm.message)


def build_spool(
    cfg: AgentConfig,
    *,
    alarm: Callable[[Alarm], None] = _log_alarm,
    clock: Callable[[], ClockState] = ClockState,
    boot: str | None = None,
) -> Spool:
    return Spool(cfg.spool, build_sealer(cfg, boot), alarm=alarm, clock=clock)


def check_profile(cfg: AgentConfig) -> None:
    """Refuse a config whose parts do not fit its profile, naming the field."""
    profile = cfg.device.profile
    if profile == "tracker" and (cfg.video.enabled or cfg.audio.enabled or cfg.talk.enabled):
        field = (
            "video.enabled"
            if cfg.video.enabled
            else "audio.enabled"
            if cfg.audio.enabled
            else "talk.enabled"
        )
        raise ConfigError(
            f"{field}: the tracker profile records no video or audio "
            "(set device.profile to dashcam or bodycam)"
        )
    if profile == "dashcam" and cfg.video.enabled and cfg.video.mode != "continuous":
        raise ConfigError("video.mode: the dashcam profile records continuously")
    if cfg.jt808.enabled and profile not in ("tracker", "dashcam"):
        raise ConfigError(
            "jt808.enabled: the JT/T 808 terminal is for the tracker and dashcam profiles"
        )


class Alarms:
    """Every alarm is logged; when the uplink runs it also goes out on the live lane."""

    def __init__(self) -> None:
        self._sinks: list[Callable[[Alarm], None]] = []

    def add_sink(self, sink: Callable[[Alarm], None]) -> None:
        self._sinks.append(sink)

    def raise_(self, alarm: Alarm) -> None:
        _log_alarm(alarm)
        for sink in self._sinks:
            sink(alarm)


class Agent:
    """The running agent. Build it, call ``run()``; SIGTERM or ``stop.set()`` ends it."""

    def __init__(
        self, cfg: AgentConfig, *, boot: str | None = None, power_off: PowerOff | None = None
    ) -> None:
        from agent.gps.clock import ClockMonitor

        check_profile(cfg)
        self.cfg = cfg
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.boot = boot or boot_id()
        self.alarms = Alarms()
        self.clock: ClockMonitor = ClockMonitor()
        from agent.gps.chrony import attach as attach_chrony

        # chrony's state, preferred by the clock monitor while it is synchronised.
        self.chrony = attach_chrony(cfg.time, self.clock, self.stop, self.alarms.raise_)
        self.spool = build_spool(
            cfg, alarm=self.alarms.raise_, clock=self.clock.state, boot=self.boot
        )
        self.uplink: Uplink | None = None
        self.gps: GpsService | None = None
        self.video: VideoService | None = None
        if cfg.uplink.enabled:
            from agent.uplink.service import Uplink

            self.uplink = Uplink(
                cfg.uplink,
                device_id=cfg.device.id,
                boot_id=self.boot,
                spool=self.spool,
                stop=self.stop,
                alarm=self.alarms.raise_,
            )
            self.alarms.add_sink(self.uplink.forwarder.report_alarm)
        self.fleet: FleetService | None = None
        if cfg.fleet.enabled:
            from agent.fleet.service import FleetService

            self.fleet = FleetService(cfg.fleet, self.spool, self.stop, alarm=self.alarms.raise_)
        self.jt808: Jt808Terminal | None = None
        if cfg.jt808.enabled:
            self.jt808 = self._build_jt808()
        if cfg.gps.source != "none":
            from agent.gps.service import GpsService

            self.gps = GpsService(
                cfg.gps,
                self.spool,
                self.stop,
                clock=self.clock,
                live=self._live_fix if self.uplink else None,
                fleet=self.fleet,
                observers=[self.jt808.on_fix] if self.jt808 is not None else (),
            )
        self.audio: AudioRecorder | None = None
        # The process's one PortAudio and microphone (recorder and push-to-talk).
        from agent.capture.portaudio import PortAudio

        self.portaudio = PortAudio()
        self.microphone: Microphone | None = None
        muxed: list[AvEncoder] = []  # the video encoder carrying the audio track, once open
        if cfg.audio.enabled:
            from agent.capture.audio_recorder import AudioRecorder

            def to_video(block: AudioBlock) -> None:
                if muxed:
                    muxed[0].push_audio(block)

            # With video on, the microphone is a track in the video segments (its own
            # recorder stays idle, so no separate audio stream is written); else its own stream.
            # An encoded camera (picamera2, rpicam, an IP camera) is remuxed, not encoded here:
            # no track can join it, so the microphone keeps its own stream.
            from agent.capture.service import encoded_source

            into_video = cfg.video.enabled and not encoded_source(cfg.video)
            # The device's one microphone, shared with push-to-talk (_build_talk).
            from agent.capture.audio import Microphone

            self.microphone = Microphone(
                cfg.audio, self.stop, alarm=self.alarms.raise_, portaudio=self.portaudio
            )
            self.audio = AudioRecorder(
                cfg.audio,
                self.spool,
                self.stop,
                alarm=self.alarms.raise_,
                clock=self.clock.state,
                meta={"device": cfg.device.id},
                tap=to_video if into_video else None,
                microphone=self.microphone,
            )
        if cfg.video.enabled:
            from agent.capture.service import VideoService

            factory = None
            if self.audio is not None:
                audio_cfg = cfg.audio

                def factory(s: VideoSettings) -> H264Encoder:
                    from agent.capture.av_mux import AvEncoder

                    enc = AvEncoder(
                        s.width,
                        s.height,
                        s.fps,
                        codec=s.encoder,
                        bitrate_kbps=s.bitrate_kbps,
                        preset=s.preset,
                        rate=audio_cfg.rate,
                        audio_bitrate_kbps=audio_cfg.bitrate_kbps,
                    )
                    muxed[:] = [enc]
                    return enc

            gps = self.gps
            self.video = VideoService.from_config(
                cfg,
                self.spool,
                self.stop,
                fix=(lambda: gps.latest) if gps else (lambda: None),
                alarm=self.alarms.raise_,
                clock=self.clock.state,
                encoder_factory=factory,
            )
        self.talk: Talk | None = None
        if cfg.talk.enabled:
            self.talk = self._build_talk()
        from agent.remote_settings import RemoteCommands

        self.remote = RemoteCommands(config=cfg, spool=self.spool, clock=self.clock, gps=self.gps)
        from agent.local_control import LocalControl

        self.local = LocalControl(cfg.health.control_socket, self.stop)
        for name, handler in self._command_handlers("device").items():
            self.local.register(name, handler)
        if self.uplink is not None and self.uplink.control is not None:
            for name, handler in self._command_handlers("platform").items():
                self.uplink.control.register(name, handler)
        self.web: DevicePage | None = None
        self.power: PowerMonitor | None = None
        self.critical: CriticalShutdown | None = None
        self.link: LinkMonitor | None = None
        self._build_power_and_link(power_off)
        self.notifier = Notifier()
        self._status_warned = False
        self._gps_lost = False
        self._clock_untrusted = False
        self._clock_was_trusted = False
        self._status_thread = threading.Thread(target=self._heartbeat, name="health")

    def _build_talk(self) -> Talk:
        from agent.storage.keys import load_signing_key
        from agent.talk.device import Talk
        from agent.uplink.control import SeenIds, load_command_public

        up = self.cfg.uplink
        # Built before the uplink starts: it adds its MQTT routes to the link.
        return Talk(
            self.cfg.talk,
            device_id=self.cfg.device.id,
            spool=self.spool,
            stop=self.stop,
            link=self.uplink.link if self.uplink is not None else None,
            command_key=load_command_public(up.command_key) if up.command_key else None,
            signing_key=load_signing_key(self.cfg.keys.device_key),
            seen=SeenIds(up.state_dir / "talk-seen.json"),
            microphone=self.microphone,
            portaudio=self.portaudio,
        )

    def _build_power_and_link(self, power_off: PowerOff | None) -> None:
        """The power monitor (with the critical-battery shutdown) and the link monitor (modem
        and traffic counters); the recording and the spool never wait on either."""
        from agent.cellular.monitor import LinkMonitor
        from agent.cellular.traffic import TrafficMeter
        from agent.power.monitor import PowerMonitor, open_power_source
        from agent.power.poweroff import CriticalShutdown, system_power_off

        cfg = self.cfg
        source = open_power_source(cfg.power)
        if source is None and cfg.health.battery_file is not None:
            source = legacy_battery_source(cfg.health.battery_file)
        ends: list[Callable[[], None]] = []
        video, audio = self.video, self.audio
        if video is not None:
            ends.append(lambda: video.stop("power_critical"))
        if audio is not None:
            ends.append(lambda: audio.stop("power_critical"))

        def delivered() -> bool:
            if self.uplink is None:
                return True
            return self.uplink.forwarder.live_pending() == 0 and "event" not in self.spool.backlog()

        self.critical = CriticalShutdown(
            self.stop,
            put_event=self.spool.put_event,
            end_recordings=ends,
            delivered=delivered,
            flush_s=cfg.power.flush_s,
            power_off=power_off or system_power_off(cfg.power.power_off),
        )
        self.power = PowerMonitor(
            cfg.power, source, self.stop, alarm=self.alarms.raise_, on_critical=self.critical
        )
        traffic = None
        if self.uplink is not None:
            path = cfg.cellular.traffic_file or cfg.uplink.state_dir / "traffic.json"
            traffic = TrafficMeter(path, cfg.cellular.traffic_days)
            self.uplink.link.meter = traffic.count
        if traffic is not None or cfg.cellular.source != "none":
            self.link = LinkMonitor(cfg.cellular, self.stop, alarm=self.alarms.raise_,
                                    traffic=traffic)  # fmt: skip

    def _build_jt808(self) -> Jt808Terminal:
        """The JT/T 808 terminal: every fix and alarm, its queue keyed from the device key."""
        from cryptography.hazmat.primitives import serialization

        from agent.jt808.queue import derive_key
        from agent.jt808.terminal import Jt808Terminal

        secret = load_signing_key(self.cfg.keys.device_key).private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        terminal = Jt808Terminal(
            self.cfg.jt808,
            strategy=self.cfg.gps.strategy,
            stop=self.stop,
            queue_key=derive_key(secret),
            fleet=self.fleet,
            spool=self.spool,
        )
        self.alarms.add_sink(terminal.on_alarm)
        if self.cfg.gps.source == "none":
            log.warning("jt808: no GPS source (gps.source = none): no location reports")
        return terminal

    def _live_fix(self, fix: Fix) -> None:
        """A reported position, with the vehicle's inputs when a fleet part runs."""
        if self.uplink is not None:
            self.uplink.forwarder.report_fix(fix, self.fleet.live_fields() if self.fleet else None)

    def _command_handlers(self, origin: str) -> dict[str, Handler]:
        """What the platform (signed) or the device's own control socket may ask; ``origin``
        ("platform" or "device") is recorded as the trigger of what they start."""
        handlers: dict[str, Handler] = {"status": lambda _args: self.status()}
        handlers.update(self.remote.handlers(origin))
        if self.talk is not None:
            from agent.talk.device import command_handlers as talk_handlers

            handlers.update(talk_handlers(self.talk, origin))
        if self.fleet is not None:
            fleet_handlers = self.fleet.command_handlers()
            if origin != "platform":
                fleet_handlers.pop("fleet.set_areas", None)  # the plan comes signed, or not at all
            handlers.update(fleet_handlers)
        video, audio = self.video, self.audio
        if video is not None:
            from agent.capture.triggers import command_handlers

            handlers.update(command_handlers(video, trigger=origin))
        if audio is not None:
            from agent.capture.audio_recorder import command_handlers as audio_handlers

            handlers.update(audio_handlers(audio, source=origin))

        def record(action: str) -> Handler:
            def handle(args: dict[str, Any]) -> dict[str, Any]:
                trigger = origin
                note = str(args.get("note", ""))[:200]
                if video is not None:
                    {"start": lambda: video.start(trigger), "stop": lambda: video.stop(trigger),
                     "mark": lambda: video.mark(trigger, note)}[action]()  # fmt: skip
                elif audio is not None and action in ("start", "stop"):
                    (audio.start if action == "start" else audio.stop)(trigger)
                elif action == "mark":
                    self.spool.put_event("mark", {"trigger": trigger, "note": note})
                else:
                    raise CommandError("this device has no camera or microphone to record")
                return {"ok": True, "action": action}

            return handle

        for action in ("start", "stop", "mark"):
            handlers[f"record.{action}"] = record(action)
        return handlers

    def status(self) -> dict[str, Any]:
        """Health figures (the heartbeat on the status topic, and ``edge-agent status``)."""
        clock = self.clock.state()
        out: dict[str, Any] = {
            "device": self.cfg.device.id,
            "profile": self.cfg.device.profile,
            "boot": self.boot,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "versions": {"edge-agent": __version__},
            "backlog": {
                s: {"count": b.count, "bytes": b.bytes, "oldest_age_s": b.oldest_age_s}
                for s, b in self.spool.backlog().items()
            },
            "storage": self.spool.usage(),
            "clock": clock.to_json(),
            **({"time": self.chrony.to_json()} if self.chrony is not None else {}),
            "cpu_temp_c": cpu_temperature(),
            "battery_pct": None,
            "updated_utc": wallclock.now(),
        }
        if self.power is not None:
            out["power"] = self.power.health()
            out["battery_pct"] = out["power"].get("charge_pct")
        if self.link is not None:
            out["cellular"] = self.link.health()
        if self.gps is not None:
            fix = self.gps.latest
            out["gps"] = {
                "state": self.gps.state,
                "fix": fix.to_tpv() if fix else None,
                "seen": self.gps.fixes_seen,
                "kept": self.gps.fixes_kept,
                "reported": self.gps.fixes_reported,
            }
        if self.uplink is not None:
            out["uplink"] = {"connected": self.uplink.link.connected}
        if self.video is not None:
            st = self.video.recorder.stats
            out["video"] = {
                "recording": st.recording,
                "encoder": st.encoder,
                "frames_captured": st.captured,
                "frames_dropped": st.dropped,
                "camera_losses": st.losses,
                "segments": st.segments,
                "refused": st.refused,
            }
        if self.audio is not None:
            out["audio"] = self.audio.health()
        if self.talk is not None:
            out["talk"] = self.talk.health()
        if self.jt808 is not None:
            out["jt808"] = self.jt808.health()
        if self.fleet is not None:
            out["fleet"] = {
                "plan": self.fleet.plan.version,
                "origin": self.fleet.store.origin,
                "inputs": self.fleet.inputs.to_json(),
                "events": self.fleet.events_recorded,
                "sos": self.fleet.sos_count,
            }
        return out

    def _alive(self) -> list[str]:
        """The pipelines that have died (empty while all is well)."""
        dead = []
        if self.gps is not None and not self.gps.is_alive():
            dead.append("gps")
        if self.uplink is not None and not self.uplink.is_alive():
            dead.append("uplink")
        if self.video is not None and self.video.join(0):
            dead.append("video")
        if self.audio is not None and self.audio.join(0):
            dead.append("audio")
        if self.talk is not None and not self.talk.is_alive():
            dead.append("talk")
        if self.power is not None and not self.power.is_alive():
            dead.append("power")
        if self.link is not None and not self.link.is_alive():
            dead.append("link")
        if not self.local.is_alive():
            dead.append("local control")
        if self.jt808 is not None and not self.jt808.is_alive():
            dead.append("jt808")
        return dead

    def _heartbeat(self) -> None:
        """Watchdog pings while the pipelines live; status file; heartbeat; storage alarm."""
        health = self.cfg.health
        tick = TICK_S
        if self.notifier.watchdog_s:
            tick = min(tick, self.notifier.watchdog_s / 3)
        next_beat = time.monotonic()
        storage_alarmed = False
        while not self.stop.wait(tick):
            dead = self._alive()
            if not dead:
                self.notifier.notify("WATCHDOG=1")
            elif self.notifier.watchdog_s:
                log.error("pipelines stopped (%s): withholding the watchdog", ", ".join(dead))
            status = self.status()
            self._write_status(status)
            if self.uplink is not None and time.monotonic() >= next_beat:
                self.uplink.forwarder.report_status(status)
                next_beat = time.monotonic() + health.heartbeat_s
            quota = self.cfg.spool.evidence_quota_mb * 1024 * 1024
            full = self.spool.usage()["evidence"] >= quota * health.storage_alarm_pct / 100
            if full and not storage_alarmed:
                self.alarms.raise_(
                    Alarm(
                        "storage_nearly_full",
                        f"evidence storage above {health.storage_alarm_pct:.0f}% of its quota",
                        Severity.WARNING,
                        wallclock.now(),
                        {"usage": self.spool.usage()},
                    )
                )
            storage_alarmed = full
            self._state_alarms(status)

    def _state_alarms(self, status: dict[str, Any]) -> None:
        """Alarms on the live lane when the GNSS receiver or the clock's trust changes."""
        gps = status.get("gps")
        if gps is not None:
            lost = gps.get("state") == "lost"
            if lost != self._gps_lost:
                self.alarms.raise_(
                    Alarm(
                        "receiver_lost" if lost else "receiver_restored",
                        "GNSS receiver lost: no positions" if lost else "GNSS receiver back",
                        Severity.WARNING if lost else Severity.INFO,
                        wallclock.now(),
                    )
                )
            self._gps_lost = lost
        clock = self.clock.state()
        limit = self.clock.warn_offset_s
        untrusted = (self._clock_was_trusted and clock.offset_s is None) or (
            clock.offset_s is not None and abs(clock.offset_s) > limit
        )
        if clock.offset_s is not None and abs(clock.offset_s) <= limit:
            self._clock_was_trusted = True
        if untrusted != self._clock_untrusted:
            why = (
                f"system clock differs from GNSS time by {clock.offset_s:+.1f} s"
                if clock.offset_s is not None
                else "no time reference any more"
            )
            self.alarms.raise_(
                Alarm(
                    "clock_untrusted" if untrusted else "clock_trusted",
                    why if untrusted else "system clock agrees with GNSS time again",
                    Severity.WARNING if untrusted else Severity.INFO,
                    wallclock.now(),
                    clock.to_json(),
                )
            )
        self._clock_untrusted = untrusted

    def _write_status(self, status: dict[str, Any]) -> None:
        path = self.cfg.health.status_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(status, indent=1, default=str).encode())
        except OSError as exc:
            if not self._status_warned:
                log.warning("cannot write status file %s: %s", path, exc)
                self._status_warned = True

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        self.stop.set()

    def _recover_other_journals(self) -> None:
        """Fragment journals of streams no recorder runs for now (e.g. video switched off since
        the power cut): sealed as recovered segments, the recording not resumed."""
        from agent.storage.segjournal import SegmentJournal

        active = {"video"} if self.video is not None else set()
        if self.audio is not None:
            active.add("audio")
        try:
            journal = SegmentJournal(self.spool)
            for stream in sorted(journal.streams_present() - active):
                journal.recover(stream, resume=False)
        except (OSError, AgentError) as exc:
            log.error("cannot recover the fragment journals: %s", exc)

    def start(self) -> None:
        self._recover_other_journals()
        if self.uplink is not None:
            self.uplink.start()
        if self.fleet is not None:
            self.fleet.start()
        if self.jt808 is not None:
            self.jt808.start()
        if self.gps is not None:
            self.gps.start()
        if self.chrony is not None:
            self.chrony.start()
        if self.audio is not None:
            self.audio.start_threads()
        if self.talk is not None:
            self._start_talk(self.talk)
        if self.video is not None:
            self.video.start_threads()
        if self.power is not None:
            self.power.start()
        if self.link is not None:
            self.link.start()
        self._status_thread.start()
        try:
            self.local.start()
        except OSError as exc:
            log.warning("no local control socket at %s: %s", self.cfg.health.control_socket, exc)
        if self.cfg.web.enabled:
            self._start_device_page()
        self._write_status(self.status())
        self.notifier.notify("READY=1\nSTATUS=running")
        log.info(
            "edge-agent %s running: device %s, profile %s, boot %s",
            __version__,
            self.cfg.device.id,
            self.cfg.device.profile,
            self.boot,
        )

    def _start_talk(self, talk: Talk) -> None:
        from agent.talk.buttons import GpioPtt, SerialPtt

        talk.start_threads()
        if self.video is not None and self.video.trigger is not None:
            from agent.talk.buttons import ptt_line

            self.video.trigger.ptt = lambda line: ptt_line(line, talk)
        t = self.cfg.talk
        if t.ptt_port:
            SerialPtt(t.ptt_port, talk, self.stop, baudrate=t.ptt_baud).start()
        if t.ptt_gpio_line >= 0:
            GpioPtt(talk, self.stop, chip=t.ptt_gpio_chip, line=t.ptt_gpio_line).start()

    def _start_device_page(self) -> None:
        from agent.web.device import DevicePage, selftest_command

        try:
            self.web = DevicePage(
                self.cfg.web,
                status=self.status,
                stop=self.stop,
                frame=self.video.recorder.latest_frame if self.video is not None else None,
                selftest=selftest_command(),
            )
            self.web.start()
        except AgentError as exc:
            log.warning("device page not served: %s", exc)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every part, seal what they hold, close the spool."""
        self.stop.set()
        self.notifier.notify("STOPPING=1\nSTATUS=sealing and stopping")
        if self.video is not None:
            self.video.join(timeout)
        if self.audio is not None:
            self.audio.join(timeout)
        if self.talk is not None:
            self.talk.join(timeout)
        if self.gps is not None:
            self.gps.join(timeout)
        if self.chrony is not None:
            self.chrony.join(timeout)
        if self.fleet is not None:
            self.fleet.join(timeout)
        if self.jt808 is not None:
            self.jt808.join(timeout)
        if self.uplink is not None:
            self.uplink.join(timeout)
        if self._status_thread.is_alive():
            self._status_thread.join(timeout)
        if self.power is not None:
            self.power.join(timeout)
        if self.link is not None:
            self.link.join(timeout)
        self.local.join(timeout)
        if self.web is not None:
            self.web.join(timeout)
        self.spool.close()
        log.info("edge-agent stopped")

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        try:
            self.stop.wait()
        finally:
            self.shutdown()
        if self.critical is not None:
            self.critical.finish()  # battery critical: everything is sealed, now power off
        return 0


def cpu_temperature() -> float | None:
    """The SoC temperature in degrees Celsius, where the kernel reports it."""
    try:
        raw = Path("/sys/class/thermal/thermal_zone0/temp").read_text().strip()
        return round(int(raw) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def legacy_battery_source(capacity_file: Path) -> PowerSource:
    """``health.battery_file`` (before [power]): a power_supply ``capacity`` file, read as the
    power_supply class source for that supply."""
    from agent.power.settings import SysfsPowerSettings
    from agent.power.sysfs import SysfsPower

    log.warning(
        'health.battery_file is deprecated: set [power] source = "sysfs" (battery = %r)',
        capacity_file.parent.name,
    )
    return SysfsPower(
        SysfsPowerSettings(root=capacity_file.parent.parent, battery=capacity_file.parent.name)
    )
