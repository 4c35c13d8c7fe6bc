"""The NMEA 0183 cycle engine: how a receiver's sentences become gpsd-style reports.

A receiver sends a burst of sentences per measurement cycle. Which of them belong together,
which one ends the cycle and what position the cycle reports is not written in any one
sentence: it is the behaviour of gpsd's NMEA driver (``drivers/driver_nmea0183.c``, function
``nmea_parse()`` and the ``process*()`` sentence handlers, plus ``gpsd_poll()`` in
``gpsd/libgpsd_core.c`` and ``all_reports()`` in ``gpsd/gpsd.c``) that the users of a GNSS
receiver on Linux, and the checks of this project, take as the reference. This module is an
independent, pure implementation of that behaviour (written from reading it, not translated):

* every sentence is decoded into a *new data* record and a *mask* of what it carried;
* the **cycle detector**: a sentence whose time of day differs by more than 10 ms from the
  previous timestamped sentence starts a cycle (the merged fix is cleared); the timestamped
  sentence type seen just before that is learned as the receiver's **cycle ender**, unless
  the new one is a *continuer* (GLL, which some receivers send after the cycle's time
  changed); reaching an ender again reports the cycle; new data that directly follows an
  ender is reported too; before any ender is learned (or after a receiver sent an untimed
  no-fix sentence) every sentence that changes position or mode is reported;
* the **merge** of each sentence's data into the cycle's fix (``gps_merge_fix()``), with the
  mode rules of each sentence (GGA altitude with >= 4 satellites is 3D, RMC keeps a 3D mode,
  GSA's mode wins, ...) and the "don't downgrade a held 3D fix" rule.

Where gpsd and the NMEA 0183 standard disagree, or gpsd accepts input that cannot be a fix,
this engine follows the standard and ``docs/gps.md`` lists each such rule.

The engine is fed checksum-verified sentences split into fields (``fields[0]`` is the address,
``$`` and checksum removed) and returns the mask; when the mask has :data:`REPORT`,
:meth:`CycleEngine.report` describes the fix gpsd would have reported at that moment.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

__all__ = [
    "CLEAR",
    "REPORT",
    "CycleEngine",
    "Report",
    "has_position",
    "system_of",
]

NAN = math.nan
#: A sentence's fields, the address first (a tuple, or a list).
Fields = tuple[str, ...]
_isfinite = math.isfinite

# --- what a sentence carried (a subset of gpsd's gps_mask_t) ---------------------------------
ONLINE = 1 << 0
TIME = 1 << 1
LATLON = 1 << 2
ALTITUDE = 1 << 3
SPEED = 1 << 4
TRACK = 1 << 5
STATUS = 1 << 6
MODE = 1 << 7
DOP = 1 << 8
SATELLITE = 1 << 9
USED = 1 << 10
ATTITUDE = 1 << 11
OTHER = 1 << 12  # any other data (errors, heading, depth, ...): "new data" for the detector
CLEAR = 1 << 13  # a new cycle starts with this sentence
REPORT = 1 << 14  # the fix is reported after this sentence
_MERGED = TIME | LATLON | ALTITUDE | SPEED | TRACK | STATUS | MODE | DOP | CLEAR
_CHANGES = _MERGED | SATELLITE | USED  # what a report describes may have changed

#: Longest sentence gpsd parses, with its CR LF (``NMEA_MAX``).
NMEA_MAX = 130
MAXCHANNELS = 230
_SAME_TIME_NS = 10_000_000  # gpsd's 0.01 s: closer timestamps are the same cycle
_KNOTS_TO_MPS = 1852.0 / 3600.0
_FEET_TO_M = 0.3048
_DAY_NS = 86_400 * 1_000_000_000

# Mode numbers as gpsd's TPV: 0 not seen, 1 no fix, 2 2D, 3 3D.
_NOT_SEEN, _NO_FIX, _2D, _3D = 0, 1, 2, 3

#: Constellation names, as the receiver settings name them.
GPS, GLONASS, GALILEO, BEIDOU, QZSS, NAVIC, SBAS = (
    "gps",
    "glonass",
    "galileo",
    "beidou",
    "qzss",
    "navic",
    "sbas",
)
#: NMEA 4.10 system ID (GSA field 18, GSV/GBS signal tables) to constellation.
_SYSTEM_ID = {1: GPS, 2: GLONASS, 3: GALILEO, 4: BEIDOU, 5: QZSS, 6: NAVIC}
#: Talker ID to constellation (GN and GP say nothing definite about other systems).
_TALKER_SYSTEM = {"GL": GLONASS, "GA": GALILEO, "GB": BEIDOU, "BD": BEIDOU, "GQ": QZSS}
_TALKER_SYSTEM |= {"QZ": QZSS, "GI": NAVIC}
#: GNS mode indicator: one character per system, in this order (NMEA 4.10).
_GNS_SYSTEMS = (GPS, GLONASS, GALILEO, BEIDOU, QZSS, NAVIC)


@lru_cache(maxsize=4096)
def system_of(talker: str, number: int, system_id: int = 0) -> str | None:
    """The constellation of satellite ``number`` in a GSA/GSV from ``talker``.

    NMEA 4.10 gives the system ID; before it the talker, and for GP/GN the number range
    (1-32 GPS, 33-64 and 152-158 SBAS, 65-96 GLONASS, 193-199 QZSS, 201-237 and 401-437
    BeiDou, 301-336 Galileo, as receivers number them).
    """
    if number < 1:
        return None
    if system_id:
        if system_id == 1:
            if number <= 32:
                return GPS
            if number <= 64 or 152 <= number <= 158:
                return SBAS
            if 193 <= number <= 199:
                return QZSS
            if 201 <= number <= 264:
                return BEIDOU
            return None
        return _SYSTEM_ID.get(system_id)
    named = _TALKER_SYSTEM.get(talker)
    if named is not None and number <= 99:
        return named
    if number <= 32:
        return GPS if talker in ("GP", "GN") else named
    if number <= 64:
        return SBAS
    if number <= 96:
        return GLONASS
    if 120 <= number <= 158:
        return SBAS
    if 193 <= number <= 199:
        return QZSS
    if 201 <= number <= 237 or 401 <= number <= 437:
        return BEIDOU
    if 301 <= number <= 336:
        return GALILEO
    return None


#: The fix as gpsd would report it (a TPV) after one sentence, as a plain tuple (this is the
#: hot path): time (UTC ns since 1970, 0 without a date), mode (0 not seen, 1 no fix, 2 2D,
#: 3 3D), lat, lon, altitude MSL, speed (m/s), track (NaN when unknown), GGA quality, HDOP,
#: satellites used, satellites in view, constellations used.
Report = tuple[
    int,
    int,
    float,
    float,
    float,
    float,
    float,
    "int | None",
    float,
    "int | None",
    "int | None",
    "tuple[str, ...] | None",
]
R_TIME, R_MODE, R_LAT, R_LON, R_ALT, R_SPEED, R_TRACK = range(7)
R_QUALITY, R_HDOP, R_USED, R_VISIBLE, R_SYSTEMS = range(7, 12)
_STALE: tuple[str, ...] = ("?",)


def has_position(r: Report) -> bool:
    """A report with a 2D/3D mode and a latitude and longitude."""
    return r[1] >= _2D and r[2] == r[2] and r[3] == r[3]


# --- field decoding: gpsd's atoi/safe_atof leniency, the standard's ranges -------------------


def _atoi(s: str) -> int:
    """C ``atoi``: the leading integer of ``s``, 0 when there is none."""
    if s.isdigit():
        return int(s)
    if not s:
        return 0
    s = s.lstrip(" ")
    end = 1 if s[:1] in ("-", "+") else 0
    while end < len(s) and s[end].isdigit():
        end += 1
    try:
        return int(s[:end])
    except ValueError:
        return 0


def _atof(s: str) -> float:
    """gpsd's ``safe_atof``: the leading decimal number of ``s``; NaN when there is none."""
    if not s:
        return NAN
    try:
        v = float(s)
    except ValueError:
        return _atof_prefix(s)
    return v if v - v == 0.0 else NAN  # inf and NaN are not numbers here


