"""A simulated u-blox receiver behind a pseudo-terminal: the twin of the real one for the
configure tests. It reads UBX with pyubx2's own stream reader (not the agent's frame reader),
answers with frames pyubx2 builds (MON-VER, CFG-GNSS, ACK-ACK, ACK-NAK), keeps the
configuration it was given, and can NAK chosen messages, refuse the flash layer, stay silent,
or talk NMEA and noise between its answers, as real receivers do.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from dataclasses import dataclass, field
from pathlib import Path

from pyubx2 import GET, POLL, SET, UBXMessage, UBXReader

NMEA = b"$GNRMC,120000.00,A,5200.0000,N,00500.0000,E,0.0,,010125,,,A*7B\r\n"
NOISE = b"\x00\xb5\x62\x06\xff\xffjunk\xb5\x62\x01\x07\x05\x00\x01\x02\r\n\xff"


def _c(text: str, n: int) -> bytes:
    return text.encode().ljust(n, b"\x00")


def mon_ver(generation: int) -> UBXMessage:
    if generation >= 9:
        exts = ["ROM BASE 0x118B2060", "FWVER=HPG 1.32", "PROTVER=27.31", "MOD=ZED-F9P",
                "GPS;GLO;GAL;BDS", "SBAS;QZSS"]  # fmt: skip
        sw, hw = "EXT CORE 1.00 (0fa0ae)", "00190000"
    else:
        exts = ["ROM BASE 3.01 (107888)", "FWVER=SPG 3.01", "PROTVER=18.00", "MOD=NEO-M8N",
                "GPS;GLO;GAL;BDS", "SBAS;IMES;QZSS"]  # fmt: skip
        sw, hw = "EXT CORE 3.01 (111141)", "00080000"
    payload = _c(sw, 30) + _c(hw, 10) + b"".join(_c(e, 30) for e in exts)
    return UBXMessage("MON", "MON-VER", GET, payload=payload)


class _Stream:
    """The pty master as a blocking byte stream for UBXReader, ending when stopped."""

    def __init__(self, fd: int, stop: threading.Event) -> None:
        self.fd, self.stop = fd, stop

    def read(self, n: int = 1) -> bytes:
        out = b""
        while len(out) < n and not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    out += os.read(self.fd, n - len(out))
                except OSError:
                    self.stop.set()
        return out


@dataclass
class SimReceiver:
    link: Path
    generation: int = 8
    nak: set[str] = field(default_factory=set)  # identities answered with ACK-NAK
    no_flash: bool = False  # CFG-VALSET with the flash layer is refused
    silent: bool = False  # reads everything, answers nothing
    chatter: bool = True  # NMEA and noise before and after every answer
    # What the receiver holds after configuration:
    meas_ms: int = 1000
    dyn_model: int = 0
    enabled: dict[int, bool] = field(
        default_factory=lambda: {0: True, 1: True, 2: True, 3: False, 5: True, 6: True}
    )
    saved: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(os.ttyname(self.slave))
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        for fd in (self.master, self.slave):
            os.close(fd)
        if self.link.is_symlink():
            self.link.unlink()

    # ------------------------------------------------------------------ the receiver

    def _send(self, *msgs: UBXMessage) -> None:
        data = b"".join(m.serialize() for m in msgs)
        if self.chatter:
            data = NMEA + NOISE + data + NMEA
        os.write(self.master, data)

    def _ack(self, msg: UBXMessage, ok: bool) -> UBXMessage:
        kind = "ACK-ACK" if ok else "ACK-NAK"
        return UBXMessage("ACK", kind, GET, clsID=msg.msg_cls[0], msgID=msg.msg_id[0])

    def _serve(self) -> None:
        reader = UBXReader(_Stream(self.master, self.stop), msgmode=SET, quitonerror=0)
        while not self.stop.is_set():
            try:
                raw, _ = reader.read()
            except Exception:
                continue
            if raw is None or self.stop.is_set():
                continue
            if len(raw) == 8:  # an empty payload: a poll
                msg = UBXReader.parse(raw, msgmode=POLL)
            else:
                msg = UBXReader.parse(raw, msgmode=SET)
            self.received.append(msg.identity)
            if self.silent:
                continue
            self._answer(msg)

    def _answer(self, msg: UBXMessage) -> None:
        ident = msg.identity
        if ident == "MON-VER":
            self._send(mon_ver(self.generation))
        elif ident == "CFG-GNSS" and msg.length == 0:
            if self.generation >= 10:  # generation 10 removed the legacy CFG messages
                self._send(self._ack(msg, False))
                return
            blocks: dict[str, int] = {"msgVer": 0, "numTrkChHw": 32, "numTrkChUse": 32,
                                      "numConfigBlocks": len(self.enabled)}  # fmt: skip
            for i, (gid, on) in enumerate(sorted(self.enabled.items()), 1):
                k = f"_{i:02d}"
                blocks.update({"gnssId" + k: gid, "resTrkCh" + k: 4 if gid in (0, 6) else 1,
                               "maxTrkCh" + k: 16, "enable" + k: int(on),
                               "sigCfMask" + k: 1 if on else 0})  # fmt: skip
            self._send(UBXMessage("CFG", "CFG-GNSS", GET, **blocks), self._ack(msg, True))
        elif ident in self.nak:
            self._send(self._ack(msg, False))
        elif ident == "CFG-RATE":
            self.meas_ms = msg.measRate
            self._send(self._ack(msg, True))
        elif ident == "CFG-NAV5":
            if msg.dyn:
                self.dyn_model = msg.dynModel
            self._send(self._ack(msg, True))
        elif ident == "CFG-GNSS":
            for i in range(1, msg.numConfigBlocks + 1):
                k = f"_{i:02d}"
                self.enabled[getattr(msg, "gnssId" + k)] = bool(getattr(msg, "enable" + k))
            self._send(self._ack(msg, True))
        elif ident == "CFG-CFG":
            self.saved.append("flash" if msg.devFlash else "bbr")
            self._send(self._ack(msg, True))
        elif ident == "CFG-VALSET":
            if self.no_flash and msg.flash:
                self._send(self._ack(msg, False))
                return
            self._valset(msg)
            self.saved.append("flash" if msg.flash else "bbr" if msg.bbr else "ram")
            self._send(self._ack(msg, True))
        else:
            self._send(self._ack(msg, False))

    def _valset(self, msg: UBXMessage) -> None:
        ids = {"GPS": 0, "SBAS": 1, "GAL": 2, "BDS": 3, "QZSS": 5, "GLO": 6}
        for name, value in vars(msg).items():
            if name == "CFG_RATE_MEAS":
                self.meas_ms = value
            elif name == "CFG_NAVSPG_DYNMODEL":
                self.dyn_model = value
            elif name.startswith("CFG_SIGNAL_") and name.count("_") == 3 and name.endswith("_ENA"):
                self.enabled[ids[name.split("_")[2]]] = bool(value)
