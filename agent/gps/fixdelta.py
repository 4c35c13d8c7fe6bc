"""Delta-coded batches of wire fixes: the plaintext of ``application/x-edge-fix-delta``.

A GPS segment holds a few minutes of fixes at 1 Hz. Successive fixes differ by little (a
second, a few metres, a few cm/s), so a batch is coded as its first fix in full (the 28-byte
wire encoding of :mod:`agent.gps.wire`) followed, for every later fix, by a mask byte saying
which fields changed and the change of each, as a zigzag varint. Coding and decoding are
exact on the wire records: ``decode_batch(encode_batch(records)) == records`` byte for byte,
so the platform, ``edge-agent verify`` and the review page read the very fixes they read
from an ``application/x-edge-fix`` batch. docs/format.md ("Delta-coded fixes") is normative.

Layout (integers big-endian; a varint is LEB128: 7 bits a byte, least significant first, the
high bit set on every byte but the last, at most 10 bytes; zigzag maps a signed ``n`` to
``2n`` for ``n >= 0`` and ``-2n - 1`` otherwise)::

    u8      version (= 1)
    varint  count of fixes (1 .. MAX_FIXES)
    28      the first fix, as agent.gps.wire encodes it
    then count - 1 times:
      u8    mask
      per bit of the mask that is set, in this order:
        0x01 STEP   zigzag(step - previous step): step = this fix's time - the previous fix's,
                    in milliseconds (time = seconds * 1000 + milliseconds of the wire fix);
                    the first step is compared with 1000. Clear: the same step again.
        0x02 POS    zigzag(lat - previous lat), zigzag(lon - previous lon): the wire fix's
                    1e-7 degree integers, the "none" value 0x7fffffff included
        0x04 ALT    zigzag(alt - previous alt), centimetres
        0x08 SPEED  zigzag(speed - previous speed), cm/s
        0x10 TRACK  zigzag(d): d = track - previous track brought into [-18000, 18000)
                    modulo 36000 (0.01 degree; a turn through north is a small change)
        0x20 HDOP   zigzag(hdop - previous hdop)
        0x40 OTHER  4 bytes as in the wire fix: version/flags, mode/quality, satellites
                    used, satellites in view. Clear: the same four bytes again.
        0x80        reserved: a decoder refuses a mask with it set
      A field whose bit is clear is the previous fix's value.

Nothing may follow the last fix. Every decoded record must be a valid wire fix (its time in
0 .. 2^32 - 1 seconds, coordinates within range or "none", track below 36000, ...).
"""

from __future__ import annotations

import struct

from agent.errors import FormatError
from agent.gps import wire

CONTENT_TYPE = "application/x-edge-fix-delta"
VERSION = 1
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


def encode_batch(records: list[bytes]) -> bytes:
    """The delta coding of a batch of 28-byte wire fixes (at least one)."""
    if not 1 <= len(records) <= MAX_FIXES:
        raise FormatError(f"a delta batch holds 1 to {MAX_FIXES} fixes, not {len(records)}")
    out = bytearray([VERSION])
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


def decode_batch(data: bytes | bytearray | memoryview) -> list[bytes]:
    """The 28-byte wire fixes of a delta-coded batch; FormatError when malformed."""
    r = _Reader(data)
    version = r.byte()
    if version != VERSION:
        raise FormatError(f"delta batch: version {version} is not supported")
    count = r.varint()
    if not 1 <= count <= MAX_FIXES:
        raise FormatError(f"delta batch: {count} fixes (1 to {MAX_FIXES})")
    first = r.take(wire.SIZE)
    cur = list(_fields(first))
    wire.decode_fix(first)
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
