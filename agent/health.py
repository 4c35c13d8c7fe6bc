"""Health figures as a technician reads them (``edge-agent status``)."""

from __future__ import annotations

from typing import Any


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def format_status(s: dict[str, Any], now: float) -> str:
    """The running agent's figures, one fact per line, problems first word in capitals."""
    lines: list[str] = []
    stale = now - float(s.get("updated_utc", 0))
    head = f"device {s.get('device')}  profile {s.get('profile')}  up {_age(s.get('uptime_s'))}"
    if stale > 30:
        head += f"  STALE: last update {_age(stale)} ago (agent stopped?)"
    lines.append(head)
    clock = s.get("clock") or {}
    source = clock.get("source", "none")
    offset = clock.get("offset_s")
    clock_line = f"clock   {source}" + (f", offset {offset:+.3f} s" if offset is not None else "")
    if source == "none":
        clock_line += "  UNTRUSTED: no GNSS or NTP reference yet"
    lines.append(clock_line)
    gps = s.get("gps")
    if gps is not None:
        fix = gps.get("fix") or {}
        where = (
            f"{fix.get('lat'):.6f}, {fix.get('lon'):.6f} at {fix.get('time')}"
            if fix.get("lat") is not None
            else "no position"
        )
        state = str(gps.get("state", "?"))
        lines.append(
            f"gps     {state.upper() if state != 'fix' else state}  {where}  "
            f"(fixes seen {gps.get('seen')}, kept {gps.get('kept')}, "
            f"sent live {gps.get('reported')})"
        )
    up = s.get("uplink")
    if up is not None:
        lines.append(f"uplink  {'connected' if up.get('connected') else 'DISCONNECTED'}")
    video = s.get("video")
    if video is not None:
        lines.append(
            f"camera  {'RECORDING' if video.get('recording') else 'standby'} "
            f"({video.get('encoder') or '-'}), frames {video.get('frames_captured')}, "
            f"dropped {video.get('frames_dropped')}, camera lost {video.get('camera_losses')}x"
        )
    audio = s.get("audio")
    if audio is not None:
        state = str(audio.get("state", "?"))
        why = f" ({audio.get('reason')})" if audio.get("reason") else ""
        lines.append(
            f"mic     {state if state in ('ok', 'off') else state.upper()}{why} "
            f"{audio.get('device', '')}"
        )
    storage = s.get("storage") or {}
    lines.append(
        f"storage evidence {_mb(storage.get('evidence', 0))}, "
        f"telemetry {_mb(storage.get('telemetry', 0))}"
    )
    temp = s.get("cpu_temp_c")
    battery = s.get("battery_pct")
    lines.append(
        f"device  CPU {temp if temp is not None else '-'} °C, "
        f"battery {f'{battery:.0f} %' if battery is not None else '-'}"
    )
    backlog = s.get("backlog") or {}
    if backlog:
        lines.append("backlog (waiting for the platform):")
        for stream, b in sorted(backlog.items()):
            lines.append(
                f"  {stream:<8} {b.get('count'):>6} segments {_mb(b.get('bytes', 0)):>10}"
                f"  oldest {_age(b.get('oldest_age_s'))}"
            )
    else:
        lines.append("backlog none: the platform has everything")
    return "\n".join(lines)
