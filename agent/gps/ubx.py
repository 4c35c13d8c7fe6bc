"""u-blox UBX binary: NAV-PVT (and NAV-SAT, NAV-DOP) to one :class:`~agent.model.Fix` per epoch.

A u-blox receiver (M8, M9, M10, F9) can run in its binary protocol: NAV-PVT carries the whole
navigation solution with its validity flags, the receiver's time accuracy and whether UTC is
fully resolved, at 1e-7 degree. This module reads frames that the stream splitter
(:mod:`agent.gps.receiver`) has cut from the byte stream and validated: the 8-bit Fletcher
checksum is checked with ``pyubx2`` (``ubxhelpers.calc_checksum``, the same code its
``UBXReader`` uses); a frame that fails it is never decoded. The few fields a tracker needs are
then read from the payload at the offsets of the u-blox interface description (``struct``, one
call per message); ``tests/gps/test_ubx.py`` checks every decoded field against
``pyubx2.UBXReader.parse`` of the same frames.

Rules (u-blox interface description, UBX-NAV-PVT):

* the epoch's **time** is used only when ``validDate`` and ``validTime`` are set; ``nano``
  (which may be negative) is added and the time is rounded to the millisecond as gpsd prints
  it. ``fullyResolved`` (no whole-second ambiguity), ``confirmedDate``/``confirmedTime`` (when
  ``confirmedAvai``) and ``tAcc`` travel with the Fix to the clock;
* a **position** needs ``gnssFixOK`` and a fix type of dead reckoning (1, reported 2D, as
  gpsd), 2D (2), 3D (3) or GNSS + dead reckoning (4), and not ``invalidLlh``; fix type 5 (time
  only) and 0 are no fix. (gpsd looks at the fix type alone; u-blox documents ``gnssFixOK``
  as the flag that the fix is within the receiver's DOP and accuracy masks.)
* NAV-SAT's ``svUsed`` satellites give the constellations used and the count in view;
  NAV-DOP gives HDOP.

Messages of one epoch share ``iTOW``; the epoch is emitted at NAV-EOE (end of epoch), when a
message of another epoch arrives, or on :meth:`UbxReader.flush`.
"""

from __future__ import annotations

import calendar
import struct
from dataclasses import dataclass, replace

from agent.model import Fix, FixMode

__all__ = ["MAX_PAYLOAD", "SYNC", "UbxReader", "UbxStats", "frame_ok", "known_class"]

SYNC = b"\xb5\x62"
#: Longest payload accepted (NAV-SAT with 255 satellites is 3068 bytes; MON/RXM a little more).
MAX_PAYLOAD = 8192
#: UBX message classes of the u-blox interface description (others are not UBX frames).
_CLASSES = frozenset({0x01, 0x02, 0x04, 0x05, 0x06, 0x09, 0x0A, 0x0B, 0x0D, 0x10, 0x13, 0x21})
_CLASSES |= {0x27, 0x28, 0x29}
NAV = 0x01
NAV_DOP, NAV_PVT, NAV_SAT, NAV_EOE = 0x04, 0x07, 0x35, 0x61
#: UBX gnssId to constellation (as the receiver settings name them).
GNSS_ID = {0: "gps", 1: "sbas", 2: "galileo", 3: "beidou", 5: "qzss", 6: "glonass", 7: "navic"}

_PVT = struct.Struct("<IHBBBBBBIiBBBBiiiiIIiiiiiIIH")  # the first 80 bytes of NAV-PVT
_PVT_FLAGS3 = struct.Struct("<H")
_SAT = struct.Struct("<BBBbhhI")


def known_class(cls: int) -> bool:
    return cls in _CLASSES


def frame_ok(frame: bytes) -> bool:
    """True when ``frame`` (sync to checksum) has a valid length and Fletcher checksum."""
    if len(frame) < 8 or frame[:2] != SYNC:
        return False
    length = frame[4] | frame[5] << 8
    if len(frame) != length + 8:
        return False
    # pyubx2 (with pyrtcm and pynmeagps, ~2 MB resident) only once a UBX frame arrives:
    # a tracker on an NMEA receiver never loads it (docs/scale.md).
    from pyubx2.ubxhelpers import calc_checksum

    return bool(calc_checksum(frame[2:-2]) == frame[-2:])


@dataclass
class UbxStats:
    frames: int = 0  # checksum-valid UBX frames
    bad_checksum: int = 0
    bad_frames: int = 0  # a sync word without a plausible UBX header (binary noise)
    bad_fields: int = 0  # valid checksum, impossible content (date, position, length)
    untimed: int = 0  # NAV-PVT without a valid date and time: no Fix
    ignored: int = 0  # UBX messages not read (RXM, MON, other NAV, ...)
    fixes: int = 0


@dataclass(slots=True)
class _Epoch:
    itow: int
    pvt: Fix | None = None
    hdop: float | None = None
    visible: int | None = None
    systems: tuple[str, ...] | None = None


