"""A compact binary encoding of a Fix: 28 bytes, for live messages and GPS segments.

Integration point: ``encode_fix(fix) -> bytes`` and ``decode_fix(data) -> Fix``.

Layout (big-endian, fixed 28 bytes; compare JT/T 808's 28-byte location body)::

    0   u8   version (high 3 bits = 1) | flags (low 5: alt, speed, track, hdop, sats known)
    1   u8   mode (low 2 bits) | quality << 2 (6 bits; 63 = unknown)
    2   u32  time, whole seconds since 1970-01-01 UTC (good to 2106)
    6   u16  milliseconds
    8   i32  latitude, 1e-7 degree (about 1.1 cm); 0x7fffffff = none
    12  i32  longitude, 1e-7 degree; 0x7fffffff = none
    16  i32  altitude MSL, centimetres
    20  u16  speed, centimetres per second (max 655 m/s)
    22  u16  course, 1/100 degree
    24  u16  HDOP, 1/100
    26  u8   satellites used
    27  u8   satellites in view

Decoding rounds lat/lon to 1e-7 degree, time to the millisecond, altitude to the centimetre.
"""

from __future__ import annotations

import math
import struct

from agent.errors import FormatError
from agent.model import Fix, FixMode

VERSION = 1
SIZE = 28
# A batch of these, each prefixed by its u16 length (agent.storage.records); the delta-coded
# form of a batch is agent.gps.fixdelta's.
CONTENT_TYPE = "application/x-edge-fix"
_FMT = struct.Struct(">BBIHiiiHHHBB")
assert _FMT.size == SIZE
_NONE32 = 0x7FFFFFFF
_F_ALT, _F_SPEED, _F_TRACK, _F_HDOP, _F_SATS = 1, 2, 4, 8, 16


def _clamp(v: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(v)))


def encode_fix(fix: Fix) -> bytes:
    """28 bytes. Raises :class:`FormatError` for a time outside 1970..2106."""
    ms_total = round(fix.time * 1000)
    secs, ms = divmod(ms_total, 1000)
    if not 0 <= secs <= 0xFFFFFFFF:
        raise FormatError(f"fix time {fix.time} cannot be encoded")
    flags = 0
    has_pos = fix.lat is not None and fix.lon is not None
    lat = (
        _NONE32 if not has_pos or fix.lat is None else _clamp(fix.lat * 1e7, -900000000, 900000000)
    )
    lon = (
        _NONE32
        if not has_pos or fix.lon is None
        else _clamp(fix.lon * 1e7, -1800000000, 1800000000)
    )
    alt = 0
    if fix.alt is not None and math.isfinite(fix.alt):
        flags |= _F_ALT
        alt = _clamp(fix.alt * 100, -(2**31), 2**31 - 1)
    speed = 0
    if fix.speed is not None and math.isfinite(fix.speed):
        flags |= _F_SPEED
        speed = _clamp(fix.speed * 100, 0, 0xFFFF)
    track = 0
    if fix.track is not None and math.isfinite(fix.track):
        flags |= _F_TRACK
        track = _clamp((fix.track % 360.0) * 100, 0, 35999)
    hdop = 0
    if fix.hdop is not None and math.isfinite(fix.hdop):
        flags |= _F_HDOP
        hdop = _clamp(fix.hdop * 100, 0, 0xFFFF)
    used = visible = 0
    if fix.sats_used is not None or fix.sats_visible is not None:
        flags |= _F_SATS
        used = _clamp(fix.sats_used if fix.sats_used is not None else 255, 0, 255)
        visible = _clamp(fix.sats_visible if fix.sats_visible is not None else 255, 0, 255)
    quality = 63 if fix.quality is None else _clamp(fix.quality, 0, 62)
    head = (VERSION << 5) | flags
    mode = (int(fix.mode) & 3) | (quality << 2)
    return _FMT.pack(head, mode, secs, ms, lat, lon, alt, speed, track, hdop, used, visible)


def decode_fix(data: bytes, source: str = "wire") -> Fix:
    """The Fix encoded by :func:`encode_fix`. Raises :class:`FormatError` when malformed."""
    if len(data) != SIZE:
        raise FormatError(f"a wire fix is {SIZE} bytes, got {len(data)}")
    head, mode_q, secs, ms, lat, lon, alt, speed, track, hdop, used, visible = _FMT.unpack(data)
    if head >> 5 != VERSION:
        raise FormatError(f"unknown wire fix version {head >> 5}")
    if ms > 999:
        raise FormatError("milliseconds out of range")
    flags = head & 0x1F
    try:
        mode = FixMode(mode_q & 3)
    except ValueError:
        raise FormatError(f"bad fix mode {mode_q & 3}") from None
    quality = mode_q >> 2
    has_pos = lat != _NONE32 and lon != _NONE32
    if has_pos and (abs(lat) > 900000000 or abs(lon) > 1800000000):
        raise FormatError("coordinates out of range")
    return Fix(
        time=secs + ms / 1000.0,
        mode=mode,
        lat=lat / 1e7 if has_pos else None,
        lon=lon / 1e7 if has_pos else None,
        alt=alt / 100.0 if flags & _F_ALT else None,
        speed=speed / 100.0 if flags & _F_SPEED else None,
        track=track / 100.0 if flags & _F_TRACK else None,
        quality=None if quality == 63 else quality,
        sats_used=(None if used == 255 else used) if flags & _F_SATS else None,
        sats_visible=(None if visible == 255 else visible) if flags & _F_SATS else None,
        hdop=hdop / 100.0 if flags & _F_HDOP else None,
        source=source,
    )
