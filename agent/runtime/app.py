"""The composition root: every long-lived part of the agent is built here, and only here.

``Agent`` starts what the config enables, by profile (``tracker``: GPS only, never imports
OpenCV or numpy; ``dashcam``: continuous video and GPS; ``bodycam``: video with pre-event
buffer, stills and GPS), owns the one stop event, watches every part's threads
(agent/runtime/liveness.py), and on SIGTERM stops every part within one deadline, seals what
they hold and closes the spool once its writers have ended. Only the ``run`` command imports
this module (agent/runtime/cli.py; tests/core/test_architecture.py holds that).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config.schema import AgentConfig, check_profile
from agent.errors import AgentError
from agent.model import Fix
from agent.runtime.alarms import Alarms, StateAlarms
from agent.runtime.heartbeat import Heartbeat
from agent.runtime.liveness import SHUTDOWN_S, Part, Parts, of_threads
from agent.runtime.readers import legacy_battery_source
from agent.runtime.routing import Handler, RemoteCommands, channel_handlers
from agent.runtime.status import status_figures
from agent.runtime.systemd import Notifier
from agent.storage.from_config import boot_id, build_spool
from agent.storage.keys import load_signing_key

if TYPE_CHECKING:
    from agent.capture.audio import AudioBlock, Microphone
    from agent.capture.audio_recorder import AudioRecorder
    from agent.capture.av_mux import AvEncoder
    from agent.capture.encoder import H264Encoder
    from agent.capture.portaudio import PortAudio
    from agent.capture.service import VideoService
    from agent.capture.settings import VideoSettings
    from agent.cellular.monitor import LinkMonitor
    from agent.fleet.service import FleetService
    from agent.gps.clock import ClockMonitor
    from agent.gps.service import GpsService
    from agent.jt808.terminal import Jt808Terminal
    from agent.power.monitor import PowerMonitor
    from agent.power.poweroff import CriticalShutdown, PowerOff
    from agent.storage.spool import Spool
    from agent.talk.device import Talk
    from agent.uplink.service import Uplink
    from agent.web.device import DevicePage

log = logging.getLogger(__name__)


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
            self.jt808 = build_jt808(
                cfg, stop=self.stop, fleet=self.fleet, spool=self.spool, signal=self._modem_signal
            )
            self.alarms.add_sink(self.jt808.on_alarm)
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
                alarm=self.alarms.raise_,
            )
        self.audio: AudioRecorder | None = None
        # The process's one PortAudio and microphone (recorder and push-to-talk); none for a
        # device with neither (a tracker: its module is not even imported).
        self.portaudio: PortAudio | None = None
        if cfg.audio.enabled or cfg.talk.enabled:
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
            # The device's one microphone, shared with push-to-talk (build_talk).
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

                    enc = AvEncoder.for_video(
                        s, rate=audio_cfg.rate, audio_bitrate_kbps=audio_cfg.bitrate_kbps
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
            self.talk = build_talk(
                cfg,
                spool=self.spool,
                stop=self.stop,
                uplink=self.uplink,
                microphone=self.microphone,
                portaudio=self.portaudio,
            )
        self.remote = RemoteCommands(config=cfg, spool=self.spool, clock=self.clock, gps=self.gps)
        from agent.runtime.local_control import LocalControl

        self.local = LocalControl(cfg.health.control_socket, self.stop, self.alarms.raise_)
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
        self.parts = Parts(self.stop)
        self.heartbeat = Heartbeat(
            parts=self.parts,
            stop=self.stop,
            notifier=self.notifier,
            status=self.status,
            status_file=cfg.health.status_file,
            alarms=StateAlarms(
                self.alarms.raise_,
                self.clock,
                evidence_quota_bytes=cfg.spool.evidence_quota_mb * 1024 * 1024,
                storage_alarm_pct=cfg.health.storage_alarm_pct,
            ),
            heartbeat_s=cfg.health.heartbeat_s,
            report=self.uplink.forwarder.report_status if self.uplink is not None else None,
            alarm=self.alarms.raise_,
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

    def _modem_signal(self) -> int | None:
        """The modem's signal for the JT/T 808 location reports (item 0x30), if one is read."""
        link: LinkMonitor | None = getattr(self, "link", None)  # built after the terminal
        return link.signal_csq() if link is not None else None

    def _live_fix(self, fix: Fix) -> None:
        """A reported position, with the vehicle's inputs when a fleet part runs."""
        if self.uplink is not None:
            self.uplink.forwarder.report_fix(fix, self.fleet.live_fields() if self.fleet else None)

    def _command_handlers(self, origin: str) -> dict[str, Handler]:
        """What the platform (signed) or the device's own control socket may ask."""
        return channel_handlers(
            origin,
            status=self.status,
            remote=self.remote,
            spool=self.spool,
            talk=self.talk,
            fleet=self.fleet,
            video=self.video,
            audio=self.audio,
        )

    def status(self) -> dict[str, Any]:
        """Health figures (the heartbeat on the status topic, and ``edge-agent status``)."""
        return status_figures(self, self.parts.dead())

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        self.stop.set()

    def start(self) -> None:
        recorders = {n for n, r in (("video", self.video), ("audio", self.audio)) if r is not None}
        recover_other_journals(self.spool, recorders)
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
        ptt: list[Part] = []
        if self.talk is not None:
            ptt = self._start_talk(self.talk)
        if self.video is not None:
            self.video.start_threads()
        if self.power is not None:
            self.power.start()
        if self.link is not None:
            self.link.start()
        try:
            self.local.start()
        except OSError as exc:
            log.warning("no local control socket at %s: %s", self.cfg.health.control_socket, exc)
        if self.cfg.web.enabled:
            self._start_device_page()
        self._watch(ptt)
        self.heartbeat.thread.start()
        self.heartbeat.write(self.status())
        self.notifier.notify("READY=1\nSTATUS=running")
        log.info(
            "edge-agent %s running: device %s, profile %s, boot %s",
            __version__,
            self.cfg.device.id,
            self.cfg.device.profile,
            self.boot,
        )

    def _watch(self, ptt: list[Part]) -> None:
        """Every started part, in the order shutdown joins them: the spool's writers first,
        the uplink (which delivers what they sealed) after them, the readers last."""
        add = self.parts.add
        if self.video is not None:
            add(of_threads("video", self.video.threads))
        if self.audio is not None:
            add(of_threads("audio", self.audio.threads))
        for part in ptt:
            add(part)
        if self.talk is not None:
            add(of_threads("talk", self.talk.threads))
        if self.gps is not None:
            add(of_threads("gps", self.gps.threads))
        if self.chrony is not None:
            add(of_threads("chrony", self.chrony.threads, self.chrony.join))
        fleet = self.fleet
        if fleet is not None and fleet.input_thread is not None:
            inputs = fleet.input_thread
            add(Part("fleet inputs", lambda: [inputs.is_alive()], fleet.join))
        if self.jt808 is not None:
            add(of_threads("jt808", self.jt808.threads, self.jt808.join))
        if self.uplink is not None:
            add(of_threads("uplink", self.uplink.threads, self.uplink.join))
        add(of_threads("health", lambda: [self.heartbeat.thread]))
        power, link = self.power, self.link
        if power is not None:
            add(of_threads("power", lambda: [power.thread], power.join))
        if link is not None:
            add(of_threads("link", lambda: [link.thread], link.join))
        add(of_threads("local control", self.local.threads, self.local.join))
        if self.web is not None:
            add(of_threads("web", self.web.server.threads, self.web.join))

    def _start_talk(self, talk: Talk) -> list[Part]:
        """Talk's threads and its press-to-talk buttons (watched and joined like every part)."""
        from agent.lines.ptt import GpioPtt, SerialPtt

        talk.start_threads()
        if self.video is not None and self.video.trigger is not None:
            from agent.lines.ptt import ptt_line

            self.video.trigger.ptt = lambda line: ptt_line(line, talk)
        t = self.cfg.talk
        parts: list[Part] = []
        if t.ptt_port:
            serial = SerialPtt(t.ptt_port, talk, self.stop, baudrate=t.ptt_baud)
            thread = serial.start()
            parts.append(of_threads("ptt serial", lambda: [thread]))
        if t.ptt_gpio_line >= 0:
            gpio = GpioPtt(talk, self.stop, chip=t.ptt_gpio_chip, line=t.ptt_gpio_line)
            gpio.start()
            parts.append(Part("ptt gpio", lambda: [gpio.inputs.is_alive()], gpio.join))
        return parts

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

    def shutdown(self, deadline_s: float = SHUTDOWN_S) -> None:
        """Stop every part within one deadline, seal what they hold; close the spool once no
        part runs (a part still running past the deadline keeps the spool open: closing SQLite
        under a writer could lose its last transaction, while an open spool is recovered at the
        next start like after a power cut)."""
        self.stop.set()
        self.notifier.notify("STOPPING=1\nSTATUS=sealing and stopping")
        running = self.parts.join(deadline_s)
        if running:
            log.error(
                "still running %.0f s after the stop: %s; the spool is left to its recovery",
                deadline_s,
                ", ".join(running),
            )
            return
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


