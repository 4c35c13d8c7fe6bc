"""Uplink: drain a backlog into mosquitto + ingest vs raw paho; CPU on both ends; live lane.

One backlog, sealed once: 2,000 GPS segments (one-minute batches of delta-coded fixes, as a
tracker writes them) and 50 x 4 MiB video segments. Every party runs in its own process, so
each one's CPU is its own (``bench/uplink_child.py``):

- ``uplink/drain``: the agent's uplink (forwarder: bundles of small segments, chunks of large
  ones, windows, the platform's signed acknowledgements, spool deletes) in a device process,
  through mosquitto (mTLS), to ``edge-agent ingest`` (a separate process: reassembles,
  verifies, chains, stores durably, then acknowledges); wall time until the last segment is
  acknowledged. Baseline, same run, same broker, same bytes: raw paho in a process of its
  own publishing the segments' bytes as chunk payloads at QoS 1 (same window) to
  ``mosquitto_sub`` (C): no spool, no platform, no acknowledgements.
- ``uplink/device-cpu-per-mib``: CPU seconds (all threads) of the device process per MiB
  drained, against the raw paho process's per MiB of the same bytes (target <= 1.5x).
- ``uplink/ingest-cpu-per-segment``: the ingest process's CPU per GPS segment (sampled from
  /proc when the last GPS segment is stored; the forwarder sends streams by priority, GPS
  first) and per MiB of video after it: the platform's capacity (docs/scale.md).
- ``uplink/live_p99``: a fix reported every 20 ms while the backlog drains, timed from the
  fix's time to a subscriber's receipt; target p99 under 100 ms.

``EDGE_AGENT_BENCH_SCALE`` (default 1) scales the backlog; ``EDGE_AGENT_BENCH_PLAIN=1`` makes
ingest also decrypt (the store then writes plaintext too); ``EDGE_AGENT_BENCH_PY`` adds
interpreter arguments to the ingest (e.g. a profiler); ``EDGE_AGENT_BENCH_DIR`` (default
``/var/tmp``) is where the spool and the store go (docs/scale.md: on a journal-less ext4 a
directory full of recently deleted files makes each file created cost far more).
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
from typing import Any

from agent.gps import fixdelta
from agent.gps.wire import encode_fix
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki, make_pki
from agent.model import Fix, FixMode
from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_public,
    load_signing_key,
)
from agent.storage.records import RecordLog
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool
from agent.uplink import protocol as proto
from agent.uplink.mqtt import LinkConfig, MqttLink
from bench import Reporter
from bench.bench_fleet import cpu_seconds

GROUP = "uplink"
MIB = 1024 * 1024
DEVICE = "truck-1"
CHUNK = 128 * 1024
REPO = Path(__file__).resolve().parents[1]


def bench_dir() -> str:
    """Where the spool and the platform's store go: a real disk, not tmpfs (``/var/tmp``, or
    ``EDGE_AGENT_BENCH_DIR``)."""
    return os.environ.get("EDGE_AGENT_BENCH_DIR", "/var/tmp")


def gps_batch(i: int, n: int = 60) -> list[bytes]:
    """One minute of a truck's 1 Hz fixes (the i-th minute of its drive)."""
    t0 = 1_750_000_000 + 60 * i
    return [
        encode_fix(
            Fix(
                time=t0 + k,
                mode=FixMode.FIX_3D,
                lat=22.54 + (60 * i + k) * 8e-5,
                lon=113.95 + ((60 * i + k) % 300) * 3e-5,
                alt=12.0 + (k % 5) * 0.1,
                speed=8.0 + (k % 7) * 0.3,
                track=float((k * 3) % 360),
                quality=1,
                sats_used=12,
                hdop=0.9,
            )
        )
        for k in range(n)
    ]


def fill(spool: Spool, gps: int, videos: int) -> list[Path]:
    """GPS batches as the GPS service seals them (delta-coded), then 4 MiB videos."""
    log = RecordLog(
        spool,
        "gps",
        content_type=fixdelta.CONTENT_TYPE,
        pack=fixdelta.encode_batch,
        record_type="application/x-edge-fix",
        batch_max_records=1000,
    )
    for i in range(gps):
        for rec in gps_batch(i):
            log.append(rec, durable=False)
        log.roll()
    block = os.urandom(MIB)
    for _ in range(videos):
        spool.put_bytes("video", block * 4)
    return [i.path for i in spool.items()]


def chunks_of(device: str, paths: list[Path], chunk: int) -> list[tuple[str, bytes]]:
    """The segments' bytes as the forwarder's chunk payloads (one chunk per small segment)."""
    topics = proto.Topics(device)
    out: list[tuple[str, bytes]] = []
    for path in paths:
        data = path.read_bytes()
        stream = path.parent.name
        for off in range(0, len(data), chunk):
            h = proto.ChunkHeader(stream, int(path.stem), "b", "0" * 64, len(data), off)
            out.append((topics.segment(stream), proto.encode_chunk(h, data[off : off + chunk])))
    return out


def _child_args(mode: str) -> list[str]:
    """``-m bench.uplink_child``, or ``EDGE_AGENT_BENCH_CHILD_<MODE>`` (a script to run in
    its place, e.g. one that profiles it)."""
    script = os.environ.get(f"EDGE_AGENT_BENCH_CHILD_{mode.upper()}")
    return [script] if script else ["-m", "bench.uplink_child"]


