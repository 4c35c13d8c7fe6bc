"""Uplink: drain a backlog into mosquitto + ingest vs raw paho; live-lane latency meanwhile.

- ``uplink/drain``: a spool of 2,000 GPS segments and 200 MiB of 4 MiB video segments, sent
  by the forwarder (chunks, windows, platform acks, spool deletes) through mosquitto (mTLS) to
  ``edge-agent ingest`` (a separate process: reassembles, verifies, chains, stores atomically,
  then acknowledges). Baseline, same run, same broker: raw paho publishing the same chunk
  payloads at QoS 1 (same window), received by ``mosquitto_sub`` (C), no spool, no acks.
- ``uplink/live_p99``: a fix reported every 20 ms while the backlog drains, timed from
  ``report_fix`` to a subscriber's receipt; target p99 under 100 ms.

``EDGE_AGENT_BENCH_SCALE`` (default 1) scales the backlog; ``EDGE_AGENT_BENCH_PLAIN=1`` makes
ingest also decrypt (the store then writes plaintext too).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki, make_pki
from agent.model import Fix, FixMode
from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_public,
    load_signing_key,
)
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool
from agent.uplink import protocol as proto
from agent.uplink.mqtt import LinkConfig, MqttLink, tls_context
from agent.uplink.service import Uplink
from agent.uplink.settings import UplinkSettings
from bench import Reporter

GROUP = "uplink"
MIB = 1024 * 1024
DEVICE = "truck-1"
CHUNK = 128 * 1024


def _fill(spool: Spool, gps: int, videos: int) -> list[Path]:
    for i in range(gps):
        spool.put_bytes("gps", (b'{"i":%d,"lat":52.52,"lon":13.40,"speed":8.1}\n' % i) * 12)
    block = os.urandom(MIB)
    for _ in range(videos):
        spool.put_bytes("video", block * 4)
    return [i.path for i in spool.items()]


def _chunks(paths: list[Path]) -> list[tuple[str, bytes]]:
    topics = proto.Topics(DEVICE)
    out: list[tuple[str, bytes]] = []
    for path in paths:
        data = path.read_bytes()
        stream = path.parent.name
        for off in range(0, len(data), CHUNK):
            h = proto.ChunkHeader(stream, int(path.stem), "b", "0" * 64, len(data), off)
            out.append((topics.segment(stream), proto.encode_chunk(h, data[off : off + CHUNK])))
    return out


def _baseline(m: Mosquitto, pki: Pki, chunks: list[tuple[str, bytes]], window: int) -> float:
    """Seconds for raw paho to publish every chunk at QoS 1 until a subscriber has them all."""
    ing = pki.client(INGEST_IDENTITY)
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(m.port),
            "--cafile",
            str(pki.ca),
            "--cert",
            str(ing.cert),
            "--key",
            str(ing.key),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            # The device's own chunk topics (the shipped ACL allows it no other): no ingest is
            # subscribed yet, so only this subscriber takes them.
            f"devices/{DEVICE}/up/seg/#",
            "-C",
            str(len(chunks)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dev = pki.client(DEVICE)
    cfg = LinkConfig("127.0.0.1", m.port, DEVICE, pki.ca, dev.cert, dev.key)
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=MQTTProtocolVersion.MQTTv5
    )
    c.tls_set_context(tls_context(cfg))
    c.max_inflight_messages_set(window)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", m.port)
    c.loop_start()
    time.sleep(0.5)  # let the subscriber subscribe
    t0 = time.perf_counter()
    infos = [c.publish(t, p, qos=1) for t, p in chunks]
    for info in infos:
        info.wait_for_publish(60)
    sub.wait(300)
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return elapsed


def _latencies(m: Mosquitto, pki: Pki, stop: threading.Event) -> tuple[MqttLink, list[float]]:
    ing = pki.client("ingest-live")
    cfg = LinkConfig(
        "127.0.0.1", m.port, "ingest-live", pki.ca, ing.cert, ing.key, session_expiry_s=0
    )
    link = MqttLink(cfg, stop)
    q = link.route(f"devices/{DEVICE}/live/fix", qos=1)
    out: list[float] = []

    def consume() -> None:
        while not stop.is_set():
            try:
                msg = q.get(timeout=0.2)
            except Exception:
                continue
            now = time.time()
            t = json.loads(msg.payload)["time"]
            sent = datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
            out.append((now - sent) * 1000)
            link.ack(msg)

    link.start()
    threading.Thread(target=consume, daemon=True).start()
    return link, out


def run(report: Reporter) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("bench uplink: mosquitto not installed; skipped")
        return
    scale = float(os.environ.get("EDGE_AGENT_BENCH_SCALE", "1"))
    gps_n, videos = max(1, int(2000 * scale)), max(1, int(50 * scale))
    work = Path(tempfile.mkdtemp(prefix="bench-uplink-"))
    m: Mosquitto | None = None
    ingest: subprocess.Popen[bytes] | None = None
    try:
        pki = make_pki(work / "pki", (DEVICE, INGEST_IDENTITY, "ingest-live"))
        m = Mosquitto(work / "mq", pki, ingest_identities=(INGEST_IDENTITY, "ingest-live"))
        m.start()
        init_device_keys(work / "keys")
        init_platform_keys(work / "plat")
        sealer = Sealer(
            device_id=DEVICE,
            boot_id="bench",
            signing_key=load_signing_key(work / "keys" / "device.key"),
            platform_public=load_platform_public(work / "plat" / "platform.pub"),
            settings=SealSettings(),
        )
        spool = Spool(SpoolSettings(dir=work / "spool", evidence_quota_mb=4096), sealer)
        paths = _fill(spool, gps_n, videos)
        total = sum(p.stat().st_size for p in paths)
        settings = UplinkSettings(
            enabled=True,
            port=m.port,
            ca=pki.ca,
            cert=pki.client(DEVICE).cert,
            key=pki.client(DEVICE).key,
            state_dir=work / "state",
            platform_window_kib=int(os.environ.get("EDGE_AGENT_BENCH_PWIN_KIB", "8192")),
        )
        base_s = _baseline(m, pki, _chunks(paths), settings.window)

        ing = pki.client(INGEST_IDENTITY)
        cmd = [
            sys.executable,
            *os.environ.get("EDGE_AGENT_BENCH_PY", "").split(),
            "-m",
            "agent.cli",
            "ingest",
            "--store",
            str(work / "store"),
            "--broker",
            f"127.0.0.1:{m.port}",
            "--ca",
            str(pki.ca),
            "--cert",
            str(ing.cert),
            "--cert-key",
            str(ing.key),
            "--trust-on-first-use",
        ]
        plain = os.environ.get("EDGE_AGENT_BENCH_PLAIN") == "1"
        if plain:
            cmd += ["--platform-key", str(work / "plat" / "platform.key")]
        ingest = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        live_link, lat = _latencies(m, pki, stop)
        up = Uplink(settings, device_id=DEVICE, boot_id="bench", spool=spool, stop=stop)
        while not live_link.connected:
            stop.wait(0.05)
        stop.wait(1.0)  # ingest connects
        up.start()
        while not up.link.connected:
            stop.wait(0.01)

        def fixes() -> None:
            while not stop.wait(0.02):
                up.forwarder.report_fix(Fix(time=time.time(), mode=FixMode.FIX_3D, lat=1, lon=2))

        t0 = time.perf_counter()
        threading.Thread(target=fixes, daemon=True).start()
        while spool.items():
            stop.wait(0.05)
        ours_s = time.perf_counter() - t0
        stop.set()
        up.join()
        live_link.join()
        spool.close()

        mib = total / MIB
        report.figure(
            GROUP,
            "drain",
            mib / ours_s,
            "MiB/s",
            ratio=base_s / ours_s,
            baseline="raw paho QoS1 to mosquitto_sub, no spool/acks",
            target=0.7,
        )
        report.info(
            GROUP,
            "drain_backlog",
            mib,
            "MiB",
            f"{gps_n} gps + {videos} x 4 MiB video, ours {ours_s:.1f} s vs raw {base_s:.1f} s"
            f"{', ingest decrypts' if plain else ', ingest verifies+stores sealed'}",
        )
        if lat:
            lat.sort()
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            report.info(GROUP, "live_p50", p50, "ms", f"{len(lat)} fixes during the drain")
            report.figure(
                GROUP,
                "live_p99",
                p99,
                "ms",
                ratio=p99 / 100.0,
                baseline="the 100 ms budget",
                target=1.0,
                higher_is_better=False,
            )
    finally:
        if ingest is not None:
            ingest.terminate()
            ingest.wait(10)
        if m is not None:
            m.kill()
        if os.environ.get("EDGE_AGENT_BENCH_KEEP") == "1":
            print(f"bench uplink: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