def build_talk(
    cfg: AgentConfig,
    *,
    spool: Spool,
    stop: threading.Event,
    uplink: Uplink | None,
    microphone: Microphone | None = None,
    portaudio: PortAudio | None = None,
) -> Talk:
    """Talk, built before the uplink starts: it adds its MQTT routes to the link."""
    from agent.talk.device import Talk
    from agent.uplink.control import SeenIds, load_command_public

    up = cfg.uplink
    return Talk(
        cfg.talk,
        device_id=cfg.device.id,
        spool=spool,
        stop=stop,
        link=uplink.link if uplink is not None else None,
        command_key=load_command_public(up.command_key) if up.command_key else None,
        signing_key=load_signing_key(cfg.keys.device_key),
        seen=SeenIds(up.state_dir / "talk-seen.json"),
        microphone=microphone,
        portaudio=portaudio,
    )


def build_jt808(
    cfg: AgentConfig,
    *,
    stop: threading.Event,
    fleet: FleetService | None,
    spool: Spool,
    signal: Callable[[], int | None] | None = None,
) -> Jt808Terminal:
    """The JT/T 808 terminal: every fix and alarm, its queue keyed from the device key."""
    from cryptography.hazmat.primitives import serialization

    from agent.jt808.queue import derive_key
    from agent.jt808.terminal import Jt808Terminal

    secret = load_signing_key(cfg.keys.device_key).private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    terminal = Jt808Terminal(
        cfg.jt808,
        strategy=cfg.gps.strategy,
        stop=stop,
        queue_key=derive_key(secret),
        fleet=fleet,
        spool=spool,
        signal=signal,
    )
    if cfg.gps.source == "none":
        log.warning("jt808: no GPS source (gps.source = none): no location reports")
    return terminal


def recover_other_journals(spool: Spool, active: set[str]) -> None:
    """Fragment journals of streams no recorder runs for now (e.g. video switched off since
    the power cut): sealed as recovered segments, the recording not resumed."""
    journal_dir = spool.root / "journal" / "seg"  # SegmentJournal.dir
    try:
        if not journal_dir.is_dir() or next(journal_dir.iterdir(), None) is None:
            return  # nothing to recover (a tracker's case): no journal module to load
    except OSError:
        pass  # SegmentJournal says what is wrong
    from agent.storage.segjournal import SegmentJournal

    try:
        journal = SegmentJournal(spool)
        for stream in sorted(journal.streams_present() - active):
            journal.recover(stream, resume=False)
    except (OSError, AgentError) as exc:
        log.error("cannot recover the fragment journals: %s", exc)
