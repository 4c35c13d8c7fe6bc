"""The whole system under seeded, randomized faults; the invariants checked at the end.

Parts (all real, each stopped at the end by process group):

- mosquitto with mutual TLS (``agent.labs.broker.Mosquitto``), reached by the agent through a
  ``BlackHole`` TCP proxy (network cuts and flapping);
- the platform's reference ingest, ``edge-agent ingest`` (a subprocess, SIGKILLed and restarted);
- ``edge-agent run`` in the bodycam profile: a camera served over TCP by ffmpeg (a synthetic
  test pattern, like an IP camera: killing ffmpeg is a lost camera), a 440 Hz sine microphone
  (PulseAudio), a GNSS receiver on a pty fed with a replayed truck drive (closing the pty is an
  unplugged receiver), the spool on a small tmpfs (filling it is a full disk);
- a monitor client (its own certificate) on ``devices/<id>/live/fix`` and ``down/ack``.

What the agent seals is copied out of the spool by a watcher as soon as it appears (the spool
deletes a segment once the platform acknowledges it), so the end can compare bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.errors import SourceError
from agent.labs.broker import INGEST_IDENTITY, BlackHole, Mosquitto, free_port, make_pki
from agent.labs.nmea import truck_log
from agent.labs.pulse import PulseServer
from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_private,
    load_verify_key,
)
from agent.storage.verify import verify_paths
from agent.wallclock import OFFSET_FILE_ENV

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DEVICE = "cam-chaos-01"
MONITOR = "monitor"
FAULTS = (
    "net_cut",
    "net_flap",
    "broker_kill",
    "ingest_kill",
    "agent_kill",
    "disk_full",
    "gps_unplug",
    "camera_lost",
    "clock_jump",
)
# Kinds of fault that cannot run here, with the reason (filled at run time: disk_full without
# mount, the microphone without PulseAudio).
NOT_EXERCISED: dict[str, str] = {}
# The clock_jump fault steps the agent's wall clock (agent.wallclock's test hook, an offset
# file) back by an hour, then forward by two hours from the true time, then back to true time.
CLOCK_JUMPS_S = (-3600.0, 7200.0)
# A segment "was sealed during a jump" when its sealed_utc differs from the real time the
# watcher saw it by the jump (within this); its GNSS offset "shows the jump" when
# clock.offset_s (GNSS - system) is within this of minus the jump.
CLOCK_TOLERANCE_S = 3.0
LIVE_RESUME_LIMIT_S = 2.0
# Open bugs the suite reproduces (violation prefix -> the bug). The CI test reports these as
# an expected failure naming the bug; anything else fails it. Remove an entry once fixed.
# Open bugs the invariants may name (prefix of the violation -> the bug); empty: none known.
# (Fixed: the forwarder dying on a full disk when acknowledging, and GPS stopping on the
# first refused batch: tests/chaos/test_disk_full_ack.py.)
KNOWN_BUGS: dict[str, str] = {}


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- processes


class Proc:
    """A child in its own process group, its output appended to a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name, self.args, self.log_path, self.env = name, args, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def terminate(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left in its group
        self.proc = None
        return rc


# --------------------------------------------------------------------------- GNSS on a pty


class GpsPty:
    """A GNSS receiver on a pty: a replayed truck drive at 1 Hz, with the current time.

    ``path`` is a symlink to the pty's slave. ``unplug()`` closes the master (the agent's reads
    fail as on a pulled USB receiver) and removes the link; ``replug()`` makes a new pty.
    """

    def __init__(self, path: Path, stop: threading.Event) -> None:
        self.path = path
        self._stop = stop
        self._lock = threading.Lock()
        self._master: int | None = None
        self._t0 = float(int(time.time()))
        g = time.gmtime(self._t0)
        start = (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
        lines = truck_log(4 * 3600, start=start, header=False).splitlines(keepends=True)
        self._epochs = [b"".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
        self.plugged = False
        self._thread = threading.Thread(target=self._run, name="gps-pty", daemon=True)

    def start(self) -> None:
        self.replug()
        self._thread.start()

    def replug(self) -> None:
        with self._lock:
            master, slave = os.openpty()
            os.set_blocking(master, False)
            name = os.ttyname(slave)
            os.close(slave)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path.symlink_to(name)
            self._master = master
            self.plugged = True

    def unplug(self) -> None:
        with self._lock:
            if self._master is not None:
                os.close(self._master)
                self._master = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.plugged = False

    def _run(self) -> None:
        while not self._stop.wait(1.0 - (time.time() % 1.0)):
            i = int(time.time() - self._t0)
            if i >= len(self._epochs):
                i %= len(self._epochs)
            with self._lock:
                if self._master is None:
                    continue
                with contextlib.suppress(OSError):
                    os.write(self._master, self._epochs[i])

    def close(self) -> None:
        self.unplug()


# --------------------------------------------------------------------------- camera over TCP


class TcpCamera:
    """ffmpeg serving a test pattern as MPEG-TS on a loopback port (one client at a time).

    It exits when its client goes away (an agent SIGKILL), so a supervisor restarts it unless
    the camera is meant to be lost.
    """

    def __init__(self, directory: Path, stop: threading.Event, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.lost = False
        self._stop = stop
        self._proc = Proc(
            "camera",
            [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-re",
                "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10",
                "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts", f"{self.url}?listen=1",
            ],
            directory / "camera.log",
            env,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="camera", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                if not self.lost and not self._proc.alive():
                    self._proc.start()

    def lose(self) -> None:
        with self._lock:
            self.lost = True
            self._proc.kill()

    def restore(self) -> None:
        with self._lock:
            self.lost = False

    def close(self) -> None:
        with self._lock:
            self.lost = True
            self._proc.kill()


# --------------------------------------------------------------------------- watcher


class SealedWatcher:
    """Copies every sealed segment and key record out of the spool as soon as it appears."""

    def __init__(self, spool: Path, archive: Path, stop: threading.Event) -> None:
        self.spool, self.archive, self._stop = spool, archive, stop
        self.seen: set[tuple[str, str]] = set()
        # relative path -> real time (time.time()) when it was first seen
        self.seen_at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sweep(self) -> None:
        for sub in ("seg", "keys"):
            base = self.spool / sub
            with contextlib.suppress(OSError):
                for entry in os.scandir(base):
                    paths = [entry] if entry.is_file() else list(os.scandir(entry.path))
                    for p in paths:
                        rel = os.path.relpath(p.path, self.spool)
                        kind = entry.name if sub == "seg" else "keys"
                        if (kind, rel) in self.seen or not p.name.endswith((".seg", ".key")):
                            continue
                        self.seen_at.setdefault(rel, time.time())
                        dst = self.archive / rel
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            shutil.copyfile(p.path, dst)
                        except OSError:
                            continue  # acknowledged and removed between listing and copying
                        self.seen.add((kind, rel))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sweep()


# --------------------------------------------------------------------------- monitor


class Monitor:
    """A platform-side client: live fixes (arrival times) and the platform's acknowledgements."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path) -> None:
        self.fix_times: list[float] = []
        self.acks: Counter[str] = Counter()
        self.alarms: Counter[str] = Counter()
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=MONITOR, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        c.reconnect_delay_set(0.05, 0.2)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c
        c.connect_async("127.0.0.1", port, keepalive=5)
        c.loop_start()

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(
            [
                (f"devices/{DEVICE}/live/fix", 0),
                (f"devices/{DEVICE}/live/alarm", 1),
                (f"devices/{DEVICE}/down/ack", 0),
            ]
        )

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with self._lock:
            if msg.topic.endswith("/live/fix"):
                self.fix_times.append(now)
            elif msg.topic.endswith("/live/alarm"):
                with contextlib.suppress(ValueError, AttributeError):
                    self.alarms[str(json.loads(msg.payload).get("kind"))] += 1
            else:
                try:
                    ack = json.loads(msg.payload)
                except ValueError:
                    return
                if ack.get("type") == "seg":
                    self.acks[str(ack.get("result"))] += 1
                elif ack.get("type") == "reject":
                    self.acks["reject"] += 1

    def first_fix_after(self, t: float) -> float | None:
        with self._lock:
            later = [x for x in self.fix_times if x >= t]
        return min(later) if later else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- the run


@dataclass
class Result:
    seed: int
    minutes: float
    faults: Counter[str] = field(default_factory=Counter)
    not_exercised: dict[str, str] = field(default_factory=dict)
    live_resume_s: list[float] = field(default_factory=list)
    live_resume_missing: int = 0
    gps_resume_s: list[float] = field(default_factory=list)
    # (wall clock, what came back, seconds to the next live fix or inf)
    resume_log: list[tuple[str, str, float]] = field(default_factory=list)
    thread_deaths: list[str] = field(default_factory=list)
    final_live_s: float | None = None
    sealed: int = 0
    observed: int = 0
    delivered: int = 0
    stored_acks: int = 0
    redelivered: int = 0
    rejected: int = 0
    duplicated: int = 0
    lost: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    chain_problems: list[str] = field(default_factory=list)
    streams: dict[str, int] = field(default_factory=dict)
    evidence_refused: int = 0
    camera_events: Counter[str] = field(default_factory=Counter)
    alarms: dict[str, int] = field(default_factory=dict)
    # Video segments missing inside a recording (its meta.part numbers), by explanation.
    parts_missing: int = 0
    parts_explained_by_event: int = 0
    parts_explained_by_live_alarm_only: int = 0
    parts_unexplained: int = 0
    # Clock jumps applied (s), and per jump the segments sealed while it was in effect by what
    # their manifest's clock.offset_s says: "shows the jump", "no offset", "stale offset".
    clock_jumps: list[float] = field(default_factory=list)
    clock_segments: dict[float, Counter[str]] = field(default_factory=dict)
    # Segments sealed on the true clock whose offset still says a jump (the monitor's lag).
    clock_stale_after_repair: int = 0

    def table(self) -> str:
        rows = [("fault", "injected"), *sorted(self.faults.items())]
        rows += [(f"{k} (NOT EXERCISED)", "0") for k in sorted(self.not_exercised)]
        w = max(len(r[0]) for r in rows)
        out = [f"chaos seed {self.seed}, {self.minutes:g} min of faults"]
        out += [f"  {a:<{w}}  {b}" for a, b in rows]
        lr = sorted(self.live_resume_s)
        figures = [
            ("segments sealed", self.sealed),
            ("  of which copied out of the spool while alive", self.observed),
            ("segments delivered (at the platform)", self.delivered),
            ("  re-deliveries absorbed by the platform", self.redelivered),
            ("segments duplicated at the platform", self.duplicated),
            ("segments lost", len(self.lost)),
            ("segments differing from what was sealed", len(self.mismatched)),
            ("chain problems", len(self.chain_problems)),
            ("evidence refused on a full disk (recorded as events)", self.evidence_refused),
            ("camera lost / restored events", dict(self.camera_events)),
            ("alarms seen on the live lane", self.alarms),
            (
                "video parts missing inside recordings: total / durable event / "
                "live alarm only / unexplained",
                f"{self.parts_missing} / {self.parts_explained_by_event} / "
                f"{self.parts_explained_by_live_alarm_only} / {self.parts_unexplained}",
            ),
            ("per stream", self.streams),
            (
                "live fix resumed after link back: n, median, max (s)",
                f"{len(lr)}, {lr[len(lr) // 2] if lr else float('nan'):.2f}, "
                f"{max(lr) if lr else float('nan'):.2f}"
                f" (limit {LIVE_RESUME_LIMIT_S}; none seen: {self.live_resume_missing})",
            ),
        ]
        figures.append(
            ("live fix back after the GNSS receiver was plugged in again (s)", self.gps_resume_s)
        )
        figures.append(("live fix after every fault was repaired (s)", self.final_live_s))
        for jump in sorted(set(self.clock_jumps)):
            c = self.clock_segments.get(jump, Counter())
            figures.append(
                (
                    f"clock jump {jump:+g} s: segments sealed during it / offset shows the jump"
                    " / no offset / stale offset",
                    f"{c['sealed']} / {c['shows']} / {c['none']} / {c['stale']}",
                )
            )
        if self.clock_jumps:
            figures.append(
                (
                    "segments sealed on the true clock with an offset still showing a jump",
                    self.clock_stale_after_repair,
                )
            )
        if self.thread_deaths:
            figures.append(("agent threads that died", self.thread_deaths))
        out += [f"  {a}: {b}" for a, b in figures]
        late = [r for r in self.resume_log if r[2] > LIVE_RESUME_LIMIT_S]
        if late:
            out.append(f"  late or missing live fixes (time, after, s): {late}")
        for k, v in self.not_exercised.items():
            out.append(f"  NOT EXERCISED {k}: {v}")
        return "\n".join(out)


class Chaos:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.seed = seed
        self.stop = threading.Event()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.result = Result(seed, 0.0)
        self._cleanup: list[Callable[[], None]] = []
        self.mounted = False

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        self.keys = r / "keys"
        init_device_keys(self.keys / "device")
        init_platform_keys(self.keys / "platform")
        self.pki = make_pki(r / "pki", identities=(DEVICE, INGEST_IDENTITY, MONITOR))
        self.broker = Mosquitto(
            r / "broker", self.pki, ingest_identities=(INGEST_IDENTITY, MONITOR)
        )
        self.broker.start()
        self._cleanup.append(self.broker.kill)
        self.proxy = BlackHole(("127.0.0.1", self.broker.port))
        self._cleanup.append(self.proxy.close)
        # The spool on a small tmpfs (a real full disk), else on the ordinary disk.
        self.mnt = r / "data"
        self.mnt.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(self.mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode == 0:
            self.mounted = True
            self._cleanup.append(
                lambda: subprocess.run(["umount", "-l", str(self.mnt)], check=False)
            )
        else:
            self.result.not_exercised["disk_full"] = (
                f"mounting a small tmpfs was refused ({res.stderr.strip()})"
            )
        self.spool = self.mnt / "spool"
        self.archive = r / "sealed"
        self.store = r / "platform"
        self.pulse: PulseServer | None = PulseServer(r / "pulse")
        try:
            self.pulse.start()
            self.env.update(self.pulse.env())
            self._cleanup.append(self.pulse.stop)
        except SourceError as exc:
            self.pulse = None
            self.result.not_exercised["microphone"] = f"PulseAudio could not run: {exc}"
        self.gps = GpsPty(r / "gnss-tty", self.stop)
        self.gps.start()
        self._cleanup.append(self.gps.close)
        self.camera = TcpCamera(r, self.stop, self.env)
        self.camera.start()
        self._cleanup.append(self.camera.close)
        self.cfg = self._write_config()
        # The agent's wall clock (and only the device side's): agent.wallclock's test hook.
        self.clock_file = r / "clock-offset"
        self._set_clock(0.0)
        self.device_env = {**self.env, OFFSET_FILE_ENV: str(self.clock_file)}
        ing = self.pki.client(INGEST_IDENTITY)
        self.ingest = Proc(
            "ingest",
            [
                PYTHON, "-m", "agent.cli", "ingest", "--store", str(self.store),
                "--broker", f"127.0.0.1:{self.broker.port}", "--ca", str(self.pki.ca),
                "--cert", str(ing.cert), "--cert-key", str(ing.key),
                "--client-id", INGEST_IDENTITY,
                "--platform-key", str(self.keys / "platform" / "platform.key"),
                "--trust-on-first-use",
            ],
            r / "ingest.log",
            self.env,
        )  # fmt: skip
        self.agent = Proc(
            "agent",
            [PYTHON, "-m", "agent.cli", "run", "--config", str(self.cfg)],
            r / "agent.log",
            self.device_env,
        )
        self._cleanup.append(self.ingest.kill)
        self._cleanup.append(self.agent.kill)
        mon = self.pki.client(MONITOR)
        self.monitor = Monitor(self.broker.port, self.pki.ca, mon.cert, mon.key)
        self._cleanup.append(self.monitor.close)
        self.watcher = SealedWatcher(self.spool, self.archive, self.stop)
        self.ingest.start()
        self._start_agent()
        self.watcher.start()

    def _write_config(self) -> Path:
        dev = self.pki.client(DEVICE)
        cfg = self.root / "agent.toml"
        cfg.write_text(
            f"""
[device]
id = "{DEVICE}"
profile = "bodycam"
officer = "C4OS"
[keys]
device_key = "{self.keys}/device/device.key"
platform_public = "{self.keys}/platform/platform.pub"
[spool]
dir = "{self.spool}"
reserve_mb = 0
batch_s = 5
[gps]
source = "serial"
serial_port = "{self.gps.path}"
stale_after_s = 3.0
reconnect_max_s = 1.0
[gps.strategy]
interval_s = 1.0
stopped_interval_s = 1.0
[uplink]
enabled = true
host = "127.0.0.1"
port = {self.proxy.port}
ca = "{self.pki.ca}"
cert = "{dev.cert}"
key = "{dev.key}"
keepalive_s = 5
backoff_min_s = 0.1
backoff_max_s = 1.0
connect_timeout_s = 3.0
ack_timeout_s = 5.0
state_dir = "{self.root}/device/uplink"
[video]
enabled = true
source = "{self.camera.url}"
width = 160
height = 120
fps = 10
segment_s = 2
prebuffer_s = 1
reopen_s = 0.2
reopen_max_s = 1.0
[audio]
enabled = {"true" if self.pulse else "false"}
[health]
heartbeat_s = 5.0
status_file = "{self.root}/device/run/status.json"
control_socket = "{self.root}/device/run/control.sock"
"""
        )
        return cfg

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "agent.cli", *args, "--config", str(self.cfg)],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _start_agent(self) -> None:
        sock = self.root / "device" / "run" / "control.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self.agent.start()
        deadline = time.monotonic() + 90
        while not sock.exists():
            if not self.agent.alive():
                raise AssertionError(f"the agent exited at start; see {self.agent.log_path}")
            if time.monotonic() > deadline:
                raise AssertionError("the agent did not open its control socket in 90 s")
            time.sleep(0.1)
        for _ in range(20):
            res = self._cli("record", "start")
            if res.returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"record start failed: {res.stderr}")

    # -- faults -----------------------------------------------------------------------------

    def _set_clock(self, offset: float) -> None:
        """Step the agent's wall clock to true time + ``offset`` (atomically: a reader never
        sees a half-written file)."""
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{offset:g}\n")
        os.replace(tmp, self.clock_file)

    def _hold(self, lo: float, hi: float) -> float:
        d = self.rng.uniform(lo, hi)
        self.stop.wait(d)
        return d

    def _live_resume(self, what: str, back_at: float, into: list[float] | None = None) -> None:
        """How long after the link came back the next live fix reached the platform side."""
        out = self.result.live_resume_s if into is None else into
        stamp = time.strftime("%H:%M:%S")
        deadline = back_at + 15
        while time.monotonic() < deadline:
            t = self.monitor.first_fix_after(back_at)
            if t is not None:
                out.append(round(t - back_at, 3))
                self.result.resume_log.append((stamp, what, round(t - back_at, 3)))
                return
            time.sleep(0.05)
        self.result.resume_log.append((stamp, what, float("inf")))
        if into is None:
            self.result.live_resume_missing += 1
        else:
            out.append(float("inf"))

    def inject(self, fault: str) -> None:
        self.result.faults[fault] += 1
        if fault == "net_cut":
            d = self.rng.uniform(8, 14)  # beyond keep-alive (5 s): both ends drop the session
            log(f"network cut for {d:.1f} s")
            self.proxy.cut()
            self.stop.wait(d)
            self.proxy.restore()
            self._live_resume(fault, time.monotonic())
        elif fault == "net_flap":
            n = self.rng.randint(3, 6)
            log(f"network flapping x{n}")
            for _ in range(n):
                self.proxy.cut()
                self._hold(0.3, 2.5)
                self.proxy.restore()
                self._hold(0.3, 2.0)
            self._live_resume(fault, time.monotonic())
        elif fault == "broker_kill":
            log("broker SIGKILL")
            self.broker.kill()
            self._hold(0.5, 4)
            self.broker.start()
        elif fault == "ingest_kill":
            log("ingest SIGKILL")
            self.ingest.kill()
            self._hold(0.5, 4)
            self.ingest.start()
        elif fault == "agent_kill":
            log("agent SIGKILL (power cut)")
            self.agent.kill()
            self._hold(0.2, 2)
            self._start_agent()
        elif fault == "disk_full" and self.mounted:
            d = self.rng.uniform(5, 10)
            st = os.statvfs(self.mnt)
            free = st.f_bavail * st.f_frsize
            log(f"disk full for {d:.1f} s (filling {free // 1024} KiB)")
            filler = self.mnt / "filler"
            with filler.open("wb") as f, contextlib.suppress(OSError):
                block = b"\0" * (1 << 20)
                while True:
                    f.write(block)
                    f.flush()
            self.stop.wait(d)
            filler.unlink()
        elif fault == "disk_full":
            self.result.faults[fault] -= 1
        elif fault == "gps_unplug":
            log("GNSS receiver unplugged")
            self.gps.unplug()
            self._hold(3, 8)
            self.gps.replug()
            log("GNSS receiver plugged in again")
            self._live_resume(fault, time.monotonic(), self.result.gps_resume_s)
        elif fault == "clock_jump":
            # Each step held long enough for the ClockMonitor's median (15 fixes at 1 Hz) to
            # follow it and for a few 2 s video segments to be sealed after that.
            for jump in CLOCK_JUMPS_S:
                log(f"system clock jumps to true time {jump:+g} s")
                self._set_clock(jump)
                self.result.clock_jumps.append(jump)
                self._hold(11, 14)
            self._set_clock(0.0)
            log("system clock back to true time")
        elif fault == "camera_lost":
            log("camera lost")
            self.camera.lose()
            self._hold(3, 8)
            self.camera.restore()
        else:
            raise ValueError(fault)

    def run_faults(self, seconds: float) -> None:
        self.result.minutes = round(seconds / 60, 2)
        end = time.monotonic() + seconds
        order: list[str] = []
        rounds = 0
        self.stop.wait(self.rng.uniform(4, 8))  # some evidence before the first fault
        # Every kind of fault once per round, in a seeded order; the first round is always
        # completed, so a short run still injects every kind.
        while time.monotonic() < end or (rounds == 1 and order):
            if not order:
                order = list(FAULTS)
                self.rng.shuffle(order)
                rounds += 1
            self.inject(order.pop())
            if not self.agent.alive():
                raise AssertionError(f"the agent died; see {self.agent.log_path}")
            self.stop.wait(self.rng.uniform(2, 6))
        for k, v in NOT_EXERCISED.items():
            self.result.not_exercised.setdefault(k, v)

    # -- the end ----------------------------------------------------------------------------

    def drain(self, limit: float = 180) -> None:
        """Stop recording, stop the agent (it seals what it holds), forward the rest."""
        self.proxy.restore()
        self.camera.restore()
        self._set_clock(0.0)
        if not self.gps.plugged:
            self.gps.replug()
        self.broker.start()
        if not self.ingest.alive():
            self.ingest.start()
        # Every fault repaired: the live position must flow again (an agent pipeline that
        # died during a fault would stay dead).
        probe: list[float] = []
        self._live_resume("all repaired", time.monotonic() + 3, probe)
        self.result.final_live_s = probe[0] if probe else None
        self._cli("record", "stop")
        self.stop.wait(1)
        rc = self.agent.terminate(60)
        if rc != 0:
            raise AssertionError(
                f"the agent exited with {rc} on SIGTERM; see {self.agent.log_path}"
            )
        self.watcher.sweep()
        fwd = Proc(
            "forwarder",
            [PYTHON, "-m", "agent.cli", "uplink", "forward", "--until-empty",
             "--config", str(self.cfg)],
            self.root / "forwarder.log",
            self.device_env,
        )  # fmt: skip
        fwd.start()
        try:
            assert fwd.proc is not None
            fwd.proc.wait(limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the spool did not drain in {limit} s") from None
        finally:
            self.watcher.sweep()
            fwd.kill()
        self.stop.wait(1)  # the last acknowledgements reach the monitor
        self.ingest.terminate(30)

    def check(self) -> Result:
        res = self.result
        res.redelivered = self.monitor.acks["duplicate"]
        res.stored_acks = self.monitor.acks["stored"]
        res.rejected = self.monitor.acks["reject"]
        dev_store = self.store / DEVICE
        archived = sorted(self.archive.glob("seg/*/*.seg"))
        res.observed = len(archived)
        for a in archived:
            rel = a.relative_to(self.archive)
            got = dev_store / rel
            if not got.exists():
                res.lost.append(str(rel))
            elif got.read_bytes() != a.read_bytes():
                res.mismatched.append(str(rel))
        stored = sorted(dev_store.glob("seg/*/*.seg"))
        res.delivered = len(stored)
        leftover = sorted(self.spool.glob("seg/*/*.seg"))
        res.lost += [f"{p.relative_to(self.spool)} (still in the spool)" for p in leftover]
        # Sealed = what the platform holds plus what never got there (the chain numbers all).
        res.sealed = len(
            {p.relative_to(dev_store) for p in stored}
            | {p.relative_to(self.archive) for p in archived}
            | {p.relative_to(self.spool) for p in leftover}
        )
        names = Counter((p.parent.name, int(p.stem)) for p in stored)
        res.duplicated = sum(n - 1 for n in names.values() if n > 1)
        report = verify_paths(
            [dev_store / "seg", dev_store / "keys"],
            trusted=load_verify_key(self.keys / "device" / "device.pub"),
            platform_private=load_platform_private(self.keys / "platform" / "platform.key"),
            decrypt_to=self.root / "plain",
        )
        res.chain_problems = [str(p) for p in report.problems]
        for (_d, stream), s in report.streams.items():
            res.streams[stream] = s.count
            if s.first_seq != 0:
                res.chain_problems.append(f"{stream}: the platform's chain starts at {s.first_seq}")
        for p in sorted((self.root / "plain" / DEVICE / "event").glob("*.json")):
            ev = json.loads(p.read_text())
            if ev.get("type") == "evidence_refused":
                res.evidence_refused += 1
            if ev.get("type") in ("camera_lost", "camera_restored"):
                res.camera_events[ev["type"]] += 1
        res.alarms = dict(self.monitor.alarms)
        for log_path in (self.agent.log_path, self.root / "forwarder.log"):
            with contextlib.suppress(OSError):
                res.thread_deaths += [
                    line.strip()
                    for line in log_path.read_text(errors="replace").splitlines()
                    if line.startswith("Exception in thread")
                ]
        self._check_parts(report.segments, report.metas, res)
        self._check_clock(report.segments, res)
        return res

    def _check_clock(self, segments: list[tuple[Path, Any]], res: Result) -> None:
        """Which clock each segment was sealed on (its sealed_utc against the real time the
        watcher saw it) and whether its clock.offset_s (GNSS - system) shows the jump."""
        dev_store = self.store / DEVICE
        jumps = sorted(set(res.clock_jumps))
        for p, info in segments:
            seen = self.watcher.seen_at.get(str(p.relative_to(dev_store)))
            if seen is None:
                continue
            sealed = (
                datetime.strptime(info.manifest["sealed_utc"], "%Y-%m-%dT%H:%M:%S.%fZ")
                .replace(tzinfo=UTC)
                .timestamp()
            )
            clock = info.manifest.get("clock") or {}
            offset = clock.get("offset_s")
            shift = sealed - seen
            for jump in jumps:
                if abs(shift - jump) > CLOCK_TOLERANCE_S:
                    continue
                c = res.clock_segments.setdefault(jump, Counter())
                c["sealed"] += 1
                if offset is None:
                    c["none"] += 1
                elif abs(offset + jump) <= CLOCK_TOLERANCE_S:
                    c["shows"] += 1
                else:
                    c["stale"] += 1
            on_true_clock = abs(shift) <= CLOCK_TOLERANCE_S and offset is not None
            if on_true_clock and any(abs(offset + j) <= CLOCK_TOLERANCE_S for j in jumps):
                res.clock_stale_after_repair += 1

    @staticmethod
    def _check_parts(
        segments: list[tuple[Path, Any]], metas: dict[str, dict[str, Any]], res: Result
    ) -> None:
        """A recording numbers its video segments (meta.part, sealed: read with the platform
        key by verify); a missing part is a gap in time that only the agent's own record of a
        refusal may explain."""
        parts: dict[str, list[int]] = {}
        for _p, info in segments:
            meta = metas.get(info.label, {})
            if info.stream == "video" and isinstance(meta.get("part"), int):
                parts.setdefault(str(meta.get("recording")), []).append(meta["part"])
        missing = 0
        for got in parts.values():
            missing += len(set(range(max(got) + 1)) - set(got))
        res.parts_missing = missing
        if not missing:
            return
        if res.evidence_refused:
            res.parts_explained_by_event = missing
        elif res.alarms.get("evidence_refused"):
            res.parts_explained_by_live_alarm_only = missing
        else:
            res.parts_unexplained = missing

    def close(self) -> None:
        self.stop.set()
        for fn in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                fn()


def run_chaos(root: Path, seed: int, seconds: float) -> Result:
    chaos = Chaos(root, seed)
    try:
        chaos.setup()
        chaos.run_faults(seconds)
        chaos.drain()
        return chaos.check()
    finally:
        chaos.close()


def known_bug(violation: str) -> str | None:
    for prefix, bug in KNOWN_BUGS.items():
        if violation.startswith(prefix):
            return bug
    return None


def violations(res: Result, *, live_threshold: bool = True) -> list[str]:
    """The invariants; empty when all hold."""
    out: list[str] = []
    if res.lost:
        out.append(f"lost: {res.lost[:10]}")
    if res.mismatched:
        out.append(f"differ from what was sealed: {res.mismatched[:10]}")
    if res.duplicated:
        out.append(f"{res.duplicated} stored twice")
    if res.chain_problems:
        out.append(f"chain problems: {res.chain_problems[:10]}")
    if res.thread_deaths:
        out.append(f"agent threads died (see agent.log): {res.thread_deaths}")
    if res.final_live_s is None or res.final_live_s == float("inf"):
        out.append(
            "no live position after every fault was repaired (the GPS or uplink pipeline "
            "stayed dead)"
        )
    if res.parts_unexplained:
        out.append(f"{res.parts_unexplained} video parts missing with no record of why")
    if any(x == float("inf") for x in res.gps_resume_s):
        out.append(f"no position after the GNSS receiver came back: {res.gps_resume_s}")
    if res.rejected:
        out.append(f"{res.rejected} segments refused by the platform")
    for jump in sorted(set(res.clock_jumps)):
        c = res.clock_segments.get(jump, Counter())
        if not c["sealed"]:
            out.append(f"clock jump {jump:+g} s: no segment was sealed on the jumped clock")
        elif not c["shows"]:
            out.append(
                f"clock jump {jump:+g} s: no segment sealed during it records a GNSS offset of "
                f"the jump's size (the clock monitor did not notice): {dict(c)}"
            )
    if res.sealed == 0 or not res.streams.get("video") or not res.streams.get("gps"):
        out.append(f"too little evidence to judge: {res.streams}")
    if live_threshold:
        slow = [x for x in res.live_resume_s if x > LIVE_RESUME_LIMIT_S]
        if slow or res.live_resume_missing:
            out.append(
                f"live fix resumed later than {LIVE_RESUME_LIMIT_S} s after the link came back: "
                f"{slow}, never: {res.live_resume_missing}"
            )
    return out
