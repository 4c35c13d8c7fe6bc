"""Synthetic GNSS receivers: a second, independent test that the reader knows NMEA, not logs.

:func:`make_receiver` draws, from a seed, a receiver the way real ones differ: which talker it
uses (GP, GN, GB/BD, GA, GL), which sentences it sends (RMC, GGA, GNS, GLL, VTG, ZDA, GSA,
GSV, GST, proprietary ones) in which order (so which one ends its cycle), its rate (1-10 Hz)
and timestamp precision (0-3 decimals), NMEA 2.x or 4.1x fields (FAA mode, navigational
status, GSA system IDs, GSV signal IDs), fields left empty (altitude, satellites, HDOP, FAA
mode), constellations and their GNS mode characters, a GLL stamped a second apart, outages
(RMC ``V``, GGA quality 0, GSA mode 1, untimed no-fix sentences) and a start without a date.
:func:`receiver_log` writes its log. ``tests/gps/test_receivers.py`` feeds the same log to
our reader and to gpsd (through gpsfake) and compares their epochs.

Only what NMEA 0183 and gpsd's driver define is varied. A few behaviours differ between the
gpsd that Debian ships (3.22, used here) and the gpsd the corpus was recorded with (3.26+),
and a few are where this project follows the standard over gpsd; ``Receiver.kind`` names the
variation so that a disagreement can be explained (see ``docs/gps.md``).
"""

from __future__ import annotations

import calendar
import math
import random
import time
from dataclasses import dataclass, field

from agent.gps.nmea import checksum

#: Constellations, their talker, NMEA 4.10 system ID and satellite numbers.
SYSTEMS = {
    "gps": ("GP", 1, range(1, 33)),
    "glonass": ("GL", 2, range(65, 97)),
    "galileo": ("GA", 3, range(1, 37)),
    "beidou": ("GB", 4, range(1, 64)),
    "qzss": ("GQ", 5, range(1, 11)),
}
GNS_ORDER = ("gps", "glonass", "galileo", "beidou", "qzss")


@dataclass
class Receiver:
    """One synthetic receiver: everything that varies between real ones."""

    seed: int
    talker: str
    order: list[str]  # sentence types of one cycle, in order
    rate_hz: float
    decimals: int
    nmea4: bool  # NMEA 4.10+ fields (FAA mode, nav status, system/signal IDs)
    systems: list[str]
    missing: set[str] = field(default_factory=set)  # alt, sats, hdop, faa
    gll_late: bool = False  # GLL stamped one second after the cycle (chart plotters)
    outages: list[tuple[int, int, str]] = field(default_factory=list)  # start, cycles, style
    dateless_start: int = 0  # first cycles whose RMC has no date (no fix yet)
    vendor: list[str] = field(default_factory=list)
    start: tuple[int, int, int, int, int, int] = (2025, 6, 5, 10, 0, 0)

    @property
    def gns_lead_n(self) -> bool:
        """GNS whose first mode character (GPS) is N while another system has a fix: valid
        by NMEA 4.10, a no-fix to gpsd (it reads only the first character)."""
        return "GNS" in self.order and self.nmea4 and "gps" not in self.systems

    @property
    def gpsd_version_dependent(self) -> str | None:
        """A variation that gpsd 3.22 (Debian's) handles otherwise than gpsd 3.26+ (the
        reference of the corpus and of this reader), or None."""
        if self.gll_late:
            return "GLL a second late (3.22 keeps GLL's cycle-continue flag forever)"
        if "GLL" in self.order:
            after = self.order[(self.order.index("GLL") + 1) % len(self.order)]
            if after in ("PUBX", "PSTI", "PERD"):
                return (
                    "GLL followed by a sentence gpsd does not decode (3.22 keeps GLL's "
                    "cycle-continue flag forever; 3.26 carries it over such sentences only)"
                )
        if "GGA" in self.order and "sats" in self.missing:
            return (
                "GGA without a satellite count (3.22: no fix for every talker; 3.26: for GP/GN "
                "only, and new data right after the cycle's end is reported)"
            )
        if "ZDA" in self.order and any(o[2] in ("untimed", "mixed") for o in self.outages):
            return "ZDA after a forgotten date (3.22 leaves ZDA out of cycle detection)"
        return None

    @property
    def kind(self) -> str:
        """A short description, for figures and failure messages."""
        parts = [self.talker, "/".join(self.order), f"{self.rate_hz:g}Hz"]
        parts.append(f"d{self.decimals}")
        if self.nmea4:
            parts.append("4.1")
        if self.gll_late:
            parts.append("gll+1s")
        if self.outages:
            parts.append("out:" + ",".join(o[2] for o in self.outages))
        if self.missing:
            parts.append("-" + "-".join(sorted(self.missing)))
        return " ".join(parts)


