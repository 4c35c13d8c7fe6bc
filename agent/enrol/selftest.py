"""``edge-agent selftest``: does this device work end to end? One line per item.

Run at the end of ``edge-agent provision``, alone by a technician, or by a CI rig (``--json``)::

    [1/9] camera frame ... PASS (1280x720 from synthetic:1280x720@30)
    [2/9] microphone level ... SKIP (audio is disabled in the config)
    [3/9] GPS fix ... PASS (52.0001, 5.0002, 9 sats)
    [4/9] clock ... PASS (chrony follows pps (PPS, stratum 1): system clock +0.000002 s, ...)
    [5/9] serial port ... PASS (Raspberry Pi 4 Model B Rev 1.4; ...; enable_uart=1; ...)
    [6/9] broker (mTLS) ... PASS (connected to broker.example:8883 as cam-0042, MQTT 5)
    [7/9] sealed segment acknowledged ... PASS (event #0 acknowledged by the platform in 0.4 s)
    [8/9] power supply and battery ... PASS (82 %, on battery, 7.64 V (ina219:i2c-1@0x42))
    [9/9] cellular modem ... PASS (LTE home, CMCC, signal 67 %, RSRP -95 dBm)

Each item passes, fails with a short reason a technician can act on, or is skipped with the
reason (disabled in the config, or held by the running agent). The power and modem items only
read, so they run while the agent runs. The exit code is 0 only if no
item failed.

The items use the agent's own parts with the device's config: the configured video source
(:func:`agent.capture.service.open_source`), the microphone through sounddevice (a blocking
read, no callback), the configured GNSS source (:class:`agent.gps.source.SourceThread`) and the
clock monitor, a direct MQTT connect with the device certificate (the messages for the device's
persistent session are not acknowledged, so the broker keeps them for the agent), and the
spool plus the uplink's forwarder for a sealed ``selftest`` event record that must come back
acknowledged by the platform.

While the agent runs it owns the camera, microphone, serial receiver, the MQTT identity (the
broker would disconnect one of two clients with one id) and the spool's sequence numbers, so
those items are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import queue
import socket
import ssl
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.schema import AgentConfig
from agent.errors import AgentError, ConfigError
from agent.gps.clock import ClockMonitor, plausible_time
from agent.gps.time_sync import timedatectl
from agent.model import ClockSource

log = logging.getLogger(__name__)

#: Offset between GNSS and the system clock beyond which evidence time stamps are doubtful.
MAX_CLOCK_OFFSET_S = 2.0
CAMERA_TIMEOUT_S = 20.0
MIC_SECONDS = 1.0


class Status(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


class Skip(Exception):
    """An item that does not apply here (with the reason)."""


class Fail(Exception):
    """An item that failed (with a reason a technician can act on)."""


@dataclass(frozen=True)
class ItemResult:
    key: str
    name: str
    status: Status
    detail: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.key,
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Report:
    device: str
    items: list[ItemResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.status is not Status.FAIL for i in self.items)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for i in self.items if i.status is s) for s in Status}

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "ok": self.ok,
            "counts": self.counts(),
            "items": [i.to_json() for i in self.items],
            "time_utc": time.time(),
        }


def _bounded(fn: Callable[[], str], timeout: float, what: str) -> str:
    """Run ``fn`` in a helper thread; a device that hangs fails the item instead of the test."""
    box: list[Any] = []

    def body() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=body, name=f"selftest-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise Fail(f"no answer from the {what} within {timeout:g} s")
    if isinstance(box[0], BaseException):
        raise box[0]
    return str(box[0])


def agent_running(cfg: AgentConfig) -> bool:
    """True when the agent's control socket answers (the service is up)."""
    path = cfg.health.control_socket
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class SelfTest:
    """The items, in order; ``run`` executes them and reports progress line by line."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        gps_timeout: float = 60.0,
        ack_timeout: float = 60.0,
        max_clock_offset_s: float = MAX_CLOCK_OFFSET_S,
        boot_root: Path = Path("/"),
    ) -> None:
        self.cfg = cfg
        self.boot_root = boot_root  # where /boot, /proc/device-tree and /etc are (tests)
        self.gps_timeout = gps_timeout
        self.ack_timeout = ack_timeout
        self.max_clock_offset_s = max_clock_offset_s
        self.clock = ClockMonitor()
        self.running = agent_running(cfg)
        self.broker_ok = False
        self.items: list[tuple[str, str, Callable[[], str]]] = [
            ("camera", "camera frame", self.camera),
            ("microphone", "microphone level", self.microphone),
            ("gps", "GPS fix", self.gps),
            ("clock", "clock", self.clock_item),
            ("serial", "serial port", self.serial_port),
            ("broker", "broker (mTLS)", self.broker),
            ("segment", "sealed segment acknowledged", self.segment),
        ]
        # The device's own body: read-only, so they run while the agent runs too.
        self.items += [
            ("power", "power supply and battery", self.power_item),
            ("modem", "cellular modem", self.modem_item),
        ]

    def run(self, progress: Callable[[str], None] | None = None) -> Report:
        report = Report(self.cfg.device.id)
        n = len(self.items)
        for i, (key, name, fn) in enumerate(self.items, 1):
            if progress:
                progress(f"[{i}/{n}] {name} ... ")
            t0 = time.monotonic()
            try:
                status, detail = Status.PASS, fn()
            except Skip as exc:
                status, detail = Status.SKIP, str(exc)
            except Fail as exc:
                status, detail = Status.FAIL, str(exc)
            except (AgentError, OSError) as exc:
                status, detail = Status.FAIL, str(exc)
            except Exception as exc:  # an item must never take the others down with it
                log.debug("selftest %s", key, exc_info=True)
                status, detail = Status.FAIL, f"{type(exc).__name__}: {exc}"
            result = ItemResult(key, name, status, detail, time.monotonic() - t0)
            report.items.append(result)
            if progress:
                progress(f"{status.value}{f' ({detail})' if detail else ''}\n")
        return report

    def _not_while_running(self, what: str) -> None:
        if self.running:
            raise Skip(
                f"the agent is running and holds the {what}; stop it "
                "(sudo systemctl stop edge-agent) and run the self-test again"
            )

    # ------------------------------------------------------------------ camera, microphone

    def camera(self) -> str:
        v = self.cfg.video
        if not v.enabled:
            raise Skip("video is disabled in the config")
        self._not_while_running("camera")

        def grab() -> str:
            from agent.capture.service import open_source

            stop = threading.Event()
            try:
                src = open_source(v, stop)
            except ImportError as exc:
                raise Fail(f"video support is not installed ({exc})") from None
            try:
                src.open()
                frame = src.read()
            finally:
                stop.set()
                src.close()
            if frame is None:
                raise Fail(f"{src.name}: no frame (end of file?)")
            from agent.capture.frames import AccessUnit

            if isinstance(frame, AccessUnit):  # an encoded source (picamera2, rpicam, stream)
                return f"H.264 picture of {len(frame.data)} bytes from {src.name}"
            h, w = frame.image.shape[:2]
            return f"{w}x{h} from {src.name}"

        return _bounded(grab, CAMERA_TIMEOUT_S, "camera")

    def microphone(self) -> str:
        a = self.cfg.audio
        if not a.enabled:
            raise Skip("audio is disabled in the config")
        self._not_while_running("microphone")

        def listen() -> str:
            from agent.capture.audio import device_arg, load_sounddevice

            try:
                sd = load_sounddevice()
            except OSError as exc:
                raise Fail(f"PortAudio library not available (libportaudio2): {exc}") from None
            device = device_arg(a.device)
            frames = int(a.rate * MIC_SECONDS)
            try:
                with sd.RawInputStream(
                    samplerate=a.rate, channels=1, dtype="int16", device=device
                ) as stream:
                    data, _overflowed = stream.read(frames)
            except (ValueError, sd.PortAudioError) as exc:
                name = device if device is not None else "default input"
                raise Fail(f"microphone {name}: {exc}") from None
            samples = array("h", bytes(data))
            if not samples or not any(samples):
                raise Fail("digital silence (all samples zero): muted, or nothing connected?")
            rms = math.sqrt(sum(s * s for s in samples) / len(samples))
            dbfs = 20 * math.log10(rms / 32768.0)
            return f"{dbfs:.1f} dBFS RMS over {len(samples) / a.rate:.1f} s at {a.rate} Hz"

        return _bounded(listen, MIC_SECONDS + 15.0, "microphone")

    # ------------------------------------------------------------------ GPS and clock

    def gps(self) -> str:
        g = self.cfg.gps
        if g.source == "none":
            raise Skip("no GPS source configured (gps.source = none)")
        if g.source == "serial":
            self._not_while_running(f"GNSS receiver {g.serial_port}")
        from agent.gps.source import SourceThread, open_source

        stop = threading.Event()
        pump = SourceThread(open_source(g), stop, 64)
        pump.start()
        seen = 0
        deadline = time.monotonic() + self.gps_timeout
        try:
            while time.monotonic() < deadline:
                try:
                    fix = pump.queue.get(timeout=0.2)
                except queue.Empty:
                    if not pump.is_alive():
                        why = f": {pump.error}" if pump.error else " (end of the replay log)"
                        raise Fail(f"the GPS source stopped{why}") from None
                    continue
                seen += 1
                self.clock.observe(fix)
                if fix.has_position and plausible_time(fix.time):
                    sats = f", {fix.sats_used} sats" if fix.sats_used is not None else ""
                    return f"{fix.lat:.4f}, {fix.lon:.4f}{sats}"
        finally:
            stop.set()
            pump.join(5)
        if seen:
            raise Fail(
                f"{seen} reports from the receiver within {self.gps_timeout:g} s but no "
                "position (antenna with a clear view of the sky?)"
            )
        raise Fail(f"nothing from the GPS source {g.source} within {self.gps_timeout:g} s")

    def clock_item(self) -> str:
        chrony = self._chrony_item()
        if chrony is not None:
            return chrony
        st = self.clock.measured_state()
        if st.source is ClockSource.GNSS and st.offset_s is not None:
            text = f"GNSS - system = {st.offset_s:+.2f} s"
            if abs(st.offset_s) > self.max_clock_offset_s:
                raise Fail(
                    f"{text}: the system clock is wrong; chrony or systemd-timesyncd should "
                    "correct it (check `timedatectl`)"
                )
            return text
        ntp = timedatectl()
        if ntp is None:
            raise Skip("no GNSS time and timedatectl cannot tell whether NTP keeps the clock")
        if ntp.get("NTPSynchronized") == "yes":
            return "NTP synchronised (timedatectl); no GNSS time to compare"
        raise Fail(
            "no GNSS time and the clock is not NTP synchronised: evidence time stamps "
            "cannot be trusted (network for NTP, or a GPS fix)"
        )

    def _chrony_item(self) -> str | None:
        """chrony's verdict where it keeps the clock; None: fall back to the fixes and NTP."""
        t = self.cfg.time
        if t.chrony == "off":
            return None
        from agent.gps.chrony import ChronyMonitor, Health

        monitor = ChronyMonitor(t, threading.Event())
        monitor.poll_once()
        reading = monitor.reading()
        if reading is not None and reading.tracking.synchronised:
            st = reading.clock_state()
            bound = abs(st.offset_s or 0.0) + (st.error_s or 0.0)
            if bound > self.max_clock_offset_s:
                raise Fail(f"{reading.describe()}: the clock may be {bound:.3f} s off")
            return reading.describe()
        if t.chrony == "on" and monitor.health != Health.UNSYNCHRONISED:
            raise Fail(f"chrony: {monitor.detail} (sudo systemctl status chrony)")
        if reading is not None and self.clock.measured_state().offset_s is None:
            raise Fail(
                f"{reading.describe()} and no GNSS time: is gpsd running with -n "
                "(/etc/default/gpsd), and does the receiver have a fix?"
            )
        return None

    def serial_port(self) -> str:
        from agent.gps.receiver_setup import serial_item

        status, detail = serial_item(self.cfg, self.boot_root)
        if status == "SKIP":
            raise Skip(detail)
        if status == "FAIL":
            raise Fail(detail)
        return detail

    # ------------------------------------------------------------------ broker, delivery

    def broker(self) -> str:
        up = self.cfg.uplink
        if not up.enabled:
            raise Skip("the uplink is disabled in the config")
        self._not_while_running("MQTT identity")
        from agent.uplink.service import link_config

        detail = probe_broker(link_config(up, self.cfg.device.id))
        self.broker_ok = True
        return detail

    def segment(self) -> str:
        if not self.cfg.uplink.enabled:
            raise Skip("the uplink is disabled in the config")
        self._not_while_running("spool")
        if not self.broker_ok:
            raise Skip("the broker is not reachable (see the broker item)")
        from agent.storage.from_config import build_spool
        from agent.uplink.forwarder import Forwarder
        from agent.uplink.mqtt import MqttLink
        from agent.uplink.service import link_config

        cfg = self.cfg
        spool = build_spool(cfg, clock=self.clock.state)
        stop = threading.Event()
        try:
            put = spool.put_event(
                "selftest", {"note": "edge-agent selftest", "device": cfg.device.id}
            )
            link = MqttLink(link_config(cfg.uplink, cfg.device.id), stop)
            fwd = Forwarder(spool, link, cfg.device.id, cfg.uplink, stop)
            link.start()
            fwd.start()
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < self.ack_timeout:
                    if not any(i.seq == put.seq for i in spool.items(put.stream)):
                        took = time.monotonic() - t0
                        return (
                            f"{put.stream} #{put.seq} acknowledged by the platform in {took:.1f} s"
                        )
                    if fwd.stats.rejected:
                        raise Fail(
                            f"the platform refused {put.stream} #{put.seq} (see the log; "
                            "is this device's key enrolled there?)"
                        )
                    stop.wait(0.1)
            finally:
                stop.set()
                fwd.join(10)
                link.join(10)
            st = fwd.stats
            raise Fail(
                f"{put.stream} #{put.seq} not acknowledged within {self.ack_timeout:g} s "
                f"({st.chunks_sent} chunks sent, {st.keys_acked} key records acknowledged): "
                "is the platform's ingest running?"
            )
        finally:
            stop.set()
            spool.close()
            give_back(cfg.spool.dir)

    # ------------------------------------------------------------------ power, modem

    def power_item(self) -> str:
        return _bounded(lambda: check_power(self.cfg), 30.0, "power source")

    def modem_item(self) -> str:
        return _bounded(lambda: check_modem(self.cfg), 4 * self.cfg.cellular.timeout_s + 5,
                        "modem")  # fmt: skip


