"""Building u-blox UBX frames for the tests (the layout of the u-blox interface description)."""

from __future__ import annotations

import struct
import time

from pyubx2.ubxhelpers import calc_checksum

SYNC = b"\xb5\x62"


def frame(cls: int, msg_id: int, payload: bytes) -> bytes:
    body = bytes([cls, msg_id]) + struct.pack("<H", len(payload)) + payload
    return SYNC + body + calc_checksum(body)


def nav_pvt(
    t: float,
    lat: float,
    lon: float,
    *,
    fix_type: int = 3,
    fix_ok: bool = True,
    valid: int = 0x07,  # validDate, validTime, fullyResolved
    t_acc_ns: int = 20,
    nano: int | None = None,
    confirmed: bool | None = True,
    carrier: int = 0,
    diff: bool = False,
    num_sv: int = 14,
    h_msl_mm: int = 52_300,
    g_speed_mms: int = 8_000,
    head_mot: float = 123.45,
    invalid_llh: bool = False,
    length: int = 92,
) -> bytes:
    """A NAV-PVT frame for UTC time ``t`` (fractions go to ``nano``)."""
    whole = int(t // 1)
    if nano is None:
        nano = round((t - whole) * 1e9)
    tm = time.gmtime(whole)
    itow = (whole - 315964800 + 18) % 604800 * 1000 + round((t - whole) * 1000)
    flags = (0x01 if fix_ok else 0) | (0x02 if diff else 0) | (carrier & 0x03) << 6
    flags2 = 0
    if confirmed is not None:
        flags2 = 0x20 | (0xC0 if confirmed else 0)
    payload = struct.pack(
        "<IHBBBBBBIiBBBBiiiiIIiiiiiIIHH",
        itow,
        tm.tm_year,
        tm.tm_mon,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        valid,
        t_acc_ns,
        nano,
        fix_type,
        flags,
        flags2,
        num_sv,
        round(lon * 1e7),
        round(lat * 1e7),
        h_msl_mm + 40_000,
        h_msl_mm,
        1500,
        2500,
        100,
        -200,
        10,
        g_speed_mms,
        round(head_mot * 1e5),
        300,
        5_000_000,
        135,
        0x01 if invalid_llh else 0,
    )
    payload += bytes(length - len(payload))
    return frame(0x01, 0x07, payload)


def nav_sat(itow: int, sats: list[tuple[int, int, bool]]) -> bytes:
    """NAV-SAT: (gnssId, svId, used) per satellite."""
    payload = struct.pack("<IBBH", itow, 1, len(sats), 0)
    for gnss, sv, used in sats:
        payload += struct.pack("<BBBbhhI", gnss, sv, 40, 45, 180, 0, 0x08 if used else 0)
    return frame(0x01, 0x35, payload)


def nav_eoe(itow: int) -> bytes:
    return frame(0x01, 0x61, struct.pack("<I", itow))


def itow_of(pvt: bytes) -> int:
    return int(struct.unpack_from("<I", pvt, 6)[0])
