"""A simulated fleet on this machine: ``make bench B=fleet``.

Separate ``edge-agent run`` processes, as on real devices: tracker agents (replayed GPS at
1 Hz, a live fix every second, GPS batches every 10 s) added in stages of 10, 50 and 100, then
5 body cameras (synthetic camera, continuous recording) beside the 100 trackers; one mosquitto
with mutual TLS; two ``edge-agent ingest`` workers sharing one ``$share`` subscription and one
store. At each stage, over a fixed window:

- per-agent CPU (% of one core) and RSS, from /proc;
- the broker's CPU and RSS, and messages in and out per second (its ``$SYS`` counters);
- what the ingest workers stored per second, and their CPU;
- live-lane latency: each agent's heartbeat (``live/status``) carries the time it was built
  (``updated_utc``); a platform-side client on the same clock takes the difference on arrival.

Figures compare with budgets, not with an earlier run: RSS per tracker against the 40 MB
budget, live p99 against 100 ms, CPU per tracker against 2 % of one core here (a Raspberry Pi
Zero 2 W core is several times slower), and growth from 10 to 100 devices against linear.
Everything started is stopped at the end (process groups), whatever happens.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import agent
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki, make_pki
from agent.labs.nmea import truck_log
from agent.storage.keys import init_device_keys, init_platform_keys
from bench import Reporter
from bench.common import child_rss_mb

GROUP = "fleet"
STAGES = (10, 50, 100)
BODYCAMS = 5
WINDOW_S = float(os.environ.get("EDGE_AGENT_FLEET_WINDOW_S", "20"))
RSS_BUDGET_MB = 40.0
LIVE_BUDGET_MS = 100.0
CPU_BUDGET_PCT = 2.0
INGEST2 = "ingest2"
MONITOR = "fleet-monitor"
TICK = os.sysconf("SC_CLK_TCK")
# What a tracker cannot do without, in a bare interpreter: the floor under tracker_rss
# (docs/scale.md "Tracker memory"). (No cryptography serialization package: the agent reads
# its key files without it, agent/storage/keys.py.)
TRACKER_LIBRARIES = (
    "import argparse, dataclasses, hashlib, json, logging, sqlite3, ssl, tomllib\n"
    "import paho.mqtt.client, tenacity\n"
    "from cryptography.hazmat.primitives.asymmetric import ed25519, x25519\n"
    "from cryptography.hazmat.primitives.ciphers import aead\n"
    "from cryptography.hazmat.primitives.kdf import hkdf\n"
)


# --------------------------------------------------------------------------- as deployed

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def unit_environment(*units: Path) -> dict[str, str]:
    """The ``Environment=`` assignments of systemd unit files (later ones win), as systemd
    reads them: space-separated, each optionally quoted."""
    env: dict[str, str] = {}
    for unit in units:
        for raw in unit.read_text().splitlines():
            line = raw.strip()
            if line.startswith("Environment="):
                for item in shlex.split(line.removeprefix("Environment=")):
                    key, sep, value = item.partition("=")
                    if sep:
                        env[key] = value
    return env


# Every agent runs with the unit's environment (deploy/edge-agent.service), a tracker also
# with the tracker profile's drop-in (deploy/edge-agent-tracker.conf, which install.sh installs
# for that profile only): the allocator settings there are part of the figure.
AGENT_ENV = unit_environment(DEPLOY / "edge-agent.service")
TRACKER_ENV = unit_environment(DEPLOY / "edge-agent.service", DEPLOY / "edge-agent-tracker.conf")


def compile_agent() -> None:
    """The agent's bytecode, as on a device: install.sh installs the package with pip, which
    writes it, and the unit's PYTHONDONTWRITEBYTECODE=1 means an agent never writes it
    itself. Without it here (an editable checkout run with PYTHONDONTWRITEBYTECODE set),
    every tracker would compile its ~100 modules from source at start, ~2.4 MB more RSS."""
    compileall.compile_dir(Path(agent.__file__).parent, quiet=1)


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def spawn(name: str, args: list[str], log: Path, env: dict[str, str]) -> Child:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Child(name, proc)


def stop_all(children: list[Child]) -> None:
    for c in children:
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for c in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(5)


# --------------------------------------------------------------------------- monitor


@dataclass
class Monitor:
    """Platform-side client: heartbeat latency, live fixes, the broker's $SYS counters."""

    latencies_ms: list[tuple[float, float]] = field(default_factory=list)  # (arrival, ms)
    fixes: list[float] = field(default_factory=list)
    sys: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        topic = msg.topic
        with self.lock:
            if topic.startswith("$SYS/"):
                with contextlib.suppress(ValueError):
                    self.sys[topic] = float(msg.payload.split()[0])
            elif topic.endswith("/live/fix"):
                self.fixes.append(now)
            elif topic.endswith("/live/status"):
                try:
                    sent = float(json.loads(msg.payload)["updated_utc"])
                except (ValueError, KeyError, TypeError):
                    return
                self.latencies_ms.append((now, (now - sent) * 1000))

    def counters(self) -> tuple[float, float]:
        with self.lock:
            return (
                self.sys.get("$SYS/broker/messages/received", 0.0),
                self.sys.get("$SYS/broker/messages/sent", 0.0),
            )