def check_power(cfg: AgentConfig) -> str:
    """The configured power source read once, and the firmware's under-voltage flags."""
    from agent.power.monitor import open_power_source
    from agent.power.throttle import ThrottleReader

    p = cfg.power
    flags = ThrottleReader(p.throttled, p.throttled_file).read()
    if flags is not None and flags.under_voltage:
        raise Fail(
            "the supply is under-voltage now (below 4.63 V): use the board's official supply "
            "(Pi 4: 5.1 V 3 A; Pi 5: 5.1 V 5 A) and a short, thick cable"
        )
    note = ""
    if flags is not None and flags.flag("under_voltage_occurred"):
        note = "; under-voltage occurred since boot (weak supply or cable?)"
    source = open_power_source(p)
    if source is None:
        if flags is None:
            raise Skip("no power source configured ([power] source = none)")
        return f"no battery configured; firmware flags {flags.to_json()['raw']}{note}"
    try:
        r = source.read()
    finally:
        source.close()
    parts = []
    if r.charge_pct is not None:
        parts.append(f"{r.charge_pct:.0f} %")
    parts.append("charging" if r.charging else "on external power" if r.external_power
                 else "on battery")  # fmt: skip
    if r.voltage_v is not None:
        parts.append(f"{r.voltage_v:.2f} V")
    text = f"{', '.join(parts)} ({r.source}){note}"
    if r.on_battery and r.charge_pct is not None and r.charge_pct <= p.critical_pct:
        raise Fail(f"battery critical: {text}: charge it before the device goes out")
    return text


