"""What the agent knows, as a JT/T 808 location report (0x0200 body). Pure.

**Status bits** (DWORD): 0 ACC on (the ignition input; 0 when not wired), 1 positioned,
2 south, 3 west, 18-21 GNSS systems used (GPS, BeiDou, GLONASS, Galileo; from the fix's
``systems`` where the receiver says, else GPS for any fix).

**Alarm bits** (DWORD), from the agent's alarms and the fleet part's events:

===  ==========================  ============================  =============================
bit  meaning                     set by                        cleared
===  ==========================  ============================  =============================
0    emergency (SOS)             ``sos`` alarm (the button)    a report carrying it is
                                                               acknowledged, or 0x8203
1    overspeed                   ``fleet_speeding``            ``fleet_speeding_end``
4    GNSS module fault           ``receiver_lost``             ``receiver_restored``
19   stopped too long            ``fleet_stopped``             ``fleet_stopped_end``
20   area entry / exit           ``fleet_area_enter/exit`` of  acknowledged, or 0x8203
                                 an area set by this platform
                                 with the "alarm to platform"
                                 attribute, in its time window
21   route entry / exit          ``fleet_route_back/left`` of  acknowledged, or 0x8203
                                 such a route
23   route deviation             ``fleet_route_left`` (any     ``fleet_route_back``
                                 assigned route)
===  ==========================  ============================  =============================

Bits 0, 20 and 21 are "cleared after the answer" in the standard: they stay set in every
report until the platform acknowledges (0x8001) a report that carried them (or confirms them
with 0x8203). The others are "held while the condition lasts".

**Additional items**: 0x01 mileage (1/10 km, the terminal's own odometer from good fixes),
0x11 overspeed (the shape: type + id, or type 0), 0x12 area/route entry or exit (type, id,
direction) in the report of the event, 0x30 signal strength (when a modem reports it), 0x31
satellites used, and the equipment inputs (brush bit 0, pump bit 1, lift bit 2) in a custom
item (0xE1 by default; JT/T 808 reserves 0xE1-0xFF for them).
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from agent.jt808.body import GMT8_S, bcd_time
from agent.jt808.messages import Location
from agent.model import Alarm, Fix

ALARM_SOS = 1 << 0
ALARM_OVERSPEED = 1 << 1
ALARM_GNSS_FAULT = 1 << 4
ALARM_STOPPED = 1 << 19
ALARM_AREA = 1 << 20
ALARM_ROUTE = 1 << 21
ALARM_DEVIATION = 1 << 23
#: Bits the standard clears once the platform has answered.
EVENT_BITS = ALARM_SOS | ALARM_AREA | ALARM_ROUTE

STATUS_ACC = 1 << 0
STATUS_FIX = 1 << 1
SYSTEM_BITS = {"gps": 1 << 18, "beidou": 1 << 19, "glonass": 1 << 20, "galileo": 1 << 21}

ITEM_MILEAGE = 0x01
ITEM_OVERSPEED = 0x11
ITEM_AREA = 0x12
ITEM_SIGNAL = 0x30
ITEM_SATELLITES = 0x31

#: 0x11/0x12 position types
KIND_CODES = {"circle": 1, "rect": 2, "polygon": 3, "route": 4}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
FLEET_PREFIX = "jt808."


def fleet_id(kind: str, area_id: int) -> str:
    """The id under which an area or route set by the JT/T 808 platform lives in the fleet
    plan: ``jt808.circle.17``, ``jt808.route.3`` (808 ids are per kind)."""
    return f"{FLEET_PREFIX}{kind}.{area_id}"


def parse_fleet_id(fid: str) -> tuple[str, int] | None:
    """``jt808.<kind>.<id>`` -> (kind, id); None for shapes the 808 platform did not set."""
    if not fid.startswith(FLEET_PREFIX):
        return None
    parts = fid.split(".")
    if len(parts) != 3 or parts[1] not in KIND_CODES or not parts[2].isdigit():
        return None
    n = int(parts[2])
    return (parts[1], n) if n <= 0xFFFFFFFF else None


@dataclass(frozen=True, slots=True)
class AreaRef:
    """What the terminal keeps of an area or route the 808 platform set."""

    kind: str  # circle | rect | polygon | route
    id: int
    attribute: int
    times: tuple[str, str] | None = None  # YYMMDDhhmmss GMT+8; date 000000 = every day

    def alarms_platform(self, entering: bool) -> bool:
        return bool(self.attribute & (1 << 3 if entering else 1 << 5))

    def active(self, t: float) -> bool:
        """Whether ``t`` (UTC s) is inside the area's time window (always, without one)."""
        if self.times is None:
            return True
        return in_window(self.times, t)