def make_receiver(seed: int) -> Receiver:
    rnd = random.Random(seed)
    systems = rnd.choice(
        [
            ["gps"],
            ["gps", "glonass"],
            ["gps", "beidou", "galileo"],
            ["gps", "galileo", "beidou", "glonass"],
            ["beidou"],
            ["beidou", "galileo"],
            ["gps", "beidou", "qzss"],
        ]
    )
    if systems == ["beidou"]:
        talker = rnd.choice(["GB", "BD"])
    elif systems == ["gps"]:
        talker = rnd.choice(["GP", "GP", "GN"])
    else:
        talker = rnd.choice(["GN", "GN", "GP"])
    fix_sentences = rnd.choice(
        [
            ["RMC", "GGA"],
            ["GGA", "RMC"],
            ["RMC", "GGA", "GLL"],
            ["GLL", "RMC", "GGA"],
            ["RMC", "GNS"],
            ["GNS", "RMC"],
            ["RMC", "GGA", "GNS"],
            ["RMC"],
            ["GGA", "ZDA"],
            ["ZDA", "GGA", "GLL"],
        ]
    )
    order = list(fix_sentences)
    extras = [s for s in ("VTG", "GSA", "GSV", "ZDA", "GST") if rnd.random() < 0.55]
    for s in extras:
        if s in order:
            continue
        order.insert(rnd.randrange(len(order) + 1), s)
    vendor = [v for v in ("PUBX", "PSTI", "PERD", "TXT") if rnd.random() < 0.2]
    for v in vendor:
        order.insert(rnd.randrange(len(order) + 1), v)
    rate = rnd.choice([1.0, 1.0, 1.0, 2.0, 5.0, 10.0])
    decimals = rnd.choice([0, 1, 2, 2, 3]) if rate == 1.0 else rnd.choice([1, 2, 3])
    missing = {m for m in ("alt", "sats", "hdop", "faa") if rnd.random() < 0.12}
    outages: list[tuple[int, int, str]] = []
    if rnd.random() < 0.5:
        style = rnd.choice(["timed", "untimed", "mixed"])
        outages.append((rnd.randrange(4, 12), rnd.randrange(1, 4), style))
    return Receiver(
        seed=seed,
        talker=talker,
        order=order,
        rate_hz=rate,
        decimals=decimals,
        nmea4=rnd.random() < 0.5,
        systems=systems,
        missing=missing,
        gll_late="GLL" in order and rnd.random() < 0.15,
        outages=outages,
        dateless_start=rnd.choice([0, 0, 0, 2]),
        vendor=vendor,
    )


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body.encode()):02X}\r\n".encode()


def _tod(t: float, decimals: int) -> str:
    whole = math.floor(t + 1e-9)
    hh, rem = divmod(whole % 86400, 3600)
    mm, ss = divmod(rem, 60)
    if not decimals:
        return f"{hh:02d}{mm:02d}{ss:02d}"
    frac = round((t - whole) * 10**decimals)
    return f"{hh:02d}{mm:02d}{ss:02d}.{frac:0{decimals}d}"


def _ll(lat: float, lon: float) -> str:
    la, lo = abs(lat), abs(lon)
    lat_s = f"{int(la):02d}{(la - int(la)) * 60:010.7f},{'N' if lat >= 0 else 'S'}"
    lon_s = f"{int(lo):03d}{(lo - int(lo)) * 60:010.7f},{'E' if lon >= 0 else 'W'}"
    return f"{lat_s},{lon_s}"


@dataclass(frozen=True)
class Truth:
    """What the receiver knew in one cycle (the position as printed, 1e-7 minute)."""

    time_ms: int
    lat: float
    lon: float
    valid: bool  # it had a fix (no outage, a date known)


def receiver_log(rx: Receiver, cycles: int) -> bytes:
    return simulate(rx, cycles)[0]


