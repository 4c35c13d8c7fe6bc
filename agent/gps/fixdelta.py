"""Delta-coded batches of wire fixes: the plaintext of ``application/x-edge-fix-delta``.

A GPS segment holds a minute or more of fixes at 1-10 Hz. Successive fixes differ by little
(a step of time, a few metres, a few cm/s), so a batch is coded as its first fix in full (the
28-byte wire encoding of :mod:`agent.gps.wire`) followed by what each later fix differs from
a prediction. Coding and decoding are exact on the wire records:
``decode_batch(encode_batch(records)) == records`` byte for byte, so the platform,
``edge-agent verify`` and the review page read the very fixes they read from an
``application/x-edge-fix`` batch. docs/format.md ("Delta-coded fixes") is normative; its text
is the specification of both versions, summarised here.

Version 2 (written since issue 19; :func:`encode_batch`)::

    u8      version (= 2)
    varint  count of fixes (1 .. MAX_FIXES)
    28      the first fix, as agent.gps.wire encodes it
    (when count >= 2:)
    u8      unit flags (bit i: field i of lat, lon, alt, speed, track, hdop has a unit;
            bits 6, 7 zero), then a varint unit (2 .. 2^32 - 1) per flag set, in that order
    bits    per later fix, most significant bit first (agent.gps.bits):
            its kind, as predicted / plain / extra: 1 = the previous fix's kind (plain before
                the second fix), else 0 and one bit choosing between the other two
            extra: 5 bits S H U V O (the step, HDOP, satellites used, in view, bytes 0-1)
            S: rice_step(zigzag(step - previous step) - 1)
            plain or extra: five rice_f(zigzag(y - prediction)), f = lat, lon, alt, speed, track
            H: rice_hdop(zigzag(change of HDOP / unit) - 1)
            U, V: rice_used, rice_visible(zigzag(change modulo 256, in [-128, 128)) - 1)
            O: 16 bits: version/flags, mode/quality
    zero bits to the byte boundary; nothing after

A field's ``y`` counts its changes in units from the first fix (the course's change taken
the short way round); its prediction is either the previous ``y`` or the previous ``y`` plus
the previous change, whichever has done better lately (two error sums, decayed by a quarter
each fix). Each ``rice_*`` is an adaptive Rice code with its own state (agent.gps.bits).

Version 1 (read; :func:`encode_batch_v1` writes it for tests and the benchmark's baseline)::

    u8      version (= 1)
    varint  count of fixes (1 .. MAX_FIXES)
    28      the first fix, as agent.gps.wire encodes it
    then count - 1 times:
      u8    mask
      per bit of the mask that is set, in this order:
        0x01 STEP   zigzag(step - previous step) (the first step is compared with 1000 ms)
        0x02 POS    zigzag(lat - previous lat), zigzag(lon - previous lon)
        0x04 ALT, 0x08 SPEED, 0x10 TRACK (the short way round), 0x20 HDOP: zigzag(change)
        0x40 OTHER  4 bytes as in the wire fix. 0x80 reserved: a decoder refuses it
      A field whose bit is clear is the previous fix's value.

Integers are big-endian; a varint is LEB128 (at most 10 bytes); zigzag maps a signed ``n`` to
``2n`` for ``n >= 0`` and ``-2n - 1`` otherwise. Nothing may follow the last fix. Every decoded
record must be a valid wire fix.
"""

from __future__ import annotations

import struct
from itertools import pairwise
from math import gcd

from agent.errors import FormatError
from agent.gps import wire
from agent.gps.bits import AdaptiveRice, BitReader, BitWriter

CONTENT_TYPE = "application/x-edge-fix-delta"
VERSION = 2  # the version encode_batch writes; 1 is read too
VERSION_1 = 1
MAX_FIXES = 100_000
_MAX_VARINT = 10
_WIRE = struct.Struct(">BBIHiiiHHHBB")
STEP, POS, ALT, SPEED, TRACK, HDOP, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
_RESERVED = 0x80
_TRACK_TURN = 36000
_FIRST_STEP_MS = 1000
_NONE32 = 0x7FFFFFFF
_MAX_LAT, _MAX_LON = 900_000_000, 1_800_000_000


def _zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


def _unzigzag(z: int) -> int:
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def _varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _fields(record: bytes) -> tuple[int, ...]:
    """(head, mode_q, time_ms, lat, lon, alt, speed, track, hdop, used, visible)."""
    if len(record) != wire.SIZE:
        raise FormatError(f"a wire fix is {wire.SIZE} bytes, got {len(record)}")
    head, mode_q, secs, ms, lat, lon, alt, speed, track, hdop, used, visible = _WIRE.unpack(record)
    if ms > 999 or track >= _TRACK_TURN:
        raise FormatError("not a wire fix (milliseconds or course out of range)")
    return head, mode_q, secs * 1000 + ms, lat, lon, alt, speed, track, hdop, used, visible