def in_window(times: tuple[str, str], t: float) -> bool:
    """``t`` within [start, end] in GMT+8; a start with date 000000 means daily hours (an end
    before the start runs past midnight)."""
    start, end = times
    g = time.gmtime(int(t) + GMT8_S)
    if start[:6] == "000000":
        now = g.tm_hour * 3600 + g.tm_min * 60 + g.tm_sec
        a = int(start[6:8]) * 3600 + int(start[8:10]) * 60 + int(start[10:12])
        b = int(end[6:8]) * 3600 + int(end[8:10]) * 60 + int(end[10:12])
        return a <= now <= b if a <= b else now >= a or now <= b
    stamp = (
        f"{g.tm_year % 100:02d}{g.tm_mon:02d}{g.tm_mday:02d}"
        f"{g.tm_hour:02d}{g.tm_min:02d}{g.tm_sec:02d}"
    )
    return start <= stamp <= end


def area_item(kind: str, area_id: int, leaving: bool) -> bytes:
    """0x12: position type BYTE, area or route id DWORD, direction BYTE (0 in, 1 out)."""
    return struct.pack(">BIB", KIND_CODES[kind], area_id, 1 if leaving else 0)


def overspeed_item(ref: tuple[str, int] | None) -> bytes:
    """0x11: position type BYTE (0 = no particular place), then the area/route id DWORD."""
    if ref is None:
        return b"\x00"
    return struct.pack(">BI", KIND_CODES[ref[0]], ref[1])


@dataclass
class Snapshot:
    """The alarm part of one report, and the latches it carries (cleared on its answer)."""

    alarm: int
    items: list[tuple[int, bytes]]
    latches: dict[int, int] = field(default_factory=dict)


class AlarmState:
    """The alarm bits and event items from the agent's alarms. Not thread-safe (the terminal
    holds its lock)."""

    def __init__(self) -> None:
        self._latched: dict[int, int] = {}  # bit -> generation
        self._gen = 0
        self.held = 0
        self._deviated: set[str] = set()
        self._overspeed_at: tuple[str, int] | None = None
        self._pending: list[tuple[int, bytes]] = []
        self.report_now = False

    def apply(self, alarm: Alarm, areas: dict[str, AreaRef]) -> bool:
        """Take one alarm in; True when the position must be reported now: an SOS, a change
        of a bit, or any fleet event (the agent's own strategy reports those fixes too)."""
        kind = alarm.kind
        d: dict[str, Any] = alarm.details if isinstance(alarm.details, dict) else {}
        subject = str(d.get("subject", ""))
        if kind == "sos":
            self._latch(ALARM_SOS)
        elif kind == "fleet_speeding":
            self.held |= ALARM_OVERSPEED
            ref = parse_fleet_id(subject)
            self._overspeed_at = ref if ref is not None and subject in areas else None
        elif kind == "fleet_speeding_end":
            self.held &= ~ALARM_OVERSPEED
            self._overspeed_at = None
        elif kind in ("fleet_area_enter", "fleet_area_exit"):
            if not d.get("initial"):  # an initial entry: it was inside already, no crossing
                self._crossing(subject, areas, leaving=kind == "fleet_area_exit", t=alarm.time)
        elif kind == "fleet_route_left":
            self._deviated.add(subject)
            self.held |= ALARM_DEVIATION
            self._crossing(subject, areas, leaving=True, t=alarm.time)
        elif kind == "fleet_route_back":
            self._deviated.discard(subject)
            if not self._deviated:
                self.held &= ~ALARM_DEVIATION
            self._crossing(subject, areas, leaving=False, t=alarm.time)
        elif kind == "fleet_stopped":
            self.held |= ALARM_STOPPED
        elif kind == "fleet_stopped_end":
            self.held &= ~ALARM_STOPPED
        elif kind == "receiver_lost":
            self.held |= ALARM_GNSS_FAULT
        elif kind == "receiver_restored":
            self.held &= ~ALARM_GNSS_FAULT
        elif not kind.startswith("fleet_"):
            return False
        self.report_now = True
        return True

    def _crossing(
        self, subject: str, areas: dict[str, AreaRef], *, leaving: bool, t: float
    ) -> None:
        ref = areas.get(subject)
        if ref is None or not ref.alarms_platform(not leaving) or not ref.active(t):
            return
        self._latch(ALARM_ROUTE if ref.kind == "route" else ALARM_AREA)
        self._pending.append((ITEM_AREA, area_item(ref.kind, ref.id, leaving)))

    def _latch(self, bit: int) -> None:
        self._gen += 1
        self._latched[bit] = self._gen

    def snapshot(self) -> Snapshot:
        """The bits and items of the next report (the pending 0x12 items are taken)."""
        alarm = self.held
        for bit in self._latched:
            alarm |= bit
        items = self._pending
        self._pending = []
        if self.held & ALARM_OVERSPEED:
            items = [(ITEM_OVERSPEED, overspeed_item(self._overspeed_at)), *items]
        self.report_now = False
        return Snapshot(alarm, items, dict(self._latched))

    def acknowledged(self, latches: dict[int, int]) -> None:
        """A report carrying ``latches`` was answered: clear those not raised again since."""
        for bit, gen in latches.items():
            if self._latched.get(bit) == gen:
                del self._latched[bit]

    def confirm(self, bits: int) -> None:
        """0x8203 (manual confirmation): clear the confirmed event bits."""
        for bit in list(self._latched):
            if bits & bit:
                del self._latched[bit]

    @property
    def sos(self) -> bool:
        return ALARM_SOS in self._latched

    @property
    def active(self) -> int:
        alarm = self.held
        for bit in self._latched:
            alarm |= bit
        return alarm


