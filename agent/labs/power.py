"""Simulated twins of the power sources, behind the same interfaces as the real ones (for the
tests and ``make demo``; the real parts run on the rig: tests/hardware).

- :func:`lay_out_power_supply`: a power_supply class tree as the kernel lays it out (device
  directories under ``devices/``, the class directory of symlinks to them, one attribute per
  file with the kernel's names and units, each ending in a newline);
- :class:`Ina219Chip` on a :class:`SimBus`: register-level INA219 (configuration with reset,
  shunt and bus voltage registers in the datasheet's formats with CNVR/OVF, current and power
  from the calibration register); an address with no chip NAKs (EREMOTEIO), as smbus2 does;
- :class:`PiSugarServer`: pisugar-server's line protocol on 127.0.0.1 (or a Unix socket),
  with button events interleaved the way the real server sends them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socketserver
import threading
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------ power_supply class


def lay_out_power_supply(
    base: Path,
    supplies: dict[str, dict[str, str | int]],
    *,
    device_dir: str = "devices/platform/soc/fe804000.i2c/i2c-1/1-0036",
) -> Path:
    """Write ``supplies`` (name -> attributes) as the kernel would; returns the class dir
    (``base/class/power_supply``). Values are written as the kernel prints them."""
    cls = base / "class" / "power_supply"
    cls.mkdir(parents=True, exist_ok=True)
    for name, attrs in supplies.items():
        dev = base / device_dir / "power_supply" / name
        dev.mkdir(parents=True, exist_ok=True)
        uevent = [f"POWER_SUPPLY_NAME={name}"]
        for attr, value in attrs.items():
            set_attr(cls.parent.parent, name, attr, value, device_dir=device_dir)
            uevent.append(f"POWER_SUPPLY_{attr.upper()}={value}")
        (dev / "uevent").write_text("\n".join(uevent) + "\n")
        link = cls / name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(dev, cls))
    return cls


def set_attr(
    base: Path, supply: str, attr: str, value: str | int,
    *, device_dir: str = "devices/platform/soc/fe804000.i2c/i2c-1/1-0036",
) -> None:  # fmt: skip
    """Change one attribute (atomically, as a reader sees a sysfs attribute change)."""
    path = base / device_dir / "power_supply" / supply / attr
    tmp = path.with_name(f".{attr}.tmp")
    tmp.write_text(f"{value}\n")
    tmp.replace(path)


# ------------------------------------------------------------------ INA219


class Ina219Chip:
    """The INA219's registers as the datasheet (SBOS448) documents them.

    Set ``bus_volts`` (the bus voltage, V) and ``current_a`` (through the shunt, A; positive
    into the battery on a board wired as the Waveshare HATs are) to what the board would see.
    """

    RESET_CONFIG = 0x399F
    PGA_RANGE_LSB = (4000, 8000, 16000, 32000)  # 40, 80, 160, 320 mV in 10 µV steps

    def __init__(self, *, shunt_ohms: float = 0.01, bus_volts: float = 8.0,
                 current_a: float = -0.5) -> None:  # fmt: skip
        self.shunt_ohms = shunt_ohms
        self.bus_volts = bus_volts
        self.current_a = current_a
        self.config = self.RESET_CONFIG
        self.calibration = 0
        self.writes: list[tuple[int, int]] = []

    def _shunt(self) -> tuple[int, bool]:
        pga = (self.config >> 11) & 0x3
        limit = self.PGA_RANGE_LSB[pga]
        raw = round(self.current_a * self.shunt_ohms / 10e-6)
        return max(-limit, min(limit, raw)), abs(raw) > limit

    def read(self, register: int) -> int:
        shunt, over = self._shunt()
        if register == 0x00:
            return self.config
        if register == 0x01:
            return shunt & 0xFFFF
        bus_max = 0x1FFF if self.config & 0x2000 else 4000  # 32 V or 16 V range
        bus = max(0, min(bus_max, round(self.bus_volts / 0.004)))
        current = (shunt * self.calibration) // 4096
        if register == 0x02:
            return (bus << 3) | 0x2 | (1 if over else 0)
        if register == 0x03:
            return min(0xFFFF, abs(current) * bus // 5000)
        if register == 0x04:
            return current & 0xFFFF
        if register == 0x05:
            return self.calibration
        raise OSError(errno.EREMOTEIO, "Remote I/O error")  # no such register: NAK

    def write(self, register: int, value: int) -> None:
        self.writes.append((register, value))
        if register == 0x00:
            self.config = self.RESET_CONFIG if value & 0x8000 else value & 0x7FFF
        elif register == 0x05:
            self.calibration = value & 0xFFFE  # bit 0 is not used and reads 0
        else:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")


class FixedChip:
    """Something else at the address (an EEPROM, another sensor): every register reads the
    same bytes and writes are ignored."""

    def __init__(self, value: int = 0xFFFF) -> None:
        self.value = value

    def read(self, register: int) -> int:
        return self.value

    def write(self, register: int, value: int) -> None:
        pass


class SimBus:
    """An I2C bus with chips at addresses, offering smbus2's block read/write calls."""

    def __init__(self, chips: dict[int, Any] | None = None) -> None:
        self.chips: dict[int, Any] = dict(chips or {})
        self.closed = False

    def _chip(self, addr: int) -> Any:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        chip = self.chips.get(addr)
        if chip is None:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return chip

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        value = self._chip(i2c_addr).read(register)
        return [(value >> 8) & 0xFF, value & 0xFF][:length]

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None:
        self._chip(i2c_addr).write(register, (data[0] << 8) | data[1])

    def close(self) -> None:
        self.closed = True