def simulate(rx: Receiver, cycles: int) -> tuple[bytes, list[Truth]]:
    """``cycles`` measurement cycles of a vehicle driving a gentle curve, and their truth."""
    rnd = random.Random(rx.seed * 7919 + 1)
    t0 = calendar.timegm(rx.start) + rnd.randrange(0, 86400 - cycles)
    out = [f"# Name: synthetic receiver {rx.seed} ({rx.kind})\r\n".encode()]
    y, mo, d = rx.start[:3]
    out.append(f"# Date: {y:04d}-{mo:02d}-{d:02d}\r\n".encode())
    lat = rnd.uniform(22.0, 45.0)  # a city in China, more or less
    lon = rnd.uniform(100.0, 122.0)
    course, speed = rnd.uniform(0, 360), rnd.uniform(0.0, 15.0)
    dt = 1.0 / rx.rate_hz
    sats = {s: rnd.sample(list(SYSTEMS[s][2]), rnd.randrange(3, 8)) for s in rx.systems}
    truth: list[Truth] = []
    for i in range(cycles):
        t = t0 + i * dt
        style = next((o[2] for o in rx.outages if o[0] <= i < o[0] + o[1]), None)
        dateless = i < rx.dateless_start
        out += _cycle(rx, t, lat, lon, course, speed, sats, style, dateless, i)
        frac = round((t - math.floor(t + 1e-9)) * 10**rx.decimals) / 10**rx.decimals
        ms = math.floor(t + 1e-9) * 1000 + round(frac * 1000)
        truth.append(Truth(ms, _printed(lat), _printed(lon), style is None and not dateless))
        step = speed * dt
        lat += step * math.cos(math.radians(course)) / 111195.0
        lon += step * math.sin(math.radians(course)) / (111195.0 * math.cos(math.radians(lat)))
        course = (course + rnd.uniform(-4, 4)) % 360
    return b"".join(out), truth


def _printed(v: float) -> float:
    """``v`` as ``_ll`` prints it (degrees and 1e-7 minute), read back."""
    a = abs(v)
    deg = int(a)
    minutes = float(f"{(a - deg) * 60:010.7f}")
    return math.copysign(deg + minutes / 60.0, v)


def _cycle(
    rx: Receiver,
    t: float,
    lat: float,
    lon: float,
    course: float,
    speed: float,
    sats: dict[str, list[int]],
    outage: str | None,
    dateless: bool,
    i: int,
) -> list[bytes]:
    tod = _tod(t, rx.decimals)
    day = time.gmtime(math.floor(t + 1e-9))
    yy, mo, dd = day.tm_year, day.tm_mon, day.tm_mday
    ddmmyy = f"{dd:02d}{mo:02d}{yy % 100:02d}"
    pos = _ll(lat, lon)
    knots = speed * 3600 / 1852
    used = sum(len(v) for v in sats.values())
    # An outage or a start without a date: every sentence says "no fix", in the outage's
    # style (timed: with timestamps; untimed: empty times, as Quectel; mixed: RMC untimed).
    nofix = outage is not None or dateless
    untimed_rmc = outage in ("untimed", "mixed")
    untimed = outage == "untimed"
    stamp = "" if untimed else tod
    faa = "" if "faa" in rx.missing else ("N" if nofix else "A")
    nav = ",V" if nofix else ",S"
    alt = "" if "alt" in rx.missing else f"{30 + (i % 7) * 0.3:.1f}"
    nsats = "" if "sats" in rx.missing else f"{min(used, 12):02d}"
    hdop = "" if "hdop" in rx.missing else "0.9"
    tk = rx.talker
    out: list[bytes] = []
    for kind in rx.order:
        if kind == "RMC":
            tail = f",{faa}" + (nav if rx.nmea4 else "") if rx.nmea4 or faa else ""
            if untimed_rmc:
                out.append(sentence(f"{tk}RMC,,V,,,,,,,,,{tail}"))
            elif nofix:
                date = "" if dateless else ddmmyy
                out.append(sentence(f"{tk}RMC,{tod},V,,,,,,,{date},,{tail}"))
            else:
                out.append(
                    sentence(f"{tk}RMC,{tod},A,{pos},{knots:.2f},{course:.1f},{ddmmyy},,{tail}")
                )
        elif kind == "GGA":
            if nofix:
                out.append(sentence(f"{tk}GGA,{stamp},,,,,0,00,99.9,,M,,M,,"))
            else:
                out.append(sentence(f"{tk}GGA,{tod},{pos},1,{nsats},{hdop},{alt},M,7.1,M,,"))
        elif kind == "GNS":
            modes = _gns_modes(rx, nofix)
            navs = nav if rx.nmea4 else ""
            if nofix:
                out.append(sentence(f"{tk}GNS,{stamp},,,,,{modes},00,99.9,,,,{navs}"))
            else:
                out.append(
                    sentence(f"{tk}GNS,{tod},{pos},{modes},{nsats},{hdop},{alt},7.1,,{navs}")
                )
        elif kind == "GLL":
            gll_t = _tod(t + 1.0, rx.decimals) if rx.gll_late else tod
            mode = f",{faa}" if faa else ""
            if nofix:
                out.append(sentence(f"{tk}GLL,,,,,{'' if untimed else gll_t},V{mode}"))
            else:
                out.append(sentence(f"{tk}GLL,{pos},{gll_t},A{mode}"))
        elif kind == "VTG":
            mode = f",{faa}" if faa else ""
            if nofix:
                out.append(sentence(f"{tk}VTG,,T,,M,,N,,K{mode}"))
            else:
                kmh = speed * 3.6
                out.append(sentence(f"{tk}VTG,{course:.1f},T,,M,{knots:.2f},N,{kmh:.2f},K{mode}"))
        elif kind == "ZDA":
            if not dateless and not untimed:
                out.append(sentence(f"{tk}ZDA,{tod},{dd:02d},{mo:02d},{yy:04d},00,00"))
        elif kind == "GSA":
            out += _gsa(rx, sats, nofix)
        elif kind == "GSV":
            out += _gsv(rx, sats)
        elif kind == "GST":
            if not untimed:
                out.append(sentence(f"{tk}GST,{tod},1.2,0.8,0.6,45.0,0.7,0.6,1.5"))
        elif kind == "PUBX":
            body = f"PUBX,00,{stamp},{pos},30.0,G3,2.1,2.0,0.0,0.0,0.0,,1.0,1.5,0.9,8,0,0"
            out.append(sentence(body))
        elif kind == "PSTI":
            out.append(sentence("PSTI,001,1"))
        elif kind == "PERD":
            out.append(sentence("PERDSYS,ANTSEL,FORCE1L,1LOW"))
        elif kind == "TXT":
            out.append(sentence(f"{tk}TXT,01,01,02,ANTSTATUS=OK"))
    return out


