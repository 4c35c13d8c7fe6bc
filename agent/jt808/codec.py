"""The JT/T 808 frame. Pure.

::

    0x7e | header | body | BCC | 0x7e          (escaped between the flags)

* **Escaping**: inside a frame ``0x7e`` is sent as ``0x7d 0x02`` and ``0x7d`` as ``0x7d 0x01``;
  anything else after ``0x7d`` is a broken frame.
* **BCC**: the XOR of every header and body byte (before escaping).
* **Header**: message id (WORD), body properties (WORD: bits 0-9 body length, 10-12
  encryption, 13 sub-package, **14 version flag** (2019), 15 reserved), then in 2019 the
  protocol version (BYTE, 1 for JT/T 808-2019) and the terminal phone number as **BCD[10]**
  (20 digits), in 2013 the phone number as BCD[6]; the message serial number (WORD); and with
  bit 13 the package count and the package number (WORD each, numbered from 1).
* A body longer than 1023 bytes (the 10-bit length) is cut into packages of at most 1023
  bytes, each its own frame with its own serial number (:func:`split_body`); the receiver
  puts them together (:class:`Reassembler`), bounded in count, size and time, and asks for
  missing packages once (0x0005 / 0x8003 list the missing package *numbers*).

:class:`FrameReader` cuts a TCP byte stream into frames. Bytes before the first ``0x7e``, and
a run longer than any legal frame, are dropped: after garbage it resynchronises on the next
``0x7e``, and every frame it returns is then checked by :func:`decode_frame` (escapes, BCC,
length) before anything looks at its body.
"""

from __future__ import annotations

import functools
import operator
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import FormatError
from agent.jt808.body import bcd_decode, bcd_encode

FLAG = 0x7E
ESC = 0x7D
MAX_BODY = 1023
#: JT/T 808-2019's protocol version number (the byte after the body properties).
VERSION_2019 = 1
PHONE_DIGITS_2019 = 20
PHONE_DIGITS_2013 = 12
#: The largest unescaped frame (2019 header with packages, 1023-byte body, BCC).
MAX_FRAME = 2 + 2 + 1 + 10 + 2 + 4 + MAX_BODY + 1
#: ... and the largest it can be escaped (every byte doubled), flags excluded.
MAX_ESCAPED = 2 * MAX_FRAME

_PROPS = struct.Struct(">HH")
_SERIAL = struct.Struct(">H")
_PACKAGE = struct.Struct(">HH")


@dataclass(frozen=True, slots=True)
class Header:
    msg_id: int
    phone: str  # the digits of the BCD field (20 in 2019, 12 in 2013)
    serial: int
    version: int | None = VERSION_2019  # protocol version byte (2019); None: 2013 header
    encryption: int = 0  # body properties bits 10-12 (bit 10: RSA)
    package: tuple[int, int] | None = None  # (count, number from 1)
    body_length: int = 0
    reserved: bool = False  # body properties bit 15

    @property
    def is_2019(self) -> bool:
        return self.version is not None


@dataclass(frozen=True, slots=True)
class Frame:
    header: Header
    body: bytes
    #: What a lenient decode let through (a wrong check code or body length), for people.
    problems: tuple[str, ...] = ()

    @property
    def msg_id(self) -> int:
        return self.header.msg_id

    @property
    def serial(self) -> int:
        return self.header.serial


# --------------------------------------------------------------------------- bytes


def escape(data: bytes) -> bytes:
    if b"\x7d" in data:
        data = data.replace(b"\x7d", b"\x7d\x01")
    if b"\x7e" in data:
        data = data.replace(b"\x7e", b"\x7d\x02")
    return data


