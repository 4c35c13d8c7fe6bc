"""Bytes of JT/T 808 bodies: big-endian integers, BCD, GBK strings, GMT+8 times. Pure.

JT/T 808 writes every multi-byte integer big-endian (BYTE, WORD, DWORD), strings in GBK,
and times as ``BCD[6]`` ``YYMMDDhhmmss`` in **GMT+8** (Beijing time, all year: China has no
summer time), whatever the time zone the vehicle drives in. :func:`bcd_time` and
:func:`parse_bcd_time` convert between that and UTC seconds.

A :class:`Reader` raises :class:`~agent.errors.FormatError` naming the field that did not
fit, so a malformed platform message is answered "message error" and logged with a reason a
platform engineer can act on.
"""

from __future__ import annotations

import calendar
import struct
import time

from agent.errors import FormatError

#: JT/T 808 times are GMT+8 (section 4.5 of the standard: "GMT+8 时间").
GMT8_S = 8 * 3600
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class Reader:
    """Reads a body front to back; every shortfall is a FormatError naming the field."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str = "body") -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _need(self, n: int, field: str) -> None:
        if self.pos + n > len(self.data):
            raise FormatError(
                f"{self.what}: truncated at byte {self.pos}: {field} needs {n} bytes, "
                f"{len(self.data) - self.pos} left"
            )

    def u8(self, field: str) -> int:
        self._need(1, field)
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u16(self, field: str) -> int:
        self._need(2, field)
        (v,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(v)

    def u32(self, field: str) -> int:
        self._need(4, field)
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(v)

    def take(self, n: int, field: str) -> bytes:
        self._need(n, field)
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v

    def bcd(self, n: int, field: str) -> str:
        return bcd_decode(self.take(n, field), f"{self.what}: {field}")

    def rest(self) -> bytes:
        v = self.data[self.pos :]
        self.pos = len(self.data)
        return v

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def end(self) -> None:
        """Nothing may follow the last field."""
        if self.pos != len(self.data):
            raise FormatError(
                f"{self.what}: {len(self.data) - self.pos} unexpected bytes after the last field"
            )


class Writer:
    """Builds a body; values out of their field's range raise FormatError."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int, field: str = "byte") -> Writer:
        if not 0 <= v <= 0xFF:
            raise FormatError(f"{field}: {v} does not fit a BYTE")
        self.buf.append(v)
        return self

    def u16(self, v: int, field: str = "word") -> Writer:
        if not 0 <= v <= 0xFFFF:
            raise FormatError(f"{field}: {v} does not fit a WORD")
        self.buf += _U16.pack(v)
        return self

    def u32(self, v: int, field: str = "dword") -> Writer:
        if not 0 <= v <= 0xFFFFFFFF:
            raise FormatError(f"{field}: {v} does not fit a DWORD")
        self.buf += _U32.pack(v)
        return self

    def raw(self, b: bytes) -> Writer:
        self.buf += b
        return self

    def bytes(self) -> bytes:
        return bytes(self.buf)


# --------------------------------------------------------------------------- BCD


def bcd_encode(digits: str, n: int) -> bytes:
    """``digits`` (0-9 only) as ``n`` BCD bytes, left-padded with zeros."""
    if not digits.isdigit() and digits:
        raise FormatError(f"BCD: {digits!r} is not all digits")
    if len(digits) > 2 * n:
        raise FormatError(f"BCD: {digits!r} has more than {2 * n} digits")
    return bytes.fromhex(digits.rjust(2 * n, "0"))


def bcd_decode(b: bytes, what: str = "BCD") -> str:
    s = b.hex()
    if not s.isdigit():
        raise FormatError(f"{what}: {s} is not BCD (a nibble above 9)")
    return s


# --------------------------------------------------------------------------- time


def bcd_time(t: float) -> bytes:
    """UTC seconds -> ``YYMMDDhhmmss`` in GMT+8, BCD[6] (whole seconds, truncated)."""
    g = time.gmtime(int(t // 1) + GMT8_S)
    if not 2000 <= g.tm_year <= 2099:
        raise FormatError(f"time: {g.tm_year} cannot be written as YY (2000-2099)")
    return bytes.fromhex(
        "%02d%02d%02d%02d%02d%02d"  # noqa: UP031 - the fastest way here (a hot path)
        % (g.tm_year - 2000, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
    )


def parse_bcd_time(digits: str) -> float | None:
    """``YYMMDDhhmmss`` in GMT+8 -> UTC seconds; None when it is no real date (all zeros, a
    month 13, ...). Years are 2000-2099."""
    if len(digits) != 12 or not digits.isdigit():
        return None
    yy, mo, dd, hh, mi, ss = (int(digits[i : i + 2]) for i in range(0, 12, 2))
    if not (1 <= mo <= 12 and 1 <= dd <= 31 and hh <= 23 and mi <= 59 and ss <= 59):
        return None
    if dd > calendar.monthrange(2000 + yy, mo)[1]:
        return None
    return float(calendar.timegm((2000 + yy, mo, dd, hh, mi, ss)) - GMT8_S)


def gmt8_text(digits: str) -> str:
    """``YYMMDDhhmmss`` as ``20YY-MM-DD hh:mm:ss`` (for people; no validation)."""
    if len(digits) != 12:
        return digits
    return (
        f"20{digits[0:2]}-{digits[2:4]}-{digits[4:6]} {digits[6:8]}:{digits[8:10]}:{digits[10:12]}"
    )


# --------------------------------------------------------------------------- strings


def gbk(text: str, field: str) -> bytes:
    """A string field in GBK (JT/T 808's charset); FormatError if it cannot be written."""
    try:
        return text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise FormatError(f"{field}: {text!r} cannot be written in GBK ({exc.reason})") from None


def fixed(text: str, n: int, field: str) -> bytes:
    """A fixed-width field: the text, then ``0x00`` up to ``n`` bytes (the standard's
    "位数不足时，后补 0x00")."""
    b = gbk(text, field)
    if len(b) > n:
        raise FormatError(f"{field}: {text!r} is longer than {n} bytes")
    return b.ljust(n, b"\x00")


def text_of(b: bytes) -> str:
    """A received string field: GBK, NULs and spaces around it dropped (devices pad either
    side), bad bytes replaced."""
    return b.strip(b"\x00").decode("gbk", errors="replace").strip(" ")
