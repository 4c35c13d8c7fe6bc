"""Plain data shared across the pipeline: clock state, GPS fixes, alarms."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime


class ClockSource(enum.StrEnum):
    """Where the wall-clock time on a segment came from, best first."""

    PPS = "pps"  # chrony disciplines the clock to a GNSS receiver's pulse per second
    GNSS = "gnss"
    NTP = "ntp"
    RTC = "rtc"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ClockState:
    """How far the device's wall clock can be trusted when a segment is sealed.

    ``offset_s`` is (reference time - system time) in seconds, when a reference is known.
    ``error_s`` bounds the error of that estimate (from chrony: root dispersion + root
    delay / 2), so the clock is within ``|offset_s| + error_s`` of the reference's time.
    ``synced`` is chrony's verdict (its leap status is not "Not synchronised"); None where
    chrony was not asked. ``via`` names who measured: ``chrony`` (its tracking report), or
    ``fixes`` (GNSS fix times against their arrival: includes the receiver's serial latency).
    The three are written only when known, so a manifest without them reads as before.
    """

    source: ClockSource = ClockSource.NONE
    offset_s: float | None = None
    error_s: float | None = None
    synced: bool | None = None
    via: str = ""

    # What the GNSS receiver says of its own time, when it says it (u-blox NAV-PVT): the
    # accuracy estimate (tAcc, seconds) and whether date and time are confirmed.
    time_acc_s: float | None = None
    time_confirmed: bool | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"source": self.source.value, "offset_s": self.offset_s}
        if self.error_s is not None:
            out["error_s"] = self.error_s
        if self.synced is not None:
            out["synced"] = self.synced
        if self.via:
            out["via"] = self.via
        if self.time_acc_s is not None:
            out["time_acc_s"] = self.time_acc_s
        if self.time_confirmed is not None:
            out["time_confirmed"] = self.time_confirmed
        return out


class FixMode(enum.IntEnum):
    """gpsd's TPV mode numbers."""

    NO_FIX = 1
    FIX_2D = 2
    FIX_3D = 3


@dataclass(frozen=True, slots=True)
class Fix:
    """One position epoch, named as gpsd's TPV names its fields.

    ``time`` is UTC seconds since the epoch (float, millisecond resolution from the receiver).
    Optional values are ``None`` when the receiver did not report them.
    """

    time: float
    mode: FixMode
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None  # metres above mean sea level (gpsd altMSL)
    speed: float | None = None  # metres per second over ground
    track: float | None = None  # degrees true
    quality: int | None = None  # GGA fix quality (0 invalid, 1 GPS, 2 DGPS, 4 RTK, ...)
    sats_used: int | None = None
    sats_visible: int | None = None
    hdop: float | None = None
    source: str = ""
    # Constellations used in the fix ("gps", "beidou", "galileo", "glonass", "qzss", "navic",
    # "sbas"), where the receiver says so (GSA system IDs, GNS modes, UBX NAV-SAT/NAV-PVT).
    systems: tuple[str, ...] | None = None
    # The receiver's own view of its time (u-blox NAV-PVT; None when it does not say):
    time_acc: float | None = None  # accuracy estimate of the time, seconds (tAcc)
    time_resolved: bool | None = None  # UTC fully resolved, no ambiguity of whole seconds
    time_confirmed: bool | None = None  # date and time confirmed by independent solutions

    @property
    def has_position(self) -> bool:
        return (
            self.mode >= FixMode.FIX_2D
            and self.lat is not None
            and self.lon is not None
            and math.isfinite(self.lat)
            and math.isfinite(self.lon)
        )

    def iso_time(self) -> str:
        """ISO 8601 UTC with milliseconds, as gpsd prints it."""
        return format_utc(self.time)

    def to_tpv(self) -> dict[str, object]:
        """A gpsd-style TPV dictionary (only the fields that are known)."""
        out: dict[str, object] = {"class": "TPV", "time": self.iso_time(), "mode": int(self.mode)}
        for name in ("lat", "lon", "alt", "speed", "track", "hdop"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.sats_used is not None:
            out["nSat"] = self.sats_used
        if self.quality is not None:
            out["quality"] = self.quality
        return out


def format_utc(t: float) -> str:
    """Seconds since the epoch to ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    ms = round(t * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Alarm:
    """Something the platform must hear about at once (sent on the live lane)."""

    kind: str  # e.g. "storage_full", "evidence_refused", "camera_lost", "sos"
    message: str
    severity: Severity = Severity.WARNING
    time: float = 0.0
    details: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "message": self.message,
            "severity": self.severity.value,
            "time": format_utc(self.time),
            "details": self.details,
        }