def _atof_prefix(s: str) -> float:
    s = s.lstrip(" ")
    end = 1 if s[:1] in ("-", "+") else 0
    dot = False
    while end < len(s) and (s[end].isdigit() or (s[end] == "." and not dot)):
        dot = dot or s[end] == "."
        end += 1
    try:
        v = float(s[:end])
    except ValueError:
        return NAN
    return v if v - v == 0.0 else NAN


def _coord(value: str, hemi: str, limit: float) -> float:
    """``DDMM.mmmm``/``DDDMM.mmmm`` and hemisphere to signed degrees; NaN when malformed.

    As gpsd, a decimal point is required and the hemisphere is read from its first letter;
    unlike gpsd, minutes of 60 or more and values beyond the pole or the antimeridian are not
    a position (NMEA: ``mm`` is 00-59).
    """
    dot = value.find(".")
    if dot < 1 or not value[:dot].isdigit():
        return NAN
    frac = value[dot + 1 :]
    if frac and not frac.isdigit():
        return NAN
    whole = int(value[:dot])
    deg = whole // 100
    minutes = (whole - deg * 100) + (float("0." + frac) if frac else 0.0)
    if minutes >= 60.0:
        return NAN
    v = (deg * 60 + minutes) * (1.0 / 60.0)
    if v > limit:
        return NAN
    h = hemi[:1]
    return -v if h in ("S", "W") else v


def _latlon(f: Fields, i: int) -> tuple[float, float] | None:
    """gpsd's ``do_lat_lon()`` on fields ``i..i+3``: None unless all four are present."""
    if not (f[i] and f[i + 1] and f[i + 2] and f[i + 3]):
        return None
    return _position(f[i], f[i + 1], f[i + 2], f[i + 3])


@lru_cache(maxsize=256)
def _position(lat_s: str, ns: str, lon_s: str, ew: str) -> tuple[float, float] | None:
    # RMC, GGA, GLL and GNS of one cycle carry the same four strings: decoded once.
    lat = _coord(lat_s, ns, 90.0)
    lon = _coord(lon_s, ew, 180.0)
    if lat != lat or lon != lon:  # NaN
        return None
    return lat, lon


@lru_cache(maxsize=256)
def _tod(s: str) -> int:
    """``hhmmss[.sss]`` to ns since midnight as gpsd's ``decode_hhmmss()``; -1 when malformed.

    The fraction is scaled by its number of characters, as gpsd does (``.5`` is 500 ms);
    unlike gpsd, hours > 23, minutes > 59 and seconds > 60 are refused.
    """
    if len(s) < 6 or not s[:6].isdigit():
        return -1
    h, m, sec = int(s[0:2]), int(s[2:4]), int(s[4:6])
    if h > 23 or m > 59 or sec > 60:
        return -1
    ns = 0
    if len(s) > 7 and s[6] == "." and s[7].isdigit():
        frac = s[7:27]
        n = len(frac)
        digits = frac if frac.isdigit() else frac[: len(frac) - len(frac.lstrip("0123456789"))]
        if n <= 9:
            ns = int(digits[:9]) * 10 ** (9 - n)
    return ((h * 60 + m) * 60 + sec) * 1_000_000_000 + ns


@lru_cache(maxsize=64)
def _ddmmyy(s: str) -> tuple[int, int, int] | None:
    """``ddmmyy`` to (year, month, day) as gpsd (two-digit years 69-99 are 19xx, else 20xx)."""
    if len(s) != 6 or not s.isdigit():
        return None
    d, m, y = int(s[0:2]), int(s[2:4]), int(s[4:6])
    year = y + (2000 if y < 69 else 1900)
    return _valid_date(year, m, d)


@lru_cache(maxsize=64)
def _valid_date(year: int, month: int, day: int) -> tuple[int, int, int] | None:
    # gpsd checks 1-12 and 1-31 and lets mktime() move 31 February into March; a date that
    # is not in the calendar is refused here.
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return year, month, day


@lru_cache(maxsize=16)
def _day_ns(year: int, month: int, day: int) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0)) * 1_000_000_000


