"""JT/T 808 benchmarks: encoding frames, the whole report path, and bytes on the wire.

* ``jt808/encode``: frames per second of the terminal's frame encoder (2019 header, check
  code, escaping; :func:`agent.jt808.codec.encode_frame`) on the location bodies of a replayed
  drive, against a **naive reference encoder** written the obvious way (header by
  ``struct.pack``, the check code and the escaping one byte at a time in Python loops, as
  several open-source 808 codecs do), in the same run, on the same bodies; both must give
  identical bytes. Median of 5 interleaved rounds.
* ``jt808/encode_batch``: the same for the backlog's 0x0704 frames (20 reports, ~1 KB): the
  per-byte loops cost in proportion to the frame, ours do not.
* ``jt808/report_path``: reports per second through the whole path (the agent's state ->
  alarm/status bits and items -> 0x0200 body -> frame), and the share of one core that one
  report per second costs.
* ``jt808/wire_live``: bytes on the wire per live location report (a 0x0200 frame with the
  items the terminal sends: mileage, satellites, signal, equipment), against the same fix on
  the agent's MQTT live lane of protocol 2 (its JSON payload, topic and MQTT 5 PUBLISH
  header), measured here on the same fixes (target <= 1: the 808 report is not larger);
  ``jt808/wire_live_v3`` the same for protocol 3's binary fix with a topic alias (smaller
  than the 808 report; ``bench link`` measures both lanes on the wire).
* ``jt808/wire_batch``: bytes per report inside 0x0704 batches of 20 (the backlog), for
  context.
"""

from __future__ import annotations

import calendar
import statistics
import struct
import time
from collections.abc import Callable

from agent.jt808 import messages as m
from agent.jt808.codec import encode_frame
from agent.jt808.location import build_location, common_items, status_bits
from agent.model import Fix, FixMode
from agent.uplink import protocol as proto
from bench import Reporter

GROUP = "jt808"
ROUNDS = 5
N = 3000
PHONE = "13800000001"


def fixes(n: int = N) -> list[Fix]:
    t0 = calendar.timegm((2025, 6, 5, 6, 0, 0))
    out = []
    for i in range(n):
        out.append(
            Fix(
                time=t0 + i,
                mode=FixMode.FIX_3D,
                lat=22.54 + i * 9e-5,
                lon=113.95 + (i % 200) * 3e-5,
                alt=12.0 + (i % 7),
                speed=8.0 + (i % 5),
                track=float((i * 7) % 360),
                sats_used=9 + i % 4,
                hdop=0.9,
            )
        )
    return out


def ours(fix: Fix, serial: int) -> bytes:
    items = common_items(mileage_m=1234.5 * 1000, satellites=fix.sats_used, signal=24,
                         equipment=(0xE1, 1))  # fmt: skip
    loc = build_location(fix, alarm=0, status=status_bits(fix, True), items=items)
    return encode_frame(m.T_LOCATION, m.encode_location(loc), phone=PHONE, serial=serial)


def naive_frame(body: bytes, serial: int, msg_id: int = 0x0200) -> bytes:
    """The obvious frame encoder: check code and escaping one byte at a time."""
    phone = bytes.fromhex(PHONE.rjust(20, "0"))
    head = struct.pack(">HHB", msg_id, len(body) | 1 << 14, 1) + phone + struct.pack(">H", serial)
    raw = head + body
    check = 0
    for b in raw:
        check ^= b
    raw += bytes([check])
    out = bytearray([0x7E])
    for b in raw:
        if b == 0x7E:
            out += b"\x7d\x02"
        elif b == 0x7D:
            out += b"\x7d\x01"
        else:
            out.append(b)
    out.append(0x7E)
    return bytes(out)


def ours_frame(body: bytes, serial: int) -> bytes:
    return encode_frame(m.T_LOCATION, body, phone=PHONE, serial=serial)


def ours_batch(body: bytes, serial: int) -> bytes:
    return encode_frame(m.T_BATCH, body, phone=PHONE, serial=serial)


def naive_batch(body: bytes, serial: int) -> bytes:
    return naive_frame(body, serial, m.T_BATCH)