def check_modem(cfg: AgentConfig) -> str:
    """ModemManager's view of the modem: present, SIM unlocked, registered, signal."""
    from agent.cellular.mmcli import ModemManagerLink

    c = cfg.cellular
    if c.source == "none":
        raise Skip("no cellular modem configured ([cellular] source = none)")
    r = ModemManagerLink(c.mmcli, c.modem, timeout_s=c.timeout_s,
                         signal_rate_s=c.signal_rate_s).read()  # fmt: skip
    problems = {
        "no-mmcli": "mmcli is not installed: apt-get install modemmanager",
        "no-modemmanager": "ModemManager is not running: systemctl enable --now ModemManager",
        "absent": "ModemManager finds no modem (mmcli -L): check the USB cable or HAT, its "
        "power, and that the modem is not in a mode ModemManager ignores",
        "locked": "the SIM is locked (PIN): unlock it (mmcli -i any --pin=...) or remove the PIN",
        "disabled": "the modem is disabled: mmcli -m any -e",
    }
    if r.state in problems:
        raise Fail(problems[r.state])
    if r.state == "failed":
        raise Fail(f"the modem failed ({r.failed_reason or 'unknown reason'}): a missing or "
                   "unusable SIM, or the modem's firmware")  # fmt: skip
    tech = "/".join(t.upper() for t in r.access_tech) or "-"
    op = r.operator or r.operator_code or "no operator"
    best = next((r.signal[t] for t in ("5g", "lte", "umts", "gsm") if t in r.signal), {})
    sig = f"signal {r.signal_pct if r.signal_pct is not None else '-'} %"
    if "rsrp" in best:
        sig += f", RSRP {best['rsrp']:.0f} dBm"
    elif "rssi" in best:
        sig += f", RSSI {best['rssi']:.0f} dBm"
    text = f"{tech} {r.registration or r.state}, {op}, {sig}"
    if not r.registered:
        raise Fail(f"not registered on a network ({text}): antenna, coverage, the SIM's plan")
    return text


