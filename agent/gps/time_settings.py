"""Settings of the clock's reference (``[time]``) and of the GNSS receiver itself (``[receiver]``).

Example::

    [time]
    chrony = "auto"          # auto | on | off: read chrony's tracking for each segment's clock
    chronyc = "chronyc"      # the chronyc program
    chrony_socket = ""       # chronyc -h: "" = chronyc's default (127.0.0.1:323 for the agent)
    poll_s = 16.0            # how often chrony is asked

    [receiver]               # `edge-agent gps configure` and provisioning (u-blox, UBX)
    rate_hz = 1.0
    constellations = ["gps", "galileo", "beidou"]
    dynamic_model = "auto"   # auto: automotive for tracker/dashcam, pedestrian for bodycam
    save = true              # keep the settings across power cycles (BBR and flash)
    configure_at_provision = true
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.config.fields import check, in_range, one_of

#: The constellations ``[receiver] constellations`` may name; the ones not named are disabled.
CONSTELLATIONS = ("gps", "sbas", "galileo", "beidou", "qzss", "glonass")
#: u-blox dynamic platform models (UBX-CFG-NAV5 dynModel / CFG-NAVSPG-DYNMODEL numbers).
DYNAMIC_MODELS = {
    "portable": 0,
    "stationary": 2,
    "pedestrian": 3,
    "automotive": 4,
    "sea": 5,
    "airborne1g": 6,
    "airborne2g": 7,
    "airborne4g": 8,
    "wrist": 9,
    "bike": 10,
}


def _constellations(v: Any) -> str | None:
    if not isinstance(v, tuple) or not v:
        return "must name at least one constellation"
    bad = [c for c in v if c not in CONSTELLATIONS]
    if bad:
        return f"unknown {', '.join(map(str, bad))}: use {', '.join(CONSTELLATIONS)}"
    if "gps" not in v:
        return "must include gps (the receivers' time base)"
    return None


@dataclass(frozen=True)
class TimeSettings:
    # auto: use chrony when chronyc answers, quietly fall back to the GNSS fixes when it is
    # not installed; on: chrony is expected (an alarm when it does not answer); off: never ask.
    chrony: str = field(default="auto", metadata=check(one_of("auto", "on", "off")))
    chronyc: str = "chronyc"
    # chronyc -h: a Unix socket path or host; "" = chronyc's default. The agent's user cannot
    # open /run/chrony/chronyd.sock (root and _chrony only), so chronyc asks 127.0.0.1:323,
    # where chronyd answers monitoring commands (tracking, sources) and nothing else.
    chrony_socket: str = ""
    poll_s: float = field(default=16.0, metadata=check(in_range(1.0, 3600.0)))
    # chronyc is given this long to answer before the reading counts as failed.
    timeout_s: float = field(default=5.0, metadata=check(in_range(0.5, 60.0)))


@dataclass(frozen=True)
class ReceiverSettings:
    # Navigation solutions per second (u-blox: CFG-RATE / CFG-RATE-MEAS).
    rate_hz: float = field(default=1.0, metadata=check(in_range(0.1, 25.0)))
    constellations: tuple[str, ...] = field(
        default=("gps", "galileo", "beidou"), metadata=check(_constellations)
    )
    # auto: automotive for tracker and dashcam (trucks), pedestrian for bodycam.
    dynamic_model: str = field(default="auto", metadata=check(one_of("auto", *DYNAMIC_MODELS)))
    save: bool = True
    # `edge-agent provision` configures a u-blox receiver on gps.serial_port (asks MON-VER
    # first: any other receiver is left alone).
    configure_at_provision: bool = True
    # Seconds to wait for each acknowledgement.
    ack_timeout_s: float = field(default=3.0, metadata=check(in_range(0.2, 30.0)))


def dynamic_model_for(profile: str, setting: str = "auto") -> str:
    """The dynamic model to use: the setting, or by profile (trucks drive, officers walk)."""
    if setting != "auto":
        return setting
    return "pedestrian" if profile == "bodycam" else "automotive"