_STATUS_OF_FAA = {"D": 2, "E": 6, "F": 5, "M": 7, "P": 2, "R": 4, "S": 8}


# --- the sentence table ------------------------------------------------------------------------


#: A table entry: (handler, gpsd's minimum field count ``nf``, flags, tag). The tag identifies
#: the sentence type in the table of cycle enders (gpsd: its index in the sentence table).
_Entry = tuple[Callable[["CycleEngine", "Fields", int], int], int, int, str]
#: A sentence ready for :meth:`CycleEngine.run`: padded fields, their count before padding, its
#: table entry (or None), flags, and a memo where handlers keep what they parsed from it.
Prepared = tuple["Fields", int, "_Entry | None", int, list[Any]]
_FIX = 1  # carries fix data: its data record starts empty
_CONTINUER = 2  # may extend a cycle after its time changed (GLL)
_GSV = 4  # satellites in view, in several parts
_GSA = 8


class CycleEngine:
    """gpsd's NMEA state for one receiver. Not thread-safe: one per source."""

    def __init__(self) -> None:
        # The merged fix of the current cycle (gpsd: gpsdata.fix).
        self.time_ns = 0
        self.lat = NAN
        self.lon = NAN
        self.mode = _NOT_SEEN
        self.status = 0
        self.alt_msl = NAN
        self.alt_hae = NAN
        self.speed = NAN
        self.track = NAN
        self.hdop = NAN
        self.closed: Report | None = None  # the previous cycle's fix as it was when it ended
        self._memo: list[Any] = [None]  # the memo of the sentence being handled
        self._last_report: Report | None = None
        # lastfix / oldfix: only what the mode rules read.
        self._last_time = 0
        self._last_mode = _NOT_SEEN
        self._last_alt = False
        self._old_alt = False
        # This sentence's data (gpsd: newdata), cleared for every decoded sentence.
        self._n_time = 0
        self._n_lat = NAN
        self._n_lon = NAN
        self._n_mode = _NOT_SEEN
        self._n_status = 0
        self._n_alt_msl = NAN
        self._n_alt_hae = NAN
        self._n_speed = NAN
        self._n_track = NAN
        self._n_hdop = NAN
        # Date and time of day (gpsd: nmea.date, subseconds); year 0 = no date yet.
        self._year = 0
        self._month = 0
        self._day = 0
        self._tod_ns = 0  # time of day of the last merged timestamp
        self._date_ns = 0  # the date as UTC ns at midnight
        # Cycle detection.
        self._this_frac = 0
        self._last_frac = 0
        self._latch = False
        self._gsx_more = False
        self._lasttag = ""
        self._enders: set[str] = set()
        self.reliable = False
        self._continue = False
        # GGA.
        self._last_gga_talker = ""
        self._last_gga_time = ""
        self._latch_mode = False
        self._gga_sats = 0
        # Reported with the fix, cleared with it: this cycle's GGA quality and satellite count.
        self.quality: int | None = None
        self.sats = 0
        self._n_quality = -1
        self._n_sats = -1
        # GSA: satellites used (system, number) and which talkers were seen.
        self._last_gsa_talker = ""
        self._used: dict[tuple[str | None, int], None] = {}  # (system, number), in order
        self._seen_other_gsa = False
        self._gns_systems: tuple[str, ...] | None = None
        self._systems: tuple[str, ...] | None = _STALE  # cached, _STALE when to recompute
        # GSV: satellites in view.
        self._last_gsv_talker = ""
        self._end_gsv_talker = ""
        self._seen_other_gsv = False
        self._visible = 0
        self._any_az = False  # a satellite of this sky view has a non-zero azimuth
        self.sats_visible: int | None = None

    # ------------------------------------------------------------------ the detector
    def sentence(self, fields: Fields, length: int) -> int:
        """One checksum-verified sentence (``length``: its characters incl. CR LF)."""
        prepared = prepare(fields, length)
        return ONLINE if prepared is None else self.run(prepared)

    def run(self, prepared: Prepared) -> int:
        """A sentence as :func:`prepare` made it ready (a reader may keep that for a line it
        sees again: the handlers then keep what they parsed from it in its memo)."""
        fields, count, entry, flags, memo = prepared
        if entry is None or count < entry[1]:
            if not self._continue:  # the usual case: it only passes by
                if not flags & _GSV and self._last_gsv_talker:
                    self._end_gsv_talker = self._last_gsv_talker
                    self._last_gsv_talker = ""
                if not flags & _GSA:
                    self._last_gsa_talker = ""
                return ONLINE
            mask = ONLINE
            thistag = ""
        else:
            handler, _, _, thistag = entry
            if flags & _FIX:
                self._n_lat = self._n_lon = self._n_alt_msl = self._n_alt_hae = NAN
                self._n_mode = self._n_status = 0
            self._memo = memo
            mask = handler(self, fields, count)
            self._continue = flags & _CONTINUER != 0
        if not flags & _GSV and self._last_gsv_talker:
            self._end_gsv_talker = self._last_gsv_talker
            self._last_gsv_talker = ""
        if not flags & _GSA:
            self._last_gsa_talker = ""
        if self._gsx_more:
            self._gsx_more = False
            return mask  # more GSV parts to come: neither starts nor ends a cycle
        if mask & _CHANGES:
            self._last_report = None
        if mask & TIME:
            self._n_time = self._date_ns + self._tod_ns if self._year else 0

        enders = self._enders
        lasttag = self._lasttag
        if self._latch:
            self._latch = False
            if abs(self._this_frac - self._last_frac) > _SAME_TIME_NS:
                mask |= CLEAR
                if lasttag and lasttag not in enders and not self._continue:
                    enders.add(lasttag)
                    self.reliable = True
            if thistag in enders:
                mask |= REPORT
            self._lasttag = thistag
        else:
            if mask != ONLINE and lasttag in enders:
                mask |= REPORT  # new data right after the cycle ended
            if self._continue:
                enders.discard(lasttag)
                enders.add(thistag)
                self.reliable = True
                mask |= REPORT
        if not mask & _MERGED:
            # Nothing of the fix changed (nor would gpsd's bookkeeping of it).
            if mask & ATTITUDE and not self.reliable:
                mask |= REPORT
            return mask
        if (
            mask & MODE
            and self.mode == _3D
            and self._n_mode != _NO_FIX
            and (self._last_alt or self._old_alt)
        ):
            self._n_mode = _3D  # do not downgrade a held 3D fix (RMC has no 2D/3D)
        self._merge(mask)
        if not self.reliable and mask & (ATTITUDE | LATLON | MODE):
            mask |= REPORT
        return mask

    def _merge(self, mask: int) -> None:
        """``gpsd_poll()``: clear at a cycle start, merge, then the error model's bookkeeping."""
        if mask & CLEAR:
            # What the ending cycle had at its end (speed, track, ... may come after the report).
            self.closed = self._snapshot() if self.time_ns > 0 else None
            if not mask & DOP:
                self.hdop = NAN
            self.time_ns = 0
            self.lat = self.lon = NAN
            self.mode = _NOT_SEEN
            self.status = 0
            self.alt_msl = self.alt_hae = NAN
            self.speed = self.track = NAN
            self.quality = None
            self.sats = 0
            if self._gns_systems is not None:
                self._gns_systems = None
                self._systems = _STALE
        if mask & TIME:
            self.time_ns = self._n_time
        if mask & LATLON:
            self.lat, self.lon = self._n_lat, self._n_lon
        if mask & MODE:
            self.mode = self._n_mode
        if mask & STATUS and self.status < self._n_status:
            self.status = self._n_status
        if mask & ALTITUDE:
            if self._n_alt_hae == self._n_alt_hae:
                self.alt_hae = self._n_alt_hae
            if self._n_alt_msl == self._n_alt_msl:
                self.alt_msl = self._n_alt_msl
        if self._n_quality >= 0:
            self.quality = self._n_quality
            self._n_quality = -1
        if self._n_sats >= 0:
            self.sats = self._n_sats
            self._n_sats = -1
        if mask & TRACK:
            self.track = self._n_track
        if mask & SPEED:
            self.speed = self._n_speed
        t = self.time_ns
        if t > 0:
            alt = self.alt_msl == self.alt_msl or self.alt_hae == self.alt_hae
            if abs(t - self._last_time) > 9_900_000:  # time moved: lastfix becomes oldfix
                self._old_alt = self._last_alt
            self._last_time, self._last_mode, self._last_alt = t, self.mode, alt

    def _utc(self) -> int:
        return self._date_ns + self._tod_ns

    def report(self) -> Report:
        """The fix as reported now (after a sentence whose mask had :data:`REPORT`); the same
        object as the previous report when nothing it describes has changed since."""
        r = self._last_report
        if r is None:
            r = self._last_report = self._snapshot()
        return r

    def _snapshot(self) -> Report:
        used = self.sats or len(self._used) or None
        systems = self._systems
        if systems is _STALE:
            found = {s for s, _ in self._used if s is not None}
            if self._gns_systems:
                found.update(self._gns_systems)
            systems = self._systems = tuple(sorted(found)) if found else None
        return (
            self.time_ns,
            self.mode,
            self.lat,
            self.lon,
            self.alt_msl,
            self.speed,
            self.track,
            self.quality,
            self.hdop,
            used,
            self.sats_visible,
            systems,
        )

    # ------------------------------------------------------------------ time helpers
    def _merge_time(self, s: str) -> bool:
        """gpsd's ``merge_hhmmss()``: a valid time of day replaces the current one."""
        t = _tod(s)
        if t < 0:
            return False
        self._tod_ns = t
        return True

    def _merge_date(self, s: str) -> bool:
        d = _ddmmyy(s)
        if d is None:
            return False
        self._set_date(d)
        return True

    def _set_date(self, d: tuple[int, int, int]) -> None:
        if d != (self._year, self._month, self._day):
            self._year, self._month, self._day = d
            self._date_ns = _day_ns(*d)

    def _stamp(self, s: str) -> bool:
        """Merge a time of day and let it feed the cycle detector (most timed sentences)."""
        t = _tod(s)
        if t < 0:
            return False
        self._tod_ns = t
        self._last_frac = self._this_frac
        self._this_frac = t
        self._latch = True
        return True

    def _register(self) -> None:
        """gpsd's ``register_fractional_time()`` for the time just merged: it feeds the
        cycle detector."""
        self._last_frac = self._this_frac
        self._this_frac = self._tod_ns
        self._latch = True

    def _forget_date(self) -> None:
        """An untimed no-fix sentence (``$GPRMC,,V,...``): forget the date, report at once."""
        self._year = self._month = self._day = self._date_ns = 0
        self.reliable = False

    def _zero_sky(self) -> None:
        self._visible = 0
        self._any_az = False