def give_back(path: Path) -> None:
    """Run as root, files the self-test created in the service's spool would be root's, and
    the agent (user edge-agent) could not open them: give the tree to its parent's owner."""
    if os.geteuid() != 0 or not path.exists():
        return
    owner = path.parent.stat()
    if owner.st_uid == 0:
        return
    for p in [path, *path.rglob("*")]:
        st = p.lstat()
        if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            os.lchown(p, owner.st_uid, owner.st_gid)


def probe_broker(cfg: Any, timeout: float | None = None) -> str:
    """Connect once with the device's certificate, then disconnect; raise Fail with the
    reason a technician can act on (wrong CA, expired, refused, not authorised)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from agent.uplink.mqtt import (
        check_certificate,
        explain_connack,
        explain_tls_error,
        tls_context,
    )

    limit = timeout or cfg.connect_timeout_s
    try:
        check_certificate(cfg.cert)
        ctx = tls_context(cfg)
    except AgentError as exc:
        raise Fail(str(exc)) from None
    v5 = cfg.protocol == "mqtt5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else False,
        manual_ack=True,  # the device's queued messages stay queued for the agent
    )
    client.tls_set_context(ctx)
    client.connect_timeout = limit
    facts: dict[str, Any] = {}
    client.on_connect = lambda c, u, flags, reason, props: facts.setdefault("reason", reason)
    client.on_message = lambda c, u, msg: None

    def on_log(c: Any, u: Any, level: int, buf: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            facts["error"] = buf

    client.on_log = on_log
    try:
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # The agent's own expiry: a probe must not shorten or end the device's session.
            props.SessionExpiryInterval = cfg.session_expiry_s
            client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False,
                           properties=props)  # fmt: skip
        else:
            client.connect(cfg.host, cfg.port, cfg.keepalive_s)
    except (OSError, ssl.SSLError) as exc:
        raise Fail(explain_tls_error(exc, cfg)) from None
    try:
        deadline = time.monotonic() + limit
        while "reason" not in facts:
            rc = client.loop(0.1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                err = str(facts.get("error", ""))
                if "certificate" in err.lower() or "alert" in err.lower():
                    raise Fail(explain_tls_error(ssl.SSLError(err), cfg))
                raise Fail(
                    f"the broker at {cfg.host}:{cfg.port} closed the connection during setup"
                    f"{': ' + err if err else ''} (certificate refused?)"
                )
            if time.monotonic() > deadline:
                raise Fail(f"no answer from the broker at {cfg.host}:{cfg.port} within {limit:g} s")
        reason = facts["reason"]
        if reason.is_failure:
            raise Fail(explain_connack(reason, cfg))
        with contextlib.suppress(OSError, ValueError):
            client.disconnect()
            client.loop(0.2)
    finally:
        with contextlib.suppress(OSError):
            sock = client.socket()
            if sock is not None:
                sock.close()
    proto = "MQTT 5" if v5 else "MQTT 3.1.1"
    return f"connected to {cfg.host}:{cfg.port} as {cfg.client_id}, {proto}"


def run_selftest(
    config: Path,
    *,
    json_out: bool = False,
    gps_timeout: float = 60.0,
    ack_timeout: float = 60.0,
    max_clock_offset_s: float = MAX_CLOCK_OFFSET_S,
    overrides: Path | None = None,
) -> int:
    """The CLI's entry: load the config (with remote overrides), run, print; exit code."""
    from agent.config.remote import load_with_overrides

    try:
        cfg = load_with_overrides(config, overrides)
    except ConfigError as exc:
        raise ConfigError(f"self-test: {exc}") from None
    stream = sys.stderr if json_out else sys.stdout

    def progress(text: str) -> None:
        stream.write(text)
        stream.flush()

    progress(f"self-test of {cfg.device.id} ({cfg.device.profile}), config {config}\n")
    test = SelfTest(
        cfg,
        gps_timeout=gps_timeout,
        ack_timeout=ack_timeout,
        max_clock_offset_s=max_clock_offset_s,
    )
    # The parts' INFO lines (connected, disconnected) would break the one-line-per-item
    # display; warnings still show, and -v shows everything.
    quiet = logging.getLogger("agent")
    level = quiet.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        quiet.setLevel(logging.WARNING)
    try:
        report = test.run(progress)
    finally:
        quiet.setLevel(level)
    c = report.counts()
    progress(
        f"self-test {'PASSED' if report.ok else 'FAILED'}: {c['PASS']} pass, {c['FAIL']} fail, "
        f"{c['SKIP']} skipped\n"
    )
    if json_out:
        print(json.dumps(report.to_json(), indent=1))
    return 0 if report.ok else 1
