"""PiSugar's power manager server (pisugar-server), over its TCP or Unix socket API.

The protocol is line based: the client sends ``get battery\\n``, the server answers
``battery: 87.5\\n`` (the command name, a colon, the value; an error text in place of the
value when the chip cannot be read). The same connection also carries button events
(``single``, ``double``, ``long``) at any time, so an answer is the first line that starts
with the command's name. Commands used: ``battery`` (percent), ``battery_v`` (volts),
``battery_i`` (amperes, PiSugar 2 only), ``battery_charging``, ``battery_power_plugged`` and
``battery_allow_charging`` (the newer models report charging through these two).
"""

from __future__ import annotations

import contextlib
import math
import socket
import time

from agent.errors import SourceError
from agent.power.reading import PowerReading
from agent.power.settings import PiSugarSettings

MAX_LINE = 4096


class PiSugarPower:
    def __init__(self, settings: PiSugarSettings) -> None:
        self.s = settings
        self._sock: socket.socket | None = None
        self._buf = b""

    @property
    def name(self) -> str:
        if self.s.socket is not None:
            return f"pisugar:{self.s.socket}"
        return f"pisugar:{self.s.host}:{self.s.port}"

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            if self.s.socket is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.s.timeout_s)
                sock.connect(str(self.s.socket))
            else:
                sock = socket.create_connection((self.s.host, self.s.port), self.s.timeout_s)
                sock.settimeout(self.s.timeout_s)
        except OSError as exc:
            raise SourceError(
                f"{self.name}: cannot connect ({exc}): is pisugar-server installed and running? "
                "(systemctl status pisugar-server)"
            ) from None
        self._sock, self._buf = sock, b""
        return sock

    def _line(self, sock: socket.socket, deadline: float) -> str:
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise SourceError(f"{self.name}: garbage (a line over {MAX_LINE} bytes)")
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError(f"{self.name}: no answer within {self.s.timeout_s:g} s")
            sock.settimeout(left)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                raise SourceError(f"{self.name}: no answer within {self.s.timeout_s:g} s") from None
            if not data:
                raise SourceError(f"{self.name}: the server closed the connection")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace").strip()

    def _get(self, what: str) -> str:
        sock = self._connect()
        try:
            sock.sendall(f"get {what}\n".encode())
            deadline = time.monotonic() + self.s.timeout_s
            prefix = f"{what}:"
            while True:
                line = self._line(sock, deadline)
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
                # a button event ("single", "double", "long") or an error text: not ours
        except OSError as exc:
            self.close()
            raise SourceError(f"{self.name}: {exc}") from None
        except SourceError:
            self.close()
            raise

    def _number(self, what: str, required: bool) -> float | None:
        text = self._get(what)
        try:
            value = float(text)
        except ValueError:
            if required:
                raise SourceError(f"{self.name}: {what}: {text[:80]!r}") from None
            return None
        if not math.isfinite(value):
            raise SourceError(f"{self.name}: {what}: {text[:80]!r} is not a number")
        return value

    def _flag(self, what: str) -> bool | None:
        return {"true": True, "false": False}.get(self._get(what).lower())

    def read(self) -> PowerReading:
        charge = self._number("battery", required=True)
        volts = self._number("battery_v", required=False)
        amps = self._number("battery_i", required=False)
        plugged = self._flag("battery_power_plugged")
        allowed = self._flag("battery_allow_charging")
        if plugged is not None:
            charging: bool | None = plugged and allowed is not False
        else:
            charging = self._flag("battery_charging")
        if charge is not None and charge > 100.0 and charge <= 101.0:
            charge = 100.0  # the server's curve may overshoot a little at full charge
        return PowerReading(
            source=self.name,
            charge_pct=charge,
            charging=charging,
            external_power=plugged if plugged is not None else (True if charging else None),
            voltage_v=volts,
            current_a=amps,
        )

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf = b""
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