# --- the sentences: what each one carries into the cycle (gpsd's process*() handlers) ----------
#
# Each handler reads one sentence's fields into the engine's "new data" (``e._n_*``), merges
# times and dates through the engine's time helpers, and returns the mask of what the sentence
# carried; :meth:`CycleEngine.run` then runs the detector and the merge. As in gpsd, where each
# ``process*()`` function takes the session, they are functions of the engine, not its methods.


def _rmc(e: CycleEngine, f: Fields, count: int) -> int:
    mask = ONLINE
    if f[2][:1] != "A":
        # V (and anything else: NMEA defines A and V) is a navigation warning: no fix,
        # and receivers send bogus times with it, so its time is not used.
        e._n_mode = _NO_FIX
        if not f[1] or not f[9]:
            e._forget_date()
            mask |= REPORT | TIME
        return mask | STATUS | MODE
    if f[1] and count > 9 and f[9] and e._merge_time(f[1]) and e._merge_date(f[9]):
        mask |= TIME
        e._register()
    pos = _latlon(f, 3)
    if pos is not None:
        e._n_lat, e._n_lon = pos
        mask |= LATLON
        e._n_mode = _3D if e._last_mode == _3D else _2D
        status = 1
    else:
        e._n_mode = _NO_FIX
        status = 0
    if f[7]:
        e._n_speed = _atof(f[7]) * _KNOTS_TO_MPS
        mask |= SPEED
    if f[8]:
        e._n_track = _atof(f[8])
        mask |= TRACK
    if count > 12 and f[12]:
        status = _STATUS_OF_FAA.get(f[12][0], 0 if f[12][0] in "NV" else 1)
    if len(e._used) > 3 or e.alt_msl == e.alt_msl or e.alt_hae == e.alt_hae:
        e._n_mode = _3D
    e._n_status = status
    return mask | MODE | STATUS


