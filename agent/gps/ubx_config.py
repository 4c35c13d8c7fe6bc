"""``edge-agent gps configure``: set up a u-blox receiver over UBX, each step acknowledged.

What is set (``[receiver]`` in the config, or the command's options):

* the **measurement rate** (navigation solutions per second);
* the **constellations**: GPS + Galileo + BeiDou by default (BeiDou is the constellation best
  seen over a city in China); each of GPS, SBAS, Galileo, BeiDou, QZSS, GLONASS is enabled
  when named and disabled when not (u-blox M8 tracks at most three major systems at once);
* the **dynamic platform model**: automotive for trucks (tracker, dashcam), pedestrian for
  body cameras: the receiver's filter assumes that kind of motion;
* **saved**, so a power cycle keeps it.

Receivers differ by generation, which MON-VER tells (its ``PROTVER`` extension, else the
hardware version):

* **up to generation 8** (protocol < 23.01: u-blox 6/7/M8): the message interface: CFG-RATE,
  CFG-GNSS (polled first, its blocks changed and sent back whole), CFG-NAV5 (``dyn`` mask),
  then CFG-CFG with ``saveMask`` to BBR, flash and EEPROM;
* **generation 9 and later** (protocol >= 23.01: F9, M9, M10): the configuration database:
  CFG-VALSET with the keys CFG-RATE-MEAS/NAV, CFG-SIGNAL-*, CFG-NAVSPG-DYNMODEL, written to the
  RAM, BBR and flash layers at once (a module without flash refuses the flash layer: the step
  is retried with RAM and BBR, and says so).

Every SET is answered by UBX ACK-ACK (done) or ACK-NAK (refused); no answer within
``ack_timeout_s`` is a timeout. NMEA sentences and noise interleaved on the line are skipped:
only checksummed UBX frames count. The messages are built and parsed with pyubx2.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.errors import SourceError
from agent.gps.time_settings import CONSTELLATIONS, DYNAMIC_MODELS

if TYPE_CHECKING:
    from pyubx2 import UBXMessage

log = logging.getLogger(__name__)

SYNC = b"\xb5\x62"
MAX_PAYLOAD = 4096  # longer "frames" are noise that happened to contain the sync bytes
MAX_BUFFER = 64 * 1024
#: CFG-GNSS gnssId of each constellation (u-blox M8 interface description).
GNSS_IDS = {"gps": 0, "sbas": 1, "galileo": 2, "beidou": 3, "qzss": 5, "glonass": 6}
#: Generation 9+ configuration keys: each constellation's switch and its primary L1 signal.
SIGNAL_KEYS = {
    "gps": ("CFG_SIGNAL_GPS_ENA", "CFG_SIGNAL_GPS_L1CA_ENA"),
    "sbas": ("CFG_SIGNAL_SBAS_ENA", "CFG_SIGNAL_SBAS_L1CA_ENA"),
    "galileo": ("CFG_SIGNAL_GAL_ENA", "CFG_SIGNAL_GAL_E1_ENA"),
    "beidou": ("CFG_SIGNAL_BDS_ENA", "CFG_SIGNAL_BDS_B1_ENA"),
    "qzss": ("CFG_SIGNAL_QZSS_ENA", "CFG_SIGNAL_QZSS_L1CA_ENA"),
    "glonass": ("CFG_SIGNAL_GLO_ENA", "CFG_SIGNAL_GLO_L1_ENA"),
}
#: CFG-CFG saveMask: every section (ioPort, msgConf, infMsg, navConf, rxmConf, senConf, ...).
SAVE_ALL = b"\x1f\x1f\x00\x00"
LAYER_RAM, LAYER_BBR, LAYER_FLASH = 1, 2, 4
HW_GENERATIONS = {"00040007": 6, "00070000": 7, "00080000": 8, "00190000": 9, "000A0000": 10}


class Stream(Protocol):
    """A serial port as pyserial opens it (``timeout`` set: ``read`` returns what came)."""

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...


class Outcome:
    ACKNOWLEDGED = "acknowledged"
    REFUSED = "refused"  # ACK-NAK
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Step:
    name: str
    outcome: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.ACKNOWLEDGED

    def line(self) -> str:
        return f"{self.name} ... {self.outcome.upper()}" + (
            f" ({self.detail})" if self.detail else ""
        )


@dataclass(frozen=True)
class ReceiverVersion:
    software: str
    hardware: str
    extensions: tuple[str, ...]

    @property
    def protocol(self) -> float | None:
        """PROTVER from the extensions (``PROTVER=18.00`` or ``PROTVER 15.00``)."""
        for ext in self.extensions:
            m = re.match(r"PROTVER[= ]\s*(\d{1,2}\.\d{1,2})", ext)
            if m:
                return float(m.group(1))
        return None

    @property
    def generation(self) -> int | None:
        proto = self.protocol
        if proto is not None:
            return 9 if proto >= 23.01 else 8 if proto >= 15.0 else 7
        return HW_GENERATIONS.get(self.hardware.upper())

    @property
    def uses_valset(self) -> bool:
        gen = self.generation
        return gen is not None and gen >= 9

    def describe(self) -> str:
        model = next((e.split("=", 1)[1] for e in self.extensions if e.startswith("MOD=")), "")
        proto = self.protocol
        return ", ".join(
            p
            for p in (
                f"u-blox {model}" if model else "u-blox",
                f"hw {self.hardware}",
                f"protocol {proto:.2f}" if proto is not None else "",
                f"generation {self.generation}" if self.generation else "generation unknown",
            )
            if p
        )


@dataclass(frozen=True)
class Plan:
    rate_hz: float = 1.0
    constellations: tuple[str, ...] = ("gps", "galileo", "beidou")
    dynamic_model: str = "automotive"
    save: bool = True

    def __post_init__(self) -> None:
        bad = [c for c in self.constellations if c not in CONSTELLATIONS]
        if bad or "gps" not in self.constellations:
            raise ValueError(f"constellations: {self.constellations} (gps, plus {CONSTELLATIONS})")
        if self.dynamic_model not in DYNAMIC_MODELS:
            raise ValueError(f"dynamic model {self.dynamic_model!r}")
        if not 0.1 <= self.rate_hz <= 25:
            raise ValueError(f"rate {self.rate_hz} Hz: must be 0.1..25")

    @property
    def meas_ms(self) -> int:
        return round(1000 / self.rate_hz)


@dataclass
class Report:
    port: str
    plan: Plan
    version: ReceiverVersion | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def is_ublox(self) -> bool:
        return self.version is not None

    @property
    def ok(self) -> bool:
        return self.is_ublox and all(s.ok for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        v = self.version
        return {
            "port": self.port,
            "ok": self.ok,
            "receiver": None
            if v is None
            else {
                "software": v.software,
                "hardware": v.hardware,
                "protocol": v.protocol,
                "generation": v.generation,
                "extensions": list(v.extensions),
            },
            "plan": {
                "rate_hz": self.plan.rate_hz,
                "constellations": list(self.plan.constellations),
                "dynamic_model": self.plan.dynamic_model,
                "save": self.plan.save,
            },
            "steps": [
                {"step": s.name, "outcome": s.outcome, "detail": s.detail} for s in self.steps
            ],
        }


# --------------------------------------------------------------------------- frames


def checksum(body: bytes) -> bytes:
    """UBX's 8-bit Fletcher checksum over class, id, length and payload."""
    a = b = 0
    for byte in body:
        a = (a + byte) & 0xFF
        b = (b + a) & 0xFF
    return bytes((a, b))