def child(mode: str, cfg: dict[str, Any], work: Path) -> subprocess.Popen[str]:
    path = work / f"{mode}.json"
    path.write_text(json.dumps(cfg))
    return subprocess.Popen(
        [sys.executable, *_child_args(mode), mode, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def result(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, float]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed ({proc.returncode}): {out[-500:]}")
    data: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return data


def baseline(
    m: Mosquitto, pki: Pki, paths: list[Path], window: int, work: Path
) -> tuple[float, float, int]:
    """(wall s, CPU s of the publishing process, messages) for raw paho to publish every chunk
    at QoS 1 until a subscriber has them all."""
    n = len(chunks_of(DEVICE, paths, CHUNK))
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
            str(n),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dev = pki.client(DEVICE)
    time.sleep(0.5)  # let the subscriber subscribe
    raw = child(
        "raw",
        {
            "device": DEVICE,
            "paths": [str(p) for p in paths],
            "chunk": CHUNK,
            "port": m.port,
            "ca": str(pki.ca),
            "cert": str(dev.cert),
            "key": str(dev.key),
            "window": window,
        },
        work,
    )
    sub.wait(600)
    done = time.time()
    out = result(raw)
    return max(done - out["t0"], out["wall"]), out["cpu"], n


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
            t = proto.decode_live_fix(msg.payload)["time"]
            sent = datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
            out.append((now - sent) * 1000)
            link.ack(msg)

    link.start()
    threading.Thread(target=consume, daemon=True).start()
    return link, out


class IngestWatch:
    """Samples the ingest process's CPU at the start, when every GPS segment is stored, and
    at the end."""

    def __init__(self, pid: int, gps_dir: Path, gps: int) -> None:
        self.pid = pid
        self.gps_dir = gps_dir
        self.gps = gps
        self.start = cpu_seconds(pid)
        self.at_gps: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                n = sum(1 for _ in os.scandir(self.gps_dir))
            except OSError:
                continue
            if n >= self.gps:
                self.at_gps = cpu_seconds(self.pid)
                return

    def finish(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return cpu_seconds(self.pid)


def run(report: Reporter) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("bench uplink: mosquitto not installed; skipped")
        return
    scale = float(os.environ.get("EDGE_AGENT_BENCH_SCALE", "1"))
    gps_n = max(1, int(2000 * scale))
    videos = int(os.environ.get("EDGE_AGENT_BENCH_VIDEOS", max(1, int(50 * scale))))
    work = Path(tempfile.mkdtemp(prefix="bench-uplink-", dir=bench_dir()))
    m: Mosquitto | None = None
    ingest: subprocess.Popen[bytes] | None = None
    device: subprocess.Popen[str] | None = None
    stop = threading.Event()
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
        paths = fill(spool, gps_n, videos)
        spool.close()
        total = sum(p.stat().st_size for p in paths)
        gps_bytes = sum(p.stat().st_size for p in paths if p.parent.name == "gps")
        window = 8
        base_s, base_cpu, messages = baseline(m, pki, paths, window, work)

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
        ingest = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        live_link, lat = _latencies(m, pki, stop)
        while not live_link.connected:
            stop.wait(0.05)
        stop.wait(1.5)  # the ingest connects and subscribes
        dev = pki.client(DEVICE)
        watch = IngestWatch(ingest.pid, work / "store" / DEVICE / "seg" / "gps", gps_n)
        device = child(
            "device",
            {
                "device": DEVICE,
                "device_key": str(work / "keys" / "device.key"),
                "platform_pub": str(work / "plat" / "platform.pub"),
                "spool": str(work / "spool"),
                "uplink": {
                    "enabled": True,
                    "port": m.port,
                    "ca": str(pki.ca),
                    "cert": str(dev.cert),
                    "key": str(dev.key),
                    "state_dir": str(work / "state"),
                    "window": window,
                },
            },
            work,
        )
        out = result(device)
        device = None
        ingest_end = watch.finish()
        ours_s, ours_cpu = out["wall"], out["cpu"]
        stop.set()
        live_link.join(5)

        mib = total / MIB
        report.figure(
            GROUP,
            "drain",
            mib / ours_s,
            "MiB/s",
            ratio=base_s / ours_s,
            baseline=f"raw paho QoS1 to mosquitto_sub, no spool/acks {mib / base_s:.1f} MiB/s",
            target=0.7,
        )
        report.info(
            GROUP,
            "drain_backlog",
            mib,
            "MiB",
            f"{gps_n} gps + {videos} x 4 MiB video, ours {ours_s:.2f} s vs raw {base_s:.2f} s"
            f" ({messages} messages), ingest {'decrypts' if plain else 'verifies+stores sealed'}",
        )
        per_mib, raw_per_mib = ours_cpu / mib, base_cpu / mib
        report.figure(
            GROUP,
            "device-cpu-per-mib",
            per_mib * 1000,
            "ms CPU/MiB",
            ratio=per_mib / raw_per_mib,
            baseline=f"raw paho publishing the same bytes {raw_per_mib * 1000:.1f} ms/MiB",
            target=1.5,
            higher_is_better=False,
        )
        if watch.at_gps is not None:
            gps_cpu = watch.at_gps - watch.start
            video_cpu = ingest_end - watch.at_gps
            video_mib = (total - gps_bytes) / MIB
            per_seg = gps_cpu / gps_n
            report.info(
                GROUP,
                "ingest-cpu-per-segment",
                per_seg * 1000,
                "ms CPU per GPS segment",
                f"one core stores {1 / per_seg:.0f} GPS segments/s; video "
                f"{video_cpu / max(video_mib, 1e-9) * 1000:.1f} ms CPU/MiB "
                f"({'with' if plain else 'without'} decryption)",
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
        stop.set()
        for proc in (device, ingest):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if m is not None:
            m.kill()
        if os.environ.get("EDGE_AGENT_BENCH_KEEP") == "1":
            print(f"bench uplink: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