def _gga(e: CycleEngine, f: Fields, count: int) -> int:
    mask = ONLINE
    talker = f[0][1:2]
    previous_talker = e._last_gga_talker
    e._last_gga_talker = talker
    quality = _atoi(f[6]) if f[6] else -1
    if quality == 0 and not f[1]:
        # "$GPGGA,,,,,,0,...": no time to detect cycles with (Quectel).
        e._forget_date()
    if 0 <= quality <= 8:
        e._n_status = (0, 1, 2, 3, 4, 5, 6, 7, 8)[quality]
        mask = STATUS  # as gpsd: this drops ONLINE, the forced report and TIME
        e._n_quality = quality
    if previous_talker and previous_talker != talker:
        e._latch_mode = False
    else:
        e._latch_mode = f[1] == e._last_gga_time
    if e._latch_mode:
        # The timestamp did not advance (Trimble Placer): a bogus, held fix.
        e._n_status = 0
        e._n_mode = _NO_FIX
        mask |= MODE | STATUS
    else:
        e._last_gga_time = f[1]
    sats = _atoi(f[7])
    e._gga_sats = e._n_sats = sats
    if f[1] and e._stamp(f[1]) and e._year:
        mask |= TIME
    pos = _latlon(f, 2)
    if pos is not None and quality != 0:
        e._n_lat, e._n_lon = pos
        e._n_mode = _2D
        mask |= LATLON
        if f[9]:
            e._n_alt_msl = _atof(f[9])
            mask |= ALTITUDE
            if sats >= 4:
                e._n_mode = _3D
        if sats < 3 and f[0][0] == "G" and talker in ("P", "N"):
            e._n_mode = _NO_FIX
    else:
        # No position, or quality 0 ("fix not available or invalid", NMEA 0183): gpsd
        # takes the coordinates of a quality-0 GGA as a fix; they are not one.
        e._n_mode = _NO_FIX
    mask |= MODE
    if f[8]:
        hdop = _atof(f[8])
        if 0.01 <= hdop <= 89.99:
            e.hdop = hdop
            mask |= DOP
    return mask


def _gns(e: CycleEngine, f: Fields, count: int) -> int:
    mask = ONLINE
    if f[1] and e._stamp(f[1]) and e._year:
        mask = TIME
    modes = f[6]
    systems = tuple(system for system, c in zip(_GNS_SYSTEMS, modes, strict=False) if c not in "NV")
    if not systems:
        # Every system says "no fix" (NMEA 4.10: one character per system; gpsd reads
        # only the first and so misses a fix without GPS, e.g. "NNNA" BeiDou alone).
        e._n_mode = _NO_FIX
        return mask | MODE
    if f[13][:1] in ("U", "V"):
        return mask  # NMEA 4.1 navigational status: unsafe / not valid
    e._gns_systems = systems
    e._systems = _STALE
    sats = _atoi(f[7])
    e._gga_sats = e._n_sats = sats
    pos = _latlon(f, 2)
    if pos is not None:
        e._n_lat, e._n_lon = pos
        mask |= LATLON
        e._n_mode = _2D
        if f[9]:
            e._n_alt_msl = _atof(f[9])
            if e._n_alt_msl == e._n_alt_msl:
                mask |= ALTITUDE
                if sats > 3:
                    e._n_mode = _3D
    else:
        e._n_mode = _NO_FIX
    if f[8]:
        e.hdop = _atof(f[8])
        mask |= DOP
    first = next(c for c in modes if c not in "NV")
    e._n_status = _STATUS_OF_FAA.get(first, 1)
    return mask | MODE | STATUS


def _gll(e: CycleEngine, f: Fields, count: int) -> int:
    mask = ONLINE
    if f[5] and e._stamp(f[5]) and e._year:
        mask = TIME
    pos = _latlon(f, 1) if f[6][:1] == "A" and (count < 8 or f[7][:1] != "N") else None
    if pos is None:
        e._n_mode = _NO_FIX
    else:
        e._n_lat, e._n_lon = pos
        mask |= LATLON
        has_alt = e.alt_msl == e.alt_msl or e.alt_hae == e.alt_hae
        if has_alt or len(e._used) > 3:
            e._n_mode = _3D
        elif e.mode < _2D or not e._old_alt:
            e._n_mode = _2D
        e._n_status = _STATUS_OF_FAA.get(f[7][:1], 1) if count >= 8 else 1
    return mask | STATUS | MODE


def _zda(e: CycleEngine, f: Fields, count: int) -> int:
    if not (f[1] and f[2] and f[3] and f[4]) or not e._merge_time(f[1]):
        return ONLINE
    year = _atoi(f[4])
    date = _valid_date(year, _atoi(f[3]), _atoi(f[2])) if 1900 <= year <= 2200 else None
    if date is None:
        return ONLINE
    e._set_date(date)
    e._register()
    return TIME


def _gsa(e: CycleEngine, f: Fields, count: int) -> int:
    mask = ONLINE
    talker = f[0][1:2]
    previous = e._last_gsa_talker
    if not e._latch_mode:
        memo = e._memo
        parsed = memo[0]
        if parsed is None:
            parsed = memo[0] = _parse_gsa(f, count)
        mode, hdop, dop, keys = parsed
        if mode:
            e._n_mode = mode
            mask = MODE
        if hdop == hdop:
            e.hdop = hdop
        mask |= dop
        if not previous or (talker == previous and talker not in ("N", "Q")):
            e._used = {}
        e._systems = _STALE
        e._last_gsa_talker = talker
        if talker != "P" and talker in _OTHER_TALKERS:
            e._seen_other_gsa = True
        used = e._used
        if len(used) + len(keys) <= MAXCHANNELS:
            used.update(dict.fromkeys(keys))
        else:
            for key in keys:
                if len(used) >= MAXCHANNELS:
                    break
                used[key] = None
        mask |= USED
    if e._seen_other_gsa and talker == "P":
        mask = ONLINE
    elif previous != "N" and talker == "N":
        mask = ONLINE | MODE
    return mask