class FrameReader:
    """Checksummed UBX frames out of a byte stream that also carries NMEA and noise."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0  # bytes that were not part of a good UBX frame

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                keep = 1 if self._buf.endswith(SYNC[:1]) else 0
                self.skipped += len(self._buf) - keep
                del self._buf[: len(self._buf) - keep]
                return
            if start:
                self.skipped += start
                del self._buf[:start]
            if len(self._buf) < 6:
                return
            length = int.from_bytes(self._buf[4:6], "little")
            if length > MAX_PAYLOAD:
                self.skipped += 2
                del self._buf[:2]
                continue
            if len(self._buf) < 8 + length:
                if len(self._buf) > MAX_BUFFER:  # cannot happen with MAX_PAYLOAD; bound anyway
                    self._buf.clear()
                return
            frame = bytes(self._buf[: 8 + length])
            if checksum(frame[2:-2]) != frame[-2:]:
                self.skipped += 2
                del self._buf[:2]  # a false sync inside noise: look again one byte on
                continue
            del self._buf[: 8 + length]
            yield frame


class UbxLink:
    """Sends UBX messages and waits for the frames that answer them."""

    def __init__(
        self,
        stream: Stream,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self._monotonic = monotonic
        self.frames = FrameReader()
        self._pending: list[UBXMessage] = []

    def send(self, msg: UBXMessage) -> None:
        try:
            self.stream.write(msg.serialize())
        except OSError as exc:  # pyserial's SerialException is an OSError: unplugged
            raise SourceError(f"the receiver's port failed: {exc}") from None

    def _parse(self, frame: bytes) -> UBXMessage | None:
        from pyubx2 import UBXReader

        try:
            return UBXReader.parse(frame)
        except Exception:  # pyubx2 raises several types for what it cannot decode
            log.debug("UBX frame %s not decoded", frame[:8].hex())
            return None

    def wait(self, match: Callable[[UBXMessage], bool], timeout: float) -> UBXMessage | None:
        """The first message ``match`` accepts, or None after ``timeout`` seconds."""
        deadline = self._monotonic() + timeout
        while True:
            for i, msg in enumerate(self._pending):
                if match(msg):
                    del self._pending[: i + 1]
                    return msg
            self._pending.clear()
            if self._monotonic() >= deadline:
                return None
            try:
                data = self.stream.read(512)
            except OSError as exc:
                raise SourceError(f"the receiver's port failed: {exc}") from None
            for frame in self.frames.feed(data):
                msg = self._parse(frame)
                if msg is not None:
                    self._pending.append(msg)

    def acknowledged(self, msg: UBXMessage, timeout: float) -> tuple[str, UBXMessage | None]:
        """Send ``msg``; (outcome, the ACK/NAK) by the ACK naming its class and id."""
        cls, mid = msg.msg_cls[0], msg.msg_id[0]

        def is_ack(m: UBXMessage) -> bool:
            return m.identity in ("ACK-ACK", "ACK-NAK") and (m.clsID, m.msgID) == (cls, mid)

        self.send(msg)
        ack = self.wait(is_ack, timeout)
        if ack is None:
            return Outcome.TIMEOUT, None
        return (Outcome.ACKNOWLEDGED if ack.identity == "ACK-ACK" else Outcome.REFUSED), ack

    def poll(self, identity: str, timeout: float) -> UBXMessage | None:
        """Poll ``identity`` (e.g. ``MON-VER``) and return its answer."""
        from pyubx2 import POLL, UBXMessage

        cls, _, _ = identity.partition("-")
        self.send(UBXMessage(cls, identity, POLL))
        return self.wait(lambda m: m.identity == identity, timeout)


# --------------------------------------------------------------------------- the steps


def _text(value: object) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode()
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()


def read_version(link: UbxLink, timeout: float) -> ReceiverVersion | None:
    """MON-VER (asked twice: a receiver waking from power save may miss the first poll)."""
    for _ in range(2):
        msg = link.poll("MON-VER", timeout)
        if msg is not None:
            exts = []
            i = 1
            while hasattr(msg, f"extension_{i:02d}"):
                exts.append(_text(getattr(msg, f"extension_{i:02d}")))
                i += 1
            return ReceiverVersion(_text(msg.swVersion), _text(msg.hwVersion), tuple(exts))
    return None


def _step(name: str, outcome: str, ack: object, ok_detail: str) -> Step:
    if outcome == Outcome.ACKNOWLEDGED:
        return Step(name, outcome, ok_detail)
    if outcome == Outcome.REFUSED:
        return Step(name, outcome, "the receiver answered ACK-NAK")
    return Step(name, outcome, "no ACK-ACK or ACK-NAK")


def configure_legacy(link: UbxLink, plan: Plan, timeout: float) -> list[Step]:
    """Generation <= 8: CFG-RATE, CFG-GNSS, CFG-NAV5, CFG-CFG."""
    from pyubx2 import SET, UBXMessage

    steps = []
    rate = UBXMessage("CFG", "CFG-RATE", SET, measRate=plan.meas_ms, navRate=1, timeRef=1)
    outcome, ack = link.acknowledged(rate, timeout)
    steps.append(_step("measurement rate (CFG-RATE)", outcome, ack,
                       f"{plan.rate_hz:g} Hz, {plan.meas_ms} ms"))  # fmt: skip
    steps.append(_gnss_legacy(link, plan, timeout))
    nav5 = UBXMessage("CFG", "CFG-NAV5", SET, dyn=1, dynModel=DYNAMIC_MODELS[plan.dynamic_model])
    outcome, ack = link.acknowledged(nav5, timeout)
    steps.append(_step("dynamic model (CFG-NAV5)", outcome, ack, plan.dynamic_model))
    if plan.save:
        save = UBXMessage("CFG", "CFG-CFG", SET, saveMask=SAVE_ALL, devBBR=1, devFlash=1,
                          devEEPROM=1)  # fmt: skip
        outcome, ack = link.acknowledged(save, timeout)
        steps.append(_step("save (CFG-CFG)", outcome, ack, "to BBR, flash and EEPROM"))
    return steps


def _gnss_legacy(link: UbxLink, plan: Plan, timeout: float) -> Step:
    from pyubx2 import SET, UBXMessage

    name = "constellations (CFG-GNSS)"
    current = link.poll("CFG-GNSS", timeout)
    if current is None:
        return Step(name, Outcome.TIMEOUT, "no answer to the CFG-GNSS poll")
    # The poll is acknowledged after its answer; take that ACK off the line.
    link.wait(lambda m: m.identity == "ACK-ACK" and m.msgID == 0x3E, min(timeout, 0.5))
    n = int(current.numConfigBlocks)
    if not 0 < n <= 16:
        return Step(name, Outcome.SKIPPED, f"the receiver reports {n} GNSS blocks")
    wanted = {GNSS_IDS[c] for c in plan.constellations}
    managed = set(GNSS_IDS.values())
    fields: dict[str, Any] = {
        "msgVer": 0,
        "numTrkChHw": current.numTrkChHw,
        "numTrkChUse": current.numTrkChUse,
        "numConfigBlocks": n,
    }
    seen = set()
    for i in range(1, n + 1):
        k = f"_{i:02d}"
        gid = int(getattr(current, "gnssId" + k))
        seen.add(gid)
        enable = int(getattr(current, "enable" + k))
        mask = int(getattr(current, "sigCfMask" + k))
        if gid in managed:
            enable = int(gid in wanted)
            if enable and not mask:
                mask = 0x01  # the system's L1 signal
        fields.update({"gnssId" + k: gid, "resTrkCh" + k: getattr(current, "resTrkCh" + k),
                       "maxTrkCh" + k: getattr(current, "maxTrkCh" + k),
                       "enable" + k: enable, "sigCfMask" + k: mask})  # fmt: skip
    outcome, ack = link.acknowledged(UBXMessage("CFG", "CFG-GNSS", SET, **fields), timeout)
    missing = [c for c in plan.constellations if GNSS_IDS[c] not in seen]
    detail = ", ".join(plan.constellations)
    if missing:
        detail += f"; this receiver has no {', '.join(missing)}"
    step = _step(name, outcome, ack, detail)
    if outcome == Outcome.REFUSED:
        step = Step(name, outcome, f"ACK-NAK: this receiver cannot track {detail} together")
    return step


def configure_valset(link: UbxLink, plan: Plan, timeout: float) -> list[Step]:
    """Generation 9+: CFG-VALSET into RAM, BBR and flash (RAM only without ``save``)."""
    groups: list[tuple[str, list[tuple[str, int]], str]] = [
        ("measurement rate (CFG-RATE-MEAS)",
         [("CFG_RATE_MEAS", plan.meas_ms), ("CFG_RATE_NAV", 1)],
         f"{plan.rate_hz:g} Hz, {plan.meas_ms} ms"),
        ("constellations (CFG-SIGNAL)", _signal_keys(plan), ", ".join(plan.constellations)),
        ("dynamic model (CFG-NAVSPG-DYNMODEL)",
         [("CFG_NAVSPG_DYNMODEL", DYNAMIC_MODELS[plan.dynamic_model])], plan.dynamic_model),
    ]  # fmt: skip
    layers = LAYER_RAM | LAYER_BBR | LAYER_FLASH if plan.save else LAYER_RAM
    return [_valset(link, name, keys, detail, layers, timeout) for name, keys, detail in groups]


def _signal_keys(plan: Plan) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for c in CONSTELLATIONS:
        system, signal = SIGNAL_KEYS[c]
        if c in plan.constellations:
            keys += [(system, 1), (signal, 1)]
        else:
            keys.append((system, 0))
    return keys


def _layer_names(layers: int) -> str:
    names = [n for bit, n in ((1, "RAM"), (2, "BBR"), (4, "flash")) if layers & bit]
    return ", ".join(names)


def _valset(
    link: UbxLink, name: str, keys: list[tuple[str, int]], detail: str, layers: int, timeout: float
) -> Step:
    from pyubx2 import TXN_NONE, UBXMessage

    outcome, ack = link.acknowledged(UBXMessage.config_set(layers, TXN_NONE, keys), timeout)
    if outcome == Outcome.REFUSED and layers & LAYER_FLASH:
        # Modules without flash refuse the flash layer: RAM and BBR still keep it across a
        # power cycle while the backup supply holds.
        retry = layers & ~LAYER_FLASH
        outcome, ack = link.acknowledged(UBXMessage.config_set(retry, TXN_NONE, keys), timeout)
        if outcome == Outcome.ACKNOWLEDGED:
            return Step(name, outcome, f"{detail}; into {_layer_names(retry)}: the receiver "
                        "refused the flash layer (no flash?)")  # fmt: skip
    return _step(name, outcome, ack, f"{detail}; into {_layer_names(layers)}")


def configure(stream: Stream, plan: Plan, *, port: str = "", timeout: float = 3.0) -> Report:
    """Ask MON-VER; configure a u-blox receiver by its generation. Never raises for what the
    receiver answers (or does not): the report says what happened at each step."""
    link = UbxLink(stream)
    report = Report(port, plan)
    report.version = read_version(link, timeout)
    if report.version is None:
        report.steps.append(
            Step("identify (MON-VER)", Outcome.TIMEOUT,
                 "no UBX answer: not a u-blox receiver, or the wrong port or baud rate")
        )  # fmt: skip
        return report
    v = report.version
    report.steps.append(Step("identify (MON-VER)", Outcome.ACKNOWLEDGED, v.describe()))
    steps = (
        configure_valset(link, plan, timeout)
        if v.uses_valset
        else configure_legacy(link, plan, timeout)
    )
    report.steps += steps
    log.info(
        "receiver on %s (%s): %s",
        port,
        v.describe(),
        "; ".join(s.line() for s in report.steps[1:]),
    )
    return report


def open_port(port: str, baud: int) -> Any:
    """The receiver's port, exclusively (the agent or gpsd holding it would eat the ACKs)."""
    import serial

    try:
        return serial.Serial(port, baudrate=baud, timeout=0.05, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        hint = ""
        if "busy" in str(exc).lower() or "lock" in str(exc).lower():
            hint = (
                " (held by the agent or gpsd: sudo systemctl stop edge-agent gpsd.socket gpsd, "
                "configure, then start them again)"
            )
        raise SourceError(f"cannot open the receiver on {port}: {exc}{hint}") from None


def configure_port(port: str, baud: int, plan: Plan, *, timeout: float = 3.0) -> Report:
    """Open ``port``, configure, close."""
    stream = open_port(port, baud)
    try:
        return configure(stream, plan, port=port, timeout=timeout)
    finally:
        stream.close()
