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
    dead = s.get("dead")
    if isinstance(dead, list) and dead:
        lines.append(
            f"parts   DEAD: {', '.join(str(d) for d in dead)} (stopped; the watchdog restarts "
            "the agent)"
        )
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
    lines.extend(power_lines(s.get("power")))
    lines.extend(link_lines(s.get("cellular")))
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


def _num(v: Any, fmt: str, unit: str) -> str | None:
    return f"{v:{fmt}} {unit}" if isinstance(v, int | float) and not isinstance(v, bool) else None


def power_lines(p: dict[str, Any] | None) -> list[str]:
    """``power`` and the firmware's flags: charge, charging, voltage, current, source."""
    if p is None:
        return []
    state = str(p.get("state", "?"))
    if state == "off":
        head = "power   not monitored ([power] source = none)"
    elif state in ("error", "starting") and p.get("charge_pct") is None:
        head = f"power   {state.upper()}: {p.get('error', 'no reading yet')}"
    else:
        if p.get("external_power") or p.get("charging"):
            how = "charging" if p.get("charging") else "on external power"
        else:
            how = "on battery"
        figures = [
            x
            for x in (
                _num(p.get("charge_pct"), ".0f", "%"),
                how,
                _num(p.get("voltage_v"), ".2f", "V"),
                _num(p.get("current_a"), "+.2f", "A"),
            )
            if x
        ]
        word = {"ok": "battery", "low": "LOW: battery", "critical": "CRITICAL: battery"}.get(
            state, f"{state.upper()}: battery"
        )
        head = f"power   {word} {', '.join(figures)} ({p.get('source')})"
        if state == "error":
            head += f"  last reading {p.get('age_s')} s ago: {p.get('error')}"
    flags = p.get("throttled")
    if isinstance(flags, dict):
        if flags.get("under_voltage"):
            head += "  UNDER-VOLTAGE now"
        elif flags.get("under_voltage_occurred"):
            head += "  under-voltage since boot"
        if flags.get("throttled"):
            head += "  THROTTLED"
    elif p.get("throttled_error"):
        head += f"  (firmware flags: {p.get('throttled_error')})"
    return [head]


def link_lines(c: dict[str, Any] | None) -> list[str]:
    """``link`` (the modem as ModemManager sees it) and ``sent`` (per lane today, UTC)."""
    if c is None:
        return []
    out: list[str] = []
    m = c.get("modem") or {}
    state = str(m.get("state", "?"))
    if state == "off":
        out.append("link    no modem monitored ([cellular] source = none)")
    elif state in ("absent", "no-modemmanager", "no-mmcli"):
        why = {
            "absent": "ModemManager sees no modem",
            "no-modemmanager": "ModemManager is not running",
            "no-mmcli": "mmcli is not installed",
        }[state]
        out.append(f"link    NO MODEM: {why}")
    elif state in ("error", "starting") and m.get("registered") is None:
        out.append(f"link    {state.upper()}: {m.get('error', 'no reading yet')}")
    else:
        link = str(m.get("link", state))
        tech = "/".join(str(t).upper() for t in m.get("access_tech") or []) or "-"
        op = m.get("operator") or m.get("operator_code") or "no operator"
        reg = m.get("registration") or m.get("state")
        sig = m.get("signal") or {}
        best: dict[str, Any] = next((sig[t] for t in ("5g", "lte", "umts", "gsm") if t in sig), {})
        detail = ", ".join(
            x
            for x in (
                _num(best.get("rssi"), ".0f", "dBm RSSI"),
                _num(best.get("rsrp"), ".0f", "dBm RSRP"),
                _num(best.get("rsrq"), ".0f", "dB RSRQ"),
                _num(best.get("sinr"), ".1f", "dB SINR"),
            )
            if x
        )
        pct = m.get("signal_pct")
        text = f"{tech} {reg}, {op}, signal {pct if pct is not None else '-'} %"
        if detail:
            text += f" ({detail})"
        rx, tx = m.get("bytes_rx"), m.get("bytes_tx")
        if rx is not None or tx is not None:
            text += f", modem rx {_mb(rx or 0)} tx {_mb(tx or 0)}"
        prefix = "" if link == "ok" else f"{link.upper()}: "
        if m.get("error"):
            text += f"  (last reading {m.get('age_s')} s ago: {m.get('error')})"
        out.append(f"link    {prefix}{text}")
    t = c.get("traffic")
    if isinstance(t, dict):
        today = t.get("today") or {}
        lanes = ", ".join(
            f"{lane} {_mb(today.get(lane, 0))}"
            for lane in ("live", "backfill", "commands", "talk", "other")
            if today.get(lane)
        )
        out.append(
            f"sent    today ({t.get('day')} UTC) {_mb(today.get('total', 0))}"
            + (f": {lanes}" if lanes else "")
        )
    return out