def _gsv(e: CycleEngine, f: Fields, count: int) -> int:
    memo = e._memo
    parsed = memo[0]
    if parsed is None:
        parsed = memo[0] = _parse_gsv(f, count)
    shape, total, part, talker, add, az = parsed
    if shape != _GSV_OK:
        if shape == _GSV_BAD:
            e._zero_sky()
        return ONLINE
    if part == 1 and not e._last_gsv_talker:
        e._zero_sky()
    e._last_gsv_talker = talker
    if talker != "P" and talker in _OTHER_TALKERS:
        e._seen_other_gsv = True
    visible = e._visible + add
    if visible > MAXCHANNELS:  # gpsd zeroes the sky when it overflows
        visible, any_az = 0, False
    else:
        any_az = e._any_az or az
    e._visible, e._any_az = visible, any_az
    if part < total:
        e._gsx_more = True
        return ONLINE
    if not any_az:
        e._zero_sky()  # all azimuths zero: SiRF's "no satellites" hairball
        return ONLINE
    e.sats_visible = visible
    if e._seen_other_gsv and talker == "P" and e._end_gsv_talker != "P":
        return ONLINE
    return SATELLITE


def _vtg(e: CycleEngine, f: Fields, count: int) -> int:
    if not f[1] or not f[5]:
        return ONLINE
    if count > 9 and f[9][:1] in ("E", "N"):
        return ONLINE
    e._n_track = _atof(f[1])
    e._n_speed = _atof(f[5]) * _KNOTS_TO_MPS
    return ONLINE | TRACK | SPEED


def _gbs(e: CycleEngine, f: Fields, count: int) -> int:
    t = _tod(f[1])
    if t < 0:
        return ONLINE
    e._last_frac = e._this_frac
    e._this_frac = t
    e._latch = True  # GBS feeds the detector without being merged (gpsd)
    if e._tod_ns // 1_000_000_000 == t // 1_000_000_000:
        return OTHER
    return ONLINE


def _bwc(e: CycleEngine, f: Fields, count: int) -> int:
    if f[1] and e._merge_time(f[1]) and e._year:
        return TIME
    return ONLINE


def _grs(e: CycleEngine, f: Fields, count: int) -> int:
    if f[1]:
        e._merge_time(f[1])
    return ONLINE


def _psrfepe(e: CycleEngine, f: Fields, count: int) -> int:
    mask = STATUS
    if f[1] and e._stamp(f[1]) and e._year:
        mask |= TIME
    if f[2] != "A":
        return mask
    if f[3]:
        e.hdop = _atof(f[3])
        mask |= DOP
    return mask | OTHER


def _pashr(e: CycleEngine, f: Fields, count: int) -> int:
    kind = f[1]
    if kind == "POS":
        mask = ONLINE | MODE | STATUS | CLEAR
        if not f[2]:
            e._n_mode = _NO_FIX
            return mask
        e._n_mode = _3D
        e._n_status = 2 if _atoi(f[2]) >= 1 else 1
        e._gga_sats = _atoi(f[3])
        if e._stamp(f[4]):
            mask |= TIME
        pos = _latlon(f, 5)
        if pos is not None:
            e._n_lat, e._n_lon = pos
            mask |= LATLON
            if f[9]:
                e._n_alt_hae = _atof(f[9])
                mask |= ALTITUDE
        e._n_track = _atof(f[11])
        e._n_speed = _atof(f[12]) / 3.6
        if f[15]:
            e.hdop = _atof(f[15])
            mask |= DOP
        return mask | SPEED | TRACK | OTHER
    if kind == "SAT":
        return ONLINE | SATELLITE | USED
    if kind not in ("ACK", "MCA", "NAK", "PBN", "RID") and f[3] == "T":
        e._merge_time(f[1])  # OxTS attitude: time of day only, not a cycle
    return ONLINE


def _psti030(e: CycleEngine, f: Fields, count: int) -> int:
    mask = ONLINE
    if f[3] == "V" or f[13] == "N":
        e._n_mode = _NO_FIX
        return mask | MODE | STATUS
    if f[3] != "A":
        return mask
    if f[2] and f[12] and e._merge_time(f[2]) and e._merge_date(f[12]):
        mask |= TIME
        e._register()
    pos = _latlon(f, 4)
    if pos is not None:
        e._n_lat, e._n_lon = pos
        e._n_mode = _2D
        mask |= LATLON | MODE
        if f[8]:
            e._n_alt_msl = _atof(f[8])
            mask |= ALTITUDE
            e._n_mode = _3D
    e._n_status = _STATUS_OF_FAA.get(f[13][:1], 1)
    return mask | STATUS | OTHER


def _psti_time(e: CycleEngine, f: Fields, count: int, valid: bool) -> int:
    """$PSTI,032/033/035/036: a time and date that feed the detector."""
    if valid and f[2] and f[3] and e._merge_time(f[2]) and e._merge_date(f[3]):
        e._register()
        return ONLINE | TIME | OTHER
    return ONLINE


def _psti032(e: CycleEngine, f: Fields, count: int) -> int:
    return _psti_time(e, f, count, f[4] == "A")


def _psti033(e: CycleEngine, f: Fields, count: int) -> int:
    return _psti_time(e, f, count, f[4] == "2" and f[5] in ("B", "R"))


def _psti035(e: CycleEngine, f: Fields, count: int) -> int:
    return _psti_time(e, f, count, True)


def _pgrmz(e: CycleEngine, f: Fields, count: int) -> int:
    mask = ONLINE
    if f[2] == "f" and f[1]:
        e._n_alt_msl = _atoi(f[1]) * _FEET_TO_M
        mask |= ALTITUDE
    mode = f[3][:1]
    if mode in ("1", "2", "3"):
        e._n_mode = int(mode)
        mask |= MODE
    return mask


