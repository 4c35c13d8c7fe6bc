"""Synthetic NMEA logs with recent dates, for the demo, tests and benchmarks.

(The corpus logs are old: gpsd moves pre-2019 dates by 1024 weeks, and the clock monitor
rightly refuses them as impossible dates for a live device.)
"""

from __future__ import annotations

import calendar
import math
import time

from agent.gps.nmea import checksum


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body.encode()):02X}\r\n".encode()


def _latlon(lat: float, lon: float) -> str:
    la, lo = abs(lat), abs(lon)
    lat_s = f"{int(la):02d}{(la - int(la)) * 60:09.6f},{'N' if lat >= 0 else 'S'}"
    lon_s = f"{int(lo):03d}{(lo - int(lo)) * 60:09.6f},{'E' if lon >= 0 else 'W'}"
    return f"{lat_s},{lon_s}"


def truck_log(
    epochs: int,
    *,
    start: tuple[int, int, int, int, int, int] = (2025, 6, 5, 10, 0, 0),
    rate_hz: float = 1.0,
    speed_mps: float = 8.0,
    header: bool = True,
) -> bytes:
    """A truck driving a gentle curve: RMC, GGA, GSA (and VTG) per epoch."""
    t0 = calendar.timegm(start)
    out = [b"# Name: synthetic truck\r\n# Date: 2025-06-05\r\n"] if header else []
    lat, lon, course = 52.0, 5.0, 10.0
    dt = 1.0 / rate_hz
    for i in range(epochs):
        t = t0 + i * dt
        hh, rem = divmod(int(t) % 86400, 3600)
        mm, ss = divmod(rem, 60)
        cs = round((t - int(t)) * 100)
        tod = f"{hh:02d}{mm:02d}{ss:02d}.{cs:02d}"
        g = time.gmtime(t)
        y, mo, d = g.tm_year, g.tm_mon, g.tm_mday
        date = f"{d:02d}{mo:02d}{y % 100:02d}"
        knots = speed_mps * 3600 / 1852
        pos = _latlon(lat, lon)
        out.append(sentence(f"GPRMC,{tod},A,{pos},{knots:.2f},{course:.1f},{date},,,A"))
        out.append(sentence(f"GPVTG,{course:.1f},T,,M,{knots:.2f},N,{speed_mps * 3.6:.2f},K,A"))
        out.append(sentence(f"GPGGA,{tod},{pos},1,09,0.9,{12.5 + i * 0.1:.1f},M,46.9,M,,"))
        out.append(sentence("GPGSA,A,3,04,05,09,12,17,20,24,25,28,,,,1.6,0.9,1.3"))
        step = speed_mps * dt
        lat += step * math.cos(math.radians(course)) / 111195.0
        lon += step * math.sin(math.radians(course)) / (111195.0 * math.cos(math.radians(lat)))
        course = (course + 3.0) % 360
    return b"".join(out)
