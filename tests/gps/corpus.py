"""Reading gpsd's regression corpus (``../shared/corpus/gpsd-nmea``) for the agreement tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from agent.gps.nmea_cycle import REPORT, Prepared
from agent.gps.replay import read_fixes
from agent.model import Fix, format_utc

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "gpsd-nmea"

#: gpsd's "WKRO" correction: for some logs gpsd moves a date it believes suffers from the GPS
#: week-number rollover 1024 weeks into the future (neo-m8n: 2015-03-18 -> 2034-11-01).
WKRO_SECONDS = 1024 * 7 * 86400


def corpus_logs() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*.log") if p.with_suffix(".log.chk").exists())


def is_binary_protocol(log: Path) -> bool:
    """True when the log carries a binary protocol besides NMEA (u-blox UBX, SiRF, ...).

    NMEA-framed binary payloads (Ashtech ``$PASHR,MCA``) do not count. Only sync words of
    binary protocols, seen repeatedly, do.
    """
    data = log.read_bytes()
    syncs = (b"\xb5\x62", b"\xa0\xa2", b"\x10\x03", b"\xa0\xa1")
    return max(data.count(s) for s in syncs) >= 20


@dataclass
class LogAgreement:
    name: str
    gpsd_epochs: int = 0
    matched: int = 0
    matched_wkro: int = 0  # matched only after undoing gpsd's 1024-week shift
    misses: list[str] = field(default_factory=list)
    ours: int = 0
    extras: list[str] = field(default_factory=list)  # our fixes at times gpsd reports none
    final_extra: bool = False  # our final epoch, which gpsd only closes when the next begins


def gpsd_epochs(chk: Path) -> dict[str, tuple[float, float]]:
    """gpsd's fixes: time -> (lat, lon) of the last TPV with mode >= 2 at that time."""
    out: dict[str, tuple[float, float]] = {}
    for raw in chk.read_bytes().splitlines():
        if not raw.startswith(b'{"class":"TPV"'):
            continue
        tpv = json.loads(raw)
        if tpv.get("mode", 0) >= 2 and "time" in tpv and "lat" in tpv and "lon" in tpv:
            out[tpv["time"]] = (float(tpv["lat"]), float(tpv["lon"]))
    return out


def replay_fixes(log: Path) -> list[Fix]:
    """The fixes ``edge-agent gps replay LOG`` prints (the same code path)."""
    return list(read_fixes(log))


def compare(log: Path, tol: float = 1e-6) -> LogAgreement:
    result = LogAgreement(log.stem)
    ours: dict[str, tuple[float, float]] = {}
    for fix in replay_fixes(log):
        if fix.has_position:
            assert fix.lat is not None and fix.lon is not None
            ours[fix.iso_time()] = (fix.lat, fix.lon)
    theirs = gpsd_epochs(log.with_suffix(".log.chk"))
    result.gpsd_epochs = len(theirs)
    result.ours = len(ours)

    def close(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return abs(a[0] - b[0]) <= tol and abs(a[1] - b[1]) <= tol

    wkro_times = set()
    for t, pos in theirs.items():
        if t in ours and close(ours[t], pos):
            result.matched += 1
            continue
        shifted = format_utc(_parse_utc(t) - WKRO_SECONDS)
        if shifted in ours and close(ours[shifted], pos):
            result.matched_wkro += 1
            wkro_times.add(shifted)
            continue
        result.misses.append(f"{t} gpsd {pos} ours {ours.get(t)}")
    last = max(ours) if ours else None
    for t in sorted(ours):
        if t not in theirs and t not in wkro_times:
            if t == last:
                result.final_extra = True
            else:
                result.extras.append(f"{t} ours {ours[t]}")
    return result


def _parse_utc(iso: str) -> float:
    from datetime import datetime

    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


# --------------------------------------------------------------------- every report, in order
Tpv = tuple[int | None, int, float | None, float | None]  # time ms, mode, lat, lon


def gpsd_reports(chk: Path) -> list[Tpv]:
    """Every TPV gpsd printed for a log, in order."""
    out: list[Tpv] = []
    for raw in chk.read_bytes().splitlines():
        if raw.startswith(b'{"class":"TPV"'):
            tpv = json.loads(raw)
            t = tpv.get("time")
            out.append(
                (
                    round(_parse_utc(t) * 1000) if t else None,
                    int(tpv.get("mode", 0)),
                    tpv.get("lat"),
                    tpv.get("lon"),
                )
            )
    return out


def engine_reports(log: Path) -> list[Tpv]:
    """Every report of our NMEA cycle engine for a log, in order (as gpsd's TPVs)."""
    from agent.gps.nmea import NmeaReader

    reader = NmeaReader(log.name)
    engine = reader.engine
    out: list[Tpv] = []
    run = engine.run

    def spy(prepared: Prepared) -> int:
        mask = run(prepared)
        if mask & REPORT:
            t, mode, lat, lon = engine.report()[:4]
            pos = mode >= 2 and lat == lat and lon == lon
            out.append(
                (
                    (t + 500_000) // 1_000_000 if t > 0 else None,
                    mode,
                    *((lat, lon) if pos else (None, None)),
                )
            )
        return mask

    engine.run = spy  # type: ignore[method-assign]
    reader.feed(log.read_bytes())
    reader.flush()
    return out


def report_agreement(log: Path, tol: float = 1e-6) -> tuple[int, int]:
    """(gpsd's TPVs, how many of them our engine reports in the same order): the longest
    common subsequence by time and mode, positions within ``tol``."""
    import difflib

    ours, theirs = engine_reports(log), gpsd_reports(log.with_suffix(".log.chk"))
    if ours and theirs:
        t_ours = next((r[0] for r in ours if r[0]), None)
        t_theirs = next((r[0] for r in theirs if r[0]), None)
        if t_ours and t_theirs and abs(t_theirs - t_ours - WKRO_SECONDS * 1000) < 2 * 86_400_000:
            theirs = [((r[0] - WKRO_SECONDS * 1000) if r[0] else None, *r[1:]) for r in theirs]
    keys = difflib.SequenceMatcher(
        None,
        [(r[0], r[1], r[2] is None) for r in ours],
        [(r[0], r[1], r[2] is None) for r in theirs],
        autojunk=False,
    )
    same = 0
    for block in keys.get_matching_blocks():
        for k in range(block.size):
            a, b = ours[block.a + k], theirs[block.b + k]
            if a[2] is None or b[2] is None or b[3] is None or a[3] is None:
                same += a[2] is None and b[2] is None
            elif abs(a[2] - b[2]) <= tol and abs(a[3] - b[3]) <= tol:
                same += 1
    return len(theirs), same
