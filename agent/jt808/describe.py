"""Any JT/T 808 frame as a JSON-ready dict, for technicians and tests. Pure.

``describe_frame(raw)`` never raises for bad input: a frame that does not decode gives
``{"error": ...}``; a body that does not parse gives the header, ``"body_error"`` and the body
in hex. Field names are English; times are given as sent (``YYYY-MM-DD hh:mm:ss`` GMT+8) and
as UTC (ISO 8601).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from agent.errors import FormatError
from agent.jt808 import area_bodies as ab
from agent.jt808 import messages as m
from agent.jt808.body import gmt8_text, parse_bcd_time
from agent.jt808.codec import Frame, decode_frame
from agent.jt808.location import KIND_NAMES
from agent.model import format_utc

ALARM_NAMES = {
    0: "emergency",
    1: "overspeed",
    2: "fatigue driving",
    3: "danger warning",
    4: "gnss module fault",
    5: "gnss antenna disconnected",
    6: "gnss antenna short circuit",
    7: "main power undervoltage",
    8: "main power off",
    9: "display fault",
    10: "tts fault",
    11: "camera fault",
    12: "ic card module fault",
    13: "overspeed warning",
    14: "fatigue driving warning",
    18: "driving time exceeded today",
    19: "stopped too long",
    20: "area entry/exit",
    21: "route entry/exit",
    22: "route segment driving time",
    23: "route deviation",
    24: "vss fault",
    25: "fuel abnormal",
    26: "vehicle stolen",
    27: "illegal ignition",
    28: "illegal displacement",
    29: "collision warning",
    30: "rollover warning",
    31: "illegal door opening",
}
STATUS_NAMES = {
    0: "acc on",
    1: "positioned",
    2: "south latitude",
    3: "west longitude",
    4: "out of service",
    5: "coordinates encrypted",
    10: "fuel line cut",
    11: "circuit cut",
    12: "doors locked",
    13: "door 1 open",
    14: "door 2 open",
    15: "door 3 open",
    16: "door 4 open",
    17: "door 5 open",
    18: "gps",
    19: "beidou",
    20: "glonass",
    21: "galileo",
}
LOAD = {0: "empty", 1: "half", 2: "reserved", 3: "full"}


def _bits(v: int, names: dict[int, str]) -> list[str]:
    return [names.get(i, f"bit {i}") for i in range(32) if v >> i & 1]


def _time(digits: str) -> dict[str, Any]:
    t = parse_bcd_time(digits)
    return {"gmt8": gmt8_text(digits), "utc": format_utc(t) if t is not None else None}


def location_json(loc: m.Location) -> dict[str, Any]:
    out: dict[str, Any] = {
        "alarm": f"0x{loc.alarm:08x}",
        "alarms": _bits(loc.alarm, ALARM_NAMES),
        "status": f"0x{loc.status:08x}",
        "status_bits": _bits(loc.status & ~0x300, STATUS_NAMES),  # bits 8-9: the load
        "load": LOAD[(loc.status >> 8) & 3],
        "lat": loc.lat_e6 / 1e6,
        "lon": loc.lon_e6 / 1e6,
        "altitude_m": loc.altitude_m,
        "speed_kmh": loc.speed_dkmh / 10,
        "direction": loc.direction,
        "time": _time(loc.time_bcd),
        "items": [_item(i, v) for i, v in loc.items],
    }
    return out


def _item(item_id: int, v: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"0x{item_id:02x}", "hex": v.hex()}
    try:
        if item_id == 0x01 and len(v) == 4:
            out["mileage_km"] = struct.unpack(">I", v)[0] / 10
        elif item_id == 0x02 and len(v) == 2:
            out["fuel_l"] = struct.unpack(">H", v)[0] / 10
        elif item_id == 0x03 and len(v) == 2:
            out["recorder_speed_kmh"] = struct.unpack(">H", v)[0] / 10
        elif item_id == 0x11 and len(v) in (1, 5):
            out["overspeed"] = {"type": KIND_NAMES.get(v[0], "none" if v[0] == 0 else v[0])}
            if len(v) == 5:
                out["overspeed"]["id"] = struct.unpack(">I", v[1:])[0]
        elif item_id == 0x12 and len(v) == 6:
            kind, aid, direction = struct.unpack(">BIB", v)
            out["area"] = {
                "type": KIND_NAMES.get(kind, kind),
                "id": aid,
                "direction": "in" if direction == 0 else "out",
            }
        elif item_id == 0x25 and len(v) == 4:
            out["vehicle_signals"] = f"0x{struct.unpack('>I', v)[0]:08x}"
        elif item_id == 0x2A and len(v) == 2:
            out["io_status"] = f"0x{struct.unpack('>H', v)[0]:04x}"
        elif item_id == 0x30 and len(v) == 1:
            out["signal_strength"] = v[0]
        elif item_id == 0x31 and len(v) == 1:
            out["satellites"] = v[0]
    except (struct.error, IndexError):  # pragma: no cover - lengths checked above
        pass
    return out


def _area_common(a: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": a.id, "attribute": f"0x{a.attribute:04x}"}
    if a.times is not None:
        out["start"], out["end"] = gmt8_text(a.times[0]), gmt8_text(a.times[1])
    if a.limit is not None:
        out["max_kmh"], out["overspeed_s"] = a.limit.max_kmh, a.limit.duration_s
        if a.limit.night_kmh is not None:
            out["night_max_kmh"] = a.limit.night_kmh
    if a.name:
        out["name"] = a.name
    return out


def _body(frame: Frame) -> dict[str, Any]:
    v = frame.header.is_2019
    body = frame.body
    mid = frame.msg_id
    if mid in (m.T_GENERAL_RESPONSE, m.P_GENERAL_RESPONSE):
        r = m.decode_general_response(body)
        return {
            "answers_serial": r.serial,
            "answers": f"0x{r.msg_id:04x}",
            "result": r.result,
            "result_text": m.RESULTS.get(r.result, "?"),
        }
    if mid in (m.T_HEARTBEAT, m.T_LOGOUT, m.P_QUERY_PARAMS, m.P_LOCATION_QUERY) and not body:
        return {}
    if mid == m.T_REGISTER:
        reg = m.decode_registration(body, v)
        return {
            "province": reg.province,
            "city": reg.city,
            "manufacturer": reg.manufacturer,
            "model": reg.model,
            "terminal_id": reg.terminal_id,
            "plate_color": reg.plate_color,
            "plate": reg.plate,
        }
    if mid == m.P_REGISTER_RESPONSE:
        rr = m.decode_register_response(body)
        return {
            "answers_serial": rr.serial,
            "result": rr.result,
            "result_text": m.REGISTER_RESULTS.get(rr.result, "?"),
            "code": rr.code,
        }
    if mid == m.T_AUTH:
        a = m.decode_authentication(body, v)
        out: dict[str, Any] = {"code": a.code}
        if v:
            out |= {"imei": a.imei, "software": a.software}
        return out
    if mid in (m.T_LOCATION,):
        return location_json(m.decode_location(body))
    if mid == m.T_LOCATION_ANSWER:
        serial, loc = m.decode_location_answer(body)
        return {"answers_serial": serial, **location_json(loc)}
    if mid == m.T_BATCH:
        kind, locs = m.decode_batch(body)
        return {
            "type": {0: "normal", 1: "blind-area supplement"}.get(kind, kind),
            "count": len(locs),
            "locations": [location_json(x) for x in locs],
        }
    if mid == m.P_SET_PARAMS:
        return {"params": [{"id": f"0x{i:04x}", "hex": b.hex()} for i, b in m.decode_params(body)]}
    if mid == m.T_PARAMS:
        serial, items = m.decode_params_answer(body)
        return {
            "answers_serial": serial,
            "params": [{"id": f"0x{i:04x}", "hex": b.hex()} for i, b in items],
        }
    if mid == m.P_QUERY_SOME_PARAMS:
        return {"ids": [f"0x{i:04x}" for i in m.decode_param_ids(body)]}
    if mid in (m.P_RESEND_REQUEST, m.T_RESEND_REQUEST):
        serial, numbers = m.decode_resend_request(body, v)
        return {"original_serial": serial, "packages": numbers}
    if mid == m.P_TEXT:
        t = m.decode_text(body, v)
        return {"flags": f"0x{t.flags:02x}", "type": t.kind, "text": t.text}
    if mid == m.P_ALARM_CONFIRM:
        serial, bits = m.decode_alarm_confirm(body)
        return {"alarm_serial": serial, "alarms": _bits(bits, ALARM_NAMES)}
    if mid == 0x8600:
        action, circles = ab.decode_circles(body, v)
        return {
            "setting": action,
            "areas": [
                {**_area_common(a), "lat": a.lat_e6 / 1e6, "lon": a.lon_e6 / 1e6,
                 "radius_m": a.radius_m}
                for a in circles
            ],
        }  # fmt: skip
    if mid == 0x8602:
        action, rects = ab.decode_rects(body, v)
        return {
            "setting": action,
            "areas": [
                {**_area_common(a), "top_left": [x / 1e6 for x in a.top_left],
                 "bottom_right": [x / 1e6 for x in a.bottom_right]}
                for a in rects
            ],
        }  # fmt: skip
    if mid == 0x8604:
        p = ab.decode_polygon(body, v)
        return {**_area_common(p), "points": [[a / 1e6, b / 1e6] for a, b in p.points]}
    if mid == 0x8606:
        rt = ab.decode_route(body, v)
        out = {"id": rt.id, "attribute": f"0x{rt.attribute:04x}", "name": rt.name}
        if rt.times:
            out["start"], out["end"] = gmt8_text(rt.times[0]), gmt8_text(rt.times[1])
        out["points"] = [
            {"point": p.point_id, "segment": p.segment_id, "lat": p.lat_e6 / 1e6,
             "lon": p.lon_e6 / 1e6, "width_m": p.width_m,
             **({"max_kmh": p.limit.max_kmh} if p.limit else {})}
            for p in rt.points
        ]  # fmt: skip
        return out
    if mid in (0x8601, 0x8603, 0x8605, 0x8607):
        ids = ab.decode_delete(body, f"0x{mid:04x}")
        return {"ids": ids, "all": not ids}
    raise LookupError(mid)


def describe_frame(raw: bytes) -> dict[str, Any]:
    """One frame (flags optional) as JSON-ready data."""
    try:
        frame = decode_frame(raw, strict=False)
    except FormatError as exc:
        return {"error": str(exc), "hex": raw.hex()}
    return describe(frame)


def describe(frame: Frame) -> dict[str, Any]:
    h = frame.header
    out: dict[str, Any] = {
        "message_id": f"0x{h.msg_id:04x}",
        "message": m.NAMES.get(h.msg_id, "unknown"),
        "standard": "JT/T 808-2019" if h.is_2019 else "JT/T 808-2013",
        "phone": h.phone,
        "serial": h.serial,
        "body_length": h.body_length,
    }
    if h.is_2019:
        out["protocol_version"] = h.version
    if frame.problems:
        out["problems"] = list(frame.problems)
    if h.package is not None:
        out["package"] = {"count": h.package[0], "number": h.package[1]}
    if h.encryption:
        out["encryption"] = "rsa" if h.encryption == 1 else f"0x{h.encryption:x}"
    if h.encryption or h.package is not None:
        out["body_hex"] = frame.body.hex()
        return out
    decoder: Callable[[Frame], dict[str, Any]] = _body
    try:
        out["body"] = decoder(frame)
    except LookupError:
        out["body_hex"] = frame.body.hex()
    except FormatError as exc:
        out["body_error"] = str(exc)
        out["body_hex"] = frame.body.hex()
    return out