def encode_batch_v1(records: list[bytes]) -> bytes:
    """Version 1 of the coding (read everywhere; written for tests and benchmarks only)."""
    if not 1 <= len(records) <= MAX_FIXES:
        raise FormatError(f"a delta batch holds 1 to {MAX_FIXES} fixes, not {len(records)}")
    out = bytearray([VERSION_1])
    _varint(out, len(records))
    prev = _fields(records[0])
    out += records[0]
    step = _FIRST_STEP_MS
    for record in records[1:]:
        cur = _fields(record)
        mask = 0
        body = bytearray()
        this_step = cur[2] - prev[2]
        if this_step != step:
            mask |= STEP
            _varint(body, _zigzag(this_step - step))
            step = this_step
        if cur[3] != prev[3] or cur[4] != prev[4]:
            mask |= POS
            _varint(body, _zigzag(cur[3] - prev[3]))
            _varint(body, _zigzag(cur[4] - prev[4]))
        for bit, i in ((ALT, 5), (SPEED, 6)):
            if cur[i] != prev[i]:
                mask |= bit
                _varint(body, _zigzag(cur[i] - prev[i]))
        if cur[7] != prev[7]:
            mask |= TRACK
            turn = (cur[7] - prev[7] + _TRACK_TURN // 2) % _TRACK_TURN - _TRACK_TURN // 2
            _varint(body, _zigzag(turn))
        if cur[8] != prev[8]:
            mask |= HDOP
            _varint(body, _zigzag(cur[8] - prev[8]))
        if (cur[0], cur[1], cur[9], cur[10]) != (prev[0], prev[1], prev[9], prev[10]):
            mask |= OTHER
            body += bytes((cur[0], cur[1], cur[9], cur[10]))
        out.append(mask)
        out += body
        prev = cur
    return bytes(out)


# ------------------------------------------------------------------------------- version 2
_MAIN = (3, 4, 5, 6, 7)  # lat, lon, alt, speed, track: coded in every fix not as predicted
_HDOP = 8
_UNIT_FIELDS = (*_MAIN, _HDOP)  # each may have a unit (flag bit 0 .. 5)
_MAX_UNIT = 2**32 - 1
# A fix's kind: as predicted (nothing follows), plain (the five main fields follow), extra
# (five bits say what else follows, then the main fields and the rest). It is coded as one
# bit 1 when it is the previous fix's kind, else 0 and one bit choosing between the other
# two in this order (0: the first).
_AS_PREDICTED, _PLAIN, _EXTRA = 0, 1, 2
_KINDS = (_AS_PREDICTED, _PLAIN, _EXTRA)
_S, _H, _U, _V, _O = 16, 8, 4, 2, 1  # the bits after X: what else changed
_USED, _VISIBLE = 9, 10


def _byte_change(a: int, b: int) -> int:
    """A satellite count's change, brought into [-128, 128) modulo 256."""
    return (b - a + 128) % 256 - 128


def _change(i: int, a: int, b: int) -> int:
    """Field ``i``'s change from ``a`` to ``b``; a course's the short way round."""
    d = b - a
    return (d + _TRACK_TURN // 2) % _TRACK_TURN - _TRACK_TURN // 2 if i == 7 else d


class _Field:
    """One of lat, lon, alt, speed, track: its count of units since the first fix (y), its
    last change, the decayed error sums of its two predictions and its Rice code."""

    __slots__ = ("change", "e1", "e2", "rice", "y")

    def __init__(self) -> None:
        self.y = self.change = self.e1 = self.e2 = 0
        self.rice = AdaptiveRice()

    def predict(self) -> int:
        return self.y + self.change if self.e2 < self.e1 else self.y

    def advance(self, y: int, keep_change: bool) -> None:
        c = y - self.y
        self.e1 += abs(c) - (self.e1 >> 2)
        self.e2 += abs(c - self.change) - (self.e2 >> 2)
        self.y = y
        self.change = c if keep_change else 0


def _keeps_change(i: int, a: int, b: int) -> bool:
    """Latitude's and longitude's change counts for a prediction only between positions."""
    return i > 4 or (a != _NONE32 and b != _NONE32)


def encode_batch(records: list[bytes]) -> bytes:
    """The delta coding (version 2) of a batch of 28-byte wire fixes (at least one)."""
    if not 1 <= len(records) <= MAX_FIXES:
        raise FormatError(f"a delta batch holds 1 to {MAX_FIXES} fixes, not {len(records)}")
    fixes = [_fields(r) for r in records]
    out = bytearray([VERSION])
    _varint(out, len(records))
    out += records[0]
    if len(records) == 1:
        return bytes(out)  # no unit flags, no bits
    units: dict[int, int] = {}
    flags = 0
    for bit, i in enumerate(_UNIT_FIELDS):
        g = 0
        for a, b in pairwise(fixes):
            g = gcd(g, _change(i, a[i], b[i]))
            if g == 1:
                break
        units[i] = max(g, 1)
        if g > 1:
            flags |= 1 << bit
    out.append(flags)
    for i in _UNIT_FIELDS:
        if units[i] > 1:
            _varint(out, units[i])
    w = BitWriter(out)
    main = [(i, units[i], _Field()) for i in _MAIN]
    step_rice, hdop_rice, used_rice, visible_rice = (AdaptiveRice() for _ in range(4))
    step = _FIRST_STEP_MS
    kind = _PLAIN
    prev = fixes[0]
    for cur in fixes[1:]:
        this_step = cur[2] - prev[2]
        residuals = []
        for i, unit, f in main:
            y = f.y + _change(i, prev[i], cur[i]) // unit
            residuals.append(y - f.predict())
            f.advance(y, _keeps_change(i, prev[i], cur[i]))
        dh = (cur[_HDOP] - prev[_HDOP]) // units[_HDOP]
        du = _byte_change(prev[_USED], cur[_USED])
        dv = _byte_change(prev[_VISIBLE], cur[_VISIBLE])
        other = (cur[0], cur[1]) != (prev[0], prev[1])
        x = (
            (_S if this_step != step else 0)
            | (_H if dh else 0)
            | (_U if du else 0)
            | (_V if dv else 0)
            | (_O if other else 0)
        )
        this_kind = _EXTRA if x else _PLAIN if any(residuals) else _AS_PREDICTED
        if this_kind == kind:
            w.put(1, 1)
        else:
            w.put([k for k in _KINDS if k != kind].index(this_kind), 2)
        kind = this_kind
        if kind == _EXTRA:
            w.put(x, 5)  # S H U V O
        if kind != _AS_PREDICTED:
            if x & _S:
                step_rice.put(w, _zigzag(this_step - step) - 1)
            for (_, _, f), r in zip(main, residuals, strict=True):
                f.rice.put(w, _zigzag(r))
            if x & _H:
                hdop_rice.put(w, _zigzag(dh) - 1)
            if x & _U:
                used_rice.put(w, _zigzag(du) - 1)
            if x & _V:
                visible_rice.put(w, _zigzag(dv) - 1)
            if x & _O:
                w.put((cur[0] << 8) | cur[1], 16)
        step = this_step
        prev = cur
    w.flush()
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise FormatError("delta batch: truncated")
        b = self.data[self.pos]
        self.pos += 1
        return int(b)

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError("delta batch: truncated")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def varint(self) -> int:
        n = shift = 0
        for _ in range(_MAX_VARINT):
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
        raise FormatError("delta batch: a varint longer than 10 bytes")

    def signed(self) -> int:
        return _unzigzag(self.varint())


def _pack(f: list[int]) -> bytes:
    head, mode_q, time_ms, lat, lon, alt, speed, track, hdop, used, visible = f
    secs, ms = divmod(time_ms, 1000)
    if not 0 <= secs <= 0xFFFFFFFF:
        raise FormatError("delta batch: a fix's time is out of range")
    for value, lo, hi, what in (
        (alt, -(2**31), 2**31 - 1, "altitude"),
        (speed, 0, 0xFFFF, "speed"),
        (hdop, 0, 0xFFFF, "HDOP"),
    ):
        if not lo <= value <= hi:
            raise FormatError(f"delta batch: a fix's {what} is out of range")
    for value, limit in ((lat, _MAX_LAT), (lon, _MAX_LON)):
        if value != _NONE32 and not -limit <= value <= limit:
            raise FormatError("delta batch: a fix's coordinates are out of range")
    return _WIRE.pack(head, mode_q, secs, ms, lat, lon, alt, speed, track, hdop, used, visible)


def _decode_v2(r: _Reader, count: int, first: bytes, cur: list[int]) -> list[bytes]:
    if count == 1:
        if r.pos != len(r.data):
            raise FormatError(f"delta batch: {len(r.data) - r.pos} bytes after the last fix")
        return [first]
    flags = r.byte()
    if flags >> len(_UNIT_FIELDS):
        raise FormatError("delta batch: reserved unit flags set")
    units = {}
    for bit, i in enumerate(_UNIT_FIELDS):
        units[i] = 1
        if flags >> bit & 1:
            units[i] = r.varint()
            if not 2 <= units[i] <= _MAX_UNIT:
                raise FormatError(f"delta batch: a unit of {units[i]} (2 to {_MAX_UNIT})")
    bits = BitReader(r.data, r.pos)
    if count - 1 > bits.bits_left:
        raise FormatError("delta batch: truncated (fewer bits than fixes)")
    main = [(i, units[i], cur[i], _Field()) for i in _MAIN]
    step_rice, hdop_rice, used_rice, visible_rice = (AdaptiveRice() for _ in range(4))
    step = _FIRST_STEP_MS
    kind = _PLAIN
    out = [first]
    for _ in range(count - 1):
        if not bits.get(1):
            kind = [k for k in _KINDS if k != kind][bits.get(1)]
        x = bits.get(5) if kind == _EXTRA else 0
        as_predicted = kind == _AS_PREDICTED
        if x & _S:
            step += _unzigzag(step_rice.get(bits) + 1)
        cur[2] += step
        for i, unit, x0, f in main:
            y = f.predict()
            if not as_predicted:
                y += _unzigzag(f.rice.get(bits))
            value = x0 + unit * y
            if i == 7:
                value %= _TRACK_TURN
            f.advance(y, _keeps_change(i, cur[i], value))
            cur[i] = value
        if x & _H:
            cur[_HDOP] += units[_HDOP] * _unzigzag(hdop_rice.get(bits) + 1)
        if x & _U:
            cur[_USED] = (cur[_USED] + _unzigzag(used_rice.get(bits) + 1)) % 256
        if x & _V:
            cur[_VISIBLE] = (cur[_VISIBLE] + _unzigzag(visible_rice.get(bits) + 1)) % 256
        if x & _O:
            head_mode = bits.get(16)
            cur[0], cur[1] = head_mode >> 8, head_mode & 255
        record = _pack(cur)
        wire.decode_fix(record)  # every record a valid wire fix (version, mode, ranges)
        out.append(record)
    bits.finish()
    return out


def decode_batch(data: bytes | bytearray | memoryview) -> list[bytes]:
    """The 28-byte wire fixes of a delta-coded batch (version 1 or 2); FormatError when
    malformed."""
    r = _Reader(data)
    version = r.byte()
    if version not in (VERSION_1, VERSION):
        raise FormatError(f"delta batch: version {version} is not supported")
    count = r.varint()
    if not 1 <= count <= MAX_FIXES:
        raise FormatError(f"delta batch: {count} fixes (1 to {MAX_FIXES})")
    first = r.take(wire.SIZE)
    cur = list(_fields(first))
    wire.decode_fix(first)
    if version == VERSION:
        return _decode_v2(r, count, first, cur)
    out = [first]
    step = _FIRST_STEP_MS
    for _ in range(count - 1):
        mask = r.byte()
        if mask & _RESERVED:
            raise FormatError("delta batch: a mask with the reserved bit set")
        if mask & STEP:
            step += r.signed()
        cur[2] += step
        if mask & POS:
            cur[3] += r.signed()
            cur[4] += r.signed()
        if mask & ALT:
            cur[5] += r.signed()
        if mask & SPEED:
            cur[6] += r.signed()
        if mask & TRACK:
            cur[7] = (cur[7] + r.signed()) % _TRACK_TURN
        if mask & HDOP:
            cur[8] += r.signed()
        if mask & OTHER:
            cur[0], cur[1], cur[9], cur[10] = r.take(4)
        record = _pack(cur)
        wire.decode_fix(record)  # every record a valid wire fix (version, mode, ranges)
        out.append(record)
    if r.pos != len(r.data):
        raise FormatError(f"delta batch: {len(r.data) - r.pos} bytes after the last fix")
    return out


def batch_records(content_type: str, plaintext: bytes) -> list[bytes]:
    """The wire fixes of a GPS batch of either content type (``application/x-edge-fix``:
    u16-length-prefixed records; ``application/x-edge-fix-delta``: this coding)."""
    if content_type == CONTENT_TYPE:
        return decode_batch(plaintext)
    if content_type == wire.CONTENT_TYPE:
        from agent.storage.records import unpack_records

        return unpack_records(plaintext)
    raise FormatError(f"content type {content_type!r} is not a batch of GPS fixes")
