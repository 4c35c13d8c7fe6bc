"""An hour of a sanitation truck, for the link benchmarks: 1 Hz fixes and its heartbeat.

The drive is stop-and-go through town, seeded: legs of 60-400 m at 4-12 m/s with the corners
between them, stops of 15-90 s at the bins, one break of 10 minutes; a receiver's noise on
top (a few decimetres of position, altitude and speed jitter, HDOP and satellites that change
now and then, a course held while standing). ``status()`` is the heartbeat a tracker sends
(agent.runtime.app.Agent.status with a GPS and a fleet part), with its figures moving as they do.
"""

from __future__ import annotations

import math
import random
from typing import Any

from agent.model import Fix, FixMode

T0 = 1_750_000_000.0
LAT0, LON0 = 22.5431, 113.9510
M_PER_DEG = 111_195.0


def hour(seed: int = 7, seconds: int = 3600) -> list[Fix]:
    rnd = random.Random(seed)
    out: list[Fix] = []
    x = y = 0.0
    course = 90.0
    hdop, sats, alt = 0.9, 13, 18.0
    t = 0
    broke = False
    while t < seconds:
        # A leg to the next bins, then the stop there (one long break halfway).
        course = (course + rnd.choice([-90, 0, 0, 90, 45, -45])) % 360
        cruise, length = rnd.uniform(4, 12), rnd.uniform(60, 400)
        travelled, speed = 0.0, 1.0
        while travelled < length and t < seconds:
            speed = min(cruise, speed + 1.5) if length - travelled > 20 else max(2.0, speed - 2)
            travelled += speed
            x += speed * math.sin(math.radians(course))
            y += speed * math.cos(math.radians(course))
            out.append(_fix(rnd, t, x, y, speed, course, alt, hdop, sats))
            t += 1
        stop = 600 if not broke and t >= seconds // 2 else int(rnd.uniform(15, 90))
        broke = broke or stop == 600
        for _ in range(stop):
            if t >= seconds:
                break
            out.append(_fix(rnd, t, x, y, 0.0, course, alt, hdop, sats))
            t += 1
        if rnd.random() < 0.3:
            hdop = round(rnd.uniform(0.7, 1.6), 1)
        if rnd.random() < 0.3:
            sats = rnd.randint(10, 17)
        alt += rnd.uniform(-1, 1)
    return out


def _fix(
    rnd: random.Random,
    t: int,
    x: float,
    y: float,
    speed: float,
    course: float,
    alt: float,
    hdop: float,
    sats: int,
) -> Fix:
    nx, ny = x + rnd.gauss(0, 0.3), y + rnd.gauss(0, 0.3)
    return Fix(
        time=T0 + t,
        mode=FixMode.FIX_3D,
        lat=LAT0 + ny / M_PER_DEG,
        lon=LON0 + nx / (M_PER_DEG * math.cos(math.radians(LAT0))),
        alt=alt + rnd.gauss(0, 0.3),
        speed=max(0.0, speed + rnd.gauss(0, 0.15)) if speed else abs(rnd.gauss(0, 0.05)),
        track=(course + rnd.gauss(0, 1.5)) % 360 if speed else course,
        quality=1,
        sats_used=sats,
        sats_visible=sats + 8,
        hdop=hdop,
    )


def status(device: str, i: int, fix: Fix, seen: int, kept: int, reported: int) -> dict[str, Any]:
    """The heartbeat of a tracker (the shape of agent.runtime.app.Agent.status) at minute ``i``."""
    return {
        "device": device,
        "profile": "tracker",
        "boot": "7f1c2a9e-2b41-4c6e-9a55-1d2f3e4a5b6c",
        "uptime_s": round(3600.0 * 5 + 60 * i + 0.3, 1),
        "versions": {"edge-agent": "0.9.0"},
        "backlog": {"gps": {"count": i % 5, "bytes": 2600 * (i % 5), "oldest_age_s": 61.2}},
        "storage": {"evidence": 0, "telemetry": 2600 * (i % 5)},
        "clock": {"source": "gnss", "offset_s": 0.002 + (i % 7) * 1e-4, "time_acc_s": 2e-8},
        "cpu_temp_c": 51.2 + (i % 9) / 10,
        "battery_pct": None,
        "updated_utc": T0 + 60 * i,
        "gps": {
            "state": "fix",
            "fix": fix.to_tpv(),
            "seen": seen,
            "kept": kept,
            "reported": reported,
        },
        "uplink": {"connected": True},
        "fleet": {
            "plan": 3,
            "origin": "platform",
            "inputs": {"brush": i % 3 == 0, "pump": False, "lift": i % 4 == 0, "ignition": True},
            "events": 2 + i // 10,
            "sos": 0,
        },
    }
