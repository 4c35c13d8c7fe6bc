"""Synthetic drives for tests, the demo and the benchmark: a path in local metres -> fixes or NMEA.

::

    d = Drive(52.09, 5.12, t0=calendar.timegm((2025, 6, 5, 6, 0, 0)))
    d.go(400, 0, speed_mps=8)          # drive 400 m east at 8 m/s, one fix a second
    d.stay(120)                         # stand still for 2 minutes
    d.at(405, 0); d.at(395, 0)          # single fixes (1 s apart): GPS jitter, exact places
    d.fixes() -> list[Fix];  d.nmea() -> bytes (RMC + GGA + GSA per epoch)

Positions are exact (no noise unless you write it), so a test knows where every fix is and can
compute by hand which fix must fire an event.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from agent.fleet.shapes import Projection
from agent.labs.nmea import sentence
from agent.model import Fix, FixMode


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    x: float
    y: float
    speed: float
    course: float


def _nmea_latlon(lat: float, lon: float) -> str:
    la, lo = abs(lat), abs(lon)
    lat_s = f"{int(la):02d}{(la - int(la)) * 60:010.7f},{'N' if lat >= 0 else 'S'}"
    lon_s = f"{int(lo):03d}{(lo - int(lo)) * 60:010.7f},{'E' if lon >= 0 else 'W'}"
    return f"{lat_s},{lon_s}"


class Drive:
    """A drive built leg by leg, one fix every ``1 / rate_hz`` seconds."""

    def __init__(self, lat0: float, lon0: float, *, t0: float, rate_hz: float = 1.0) -> None:
        self.proj = Projection(lat0, lon0)
        self.dt = 1.0 / rate_hz
        self.samples: list[Sample] = []
        self._t = t0 - self.dt
        self._x = 0.0
        self._y = 0.0
        self._course = 0.0

    @property
    def t(self) -> float:
        """Time of the last fix."""
        return self._t

    @property
    def pos(self) -> tuple[float, float]:
        return self._x, self._y

    def at(self, x: float, y: float, speed_mps: float | None = None) -> Drive:
        """One fix at (x, y) metres, ``dt`` after the previous one."""
        dx, dy = x - self._x, y - self._y
        if dx or dy:
            self._course = math.degrees(math.atan2(dx, dy)) % 360.0
        v = math.hypot(dx, dy) / self.dt if speed_mps is None else speed_mps
        if not self.samples:
            v = 0.0 if speed_mps is None else speed_mps
        self._t += self.dt
        self._x, self._y = x, y
        self.samples.append(Sample(self._t, x, y, v, self._course))
        return self

    def go(self, x: float, y: float, speed_mps: float) -> Drive:
        """Drive in a straight line to (x, y) at ``speed_mps`` (the last fix lands on it)."""
        if not self.samples:
            self.at(self._x, self._y, 0.0)
        x0, y0 = self._x, self._y
        dist = math.hypot(x - x0, y - y0)
        n = max(1, math.ceil(dist / (speed_mps * self.dt) - 1e-9))
        for i in range(1, n + 1):
            f = i / n
            self.at(x0 + (x - x0) * f, y0 + (y - y0) * f, speed_mps if i < n else None)
        self.samples[-1] = Sample(
            self.samples[-1].t, x, y, speed_mps, self.samples[-1].course
        )  # arriving at cruise speed
        return self

    def stay(self, seconds: float) -> Drive:
        """Stand still (speed 0) for ``seconds``."""
        for _ in range(round(seconds / self.dt)):
            self.at(self._x, self._y, 0.0)
        return self

    def fixes(self, source: str = "drive") -> list[Fix]:
        out = []
        for s in self.samples:
            lat, lon = self.proj.to_latlon(s.x, s.y)
            out.append(
                Fix(
                    time=round(s.t, 3),
                    mode=FixMode.FIX_3D,
                    lat=lat,
                    lon=lon,
                    alt=10.0,
                    speed=s.speed,
                    track=s.course,
                    quality=1,
                    sats_used=9,
                    hdop=0.9,
                    source=source,
                )
            )
        return out

    def nmea(self) -> bytes:
        """The drive as a receiver would send it: RMC, GGA, GSA per epoch (CRLF)."""
        out = []
        for s in self.samples:
            lat, lon = self.proj.to_latlon(s.x, s.y)
            whole = math.floor(s.t)
            hh, rem = divmod(whole % 86400, 3600)
            mm, ss = divmod(rem, 60)
            cs = round((s.t - whole) * 100)
            tod = f"{hh:02d}{mm:02d}{ss:02d}.{cs:02d}"
            g = time.gmtime(whole)
            date = f"{g.tm_mday:02d}{g.tm_mon:02d}{g.tm_year % 100:02d}"
            knots = s.speed * 3600 / 1852
            pos = _nmea_latlon(lat, lon)
            out.append(sentence(f"GPRMC,{tod},A,{pos},{knots:.3f},{s.course:.1f},{date},,,A"))
            out.append(sentence(f"GPGGA,{tod},{pos},1,09,0.9,10.0,M,46.9,M,,"))
            out.append(sentence("GPGSA,A,3,04,05,09,12,17,20,24,25,28,,,,1.6,0.9,1.3"))
        return b"".join(out)