def _pmgnst(e: CycleEngine, f: Fields, count: int) -> int:
    mode = _atoi(f[2])
    e._n_mode = mode if f[3][:1] == "T" and mode in (2, 3) else _NO_FIX
    return ONLINE | MODE


def _pgrmf(e: CycleEngine, f: Fields, count: int) -> int:
    # Garmin's fix: gpsd prefers GPS week/TOW with the leap seconds; the UTC date and time
    # of the same sentence are used here (the week number has only 10 bits).
    mask = ONLINE
    if e._merge_time(f[4]) and e._merge_date(f[3]):
        mask |= TIME
    if f[10] != "A":
        return mask
    pos = _latlon(f, 6)
    if pos is not None:
        e._n_lat, e._n_lon = pos
        mask |= LATLON
    mode = f[11][:1]
    if mode in ("0", "1", "2"):
        e._n_mode = (_NO_FIX, _2D, _3D)[int(mode)]
        mask |= MODE
    e._n_speed = _atof(f[12]) / 3.6
    e._n_track = _atof(f[13])
    return mask | SPEED | TRACK


# Sentences that carry no fix: only whether they bring new data matters (a report after
# the cycle's end), as in gpsd's handlers.
def _hdg(e: CycleEngine, f: Fields, count: int) -> int:
    memo = e._memo
    if memo[0] is None:
        memo[0] = _hdg_mask(f)
    mask: int = memo[0]
    return mask


def _hdg_mask(f: Fields) -> int:
    heading, deviation = _atof(f[1]), _atof(f[2])
    if not f[1] or not 0.0 <= heading <= 360.0 or deviation < 0.0 or deviation > 360.0:
        return ONLINE
    return ONLINE | OTHER


def _heading(e: CycleEngine, f: Fields, count: int) -> int:  # HDM, HDT
    return ONLINE | ATTITUDE if f[1] and 0.0 <= _atof(f[1]) <= 360.0 else ONLINE


def _rot(e: CycleEngine, f: Fields, count: int) -> int:
    return ONLINE | ATTITUDE if f[1] and f[2][:1] == "A" else ONLINE


def _mwv(e: CycleEngine, f: Fields, count: int) -> int:
    relative = f[2][:1] == "R" and f[4][:1] == "N" and f[5][:1] == "A"
    return ONLINE | OTHER if relative else ONLINE


def _depth(e: CycleEngine, f: Fields, count: int) -> int:  # DBT, DPT
    present = (f[3] or f[1] or f[5]) if f[0][2:] == "DBT" else f[1]
    return ONLINE | OTHER if present else ONLINE


