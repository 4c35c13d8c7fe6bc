"""Link: what a truck costs on the cellular link, and a drain over an emulated cellular link.

Every byte is counted by a loopback proxy between the device and mosquitto (bench/netem.py):
TCP payload both ways, i.e. TLS records and what they carry (MQTT, keepalives, the
platform's signed acknowledgements, PUBACKs), not IP/TCP headers (a JT/T 808 terminal pays
those too). The platform is a real ingest worker with signed acknowledgements and registered
device keys (production settings); the device is the agent's uplink (forwarder, MQTT link,
spool, delta-coded GPS batches).

- ``link/live-fix-bytes``: bytes a live fix costs on the wire, device to broker (the PUBLISH
  in its TLS record; the topic is an alias after the first), against the 64-byte budget.
- ``link/backfill-bytes-per-fix``: a truck's hour of 1 Hz fixes sealed as the GPS service
  seals them (``spool.batch_s`` of fixes a segment, delta-coded) and delivered one segment at
  a time as in steady state: everything both ways (the segment in whatever form it travels
  (protocol 4: compact), MQTT, TLS, the signed acknowledgement, the stream heads whenever
  they are news to the platform, PUBACKs, the hour's key record) per fix, at the shipped
  ``spool.batch_s`` (60 s: issue 19's "a minute of 1 Hz fixes", target <= 16) and, for
  comparison, at 300 s.
- ``link/bytes-per-hour``: the truck's hour (bench/truck.py: stop-and-go, the default
  reporting strategy, the default 60 s heartbeat and 30 s keepalive, the live fixes and the
  vehicle's inputs, GPS batches of the shipped ``spool.batch_s`` (60 s; 300 s printed beside
  it), one connection set up) played
  ``EDGE_AGENT_BENCH_LINK_SPEEDUP`` (30) times faster (every timer scaled alike), against the
  JT/T 808 arithmetic for the same reports: each live fix a 0x0200 (with the items our
  terminal sends) answered by a 0x8001, every other kept fix in 0x0704 batches of 20 answered
  by a 0x8001, a heartbeat 0x0002 whenever a minute passes without a message, registration
  and authentication once (agent.jt808's own encoders; plain TCP, its default).
- ``link/cellular-utilisation``: a backlog (200 GPS segments, 3 x 4 MiB video) drained
  through the proxy playing a cellular link: 80 ms RTT, 20 Mbit/s each way, and loss (as TCP
  shows it: a 200 ms stall every 2 MB on average, seeded); goodput (segment bytes delivered)
  against the link's capacity over the same time, stalls excluded (target >= 0.85).
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.gps import fixdelta, wire
from agent.gps.settings import StrategySettings
from agent.gps.strategy import ReportingStrategy
from agent.ingest.receiver import Ingest
from agent.ingest.store import Store
from agent.jt808 import messages as m808
from agent.jt808.codec import encode_frame
from agent.jt808.location import build_location, common_items, equipment_bits, status_bits
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki, make_pki
from agent.labs.waiting import wait_for
from agent.model import Fix, FixMode
from agent.storage.keys import init_device_keys, load_platform_public, load_signing_key
from agent.storage.records import RecordLog
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool
from agent.uplink import protocol as proto
from agent.uplink.control import init_ack_keys, load_ack_private
from agent.uplink.mqtt import LinkConfig, MqttLink
from agent.uplink.service import Uplink
from agent.uplink.settings import UplinkSettings
from bench import Reporter
from bench import truck as truck_hour
from bench.netem import Link, LinkProxy

GROUP = "link"
MIB = 1024 * 1024
PHONE = "013800000001"
MONITOR = "monitor"
INPUTS = {"inputs": {"brush": True, "pump": False, "lift": False, "ignition": True}, "in": []}


@dataclass
class Lab:
    work: Path
    broker: Mosquitto
    pki: Pki
    platform_pub: Path
    ack_pub: Path
    ingest: Ingest
    stop: threading.Event

    def device(self, name: str, proxy: LinkProxy, **uplink: Any) -> tuple[Spool, Uplink]:
        """A device of its own (id ``trk-<name>``: key registered, certificate issued) whose
        uplink goes through ``proxy``; not started."""
        device = f"trk-{name}"
        d = self.work / name
        init_device_keys(d / "keys")
        (self.work / "devices" / f"{device}.pub").write_bytes(
            (d / "keys" / "device.pub").read_bytes()
        )
        c = self.pki.issue(device)
        sealer = Sealer(
            device_id=device,
            boot_id=f"boot-{name}",
            signing_key=load_signing_key(d / "keys" / "device.key"),
            platform_public=load_platform_public(self.platform_pub),
            settings=SealSettings(),
        )
        spool = Spool(SpoolSettings(dir=d / "spool", reserve_mb=0), sealer)
        settings = replace(
            UplinkSettings(
                enabled=True,
                port=proxy.port,
                ca=self.pki.ca,
                cert=c.cert,
                key=c.key,
                state_dir=d / "state",
                ack_key=self.ack_pub,
            ),
            **uplink,
        )
        stop = threading.Event()
        up = Uplink(settings, device_id=device, boot_id=f"boot-{name}", spool=spool, stop=stop)
        return spool, up


def _lab(work: Path) -> Lab:
    pki = make_pki(work / "pki", (INGEST_IDENTITY, MONITOR))
    broker = Mosquitto(work / "mq", pki, ingest_identities=(INGEST_IDENTITY, MONITOR))
    broker.start()
    from agent.storage.keys import init_platform_keys

    init_platform_keys(work / "plat")
    ack = init_ack_keys(work / "plat")
    (work / "devices").mkdir()
    stop = threading.Event()
    c = pki.client(INGEST_IDENTITY)
    cfg = LinkConfig("127.0.0.1", broker.port, INGEST_IDENTITY, pki.ca, c.cert, c.key)
    store = Store(work / "store", devices=work / "devices", trust_on_first_use=False)
    ingest = Ingest(store, cfg, stop, ack_key=load_ack_private(ack))
    ingest.start()
    return Lab(
        work, broker, pki, work / "plat" / "platform.pub", ack.with_name("ack.pub"), ingest, stop
    )


def _at_least(get: Callable[[], int], n: int, timeout: float, what: str) -> None:
    wait_for(lambda: get() >= n, timeout, what)


def _settle(proxy: LinkProxy, quiet_s: float = 0.5, timeout: float = 30) -> None:
    """Wait until no byte moved for ``quiet_s``."""
    last, since = proxy.counts().total, time.monotonic()
    deadline = since + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        pause.wait(0.05)
        now = proxy.counts().total
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def _gps_log(spool: Spool) -> RecordLog:
    return RecordLog(
        spool,
        "gps",
        content_type=fixdelta.CONTENT_TYPE,
        pack=fixdelta.encode_batch,
        record_type=wire.CONTENT_TYPE,
        batch_max_records=100_000,
    )


# ----------------------------------------------------------------------------- live fixes


def live_fix_bytes(lab: Lab) -> tuple[float, float, int, list[int]]:
    """(bytes up per live fix, bytes down (PUBACK) per fix, the JSON fix's payload bytes, the
    bytes up in each fix's own window: its spread)."""
    proxy = LinkProxy(("127.0.0.1", lab.broker.port))
    spool, up = lab.device("live", proxy, keepalive_s=600)
    fixes = truck_hour.hour(seconds=40)
    try:
        up.start()
        wait_for(lambda: up.link.connected, 30, "the device to connect")
        # The connection's stream heads (signed, retained, ~300 B) are its own cost, counted
        # in bytes-per-hour: not in the window of the fixes.
        wait_for(lambda: up.forwarder.stats.heads_sent >= 1, 30, "the first heads")
        up.forwarder.report_fix(fixes[0], INPUTS)  # names the topic, sets its alias
        wait_for(lambda: up.forwarder.stats.live_sent >= 1, 10, "the first live fix")
        _settle(proxy)
        before = proxy.counts()
        n = 30
        each: list[int] = []
        for i, f in enumerate(fixes[1 : n + 1]):
            at = proxy.counts().up
            up.forwarder.report_fix(f, INPUTS)
            _at_least(lambda: up.forwarder.stats.live_sent, i + 2, 10, "a live fix")
            wait_for(lambda: up.link.outstanding() == 0, 10, "its PUBACK")
            each.append(proxy.counts().up - at)
        _settle(proxy, 0.3)
        after = proxy.counts()
    finally:
        up.stop.set()
        up.join(10)
        spool.close()
        proxy.close()
    json_len = len(proto.live_fix_json(fixes[0], INPUTS))
    return (after.up - before.up) / n, (after.down - before.down) / n, json_len, sorted(each)


# ----------------------------------------------------------------------------- backfill


def backfill_bytes_per_fix(lab: Lab, batch_s: int, seconds: int) -> tuple[float, int]:
    """(bytes both ways per fix, segments) delivering ``seconds`` of 1 Hz fixes sealed every
    ``batch_s``, one segment at a time, each until its acknowledgement and stream heads."""
    proxy = LinkProxy(("127.0.0.1", lab.broker.port))
    spool, up = lab.device(f"backfill-{batch_s}", proxy, keepalive_s=600)
    fixes = truck_hour.hour(seconds=seconds)
    log = _gps_log(spool)
    try:
        up.start()
        wait_for(lambda: up.link.connected, 30, "the device to connect")
        wait_for(lambda: up.forwarder.stats.heads_sent >= 1, 30, "the first heads")
        _settle(proxy)
        before = proxy.counts()
        segments = 0
        for start in range(0, len(fixes), batch_s):
            for f in fixes[start : start + batch_s]:
                log.append(wire.encode_fix(f), t=f.time, durable=False)
            log.roll()
            segments += 1
            up.forwarder.wake.set()
            _at_least(lambda: up.forwarder.stats.segments_acked, segments, 30, "the ack")
            # The stream heads, if the change is news to the platform (protocol 4: not when it
            # acknowledged the head segment itself; else signed heads after a grace).
            wait_for(lambda: not up.forwarder.heads_news(), 30, "the heads")
            _settle(proxy, 0.5)
        _settle(proxy)
        after = proxy.counts()
    finally:
        up.stop.set()
        up.join(10)
        spool.close()
        proxy.close()
    return (after.total - before.total) / len(fixes), segments


# ----------------------------------------------------------------------------- the hour


@dataclass
class Hour:
    fixes: int
    live: int
    kept: int
    statuses: int
    segments: int
    up: int
    down: int
    connections: int


def truck_bytes_per_hour(lab: Lab, speedup: float, batch_s: float) -> Hour:
    """The truck's hour through the proxy, ``speedup`` times faster, its fixes sealed every
    ``batch_s`` (see the module doc)."""
    proxy = LinkProxy(("127.0.0.1", lab.broker.port))
    defaults = UplinkSettings()
    spool, up = lab.device(
        f"hour-{batch_s:g}", proxy, keepalive_s=max(1, round(defaults.keepalive_s / speedup))
    )
    fixes = truck_hour.hour()
    strategy = ReportingStrategy(StrategySettings())
    log = _gps_log(spool)
    heartbeat_s = 60.0
    live = kept = statuses = segments = 0
    try:
        up.start()  # the connection (TLS handshake, CONNECT, SUBSCRIBE, birth) is counted
        wait_for(lambda: up.link.connected, 30, "the device to connect")
        t0 = time.monotonic()
        batch_start = fixes[0].time
        next_beat = fixes[0].time
        for i, f in enumerate(fixes):
            due = t0 + (f.time - fixes[0].time) / speedup
            delay = due - time.monotonic()
            if delay > 0:
                up.stop.wait(delay)
            d = strategy.decide(f)
            if d.keep:
                log.append(wire.encode_fix(f), t=f.time, durable=False)
                kept += 1
            if d.report_live:
                up.forwarder.report_fix(f, INPUTS)
                live += 1
            if f.time >= next_beat:
                up.forwarder.report_status(
                    truck_hour.status(up.forwarder.device_id, statuses, f, i, kept, live)
                )
                statuses += 1
                next_beat += heartbeat_s
            if f.time - batch_start >= batch_s - 1:
                if log.roll() is not None:
                    segments += 1
                batch_start = f.time + 1
        if log.roll() is not None:
            segments += 1
        up.forwarder.wake.set()
        wait_for(lambda: up.forwarder.stats.segments_acked >= segments, 60, "the last segments")
        _settle(proxy, 2.5)
        c = proxy.counts()
    finally:
        up.stop.set()
        up.join(10)
        spool.close()
        proxy.close()
    return Hour(len(fixes), live, kept, statuses, segments, c.up, c.down, proxy.connections)


def jt808_bytes(hour_fixes: list[Fix]) -> tuple[int, dict[str, int]]:
    """The JT/T 808 arithmetic for the same reports (the same strategy's decisions)."""
    strategy = ReportingStrategy(StrategySettings())
    serial = 0
    parts = {"register+auth": 0, "live": 0, "batches": 0, "answers": 0, "heartbeats": 0}

    def frame(msg_id: int, body: bytes) -> int:
        nonlocal serial
        serial = (serial + 1) & 0xFFFF
        return len(encode_frame(msg_id, body, phone=PHONE, serial=serial))

    answer = frame(m808.P_GENERAL_RESPONSE, m808.encode_general_response(
        m808.GeneralResponse(1, m808.T_LOCATION, 0)))  # fmt: skip
    reg = m808.Registration(44, 300, "EDGEA", "edge-agent", "TRK0007", 2, "粤B12345")
    parts["register+auth"] = (
        frame(m808.T_REGISTER, m808.encode_registration(reg))
        + frame(
            m808.P_REGISTER_RESPONSE,
            m808.encode_register_response(m808.RegisterResponse(1, 0, "A1B2C3D4")),
        )
        + frame(m808.T_AUTH, m808.encode_authentication(
            m808.Authentication("A1B2C3D4", "866123456789012", "edge-agent 0.9.0")))
        + answer
    )  # fmt: skip
    pending: list[bytes] = []
    last_sent = hour_fixes[0].time
    mileage = 1_234_500.0
    for f in hour_fixes:
        d = strategy.decide(f)
        mileage += f.speed or 0.0
        if f.time - last_sent >= 60:
            parts["heartbeats"] += frame(m808.T_HEARTBEAT, b"")
            parts["answers"] += answer
            last_sent = f.time
        if not d.keep:
            continue
        items = common_items(
            mileage_m=mileage,
            satellites=f.sats_used,
            signal=24,
            equipment=(0xE1, equipment_bits(True, False, False)),
        )
        body = m808.encode_location(
            build_location(f, alarm=0, status=status_bits(f, True), items=items)
        )
        if d.report_live:
            parts["live"] += frame(m808.T_LOCATION, body)
            parts["answers"] += answer
            last_sent = f.time
            continue
        pending.append(body)
        if len(pending) == 20 or m808.batch_size([*pending, body]) > 1023:
            parts["batches"] += frame(m808.T_BATCH, m808.encode_batch(pending, m808.BATCH_NORMAL))
            parts["answers"] += answer
            pending = []
            last_sent = f.time
    if pending:
        parts["batches"] += frame(m808.T_BATCH, m808.encode_batch(pending, m808.BATCH_NORMAL))
        parts["answers"] += answer
    return sum(parts.values()), parts


# ----------------------------------------------------------------------------- cellular


@dataclass
class Cellular:
    utilisation: float  # bytes the device sent / the upstream capacity (stalls excluded)
    goodput: float  # segment bytes / the same capacity
    stall_share: float  # of the time, upstream stalled
    seconds: float
    live_ms: list[float]  # live fixes during the drain: report -> the platform's receipt


def _live_monitor(lab: Lab, device: str, stop: threading.Event) -> list[float]:
    """Latencies (ms) of the device's live fixes, received straight from the broker."""
    c = lab.pki.client(MONITOR)
    link = MqttLink(
        LinkConfig("127.0.0.1", lab.broker.port, MONITOR, lab.pki.ca, c.cert, c.key), stop
    )
    q = link.route(proto.Topics(device).live("fix"))
    out: list[float] = []

    def consume() -> None:
        while not stop.is_set():
            try:
                msg = q.get(timeout=0.2)
            except queue.Empty:
                continue
            t = datetime.fromisoformat(
                str(proto.decode_live_fix(msg.payload)["time"]).replace("Z", "+00:00")
            ).timestamp()
            out.append((time.time() - t) * 1000)
            link.ack(msg)

    link.start()
    threading.Thread(target=consume, daemon=True).start()
    wait_for(lambda: link.connected, 30, "the monitor to connect")
    return out


def cellular_drain(lab: Lab, gps: int, videos: int) -> Cellular:
    """A drain over the emulated link, from the connection to the last acknowledgement, with
    a live fix every 200 ms meanwhile."""
    rate = 20e6 / 8
    link = Link(rtt_s=0.08, rate_bps=rate, stall_every_bytes=2e6, stall_s=0.2, seed=19)
    proxy = LinkProxy(("127.0.0.1", lab.broker.port), link)
    spool, up = lab.device("cellular", proxy, keepalive_s=600)
    log = _gps_log(spool)
    fixes = truck_hour.hour(seconds=gps * 60)
    for i in range(gps):
        for f in fixes[i * 60 : i * 60 + 60]:
            log.append(wire.encode_fix(f), t=f.time, durable=False)
        log.roll()
    block = os.urandom(MIB)
    for _ in range(videos):
        spool.put_bytes("video", block * 4)
    total = sum(i.size for i in spool.items())
    count = len(spool.items())
    monitor_stop = threading.Event()
    live = _live_monitor(lab, up.forwarder.device_id, monitor_stop)

    def report_fixes() -> None:
        while not up.stop.wait(0.2):
            up.forwarder.report_fix(
                Fix(time=time.time(), mode=FixMode.FIX_3D, lat=22.54, lon=113.95), INPUTS
            )

    try:
        up.start()
        wait_for(lambda: up.link.connected, 30, "the device to connect over the slow link")
        start, before = time.monotonic(), proxy.counts()
        threading.Thread(target=report_fixes, daemon=True).start()
        wait_for(lambda: up.forwarder.stats.segments_acked >= count, 600, "the drain")
        elapsed, after = time.monotonic() - start, proxy.counts()
    finally:
        up.stop.set()
        up.join(10)
        monitor_stop.set()
        spool.close()
        proxy.close()
    stalled = after.stalled_up_s - before.stalled_up_s
    capacity = rate * max(elapsed - stalled, 1e-9)
    wire_up = after.up - before.up
    return Cellular(wire_up / capacity, total / capacity, stalled / elapsed, elapsed, sorted(live))


def run(report: Reporter) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("bench link: mosquitto not installed; skipped")
        return
    speedup = float(os.environ.get("EDGE_AGENT_BENCH_LINK_SPEEDUP", "30"))
    work = Path(tempfile.mkdtemp(prefix="bench-link-", dir="/var/tmp"))
    lab: Lab | None = None
    try:
        lab = _lab(work)
        up, down, json_len, each = live_fix_bytes(lab)
        report.figure(
            GROUP,
            "live-fix-bytes",
            up,
            "bytes device->broker per live fix",
            ratio=up / 64,
            baseline=f"the 64-byte budget (PUBACK back {down:.0f} B; each fix's window "
            f"{each[0]}..{each[-1]} B, median {each[len(each) // 2]}; protocol 2's JSON payload"
            f" alone was {json_len} B)",
            target=1.0,
            higher_is_better=False,
        )
        batch = SpoolSettings().batch_s  # the shipped default: one-minute batches
        per_fix, segs = backfill_bytes_per_fix(lab, batch, 10 * batch)
        report.figure(
            GROUP,
            "backfill-bytes-per-fix",
            per_fix,
            "bytes per GPS fix all-in",
            ratio=per_fix / 16,
            baseline=f"the 16-byte budget ({segs} segments of {batch} s, the shipped "
            "spool.batch_s)",
            target=1.0,
            higher_is_better=False,
        )
        per_fix300, segs300 = backfill_bytes_per_fix(lab, 300, 3600)
        report.info(
            GROUP,
            "backfill-bytes-per-fix-300s",
            per_fix300,
            "bytes per GPS fix all-in",
            f"five-minute batches ({segs300} segments, spool.batch_s = 300): a segment's fixed "
            "cost (its manifest, signature, acknowledgement, TLS and MQTT) paid a fifth as often",
        )
        theirs, parts = jt808_bytes(truck_hour.hour())
        for batch_s, name in ((float(batch), "bytes-per-hour"), (300.0, "bytes-per-hour-300s")):
            hour = truck_bytes_per_hour(lab, speedup, batch_s)
            ours = hour.up + hour.down
            note = (
                f"up {hour.up}, down {hour.down}: {hour.live} live fixes, {hour.kept} kept in "
                f"{hour.segments} segments of {batch_s:g} s, {hour.statuses} heartbeats, "
                f"{hour.connections} connection(s), played {speedup:g}x faster"
            )
            if batch_s == batch:
                report.figure(
                    GROUP,
                    name,
                    ours,
                    "bytes/hour",
                    ratio=ours / theirs,
                    baseline=f"JT/T 808 for the same reports {theirs} B/hour",
                    target=1.0,
                    higher_is_better=False,
                )
                report.info(GROUP, "bytes-per-hour-ours", ours, "bytes/hour", note)
            else:
                report.info(
                    GROUP, name, ours, "bytes/hour", f"{ours / theirs:.3g} of JT/T 808; {note}"
                )
        report.info(
            GROUP,
            "bytes-per-hour-jt808",
            theirs,
            "bytes/hour",
            ", ".join(f"{k} {v}" for k, v in parts.items()),
        )
        cell = cellular_drain(lab, 200, 6)
        report.figure(
            GROUP,
            "cellular-utilisation",
            cell.utilisation,
            "of 20 Mbit/s upstream",
            ratio=cell.utilisation,
            baseline=f"the link's capacity (80 ms RTT, {cell.stall_share:.1%} of the time "
            f"stalled by loss, excluded; segments alone {cell.goodput:.3f} of it; drained in "
            f"{cell.seconds:.1f} s)",
            target=0.85,
        )
        if cell.live_ms:
            lat = cell.live_ms
            report.info(
                GROUP,
                "cellular-live-p99",
                lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "ms",
                f"a live fix every 200 ms during that drain (p50 {lat[len(lat) // 2]:.0f} ms, "
                f"{len(lat)} fixes; the link's RTT alone is 80 ms)",
            )
    finally:
        if lab is not None:
            lab.stop.set()
            lab.ingest.join(10)
            lab.broker.kill()
        shutil.rmtree(work, ignore_errors=True)