def start_monitor(pki: Pki, port: int, mon: Monitor) -> mqtt.Client:
    c = pki.client(MONITOR)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=MONITOR, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(pki.ca), certfile=str(c.cert), keyfile=str(c.key))
    client.on_message = mon.on_message

    def on_connect(cl: mqtt.Client, *_a: Any) -> None:
        cl.subscribe(
            [
                ("devices/+/live/status", 0),
                ("devices/+/live/fix", 0),
                ("$SYS/broker/messages/received", 0),
                ("$SYS/broker/messages/sent", 0),
            ]
        )

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


# --------------------------------------------------------------------------- the fleet


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: list[Child] = []
        self.trackers: list[Child] = []
        self.bodycams: list[Child] = []
        self.ingests: list[Child] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        init_platform_keys(root / "platform")
        self.pki = make_pki(root / "pki", identities=(INGEST_IDENTITY, INGEST2, MONITOR))
        self.broker = Mosquitto(
            root / "broker",
            self.pki,
            ingest_identities=(INGEST_IDENTITY, INGEST2, MONITOR),
            extra="sys_interval 1",
        )
        # The monitor (last in the ACL) may also read the broker's own counters.
        self.broker.acl.write_text(self.broker.acl.read_text() + "topic read $SYS/#\n")
        g = time.gmtime()
        self.nmea = root / "drive.nmea"
        self.nmea.write_bytes(
            truck_log(900, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
        )

    def start_platform(self) -> None:
        self.broker.start()
        for ident in (INGEST_IDENTITY, INGEST2):
            c = self.pki.client(ident)
            child = spawn(
                ident,
                [
                    sys.executable, "-m", "agent.cli", "ingest",
                    "--store", str(self.root / "store"),
                    "--broker", f"127.0.0.1:{self.broker.port}",
                    "--ca", str(self.pki.ca), "--cert", str(c.cert), "--cert-key", str(c.key),
                    "--client-id", ident, "--group", "fleet",
                    "--platform-key", str(self.root / "platform" / "platform.key"),
                    "--trust-on-first-use",
                ],
                self.root / f"{ident}.log",
                self.env,
            )  # fmt: skip
            self.ingests.append(child)
            self.children.append(child)

    def _config(self, device: str, kind: str) -> Path:
        d = self.root / "devices" / device
        init_device_keys(d / "keys")
        cert = self.pki.issue(device)
        common = f"""
[keys]
device_key = "{d}/keys/device.key"
platform_public = "{self.root}/platform/platform.pub"
[spool]
dir = "{d}/spool"
reserve_mb = 0
batch_s = 10
[uplink]
enabled = true
host = "127.0.0.1"
port = {self.broker.port}
ca = "{self.pki.ca}"
cert = "{cert.cert}"
key = "{cert.key}"
keepalive_s = 30
state_dir = "{d}/uplink"
[gps]
source = "replay"
replay_file = "{self.nmea}"
replay_speed = 1.0
replay_loop = true
[gps.strategy]
interval_s = 1.0
stopped_interval_s = 1.0
[health]
heartbeat_s = 5.0
status_file = "{d}/status.json"
control_socket = "{d}/control.sock"
"""
        if kind == "tracker":
            body = f'[device]\nid = "{device}"\nprofile = "tracker"\n' + common
        else:
            body = (
                f'[device]\nid = "{device}"\nprofile = "bodycam"\n'
                + common
                + """
[video]
enabled = true
source = "synthetic"
mode = "continuous"
width = 320
height = 180
fps = 10
segment_s = 5
prebuffer_s = 0
"""
            )
        cfg = d / "agent.toml"
        cfg.write_text(body)
        return cfg

    def add(self, kind: str, n: int) -> None:
        group = self.trackers if kind == "tracker" else self.bodycams
        env = {**self.env, **(TRACKER_ENV if kind == "tracker" else AGENT_ENV)}
        for _ in range(n):
            device = f"{'trk' if kind == 'tracker' else 'cam'}-{len(group):04d}"
            cfg = self._config(device, kind)
            child = spawn(
                device,
                [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                cfg.parent / "agent.log",
                env,
            )
            group.append(child)
            self.children.append(child)

    def wait_started(self, limit: float = 180) -> None:
        deadline = time.monotonic() + limit
        for c in self.trackers + self.bodycams:
            sock = self.root / "devices" / c.name / "control.sock"
            while not sock.exists():
                if c.proc.poll() is not None:
                    raise RuntimeError(f"{c.name} exited; see its agent.log")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{c.name} did not start in {limit:.0f} s")
                time.sleep(0.2)

    def stored(self) -> int:
        return sum(1 for _ in (self.root / "store").glob("*/seg/*/*.seg"))

    def close(self) -> None:
        stop_all(self.children)
        self.broker.kill()


@dataclass
class Stage:
    devices: int
    tracker_cpu_pct: float
    tracker_rss_mb: float
    tracker_rss_max_mb: float
    cam_cpu_pct: float
    cam_rss_mb: float
    broker_cpu_pct: float
    broker_rss_mb: float
    ingest_cpu_pct: float
    msgs_in_per_s: float
    msgs_out_per_s: float
    stored_per_s: float
    fixes_per_s: float
    live_p50_ms: float
    live_p99_ms: float
    samples: int


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(fleet: Fleet, mon: Monitor, window: float) -> Stage:
    time.sleep(3)  # let the newly started settle (first connection, key record)
    procs = fleet.trackers + fleet.bodycams + fleet.ingests
    broker_pid = fleet.broker.proc.pid if fleet.broker.proc else 0
    cpu0 = {c.pid: cpu_seconds(c.pid) for c in procs}
    b0 = cpu_seconds(broker_pid)
    m0 = mon.counters()
    s0 = fleet.stored()
    t0 = time.time()
    time.sleep(window)
    t1 = time.time()
    dt = t1 - t0
    m1 = mon.counters()
    s1 = fleet.stored()

    def cpu(c: Child) -> float:
        return (cpu_seconds(c.pid) - cpu0[c.pid]) / dt * 100

    trk_cpu = [cpu(c) for c in fleet.trackers]
    trk_rss = [rss_mb(c.pid) for c in fleet.trackers]
    cam_cpu = [cpu(c) for c in fleet.bodycams]
    cam_rss = [rss_mb(c.pid) for c in fleet.bodycams]
    with mon.lock:
        lat = [ms for at, ms in mon.latencies_ms if t0 <= at <= t1]
        fixes = sum(1 for at in mon.fixes if t0 <= at <= t1)
    return Stage(
        devices=len(fleet.trackers) + len(fleet.bodycams),
        tracker_cpu_pct=statistics.fmean(trk_cpu) if trk_cpu else 0.0,
        tracker_rss_mb=statistics.fmean(trk_rss) if trk_rss else 0.0,
        tracker_rss_max_mb=max(trk_rss, default=0.0),
        cam_cpu_pct=statistics.fmean(cam_cpu) if cam_cpu else 0.0,
        cam_rss_mb=statistics.fmean(cam_rss) if cam_rss else 0.0,
        broker_cpu_pct=(cpu_seconds(broker_pid) - b0) / dt * 100,
        broker_rss_mb=rss_mb(broker_pid),
        ingest_cpu_pct=sum(cpu(c) for c in fleet.ingests),
        msgs_in_per_s=(m1[0] - m0[0]) / dt,
        msgs_out_per_s=(m1[1] - m0[1]) / dt,
        stored_per_s=(s1 - s0) / dt,
        fixes_per_s=fixes / dt,
        live_p50_ms=_pct(lat, 0.50),
        live_p99_ms=_pct(lat, 0.99),
        samples=len(lat),
    )


def _print_stage(report: Reporter, s: Stage, tag: str) -> None:
    report.info(
        GROUP,
        f"{tag}_summary",
        s.devices,
        "devices",
        f"tracker {s.tracker_cpu_pct:.2f} % CPU / {s.tracker_rss_mb:.1f} MB RSS"
        + (f", bodycam {s.cam_cpu_pct:.1f} % / {s.cam_rss_mb:.0f} MB" if s.cam_rss_mb else "")
        + f"; broker {s.broker_cpu_pct:.1f} % / {s.broker_rss_mb:.1f} MB, "
        f"{s.msgs_in_per_s:.0f} msg/s in, {s.msgs_out_per_s:.0f} out; ingest x2 "
        f"{s.ingest_cpu_pct:.1f} % CPU, {s.stored_per_s:.2f} segments/s; "
        f"{s.fixes_per_s:.0f} live fixes/s; live p50 {s.live_p50_ms:.1f} ms, "
        f"p99 {s.live_p99_ms:.1f} ms ({s.samples} heartbeats)",
    )


def run(report: Reporter) -> None:
    compile_agent()
    root = Path(tempfile.mkdtemp(prefix="edge-agent-fleet-"))
    fleet = Fleet(root)
    client: mqtt.Client | None = None
    stages: list[Stage] = []
    try:
        fleet.start_platform()
        mon = Monitor()
        client = start_monitor(fleet.pki, fleet.broker.port, mon)
        for n in STAGES:
            t = time.monotonic()
            fleet.add("tracker", n - len(fleet.trackers))
            fleet.wait_started()
            report.info(GROUP, f"start_{n}", time.monotonic() - t, "s", "to start the new agents")
            stages.append(measure(fleet, mon, WINDOW_S))
            _print_stage(report, stages[-1], f"trackers_{n}")
        fleet.add("bodycam", BODYCAMS)
        fleet.wait_started()
        full = measure(fleet, mon, WINDOW_S)
        _print_stage(report, full, f"trackers_{STAGES[-1]}_bodycams_{BODYCAMS}")
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)
    _figures(report, stages, full)
    floor = child_rss_mb(TRACKER_LIBRARIES, env={**os.environ, **TRACKER_ENV})
    report.info(
        GROUP, "tracker_rss_floor", floor, "MB",
        "a bare interpreter holding only the tracker's libraries (ssl, sqlite3, cryptography, "
        f"paho, tenacity) in the tracker's environment, this run; the agent adds "
        f"{full.tracker_rss_mb - floor:.1f} MB",
    )  # fmt: skip


def _figures(report: Reporter, stages: list[Stage], full: Stage) -> None:
    first, last = stages[0], stages[-1]
    report.figure(
        GROUP, "tracker_rss", full.tracker_rss_mb, "MB",
        ratio=full.tracker_rss_mb / RSS_BUDGET_MB,
        baseline=f"{RSS_BUDGET_MB:.0f} MB budget; trackers run as the unit runs them: its "
        "environment and the tracker drop-in's (deploy/edge-agent-tracker.conf: glibc "
        "allocator tunables), bytecode compiled as pip does at install",
        target=1.0, higher_is_better=False,
    )  # fmt: skip
    report.figure(
        GROUP, "tracker_rss_max", full.tracker_rss_max_mb, "MB",
        ratio=full.tracker_rss_max_mb / RSS_BUDGET_MB,
        baseline=f"{RSS_BUDGET_MB:.0f} MB budget", target=1.0, higher_is_better=False,
    )  # fmt: skip
    report.figure(
        GROUP, "tracker_cpu", full.tracker_cpu_pct, "% of a core",
        ratio=full.tracker_cpu_pct / CPU_BUDGET_PCT, baseline=f"{CPU_BUDGET_PCT:g} % budget",
        target=1.0, higher_is_better=False,
    )  # fmt: skip
    report.info(GROUP, "bodycam_cpu", full.cam_cpu_pct, "% of a core", "320x180 at 10 fps")
    report.info(GROUP, "bodycam_rss", full.cam_rss_mb, "MB")
    for name, value in (("live_p50", full.live_p50_ms), ("live_p99", full.live_p99_ms)):
        report.figure(
            GROUP, name, value, "ms",
            ratio=value / LIVE_BUDGET_MS, baseline=f"{LIVE_BUDGET_MS:.0f} ms",
            target=1.0, higher_is_better=False,
        )  # fmt: skip
    expected = float(full.devices)  # one live fix per device per second
    report.figure(
        GROUP, "live_fixes", full.fixes_per_s, "fixes/s",
        ratio=full.fixes_per_s / expected, baseline=f"{expected:.0f}/s offered (1 Hz each)",
        target=0.9,
    )  # fmt: skip
    report.info(GROUP, "broker_in", full.msgs_in_per_s, "msg/s")
    report.info(GROUP, "broker_out", full.msgs_out_per_s, "msg/s")
    report.info(GROUP, "ingest_stored", full.stored_per_s, "segments/s", "two workers, $share")
    growth = last.devices / first.devices
    for name, a, b in (
        ("broker_cpu_growth", first.broker_cpu_pct, last.broker_cpu_pct),
        ("ingest_cpu_growth", first.ingest_cpu_pct, last.ingest_cpu_pct),
        ("tracker_cpu_growth", first.tracker_cpu_pct * first.devices,
         last.tracker_cpu_pct * last.devices),
    ):  # fmt: skip
        r = (b / a) if a > 0 else float("inf")
        report.figure(
            GROUP, name, r, f"x from {first.devices} to {last.devices} trackers",
            ratio=r / growth, baseline=f"linear ({growth:.0f}x)", target=1.5,
            higher_is_better=False,
        )  # fmt: skip
    report.info(
        GROUP, "live_p99_growth", last.live_p99_ms / first.live_p99_ms,
        f"x from {first.devices} to {last.devices} trackers",
    )  # fmt: skip


if __name__ == "__main__":
    r = Reporter()
    run(r)
    sys.exit(1 if r.misses else 0)