def unescape(data: bytes) -> bytes:
    """Undo the escaping; FormatError on a 0x7d followed by anything but 0x01/0x02."""
    if b"\x7d" not in data:
        return data
    parts = data.split(b"\x7d")
    out = bytearray(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if not part:
            where = "at the end" if i == len(parts) - 1 else "twice in a row"
            raise FormatError(f"frame: escape byte 0x7d {where}")
        code = part[0]
        if code == 0x01:
            out.append(ESC)
        elif code == 0x02:
            out.append(FLAG)
        else:
            raise FormatError(f"frame: 0x7d followed by 0x{code:02x} (only 0x01 or 0x02)")
        out += part[1:]
    return bytes(out)


def bcc(data: bytes) -> int:
    """XOR of every byte: a reduce for short frames, else folded as one big integer (no
    per-byte Python loop; measured faster beyond ~100 bytes)."""
    if len(data) <= 96:
        return functools.reduce(operator.xor, data, 0)
    x = int.from_bytes(data, "little")
    width = (len(data) + 1) // 2 * 8
    while width >= 8:
        x = (x >> width) ^ (x & ((1 << width) - 1))
        width = (width // 8 + 1) // 2 * 8 if width > 8 else 0
    return x & 0xFF


# --------------------------------------------------------------------------- frames


def encode_frame(
    msg_id: int,
    body: bytes,
    *,
    phone: str,
    serial: int,
    version: int | None = VERSION_2019,
    package: tuple[int, int] | None = None,
    encryption: int = 0,
) -> bytes:
    """One frame, flags included. ``version`` None writes a JT/T 808-2013 header."""
    if len(body) > MAX_BODY:
        raise FormatError(f"frame: body of {len(body)} bytes needs sub-packages (max {MAX_BODY})")
    if not 0 <= msg_id <= 0xFFFF or not 0 <= serial <= 0xFFFF:
        raise FormatError("frame: message id and serial are WORDs")
    props = len(body) | (encryption & 0x7) << 10
    if package is not None:
        props |= 1 << 13
    if version is not None:
        props |= 1 << 14
        parts = [
            _PROPS.pack(msg_id, props),
            bytes((version,)),
            bcd_encode(phone, PHONE_DIGITS_2019 // 2),
        ]
    else:
        parts = [_PROPS.pack(msg_id, props), bcd_encode(phone, PHONE_DIGITS_2013 // 2)]
    parts.append(_SERIAL.pack(serial))
    if package is not None:
        count, number = package
        if not 1 <= number <= count <= 0xFFFF:
            raise FormatError(f"frame: package {number} of {count}")
        parts.append(_PACKAGE.pack(count, number))
    parts.append(body)
    raw = b"".join(parts)
    return b"\x7e" + escape(raw + bytes((bcc(raw),))) + b"\x7e"


def decode_frame(data: bytes, *, strict: bool = True) -> Frame:
    """A frame (with or without its 0x7e flags) -> header and body, every check done.

    ``strict=False`` (``edge-agent jt808 decode`` only, never the terminal) lets a wrong check
    code, body length or a phone number that is not BCD through, noted in ``Frame.problems``:
    devices in the field send such frames, and a technician wants to read them anyway."""
    if data[:1] == b"\x7e":
        data = data[1:]
    if data[-1:] == b"\x7e":
        data = data[:-1]
    if b"\x7e" in data:
        raise FormatError("frame: 0x7e inside a frame (two frames, or a missing escape)")
    raw = unescape(data)
    if len(raw) < 2 + 2 + 6 + 2 + 1:
        raise FormatError(f"frame: {len(raw)} bytes is shorter than any header")
    problems: list[str] = []
    if bcc(raw[:-1]) != raw[-1]:
        why = f"frame: check code 0x{raw[-1]:02x}, computed 0x{bcc(raw[:-1]):02x} (damaged)"
        if strict:
            raise FormatError(why)
        problems.append(why)
    raw = raw[:-1]
    msg_id, props = _PROPS.unpack_from(raw, 0)
    pos = 4
    version: int | None = None
    if props & (1 << 14):
        if len(raw) < pos + 1 + 10 + 2:
            raise FormatError("frame: too short for a 2019 header")
        version = raw[pos]
        phone_bytes = raw[pos + 1 : pos + 11]
        pos += 11
    else:
        phone_bytes = raw[pos : pos + 6]
        pos += 6
    try:
        phone = bcd_decode(phone_bytes, "frame: terminal phone number")
    except FormatError as exc:
        if strict:
            raise
        problems.append(str(exc))
        phone = phone_bytes.hex()
    (serial,) = _SERIAL.unpack_from(raw, pos)
    pos += 2
    package: tuple[int, int] | None = None
    if props & (1 << 13):
        if len(raw) < pos + 4:
            raise FormatError("frame: sub-package flag set but no package fields")
        count, number = _PACKAGE.unpack_from(raw, pos)
        pos += 4
        if not 1 <= number <= count:
            raise FormatError(f"frame: package number {number} of {count}")
        package = (count, number)
    length = props & 0x3FF
    body = raw[pos:]
    if len(body) != length:
        why = f"frame: body properties say {length} bytes, the body has {len(body)}"
        if strict:
            raise FormatError(why)
        problems.append(why)
    return Frame(
        Header(
            msg_id=msg_id,
            phone=phone,
            serial=serial,
            version=version,
            encryption=(props >> 10) & 0x7,
            package=package,
            body_length=length,
            reserved=bool(props & (1 << 15)),
        ),
        body,
        tuple(problems),
    )


def split_body(body: bytes, size: int = MAX_BODY) -> list[bytes]:
    """A long body cut into packages of at most ``size`` bytes (one piece if it fits)."""
    if len(body) <= size:
        return [body]
    return [body[i : i + size] for i in range(0, len(body), size)]


def encode_message(
    msg_id: int,
    body: bytes,
    *,
    phone: str,
    next_serial: Callable[[], int],
    version: int | None = VERSION_2019,
) -> list[tuple[int, bytes]]:
    """A message as one frame, or as packages if its body is longer than 1023 bytes:
    ``[(serial, frame), ...]``, each package with its own serial number."""
    pieces = split_body(body)
    if len(pieces) == 1:
        s = next_serial()
        return [(s, encode_frame(msg_id, body, phone=phone, serial=s, version=version))]
    out = []
    for i, piece in enumerate(pieces, 1):
        s = next_serial()
        frame = encode_frame(
            msg_id, piece, phone=phone, serial=s, version=version, package=(len(pieces), i)
        )
        out.append((s, frame))
    return out


# --------------------------------------------------------------------------- stream


class FrameReader:
    """Cuts a byte stream into frames (flags stripped, still escaped). Bounded.

    ``feed`` returns whole frames; bytes outside frames and runs longer than
    :data:`MAX_ESCAPED` are dropped and counted in ``dropped_bytes`` / ``oversized``.
    """

    def __init__(self, max_frame: int = MAX_ESCAPED) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._synced = False
        self.dropped_bytes = 0
        self.oversized = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        buf += data
        start = 0
        while True:
            i = buf.find(b"\x7e", start)
            if i < 0:
                break
            if self._synced:
                chunk = bytes(buf[start:i])
                if chunk:
                    if len(chunk) > self.max_frame:
                        self.oversized += 1
                        self.dropped_bytes += len(chunk)
                    else:
                        out.append(chunk)
            else:
                self.dropped_bytes += i - start
                self._synced = True
            start = i + 1
        rest = len(buf) - start
        if self._synced and rest > self.max_frame:
            # No closing flag within any legal length: drop it and wait for the next flag.
            self.oversized += 1
            self.dropped_bytes += rest
            self._synced = False
            start = len(buf)
        elif not self._synced:
            self.dropped_bytes += rest
            start = len(buf)
        del buf[:start]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# --------------------------------------------------------------------------- packages


@dataclass
class _Partial:
    msg_id: int
    count: int
    first_serial: int | None
    pieces: dict[int, bytes]
    size: int
    started: float
    asked: bool = False


@dataclass(frozen=True, slots=True)
class Assembled:
    """A message put together from its packages."""

    header: Header  # of package 1 (its serial is the message's), package field cleared
    body: bytes


class Reassembler:
    """Puts the platform's sub-packaged messages together, within limits.

    A message is identified by its id and package count (the serial numbers of packages are
    not relied on: platforms number them differently). At most ``max_messages`` messages are
    open at once (the oldest is dropped for a new one), each of at most ``max_packages``
    packages and ``max_bytes`` bytes; a message not complete after ``timeout_s`` is asked
    for once (``missing`` returns its package numbers) and dropped after another
    ``timeout_s``.
    """

    def __init__(
        self,
        *,
        max_packages: int = 128,
        max_bytes: int = 64 * 1024,
        max_messages: int = 4,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_packages = max_packages
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.timeout_s = timeout_s
        self._clock = clock
        self._open: dict[tuple[int, int], _Partial] = {}
        self._first_headers: dict[tuple[int, int], Header] = {}
        self.dropped = 0

    def add(self, frame: Frame) -> Assembled | None:
        """A package in; the whole message out when this was its last missing package.
        Raises FormatError for a package that breaks the limits (the message is dropped)."""
        h = frame.header
        assert h.package is not None
        count, number = h.package
        key = (h.msg_id, count)
        if count > self.max_packages:
            self.dropped += 1
            raise FormatError(
                f"0x{h.msg_id:04x}: {count} packages, more than the {self.max_packages} accepted"
            )
        part = self._open.get(key)
        if part is None:
            if len(self._open) >= self.max_messages:
                oldest = min(self._open, key=lambda k: self._open[k].started)
                del self._open[oldest]
                self._first_headers.pop(oldest, None)
                self.dropped += 1
            part = self._open[key] = _Partial(h.msg_id, count, None, {}, 0, self._clock())
        if number in part.pieces:
            return None  # a repeat
        part.size += len(frame.body)
        if part.size > self.max_bytes:
            del self._open[key]
            self._first_headers.pop(key, None)
            self.dropped += 1
            raise FormatError(
                f"0x{h.msg_id:04x}: packages add up to more than {self.max_bytes} bytes"
            )
        part.pieces[number] = frame.body
        if number == 1:
            part.first_serial = h.serial
            self._first_headers[key] = h
        if len(part.pieces) < count:
            return None
        del self._open[key]
        first = self._first_headers.pop(key)
        body = b"".join(part.pieces[i] for i in range(1, count + 1))
        header = Header(
            msg_id=first.msg_id,
            phone=first.phone,
            serial=first.serial,
            version=first.version,
            encryption=first.encryption,
            package=None,
            body_length=len(body),
        )
        return Assembled(header, body)

    def missing(self) -> list[tuple[int, int, list[int]]]:
        """Messages overdue: ``(msg_id, serial of package 1, missing numbers)`` to ask for
        (each once; a second timeout drops the message). Messages whose package 1 never came
        cannot be asked for by serial and are dropped at the first timeout."""
        now = self._clock()
        out: list[tuple[int, int, list[int]]] = []
        for key, part in list(self._open.items()):
            if now - part.started < self.timeout_s:
                continue
            if part.asked or part.first_serial is None:
                del self._open[key]
                self._first_headers.pop(key, None)
                self.dropped += 1
                continue
            part.asked = True
            part.started = now
            gone = [i for i in range(1, part.count + 1) if i not in part.pieces]
            out.append((part.msg_id, part.first_serial, gone))
        return out

    @property
    def open_messages(self) -> int:
        return len(self._open)