def _xdr(e: CycleEngine, f: Fields, count: int) -> int:
    for i in range(min(count // 4, 10)):
        j = i * 4
        kind, name = f[j + 1][:1], f[j + 4]
        if not f[j + 2]:
            continue
        if kind == "A" and f[j + 3][:1] == "D" and name in ("PTCH", "PITCH", "ROLL"):
            return ONLINE | ATTITUDE
        if kind == "G" and name in ("MAGX", "MAGY", "MAGZ"):
            return ONLINE | ATTITUDE
    return ONLINE


def _online(e: CycleEngine, f: Fields, count: int) -> int:
    return ONLINE


def _other(e: CycleEngine, f: Fields, count: int) -> int:
    return ONLINE | OTHER


def _attitude(e: CycleEngine, f: Fields, count: int) -> int:
    return ONLINE | ATTITUDE


_GSV_BAD, _GSV_SKIP, _GSV_OK = 0, 1, 2


def _parse_gsa(f: Fields, count: int) -> tuple[int, float, int, tuple[tuple[str | None, int], ...]]:
    """What a GSA says, whatever the state: (mode 1-3 or 0, HDOP or NaN, DOP bit, satellite
    keys), as ``processGSA()`` reads them (DOPs kept in 0.01-89.99; a 19th field is the
    NMEA 4.10 system ID unless it has a decimal point)."""
    mode = _atoi(f[2])
    hdop, dop, system_id = NAN, 0, 0
    if count <= 19:
        h = _atof(f[16]) if f[16] else NAN
        if 0.01 <= h <= 89.99:
            hdop, dop = h, DOP
        elif any(0.01 <= _atof(f[i]) <= 89.99 for i in (15, 17) if f[i]):
            dop = DOP
        if count == 19 and f[18] and "." not in f[18]:
            system_id = _atoi(f[18])
    keys = _gsa_keys(f[0][:2], system_id, tuple(f[3 : count - 3]))
    return (mode if 1 <= mode <= 3 else 0), hdop, dop, keys


def _parse_gsv(f: Fields, count: int) -> tuple[int, int, int, str, int, bool]:
    """What a GSV says, whatever the state: (shape, total parts, part, talker letter,
    satellites with a number, whether one has a non-zero azimuth) as ``processGSV()`` reads
    them (an azimuth of 0 or 360 counts against SiRF's "all zero" check)."""
    total, part = _atoi(f[1]), _atoi(f[2])
    if count <= 3 or not 1 <= total <= 10 or not 1 <= part <= total or count % 4 == 3:
        return _GSV_BAD, total, part, "", 0, False
    if count % 4 == 2 and not 4 <= _atoi(f[count - 1]) <= 5:
        return _GSV_SKIP, total, part, "", 0, False  # $PQGSV: BeiDou (4) or QZSS (5) only
    add, az_found = 0, False
    for base in range(4, count & ~3, 4):
        s = f[base]
        if not s or _atoi(s) == 0:
            continue  # no satellite number, or 0
        add += 1
        if not az_found:
            el, az = f[base + 1], f[base + 2]
            az_found = not el or not az or _atoi(az) not in (0, 360)
    return _GSV_OK, total, part, f[0][1:2], add, az_found


@lru_cache(maxsize=256)
def _gsa_keys(
    talker: str, system_id: int, prns: tuple[str, ...]
) -> tuple[tuple[str | None, int], ...]:
    """GSA's satellite fields to (system, number) keys, as gpsd reads them (numbers 1-600,
    up to the first field with a decimal point, which is PDOP). Receivers repeat the same
    GSA for many cycles, hence the cache."""
    keys: dict[tuple[str | None, int], None] = {}
    for s in prns:
        if not s:
            continue
        if "." in s:
            break
        n = _atoi(s)
        if 1 <= n <= 600:
            keys[(system_of(talker, n, system_id), n)] = None
    return tuple(keys)


_PADS = [("",) * (20 - k) for k in range(20)]  # fields up to index 19 exist, empty
# Talkers after which gpsd expects GPGSA/GPGSV not to end a group (GL, GA, GB, BD, GI, GN, QZ).
_OTHER_TALKERS = frozenset("ABDILNQZ")


def prepare(fields: Fields, length: int) -> Prepared | None:
    """Find a sentence's table entry and give it gpsd's empty fields past the last; None for a
    sentence gpsd rejects before anything else (longer than ``NMEA_MAX``)."""
    if length > NMEA_MAX:
        return None
    count = len(fields)
    fields = fields + _PADS[count] if count < 20 else (*fields, "")  # missing ones: ""
    address = fields[0]
    if len(address) == 5 and address[0] != "P":
        entry = _SHORT.get(address[2:])
    else:
        entry = _LONG.get(address)
        if entry is None and address != "PGRMC":  # PGRMC: known, not decoded, not RMC
            if len(address) == 5:
                entry = _SHORT.get(address[2:])
            elif address == "PSTI" or address == "PERC":
                entry = _SUB.get((address, fields[1]))
    if entry is None:
        kind = address[2:5]
        flags = _GSV if kind == "GSV" else _GSA if kind == "GSA" else 0
    else:
        flags = entry[2]
    return fields, count, entry, flags, [None]


def _entries() -> tuple[dict[str, _Entry], dict[str, _Entry], dict[tuple[str, str], _Entry]]:
    """gpsd's sentence table: which sentences it decodes (others only pass by)."""
    short = {
        "RMC": (8, _rmc),
        "GGA": (13, _gga),
        "GNS": (13, _gns),
        "GLL": (7, _gll),
        "ZDA": (4, _zda),
        "GSA": (18, _gsa),
        "GSV": (4, _gsv),
        "VTG": (5, _vtg),
        "GBS": (7, _gbs),
        "BWC": (12, _bwc),
        "GRS": (4, _grs),
        "GST": (8, _other),
        "DTM": (2, _online),
        "TXT": (5, _online),
        "STI": (2, _online),
        "DBT": (7, _depth),
        "DPT": (4, _depth),
        "MTW": (3, _online),
        "MWD": (0, _other),
        "MWV": (0, _mwv),
        "HDG": (0, _hdg),
        "HDM": (3, _heading),
        "HDT": (1, _heading),
        "ROT": (3, _rot),
        "THS": (0, _online),
        "XDR": (5, _xdr),
    }
    long = {
        "PASHR": (3, _pashr),
        "PSRFEPE": (7, _psrfepe),
        "PGRMZ": (4, _pgrmz),
        "PGRMF": (15, _pgrmf),
        "PMGNST": (8, _pmgnst),
        "PGRME": (7, _other),
        "PGRMM": (2, _online),
        "PGRMT": (10, _online),
        "PGRMV": (4, _other),
        "PGLOR": (2, _online),
        "GYOACC": (14, _attitude),
        "PAIR001": (3, _online),
        "PAIR010": (5, _online),
        "PDTINFO": (6, _online),
        "PGPSP": (18, _other),
        "PMTK001": (3, _online),
        "PMTK424": (3, _online),
        "PMTK705": (4, _online),
        "PQTMGPS": (14, _online),
        "PQTMIMU": (10, _online),
        "PQTMINS": (11, _online),
        "PQTMVER": (4, _online),
        "PQVERNO": (5, _online),
        "PSTMCPU": (4, _online),
        "PSTMANTENNASTATUS": (4, _other),
        "PSTMVER": (1, _online),
        "PTNLRBA": (2, _other),
        "PTNLRNM": (1, _other),
        "PTNLRTP": (3, _online),
        "PTNLRXO": (2, _online),
        "PTNTA": (8, _other),
        "PTNTHTM": (9, _attitude),
        "SNRSTAT": (5, _online),
    }
    for name in ("EINSMSG", "ORIENTATION", "WHEELTICK"):
        long[f"PQTMCFG{name}ERROR"] = (1, _online)
        long[f"PQTMCFG{name}OK"] = (1, _online)
    long["PQTMQMPTERROR"] = (1, _online)
    sub = {
        ("PSTI", "030"): (16, _psti030),
        ("PSTI", "032"): (16, _psti032),
        ("PSTI", "033"): (27, _psti033),
        ("PSTI", "035"): (8, _psti035),
        ("PSTI", "036"): (2, _psti035),
        ("PERC", "GPavp"): (6, _other),
        ("PERC", "GPppr"): (6, _other),
        ("PERC", "GPsts"): (4, _other),
        ("PERC", "GPppf"): (5, _other),
    }
    for name, nf in (("FWsts", 6), ("GPctr", 6), ("GPdbg", 19), ("GPreh", 2), ("GPver", 4)):
        sub[("PERC", name)] = (nf, _online)
    fix = {"RMC", "GGA", "GNS", "GLL", "GSA", "PASHR", "PSRFEPE", "PGRMZ", "PGRMF", "PMGNST"}
    fix |= {"PSTI030"}

    def flags(tag: str) -> int:
        named = {"GLL": _CONTINUER, "GSV": _GSV, "GSA": _GSA}.get(tag, 0)
        return named | (_FIX if tag in fix else 0)

    return (
        {k: (h, nf, flags(k), k) for k, (nf, h) in short.items()},
        {k: (h, nf, flags(k), k) for k, (nf, h) in long.items()},
        {k: (h, nf, flags("".join(k)), "".join(k)) for k, (nf, h) in sub.items()},
    )


_SHORT, _LONG, _SUB = _entries()
