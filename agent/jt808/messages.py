"""JT/T 808 message bodies: encoders and strict decoders. Pure.

Every decoder takes the body and whether its frame had the 2019 header (``v2019``), reads
every field through :class:`~agent.jt808.body.Reader` and raises
:class:`~agent.errors.FormatError` naming the field for anything that does not fit: a short
body, trailing bytes, a count that does not match, a BCD nibble above 9.

Field layouts follow JT/T 808-2019 and, where they differ, JT/T 808-2013 (noted per message).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from agent.errors import FormatError
from agent.jt808.body import Reader, Writer, bcd_encode, fixed, gbk, parse_bcd_time, text_of

# --------------------------------------------------------------------------- ids

T_GENERAL_RESPONSE = 0x0001
T_HEARTBEAT = 0x0002
T_LOGOUT = 0x0003
T_RESEND_REQUEST = 0x0005  # 2019: the terminal asks for missing packages
T_REGISTER = 0x0100
T_AUTH = 0x0102
T_PARAMS = 0x0104
T_LOCATION = 0x0200
T_LOCATION_ANSWER = 0x0201
T_BATCH = 0x0704
P_GENERAL_RESPONSE = 0x8001
P_RESEND_REQUEST = 0x8003
P_REGISTER_RESPONSE = 0x8100
P_SET_PARAMS = 0x8103
P_QUERY_PARAMS = 0x8104
P_QUERY_SOME_PARAMS = 0x8106
P_LOCATION_QUERY = 0x8201
P_ALARM_CONFIRM = 0x8203
P_TEXT = 0x8300
P_SET_CIRCLES = 0x8600
P_DELETE_CIRCLES = 0x8601
P_SET_RECTANGLES = 0x8602
P_DELETE_RECTANGLES = 0x8603
P_SET_POLYGON = 0x8604
P_DELETE_POLYGONS = 0x8605
P_SET_ROUTE = 0x8606
P_DELETE_ROUTES = 0x8607

NAMES: dict[int, str] = {
    0x0001: "terminal general response",
    0x0002: "heartbeat",
    0x0003: "terminal logout",
    0x0004: "query server time (2019)",
    0x0005: "terminal request to resend packages (2019)",
    0x0100: "terminal registration",
    0x0102: "terminal authentication",
    0x0104: "query parameters response",
    0x0107: "terminal properties",
    0x0200: "location report",
    0x0201: "location query response",
    0x0704: "location batch upload",
    0x0800: "multimedia event",
    0x0801: "multimedia data upload",
    0x0900: "uplink pass-through",
    0x8001: "platform general response",
    0x8003: "platform request to resend packages",
    0x8004: "server time response (2019)",
    0x8100: "terminal registration response",
    0x8103: "set terminal parameters",
    0x8104: "query terminal parameters",
    0x8105: "terminal control",
    0x8106: "query specified terminal parameters",
    0x8107: "query terminal properties",
    0x8201: "location query",
    0x8202: "temporary location tracking",
    0x8203: "manual alarm confirmation",
    0x8300: "text message",
    0x8600: "set circular areas",
    0x8601: "delete circular areas",
    0x8602: "set rectangular areas",
    0x8603: "delete rectangular areas",
    0x8604: "set polygon area",
    0x8605: "delete polygon areas",
    0x8606: "set route",
    0x8607: "delete routes",
    0x8608: "query areas or routes (2019)",
    0x8801: "take photo",
    0x8900: "downlink pass-through",
}

# General response results.
OK, FAILURE, MESSAGE_ERROR, NOT_SUPPORTED, ALARM_CONFIRMED = 0, 1, 2, 3, 4
RESULTS = {
    OK: "success",
    FAILURE: "failure",
    MESSAGE_ERROR: "message error",
    NOT_SUPPORTED: "not supported",
    ALARM_CONFIRMED: "alarm handling confirmed",
}
REGISTER_RESULTS = {
    0: "success",
    1: "vehicle already registered",
    2: "vehicle not in the database",
    3: "terminal already registered",
    4: "terminal not in the database",
}


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class GeneralResponse:
    serial: int  # of the message answered
    msg_id: int  # of the message answered
    result: int


def encode_general_response(r: GeneralResponse) -> bytes:
    return Writer().u16(r.serial).u16(r.msg_id).u8(r.result).bytes()


def decode_general_response(body: bytes, what: str = "general response") -> GeneralResponse:
    r = Reader(body, what)
    out = GeneralResponse(r.u16("answered serial"), r.u16("answered message id"), r.u8("result"))
    r.end()
    return out


# --------------------------------------------------------------------------- register / auth


@dataclass(frozen=True, slots=True)
class Registration:
    province: int
    city: int
    manufacturer: str
    model: str
    terminal_id: str
    plate_color: int
    plate: str


def registration_sizes(v2019: bool) -> tuple[int, int, int]:
    """Manufacturer, model and terminal id field widths: 11/30/30 (2019), 5/20/7 (2013)."""
    return (11, 30, 30) if v2019 else (5, 20, 7)


def encode_registration(reg: Registration, v2019: bool = True) -> bytes:
    m, mo, t = registration_sizes(v2019)
    return (
        Writer()
        .u16(reg.province, "province id")
        .u16(reg.city, "city id")
        .raw(fixed(reg.manufacturer, m, "manufacturer id"))
        .raw(fixed(reg.model, mo, "terminal model"))
        .raw(fixed(reg.terminal_id, t, "terminal id"))
        .u8(reg.plate_color, "plate colour")
        .raw(gbk(reg.plate, "plate"))
        .bytes()
    )


def decode_registration(body: bytes, v2019: bool) -> Registration:
    r = Reader(body, "0x0100 registration")
    m, mo, t = registration_sizes(v2019)
    if not v2019 and len(body) < 37:
        mo = 8  # JT/T 808-2011: an 8-byte model
    return Registration(
        province=r.u16("province id"),
        city=r.u16("city id"),
        manufacturer=text_of(r.take(m, "manufacturer id")),
        model=text_of(r.take(mo, "terminal model")),
        terminal_id=text_of(r.take(t, "terminal id")),
        plate_color=r.u8("plate colour"),
        plate=text_of(r.rest()),
    )


@dataclass(frozen=True, slots=True)
class RegisterResponse:
    serial: int
    result: int
    code: str  # the authentication code (only with result 0)


def encode_register_response(rr: RegisterResponse) -> bytes:
    w = Writer().u16(rr.serial).u8(rr.result)
    if rr.result == 0:
        w.raw(gbk(rr.code, "authentication code"))
    return w.bytes()


def decode_register_response(body: bytes) -> RegisterResponse:
    r = Reader(body, "0x8100 registration response")
    serial = r.u16("answered serial")
    result = r.u8("result")
    code = r.rest()
    if result == 0 and not code:
        raise FormatError("0x8100 registration response: success without an authentication code")
    return RegisterResponse(serial, result, code.decode("gbk", errors="replace"))


@dataclass(frozen=True, slots=True)
class Authentication:
    code: str
    imei: str = ""  # 2019
    software: str = ""  # 2019


def encode_authentication(a: Authentication, v2019: bool = True) -> bytes:
    code = gbk(a.code, "authentication code")
    if not v2019:
        return code
    if len(code) > 255:
        raise FormatError("authentication code: longer than 255 bytes")
    return (
        Writer()
        .u8(len(code))
        .raw(code)
        .raw(fixed(a.imei, 15, "imei"))
        .raw(fixed(a.software, 20, "software version"))
        .bytes()
    )


def decode_authentication(body: bytes, v2019: bool) -> Authentication:
    if not v2019:
        return Authentication(body.decode("gbk", errors="replace"))
    r = Reader(body, "0x0102 authentication")
    n = r.u8("code length")
    code = r.take(n, "authentication code").decode("gbk", errors="replace")
    imei = text_of(r.take(15, "imei"))
    software = text_of(r.take(20, "software version"))
    r.end()
    return Authentication(code, imei, software)


# --------------------------------------------------------------------------- location


@dataclass(frozen=True, slots=True)
class Location:
    """The 0x0200 body: 28 bytes, then additional items ``(id, value)`` in order."""

    alarm: int
    status: int
    lat_e6: int  # signed micro-degrees (the sign goes into status bit 2 on the wire)
    lon_e6: int  # signed micro-degrees (status bit 3)
    altitude_m: int  # WORD: 0..65535 on the wire
    speed_dkmh: int  # 1/10 km/h
    direction: int  # 0..359, north = 0, clockwise
    time_bcd: str  # YYMMDDhhmmss, GMT+8
    items: tuple[tuple[int, bytes], ...] = field(default=())

    @property
    def time(self) -> float | None:
        """UTC seconds, or None when the BCD time is not a date."""
        return parse_bcd_time(self.time_bcd)

    def item(self, item_id: int) -> bytes | None:
        for i, v in self.items:
            if i == item_id:
                return v
        return None


STATUS_SOUTH = 1 << 2
STATUS_WEST = 1 << 3


_LOC = struct.Struct(">IIIIHHH")


def encode_location(loc: Location) -> bytes:
    status = loc.status & ~(STATUS_SOUTH | STATUS_WEST)
    if loc.lat_e6 < 0:
        status |= STATUS_SOUTH
    if loc.lon_e6 < 0:
        status |= STATUS_WEST
    fields = (
        loc.alarm,
        status,
        abs(loc.lat_e6),
        abs(loc.lon_e6),
        loc.altitude_m,
        loc.speed_dkmh,
        loc.direction,
    )
    try:
        head = _LOC.pack(*fields)
    except struct.error:
        # Name the field that does not fit (the slow path, for the error message only).
        w = Writer()
        for (name, size), v in zip(_LOC_FIELDS, fields, strict=True):
            (w.u32 if size == 4 else w.u16)(v, name)
        raise FormatError("location: a field does not fit") from None  # pragma: no cover
    t = loc.time_bcd
    time_bytes = bytes.fromhex(t) if len(t) == 12 and t.isdigit() else bcd_encode(t, 6)
    parts = [head, time_bytes]
    for item_id, value in loc.items:
        if len(value) > 255 or not 0 <= item_id <= 255:
            raise FormatError(f"additional item 0x{item_id:02x}: {len(value)} bytes (max 255)")
        parts.append(bytes((item_id, len(value))))
        parts.append(value)
    return b"".join(parts)


_LOC_FIELDS = (
    ("alarm flags", 4),
    ("status", 4),
    ("latitude", 4),
    ("longitude", 4),
    ("altitude", 2),
    ("speed", 2),
    ("direction", 2),
)


def decode_location(body: bytes, what: str = "0x0200 location") -> Location:
    r = Reader(body, what)
    alarm = r.u32("alarm flags")
    status = r.u32("status")
    lat = r.u32("latitude")
    lon = r.u32("longitude")
    alt = r.u16("altitude")
    speed = r.u16("speed")
    direction = r.u16("direction")
    t = r.bcd(6, "time")
    items: list[tuple[int, bytes]] = []
    while r.left:
        if r.left < 2:
            raise FormatError(f"{what}: {r.left} byte left, too short for an additional item")
        item_id = r.u8("additional item id")
        n = r.u8(f"length of additional item 0x{item_id:02x}")
        items.append((item_id, r.take(n, f"additional item 0x{item_id:02x}")))
    return Location(
        alarm=alarm,
        status=status,
        lat_e6=-lat if status & STATUS_SOUTH else lat,
        lon_e6=-lon if status & STATUS_WEST else lon,
        altitude_m=alt,
        speed_dkmh=speed,
        direction=direction,
        time_bcd=t,
        items=tuple(items),
    )


def encode_location_answer(serial: int, location_body: bytes) -> bytes:
    return Writer().u16(serial).raw(location_body).bytes()


def decode_location_answer(body: bytes) -> tuple[int, Location]:
    r = Reader(body, "0x0201 location query response")
    serial = r.u16("answered serial")
    return serial, decode_location(r.rest(), "0x0201 location")


BATCH_NORMAL, BATCH_BLIND_AREA = 0, 1


def encode_batch(bodies: list[bytes], kind: int = BATCH_BLIND_AREA) -> bytes:
    """0x0704: count, type (0 normal batch, 1 blind-area supplement), items (WORD length +
    a location body)."""
    w = Writer().u16(len(bodies), "batch count").u8(kind)
    for b in bodies:
        w.u16(len(b), "batch item length").raw(b)
    return w.bytes()


def decode_batch(body: bytes) -> tuple[int, list[Location]]:
    r = Reader(body, "0x0704 batch")
    count = r.u16("count")
    kind = r.u8("type")
    out = []
    for i in range(count):
        n = r.u16(f"length of item {i}")
        out.append(decode_location(r.take(n, f"item {i}"), f"0x0704 item {i}"))
    r.end()
    return kind, out


def batch_size(bodies: list[bytes]) -> int:
    return 3 + sum(2 + len(b) for b in bodies)


# --------------------------------------------------------------------------- parameters


def encode_params(items: list[tuple[int, bytes]]) -> bytes:
    """0x8103 body: count BYTE, then (id DWORD, length BYTE, value) per parameter."""
    w = Writer().u8(len(items), "parameter count")
    for pid, value in items:
        w.u32(pid).u8(len(value), "parameter length").raw(value)
    return w.bytes()


def decode_params(body: bytes, what: str = "0x8103 set parameters") -> list[tuple[int, bytes]]:
    r = Reader(body, what)
    count = r.u8("parameter count")
    out = []
    for i in range(count):
        pid = r.u32(f"parameter {i} id")
        n = r.u8(f"parameter 0x{pid:04x} length")
        out.append((pid, r.take(n, f"parameter 0x{pid:04x} value")))
    r.end()
    return out


def encode_params_answer(serial: int, items: list[tuple[int, bytes]]) -> bytes:
    """0x0104: answered serial, then the 0x8103 layout."""
    return Writer().u16(serial).raw(encode_params(items)).bytes()


def decode_params_answer(body: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    r = Reader(body, "0x0104 parameters")
    serial = r.u16("answered serial")
    return serial, decode_params(r.rest(), "0x0104 parameters")


def decode_param_ids(body: bytes) -> list[int]:
    """0x8106: count BYTE, ids DWORD."""
    r = Reader(body, "0x8106 query parameters")
    n = r.u8("count")
    ids = [r.u32(f"parameter id {i}") for i in range(n)]
    r.end()
    return ids


# --------------------------------------------------------------------------- packages


def encode_resend_request(serial: int, numbers: list[int], v2019: bool = True) -> bytes:
    """0x0005 / 0x8003: original serial, count (WORD in 2019, BYTE in 2013), numbers."""
    w = Writer().u16(serial)
    if v2019:
        w.u16(len(numbers), "package count")
    else:
        w.u8(len(numbers), "package count")
    for n in numbers:
        w.u16(n, "package number")
    return w.bytes()


def decode_resend_request(body: bytes, v2019: bool) -> tuple[int, list[int]]:
    r = Reader(body, "resend request")
    serial = r.u16("original serial")
    n = r.u16("package count") if v2019 else r.u8("package count")
    numbers = [r.u16(f"package number {i}") for i in range(n)]
    r.end()
    return serial, numbers


# --------------------------------------------------------------------------- text, alarms


@dataclass(frozen=True, slots=True)
class TextMessage:
    flags: int  # bit0 emergency, bit2 display, bit3 TTS, bit5 (2013) CAN fault code
    kind: int  # 2019: 1 notice, 2 service; 0 in 2013
    text: str


def encode_text(t: TextMessage, v2019: bool = True) -> bytes:
    w = Writer().u8(t.flags)
    if v2019:
        w.u8(t.kind)
    return w.raw(gbk(t.text, "text")).bytes()


def decode_text(body: bytes, v2019: bool) -> TextMessage:
    r = Reader(body, "0x8300 text message")
    flags = r.u8("flags")
    kind = r.u8("text type") if v2019 else 0
    raw = r.rest()
    if len(raw) > 1024:
        raise FormatError("0x8300 text message: longer than 1024 bytes")
    return TextMessage(flags, kind, raw.decode("gbk", errors="replace"))


def decode_alarm_confirm(body: bytes) -> tuple[int, int]:
    """0x8203: the alarm report's serial (0 = every alarm), the alarm types confirmed."""
    r = Reader(body, "0x8203 alarm confirmation")
    out = (r.u16("alarm serial"), r.u32("alarm types"))
    r.end()
    return out