def live_lane_bytes(fix: Fix, device: str = "trk-0007") -> int:
    """The same fix on the MQTT live lane (protocol 2): JSON payload (TPV + the vehicle's
    inputs), topic, MQTT 5 PUBLISH fixed header (2), topic length (2), packet id (QoS 1: 2),
    properties (1)."""
    extra = {"inputs": {"brush": True, "pump": False, "lift": False, "ignition": True}, "in": []}
    payload = proto.live_fix_json(fix, extra)
    topic = proto.Topics(device).live("fix")
    return len(payload) + len(topic.encode()) + 2 + 2 + 2 + 1


def live_lane_bytes_v3(fix: Fix) -> int:
    """The same fix on the MQTT live lane of protocol 3: the binary fix with the inputs'
    trailer, an aliased topic (length 0), fixed header (2), topic length (2), packet id (2),
    properties (1 + the 3-byte Topic Alias)."""
    extra = {"inputs": {"brush": True, "pump": False, "lift": False, "ignition": True}, "in": []}
    payload = proto.encode_live_fix(fix, extra)
    assert payload is not None
    return len(payload) + 2 + 2 + 2 + 1 + 3


def _rate(fn: Callable[[bytes, int], bytes], data: list[bytes]) -> float:
    t0 = time.perf_counter()
    for i, b in enumerate(data):
        fn(b, i & 0xFFFF)
    return len(data) / (time.perf_counter() - t0)


def _body_of(fix: Fix) -> bytes:
    return _body(ours(fix, 1))


def run(report: Reporter) -> None:
    data = fixes()
    bodies = [_body_of(f) for f in data]
    for i, body in enumerate(bodies):
        assert ours_frame(body, i) == naive_frame(body, i), "the two encoders must agree"
    batches = [m.encode_batch(bodies[i : i + 20]) for i in range(0, len(bodies), 20)]
    for i, body in enumerate(batches):
        assert ours_batch(body, i) == naive_batch(body, i)
    for name, ours_fn, naive_fn, items, target in (
        ("encode", ours_frame, naive_frame, bodies, 1.3),
        ("encode_batch", ours_batch, naive_batch, batches, 3.0),
    ):
        mine: list[float] = []
        theirs: list[float] = []
        for _ in range(ROUNDS):
            mine.append(_rate(ours_fn, items))
            theirs.append(_rate(naive_fn, items))
        ra, rb = statistics.median(mine), statistics.median(theirs)
        what = "live 0x0200 frames/s" if name == "encode" else "0x0704 frames/s (20 reports)"
        report.figure(
            GROUP,
            name,
            ra,
            what,
            ratio=ra / rb,
            baseline=f"a naive byte-at-a-time encoder {rb:.0f}/s",
            target=target,
        )
    paths = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for i, f in enumerate(data):
            ours(f, i & 0xFFFF)
        paths.append(len(data) / (time.perf_counter() - t0))
    rp = statistics.median(paths)
    report.info(
        GROUP,
        "report_path",
        rp,
        "reports/s",
        f"state -> bits, items, body, frame; 1 report/s is {100 / rp:.4f} % of a core",
    )
    wire = [len(ours(f, 1)) for f in data]
    live = [live_lane_bytes(f) for f in data]
    v3 = [live_lane_bytes_v3(f) for f in data]
    w, lv, l3 = statistics.mean(wire), statistics.mean(live), statistics.mean(v3)
    report.figure(
        GROUP,
        "wire_live",
        w,
        "bytes per location report",
        ratio=w / lv,
        baseline=f"the MQTT live lane's {lv:.0f} bytes for the same fix in protocol 2's JSON",
        target=1.0,
        higher_is_better=False,
    )
    report.info(
        GROUP,
        "wire_live_v3",
        l3,
        "bytes per MQTT live fix in protocol 3 (binary, topic alias; before TLS)",
        f"{w / l3:.2f} x that is the 808 report (bench link/live-fix-bytes: on the wire)",
    )
    batch_bytes = 0
    some = bodies[:200]
    for i in range(0, len(some), 20):
        batch = m.encode_batch(some[i : i + 20])
        batch_bytes += len(encode_frame(m.T_BATCH, batch, phone=PHONE, serial=1))
    report.info(
        GROUP, "wire_batch", batch_bytes / len(some), "bytes per report in 0x0704 batches of 20"
    )


def _body(frame: bytes) -> bytes:
    from agent.jt808.codec import decode_frame

    return decode_frame(frame).body