def status_bits(fix: Fix, ignition: bool | None) -> int:
    status = STATUS_ACC if ignition else 0
    if fix.has_position:
        status |= STATUS_FIX
        systems = getattr(fix, "systems", None)
        if systems:
            for name in systems:
                status |= SYSTEM_BITS.get(str(name), 0)
        else:
            status |= SYSTEM_BITS["gps"]
    return status


def build_location(
    fix: Fix,
    *,
    alarm: int,
    status: int,
    items: list[tuple[int, bytes]],
) -> Location:
    """The 0x0200 body of ``fix`` (a fix without a position reports 0, 0 and status bit 1
    clear, as terminals do)."""
    lat, lon = (fix.lat, fix.lon) if fix.has_position else (0.0, 0.0)
    assert lat is not None and lon is not None
    alt, speed, track = fix.alt, fix.speed, fix.track
    alt = alt if alt is not None and math.isfinite(alt) else 0.0
    speed = speed if speed is not None and math.isfinite(speed) else 0.0
    track = track if track is not None and math.isfinite(track) else 0.0
    return Location(
        alarm,
        status,
        round(lat * 1e6),
        round(lon * 1e6),
        # WORD: 0..65535 m (a negative altitude is sent as 0: the field is unsigned)
        min(max(round(alt), 0), 0xFFFF),
        min(max(round(speed * 36.0), 0), 0xFFFF),  # m/s -> 1/10 km/h
        round(track) % 360,
        bcd_time(fix.time).hex(),
        tuple(items),
    )


def common_items(
    *,
    mileage_m: float,
    satellites: int | None,
    signal: int | None,
    equipment: tuple[int, int] | None,
) -> list[tuple[int, bytes]]:
    """0x01, 0x30, 0x31 and the equipment item, in id order."""
    out = [(ITEM_MILEAGE, struct.pack(">I", min(int(mileage_m / 100), 0xFFFFFFFF)))]
    if signal is not None:
        out.append((ITEM_SIGNAL, bytes([min(max(signal, 0), 255)])))
    if satellites is not None:
        out.append((ITEM_SATELLITES, bytes([min(max(satellites, 0), 255)])))
    if equipment is not None:
        out.append((equipment[0], bytes([equipment[1]])))
    return out


def equipment_bits(brush: bool, pump: bool, lift: bool) -> int:
    return (1 if brush else 0) | (2 if pump else 0) | (4 if lift else 0)