# ------------------------------------------------------------------ PiSugar


#: pisugar-server's ``get`` commands (its README's table).
GET_COMMANDS = frozenset(
    {"firmware_version", "battery", "battery_i", "battery_v", "battery_charging",
     "battery_input_protect_enabled", "model", "battery_keep_input", "battery_led_amount",
     "battery_power_plugged", "battery_charging_range", "battery_allow_charging",
     "battery_output_enabled", "rtc_time", "rtc_alarm_enabled", "rtc_alarm_time",
     "alarm_repeat", "button_enable", "button_shell", "safe_shutdown_level",
     "safe_shutdown_delay", "auth_username", "anti_mistouch", "soft_poweroff",
     "soft_poweroff_shell", "temperature", "input_protect"}
)  # fmt: skip


class PiSugarServer:
    """pisugar-server's TCP (or Unix socket) API: ``get <name>`` -> ``<name>: <value>``.

    ``values`` holds the answers (strings, as the server prints them); a known command missing
    from it gets ``name: Not supported``, an unknown one the server's usage error (no prefix).
    ``events`` are sent before each answer (button presses). ``raw`` replaces every answer
    with those bytes.
    """

    def __init__(self, *, unix: Path | None = None) -> None:
        self.values: dict[str, str] = {
            "model": "PiSugar 3",
            "battery": "87.5",
            "battery_v": "4.08",
            "battery_charging": "false",
            "battery_power_plugged": "false",
            "battery_allow_charging": "true",
        }
        self.events: list[str] = []
        self.raw: bytes | None = None
        self.requests: list[str] = []
        self.unix = unix
        self._lock = threading.Lock()
        owner = self

        self._conns: set[Any] = set()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with owner._lock:
                    owner._conns.add(self.connection)
                for line in self.rfile:
                    req = line.decode("utf-8", "replace").strip()
                    if not req:
                        continue
                    self.wfile.write(owner.answer(req))

        self._server: socketserver.BaseServer
        if unix is not None:
            self._server = socketserver.ThreadingUnixStreamServer(str(unix), Handler)
        else:
            self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="pisugar-sim",
                                        daemon=True)  # fmt: skip

    @property
    def port(self) -> int:
        addr = self._server.server_address
        return int(addr[1]) if isinstance(addr, tuple) else 0

    def answer(self, req: str) -> bytes:
        with self._lock:
            self.requests.append(req)
            if self.raw is not None:
                return self.raw
            out = "".join(f"{e}\n" for e in self.events)
            parts = req.split(" ")
            if len(parts) == 2 and parts[0] == "get" and parts[1] in self.values:
                return (out + f"{parts[1]}: {self.values[parts[1]]}\n").encode()
            if len(parts) == 2 and parts[0] == "get" and parts[1] in GET_COMMANDS:
                # a command the server knows but this model's chip cannot answer
                return (out + f"{parts[1]}: Not supported\n").encode()
            return (out + f"error: unrecognized subcommand '{parts[-1]}'\n\nUsage: <COMMAND>\n"
                    "Hint: use 'help' to see all available commands\n").encode()  # fmt: skip

    def start(self) -> PiSugarServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection (as a restart of the server does)."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(2)  # SHUT_RDWR
        self._thread.join(5)
        if self.unix is not None:
            with contextlib.suppress(OSError):
                self.unix.unlink()
