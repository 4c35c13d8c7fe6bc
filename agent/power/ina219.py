"""An INA219 on I2C (Waveshare-style UPS HATs), read through smbus2.

The INA219 (TI datasheet SBOS448) has six 16-bit registers, sent most significant byte
first: 0x00 configuration, 0x01 shunt voltage (signed, LSB 10 µV), 0x02 bus voltage (bits
15..3 the voltage with LSB 4 mV, bit 1 CNVR "conversion ready", bit 0 OVF "math overflow"),
0x03 power and 0x04 current (both scaled by the calibration in 0x05). The battery current is
the shunt voltage over the shunt resistor, so no calibration is needed; the charge comes from
the bus voltage through a per-cell voltage-to-charge curve.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from typing import Protocol

from agent.errors import SourceError
from agent.power.reading import PowerReading, charge_from_curve
from agent.power.settings import Ina219Settings

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_CALIBRATION = 0x05
#: BRNG 32 V | PGA /8 (+/-320 mV) | bus and shunt ADC 12 bit, 32 samples | continuous.
CONFIG = 0x2000 | 0x1800 | (0xD << 7) | (0xD << 3) | 0x7
BUS_LSB_V = 0.004
SHUNT_LSB_V = 10e-6
NAK_ERRNOS = (errno.EREMOTEIO, errno.ENXIO, errno.EIO)


class I2cBus(Protocol):
    """The part of smbus2.SMBus this reader uses (its simulated twin offers the same)."""

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None: ...

    def close(self) -> None: ...


def open_smbus(bus: int) -> I2cBus:
    try:
        from smbus2 import SMBus
    except ImportError:
        raise SourceError("smbus2 is not installed (pip install 'edge-agent[power]')") from None
    bus_obj: I2cBus = SMBus(bus)
    return bus_obj


class Ina219Power:
    def __init__(
        self, settings: Ina219Settings, open_bus: Callable[[int], I2cBus] = open_smbus
    ) -> None:
        self.s = settings
        self._open_bus = open_bus
        self._bus: I2cBus | None = None

    @property
    def name(self) -> str:
        return f"ina219:i2c-{self.s.bus}@0x{self.s.address:02x}"

    def _device(self) -> str:
        return f"INA219 at 0x{self.s.address:02x} on /dev/i2c-{self.s.bus}"

    def _fail(self, exc: OSError, what: str) -> SourceError:
        self.close()
        if isinstance(exc, FileNotFoundError):
            return SourceError(
                f"/dev/i2c-{self.s.bus} does not exist: enable I2C "
                "(raspi-config nonint do_i2c 0, or dtparam=i2c_arm=on in config.txt)"
            )
        if isinstance(exc, PermissionError):
            return SourceError(
                f"/dev/i2c-{self.s.bus}: permission denied (the service user needs the i2c "
                "group and the unit DeviceAllow=char-i2c: rerun install.sh with --i2c)"
            )
        if exc.errno in NAK_ERRNOS:
            return SourceError(
                f"no answer from the {self._device()} while {what} (I2C NAK: HAT not fitted, "
                "or at another address? i2cdetect -y " + f"{self.s.bus})"
            )
        return SourceError(f"{self._device()}: {what}: {exc}")

    def _open(self) -> I2cBus:
        if self._bus is not None:
            return self._bus
        try:
            bus = self._open_bus(self.s.bus)
        except OSError as exc:
            raise self._fail(exc, "opening the bus") from None
        self._bus = bus
        if self.s.configure:
            self._write(REG_CONFIG, CONFIG, "configuring it")
            back = self._read(REG_CONFIG, "reading its configuration back")
            if back & 0x3FFF != CONFIG & 0x3FFF:
                self.close()
                raise SourceError(
                    f"the device at 0x{self.s.address:02x} on /dev/i2c-{self.s.bus} is not an "
                    f"INA219 (configuration 0x{CONFIG:04x} written, 0x{back:04x} read back)"
                )
        return bus

    def _read(self, register: int, what: str) -> int:
        assert self._bus is not None
        try:
            data = self._bus.read_i2c_block_data(self.s.address, register, 2)
        except OSError as exc:
            raise self._fail(exc, what) from None
        if len(data) != 2 or not all(isinstance(b, int) and 0 <= b <= 255 for b in data):
            raise SourceError(f"{self._device()}: garbage from register {register} ({data!r})")
        return (data[0] << 8) | data[1]

    def _write(self, register: int, value: int, what: str) -> None:
        assert self._bus is not None
        try:
            self._bus.write_i2c_block_data(
                self.s.address, register, [(value >> 8) & 0xFF, value & 0xFF]
            )
        except OSError as exc:
            raise self._fail(exc, what) from None

    def read(self) -> PowerReading:
        self._open()
        bus_raw = self._read(REG_BUS, "reading the bus voltage")
        shunt_raw = self._read(REG_SHUNT, "reading the shunt voltage")
        if shunt_raw & 0x8000:
            shunt_raw -= 0x10000
        volts = (bus_raw >> 3) * BUS_LSB_V
        amps = shunt_raw * SHUNT_LSB_V / self.s.shunt_ohms
        if not self.s.charge_current_positive:
            amps = -amps
        if bus_raw & 0x1:
            # math overflow: the shunt voltage is beyond the range, the current is not known
            amps_known: float | None = None
        else:
            amps_known = amps
        charging = None if amps_known is None else amps_known > self.s.charging_above_a
        return PowerReading(
            source=self.name,
            charge_pct=charge_from_curve(volts, self.s.curve, self.s.cells),
            charging=charging,
            external_power=True if charging else None,
            voltage_v=volts,
            current_a=amps_known,
        )

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            with contextlib.suppress(OSError):
                bus.close()