def _gns_modes(rx: Receiver, nofix: bool) -> str:
    if nofix:
        return "N" * (5 if rx.nmea4 else 2)
    chars = ["A" if s in rx.systems else "N" for s in GNS_ORDER]
    if not rx.nmea4:
        chars = chars[:2]
        if "A" not in chars:
            chars[0] = "A"
    return "".join(chars)


def _gsa(rx: Receiver, sats: dict[str, list[int]], nofix: bool) -> list[bytes]:
    out = []
    mode = "1" if nofix else "3"
    groups = [(s, sats[s]) for s in rx.systems]
    if rx.talker == "GP" and len(groups) == 1:
        groups = [("gps", sats.get("gps", []))]
    for system, prns in groups:
        talker = "GN" if rx.talker == "GN" else SYSTEMS[system][0] if rx.talker != "GP" else "GP"
        fields = [f"{p:02d}" for p in prns[:12]] if not nofix else []
        fields += [""] * (12 - len(fields))
        tail = f",{SYSTEMS[system][1]}" if rx.nmea4 and talker == "GN" else ""
        dops = "1.5,0.9,1.2" if not nofix else "99.9,99.9,99.9"
        out.append(sentence(f"{talker}GSA,A,{mode},{','.join(fields)},{dops}{tail}"))
    return out


def _gsv(rx: Receiver, sats: dict[str, list[int]]) -> list[bytes]:
    out = []
    for system, prns in sats.items():
        talker = SYSTEMS[system][0] if rx.talker != "GP" or system == "gps" else "GP"
        if talker == "GQ":
            continue  # gpsd's lexer does not read $GQ
        total = len(prns)
        parts = max(1, (total + 3) // 4)
        for part in range(parts):
            chunk = prns[part * 4 : part * 4 + 4]
            body = ",".join(
                f"{p:02d},{30 + p % 50:02d},{(p * 37) % 360:03d},{35 + p % 15}" for p in chunk
            )
            sig = ",1" if rx.nmea4 else ""
            out.append(sentence(f"{talker}GSV,{parts},{part + 1},{total:02d},{body}{sig}"))
    return out