class UbxReader:
    """Checksum-valid UBX frames in, one Fix per epoch out. Pure; one per source."""

    def __init__(self, source: str = "ubx") -> None:
        self.source = source
        self.stats = UbxStats()
        self._epoch: _Epoch | None = None

    def frame(self, frame: bytes) -> list[Fix]:
        """One frame from sync word to checksum (checked here; a bad one is only counted)."""
        if not frame_ok(frame):
            self.stats.bad_checksum += 1
            return []
        return self.decode(frame)

    def decode(self, frame: bytes) -> list[Fix]:
        """One frame whose length and checksum :func:`frame_ok` has accepted."""
        out: list[Fix] = []
        self.stats.frames += 1
        cls, msg_id = frame[2], frame[3]
        payload = frame[6:-2]
        if cls != NAV or msg_id not in _READ:
            self.stats.ignored += 1
            return out
        if len(payload) < 4:
            self.stats.bad_fields += 1
            return out
        itow = int.from_bytes(payload[:4], "little")
        ep = self._epoch
        if ep is not None and ep.itow != itow:
            self._emit(out)
            ep = None
        if ep is None:
            ep = self._epoch = _Epoch(itow)
        if msg_id == NAV_PVT:
            self._pvt(ep, payload)
        elif msg_id == NAV_SAT:
            self._sat(ep, payload)
        elif msg_id == NAV_DOP:
            if len(payload) >= 18:
                ep.hdop = int.from_bytes(payload[12:14], "little") * 0.01
            else:
                self.stats.bad_fields += 1
        else:  # NAV-EOE: the receiver says the epoch is complete
            self._emit(out)
        return out

    def flush(self) -> list[Fix]:
        out: list[Fix] = []
        self._emit(out)
        return out

    def _emit(self, out: list[Fix]) -> None:
        ep, self._epoch = self._epoch, None
        if ep is None or ep.pvt is None:
            return
        fix = ep.pvt
        if ep.hdop is not None or ep.visible is not None or ep.systems is not None:
            fix = replace(
                fix,
                hdop=ep.hdop if ep.hdop is not None else fix.hdop,
                sats_visible=ep.visible if ep.visible is not None else fix.sats_visible,
                systems=ep.systems or fix.systems,
            )
        self.stats.fixes += 1
        out.append(fix)

    def _pvt(self, ep: _Epoch, p: bytes) -> None:
        if len(p) < 84:
            self.stats.bad_fields += 1
            return
        (
            _itow,
            year,
            month,
            day,
            hour,
            minute,
            second,
            valid,
            t_acc,
            nano,
            fix_type,
            flags,
            flags2,
            num_sv,
            lon,
            lat,
            _height,
            h_msl,
            _h_acc,
            _v_acc,
            _vel_n,
            _vel_e,
            _vel_d,
            g_speed,
            head_mot,
            _s_acc,
            _head_acc,
            _pdop,
        ) = _PVT.unpack_from(p)
        if valid & 0x03 != 0x03:  # validDate and validTime
            self.stats.untimed += 1
            return
        if not (
            1980 <= year <= 2200
            and 1 <= month <= 12
            and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour < 24
            and minute < 60
            and second <= 60
            and -1_000_000_000 <= nano <= 1_000_000_000
        ):
            self.stats.bad_fields += 1
            return
        t_ns = calendar.timegm((year, month, day, hour, minute, second)) * 1_000_000_000 + nano
        ms = (t_ns + 500_000) // 1_000_000
        invalid_llh = len(p) >= 80 and _PVT_FLAGS3.unpack_from(p, 78)[0] & 0x01
        lat_deg, lon_deg = lat / 1e7, lon / 1e7
        has_pos = (
            flags & 0x01  # gnssFixOK
            and 1 <= fix_type <= 4
            and not invalid_llh
            and abs(lat_deg) <= 90.0
            and abs(lon_deg) <= 180.0
        )
        if flags & 0x01 and 1 <= fix_type <= 4 and not has_pos and not invalid_llh:
            self.stats.bad_fields += 1
        mode = FixMode.FIX_3D if fix_type in (3, 4) else FixMode.FIX_2D
        # As GGA's quality: 4 RTK fixed, 5 RTK float, 2 differential, 1 autonomous, 0 none.
        carrier = flags >> 6 & 0x03
        if not has_pos:
            quality = 0
        elif carrier:
            quality = 4 if carrier == 2 else 5
        else:
            quality = 2 if flags & 0x02 else 1
        confirmed = bool(flags2 & 0x40 and flags2 & 0x80) if flags2 & 0x20 else None
        ep.pvt = Fix(
            time=ms / 1000.0,
            mode=mode if has_pos else FixMode.NO_FIX,
            lat=lat_deg if has_pos else None,
            lon=lon_deg if has_pos else None,
            alt=h_msl / 1000.0 if has_pos and mode == FixMode.FIX_3D else None,
            speed=g_speed / 1000.0 if has_pos else None,
            track=head_mot / 1e5 if has_pos else None,
            quality=quality,
            sats_used=num_sv,
            source=self.source,
            time_acc=t_acc / 1e9,
            time_resolved=bool(valid & 0x04),
            time_confirmed=confirmed,
        )

    def _sat(self, ep: _Epoch, p: bytes) -> None:
        if len(p) < 8 or len(p) < 8 + 12 * p[5]:
            self.stats.bad_fields += 1
            return
        used: set[str] = set()
        n = p[5]
        for i in range(n):
            gnss, _sv, _cno, _elev, _azim, _res, sat_flags = _SAT.unpack_from(p, 8 + 12 * i)
            if sat_flags & 0x08:  # svUsed
                name = GNSS_ID.get(gnss)
                if name is not None:
                    used.add(name)
        ep.visible = n
        ep.systems = tuple(sorted(used)) if used else None


_READ = frozenset({NAV_PVT, NAV_SAT, NAV_DOP, NAV_EOE})
