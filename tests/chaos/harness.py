"""The whole system under a seeded schedule of faults; the invariants checked at the end.

Parts (all real, each stopped at the end by process group):

- mosquitto with mutual TLS and the shipped ACL (``agent.labs.broker.Mosquitto``), reached by the
  agent through a proxy that can cut or slow the link (``tests/chaos/netem.py``);
- the platform's reference ingest, ``edge-agent ingest`` (registered device key, signed
  acknowledgements), its store on a small tmpfs (a platform disk that fills);
- ``edge-agent run`` in the bodycam profile: a camera served over TCP by ffmpeg (killing ffmpeg
  is a lost camera), a 440 Hz sine microphone (PulseAudio, also the speaker push-to-talk plays
  on), a GNSS receiver on a pty fed with a replayed truck drive (closing the pty unplugs it),
  its spool and state on the power-cut file system (``tests/fixtures/powercut_fs.py``: a power
  cut drops every write not synced; a capacity makes it a disk that fills);
- the platform's monitor, operator (signed commands) and control room (push-to-talk), and a
  second, hostile device on the same broker (``tests/chaos/traffic.py``).

What the agent seals is copied out of the spool by a watcher as soon as it appears (the spool
deletes a segment once the platform acknowledges it), so the end can compare bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import SourceError
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, make_pki
from agent.labs.pulse import PulseServer
from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_private,
    load_verify_key,
)
from agent.storage.verify import verify_paths
from agent.uplink.control import init_ack_keys, init_command_keys, load_command_private
from agent.wallclock import OFFSET_FILE_ENV
from tests.chaos.netem import LinkProxy
from tests.chaos.parts import (
    GpsPty,
    LogWatch,
    Proc,
    SealedWatcher,
    TcpCamera,
    ThreadDeath,
    control,
)
from tests.chaos.schedule import (
    CLOCK_JUMPS_S,
    FAULTS,
    SLOW_DELAY_S,
    SLOW_RATE_BPS,
    Plan,
    Step,
)
from tests.chaos.traffic import HostileDevice, Monitor, Operator, Talker, talk_body
from tests.fixtures.powercut_fs import PowerCutFS, fuse_unavailable

PYTHON = sys.executable
DEVICE = "cam-chaos-01"
HOSTILE = "cam-hostile-66"
MONITOR = "monitor"
DISK_BYTES = 48 * 1024 * 1024  # the device's disk (the power-cut file system's capacity)
STORE_SIZE = "64m"  # the platform's store (tmpfs)
# A segment "was sealed during a jump" when its sealed_utc differs from the real time the
# watcher saw it by the jump (within this); its GNSS offset "shows the jump" when
# clock.offset_s (GNSS - system) is within this of minus the jump.
CLOCK_TOLERANCE_S = 3.0
# The live lane's limits: a fix at the platform within LIVE_RESUME_LIMIT_S of the link coming
# back; fixes no older than SLOW_AGE_LIMIT_S on the slow link (1 Mbit/s, 150 ms each way,
# with a backlog to drain behind them), and than QUIET_AGE_LIMIT_S (95th percentile) when no
# fault of the live lane's path is in effect (while the hostile device sends its poison).
LIVE_RESUME_LIMIT_S = 2.0
SLOW_AGE_LIMIT_S = 3.0
# A fix is ~1 s old when it leaves the receiver (its NMEA cycle ends with the next second's
# sentences: the median age here is 1.01 s), so 2 s allows 1 s for the agent and the broker.
QUIET_AGE_LIMIT_S = 2.0
QUIET_AFTER_FAULT_S = 10.0
# A 95th percentile is judged on this many fixes at least (below it, one late fix would be
# the percentile: the table shows the ages anyway).
QUIET_MIN_FIXES = 10
# Faults that touch the live lane's own path (the link, the broker, the agent, the receiver,
# the clock); the others (the camera, the ingest, the platform's disk) must not age live fixes,
# so the fixes sent during them count with the quiet ones. Neither may a full disk, the
# device's or the platform's: their fixes are judged apart (disk_ages, store_ages), same limit.
LINK_FAULTS = frozenset(
    {"net_cut", "net_flap", "net_slow", "broker_kill", "broker_wipe", "agent_kill",
     "gps_unplug", "clock_jump"}
)  # fmt: skip
# Delivery after the platform's disk had room again: the ingest answered "retry" (after_s 30)
# while it was full; the device resends after that.
STORE_RESUME_LIMIT_S = 50.0
# A power cut: the recording must be running again within this (by itself, issue 14).
RESUME_LIMIT_S = 30.0


@dataclass(frozen=True)
class Bug:
    """An open bug the suite reproduces: the thread death that is its signature and the
    fault that triggers it. Every other invariant is still judged outside the time the dead
    thread's part was down; a run whose only violations are open bugs is an expected failure
    (pytest xfail, strict: it flips to an error once the bug is fixed)."""

    key: str
    process: str
    thread: str
    exception: str  # a prefix of the exception line
    fault: str  # the fault kind whose schedule reproduces it
    text: str

    def matches(self, d: ThreadDeath) -> bool:
        return (
            d.process == self.process
            and d.thread == self.thread
            and d.exception.startswith(self.exception)
        )


# None open today (the gps-consumer's death on a full disk, issue 21, was fixed on main).
KNOWN_BUGS: tuple[Bug, ...] = ()


def expected_bugs(plan: Plan) -> list[Bug]:
    kinds = plan.kinds()
    return [b for b in KNOWN_BUGS if kinds.get(b.fault)]


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- the result


@dataclass
class Violation:
    invariant: str
    text: str
    bug: str | None = None  # the KNOWN_BUGS key it is the signature of


@dataclass
class Window:
    """A fault in effect (or a part down), in both clocks."""

    kind: str
    start_mono: float
    end_mono: float
    start_wall: float

    def holds(self, mono: float, after_s: float = 0.0) -> bool:
        return self.start_mono <= mono <= self.end_mono + after_s


@dataclass
class Result:
    name: str
    seed: int
    minutes: float
    generator: str = "v2"
    upto: int | None = None
    plan: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    not_exercised: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # Live lane: (what came back, when (time.time()), seconds to the next fix at the
    # platform or inf).
    live_resume: list[tuple[str, float, float]] = field(default_factory=list)
    gps_resume: list[tuple[str, float, float]] = field(default_factory=list)
    final_live_s: float | None = None
    slow_ages: list[float] = field(default_factory=list)  # fix ages on the slow link
    quiet_ages: list[float] = field(default_factory=list)  # fix ages, no fault in effect
    # Fix ages while the device's disk was full (and QUIET_AFTER_FAULT_S after): the live lane
    # must not depend on the disk.
    disk_ages: list[float] = field(default_factory=list)
    store_ages: list[float] = field(default_factory=list)  # the same, the platform's disk
    # The quiet fixes older than QUIET_AGE_LIMIT_S: (age, the fault in effect or "none", time).
    quiet_late: list[tuple[float, str, str]] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)  # skipped: a dead part
    # Evidence.
    sealed: int = 0
    observed: int = 0
    delivered: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    duplicated: int = 0
    lost: list[str] = field(default_factory=list)
    lost_unpromised: list[str] = field(default_factory=list)  # gone at a cut, never durable
    mismatched: list[str] = field(default_factory=list)
    acked_not_stored: list[str] = field(default_factory=list)
    chain_problems: list[str] = field(default_factory=list)
    streams: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    alarms: dict[str, int] = field(default_factory=dict)
    parts_missing: int = 0
    parts_explained_by_event: int = 0
    parts_explained_by_live_alarm_only: int = 0
    parts_unexplained: int = 0
    # Clock jumps (offset, from, to in time.time()); per jump, the segments sealed on it by
    # what their clock.offset_s says.
    clock_jumps: list[tuple[float, float, float]] = field(default_factory=list)
    clock_segments: dict[str, dict[str, int]] = field(default_factory=dict)
    clock_stale_after_repair: int = 0
    # Power cuts: recording before, seconds until it was recording again (None: not asked).
    power_cuts: list[dict[str, Any]] = field(default_factory=list)
    # recording_interrupted / recording_resumed events of the video stream.
    resumes: dict[str, Any] = field(default_factory=dict)
    # Platform disk full: seconds from space back to the next stored segment.
    store_full: list[dict[str, Any]] = field(default_factory=list)
    # Commands and push-to-talk.
    commands: dict[str, Any] = field(default_factory=dict)
    talk: dict[str, Any] = field(default_factory=dict)
    hostile: dict[str, Any] = field(default_factory=dict)
    thread_deaths: list[dict[str, Any]] = field(default_factory=list)
    ingest_exits: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> Result:
        raw = json.loads(text)
        raw["violations"] = [Violation(**v) for v in raw.get("violations", [])]
        for k in ("live_resume", "gps_resume", "clock_jumps", "quiet_late"):
            raw[k] = [tuple(x) for x in raw.get(k, [])]
        return cls(**raw)


# --------------------------------------------------------------------------- the run


class Chaos:
    def __init__(self, root: Path, plan: Plan, name: str = "") -> None:
        self.root = root
        self.plan = plan
        self.stop = threading.Event()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.result = Result(
            name or f"seed {plan.seed}",
            plan.seed,
            plan.minutes,
            plan.generator,
            plan=[s.describe() for s in plan.steps],
        )
        self._cleanup: list[Callable[[], None]] = []
        self.windows: list[Window] = []  # faults in effect
        self.restarts: list[float] = [0.0]  # agent starts (monotonic)
        self.store_mounted = False
        self.current = ""

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        why = fuse_unavailable()
        if why is not None:
            raise RuntimeError(f"the chaos run needs the power-cut file system: {why}")
        self.keys = r / "keys"
        init_device_keys(self.keys / "device")
        init_platform_keys(self.keys / "platform")
        init_command_keys(self.keys / "platform")
        init_ack_keys(self.keys / "platform")
        registered = r / "registered"
        registered.mkdir()
        shutil.copyfile(self.keys / "device" / "device.pub", registered / f"{DEVICE}.pub")
        self.pki = make_pki(r / "pki", identities=(DEVICE, INGEST_IDENTITY, MONITOR, HOSTILE))
        self.broker = Mosquitto(
            r / "broker", self.pki, ingest_identities=(INGEST_IDENTITY, MONITOR)
        )
        self.broker.start()
        self._cleanup.append(self.broker.kill)
        self.proxy = LinkProxy(("127.0.0.1", self.broker.port))
        self._cleanup.append(self.proxy.close)
        # The device's disk: spool and state on the power-cut file system.
        self.disk = PowerCutFS(r / "disk", torn_seed=self.plan.seed, capacity=DISK_BYTES)
        self._cleanup.append(self.disk.close)
        self.mnt = self.disk.mountpoint
        self.spool = self.mnt / "spool"
        self.state = self.mnt / "state"
        self.archive = r / "sealed"
        # The platform's store on a small tmpfs (a disk that fills), else on the ordinary disk.
        self.store = r / "platform"
        self.store.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={STORE_SIZE}", "tmpfs", str(self.store)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode == 0:
            self.store_mounted = True
            self._cleanup.append(
                lambda: subprocess.run(["umount", "-l", str(self.store)], check=False)
            )
        else:
            self.result.not_exercised["store_full"] = (
                f"mounting a small tmpfs was refused ({res.stderr.strip()})"
            )
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
        self.sock = r / "device" / "run" / "control.sock"
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
                "--ack-key", str(self.keys / "platform" / "ack.key"),
                "--devices", str(registered),
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
        self.logs = LogWatch(self.stop)
        self.logs.follow("agent", self.agent.log_path)
        self.logs.follow("ingest", self.ingest.log_path)
        self.logs.start()
        mon = self.pki.client(MONITOR)
        self.monitor = Monitor(DEVICE, MONITOR, self.broker.port, self.pki.ca, mon.cert, mon.key)
        self._cleanup.append(self.monitor.close)
        command_key = load_command_private(self.keys / "platform" / "command.key")
        self.operator = Operator(self.monitor, command_key, DEVICE, self.plan.seed, self.stop)
        self._cleanup.append(self.operator.close)
        body, duration = talk_body()
        self.talker = Talker(
            self.monitor, command_key, DEVICE, body, duration, self.plan.seed, self.stop
        )
        self._cleanup.append(self.talker.close)
        bad = self.pki.client(HOSTILE)
        self.hostile = HostileDevice(
            HOSTILE, self.broker.port, self.pki.ca, bad.cert, bad.key, self.stop
        )
        self._cleanup.append(self.hostile.close)
        self.watcher = SealedWatcher(self.spool, self.archive, self.stop)
        self.ingest.start()
        self._start_agent()
        self._record_start()
        self.watcher.start()
        self.hostile.start()
        self.operator.start()
        self.talker.start()

    def _write_config(self) -> Path:
        dev = self.pki.client(DEVICE)
        plat = self.keys / "platform"
        cfg = self.root / "agent.toml"
        cfg.write_text(
            f"""
[device]
id = "{DEVICE}"
profile = "bodycam"
officer = "C4OS"
[keys]
device_key = "{self.keys}/device/device.key"
platform_public = "{plat}/platform.pub"
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
state_dir = "{self.state}/uplink"
command_key = "{plat}/command.pub"
ack_key = "{plat}/ack.pub"
command_skew_s = 5
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
[talk]
enabled = {"true" if self.pulse else "false"}
[health]
heartbeat_s = 5.0
status_file = "{self.root}/device/run/status.json"
control_socket = "{self.sock}"
"""
        )
        return cfg

    def _start_agent(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        self.agent.start()
        self.restarts.append(time.monotonic())
        deadline = time.monotonic() + 90
        while not self.sock.exists():
            if not self.agent.alive():
                raise AssertionError(f"the agent exited at start; see {self.agent.log_path}")
            if time.monotonic() > deadline:
                raise AssertionError("the agent did not open its control socket in 90 s")
            self.stop.wait(0.1)

    def _record_start(self) -> None:
        reply: dict[str, Any] = {}
        for _ in range(20):
            with contextlib.suppress(OSError, ValueError):
                reply = control(self.sock, "video.start")
                if reply.get("ok"):
                    return
            self.stop.wait(0.5)
        raise AssertionError(f"record start failed: {reply}")

    def _recording(self) -> bool | None:
        try:
            reply = control(self.sock, "status")
        except (OSError, ValueError):
            return None
        video = (reply.get("result") or {}).get("video") or {}
        return bool(video.get("recording"))

    # -- faults -----------------------------------------------------------------------------

    def _set_clock(self, offset: float) -> None:
        """Step the agent's wall clock to true time + ``offset`` (atomically)."""
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{offset:g}\n")
        os.replace(tmp, self.clock_file)

    def _live_resume(self, what: str, back_at: float, into: list[tuple[str, float, float]]) -> None:
        """How long after ``back_at`` the next live fix reached the platform side."""
        stamp = time.time() - (time.monotonic() - back_at)
        deadline = back_at + 15
        while time.monotonic() < deadline:
            t = self.monitor.first_fix_after(back_at)
            if t is not None:
                into.append((what, stamp, round(t - back_at, 3)))
                return
            self.stop.wait(0.05)
        into.append((what, stamp, float("inf")))

    @contextlib.contextmanager
    def _fault(self, kind: str) -> Iterator[None]:
        """A fault in effect: recorded as a window; commands and push-to-talk sent in it."""
        self.current = kind
        self.operator.during = self.talker.during = kind
        w = Window(kind, time.monotonic(), float("inf"), time.time())
        self.windows.append(w)
        self.operator.nudge()
        if kind == "net_flap":
            self.talker.nudge()
        try:
            yield
        finally:
            w.end_mono = time.monotonic()
            self.current = ""
            self.operator.during = self.talker.during = ""

    def inject(self, step: Step) -> None:
        kind, p = step.kind, step.params
        self.result.faults[kind] = self.result.faults.get(kind, 0) + 1
        log(step.describe())
        getattr(self, f"_{kind}")(p)

    def _net_cut(self, p: dict[str, Any]) -> None:
        with self._fault("net_cut"):
            self.proxy.cut()
            self.stop.wait(p["cut_s"])
            self.proxy.restore()
        self._live_resume("net_cut", time.monotonic(), self.result.live_resume)

    def _net_flap(self, p: dict[str, Any]) -> None:
        with self._fault("net_flap"):
            for down, up in p["flaps"]:
                self.proxy.cut()
                self.stop.wait(down)
                self.proxy.restore()
                self.talker.nudge()
                self.stop.wait(up)
        self._live_resume("net_flap", time.monotonic(), self.result.live_resume)

    def _net_slow(self, p: dict[str, Any]) -> None:
        with self._fault("net_slow"):
            self.proxy.slow(SLOW_RATE_BPS, SLOW_DELAY_S)
            began = time.monotonic()
            self.stop.wait(p["slow_s"])
            self.proxy.fast()
            # Ages of the fixes that crossed the slow link (from 2 s in: those already queued
            # before it slowed down do not count).
            for f in self.monitor.fixes_between(began + 2, time.monotonic()):
                if f.age_s is not None:
                    self.result.slow_ages.append(round(f.age_s, 3))

    def _broker_kill(self, p: dict[str, Any]) -> None:
        with self._fault("broker_kill"):
            self.broker.kill()
            self.stop.wait(p["down_s"])
            self.broker.start()

    def _broker_wipe(self, p: dict[str, Any]) -> None:
        """The broker restarts without its persistence file: every session, subscription and
        queued message is forgotten."""
        with self._fault("broker_wipe"):
            self.broker.kill()
            for f in (self.broker.dir / "data").iterdir():
                f.unlink()
            self.stop.wait(p["down_s"])
            self.broker.start()

    def _ingest_kill(self, p: dict[str, Any]) -> None:
        with self._fault("ingest_kill"):
            self._check_ingest()
            self.ingest.kill()
            self.stop.wait(p["down_s"])
            self.ingest.start()

    def _check_ingest(self) -> None:
        """The ingest must not have ended by itself (a thread that died exits 70)."""
        proc = self.ingest.proc
        if proc is not None and proc.poll() is not None:
            self.result.ingest_exits.append(f"exit {proc.returncode} before {time.strftime('%X')}")
            self.ingest.proc = None
            self.ingest.start()

    def _agent_kill(self, p: dict[str, Any]) -> None:
        """A power cut: the agent's process group SIGKILLed, every write it did not sync lost
        (the power-cut file system unmounted and its durable layer mounted again), the agent
        started again. The recording must resume by itself (no `record start`)."""
        with self._fault("agent_kill"):
            locked = self.operator.record_lock.acquire(timeout=25)
            try:
                recording = self._recording()
                killed_at = time.time()
                self.agent.kill()
                with self.watcher.paused():
                    self.disk.cut()
                self._after_cut(killed_at)
            finally:
                if locked:
                    self.operator.record_lock.release()
            self.stop.wait(p["off_s"])
            self._start_agent()
        cut: dict[str, Any] = {"at": time.strftime("%X"), "recording": recording, "resumed_s": None}
        if recording:
            began = time.monotonic()
            while time.monotonic() - began < RESUME_LIMIT_S:
                if self._recording():
                    cut["resumed_s"] = round(time.monotonic() - began, 2)
                    break
                self.stop.wait(0.5)
        self.result.power_cuts.append(cut)

    def _after_cut(self, killed_at: float) -> None:
        """Segments the watcher copied that the cut took back (never made durable): kept
        aside; one seen long before the cut is a promise broken."""
        present = {
            os.path.relpath(os.path.join(d, f), self.spool)
            for d, _s, files in os.walk(self.spool / "seg")
            for f in files
        }
        for rel in sorted(self.watcher.seen):
            if not rel.startswith("seg/") or rel in present:
                continue
            if (self.store / DEVICE / rel).exists():
                continue  # acknowledged and deleted: the platform has it
            age = killed_at - self.watcher.seen_at.get(rel, killed_at)
            note = f"{rel} (seen {age:.2f} s before the cut)"
            if age > 1.0:
                self.result.lost.append(f"{note}: gone after the power cut")
            else:
                self.result.lost_unpromised.append(note)
            self.watcher.forget(rel, "lost-at-cut")

    def _disk_full(self, p: dict[str, Any]) -> None:
        """The device's disk full for full_s: a runaway writer takes back within 0.2 s
        whatever the agent frees (its ballast included)."""
        with self._fault("disk_full"):
            self.disk.set_capacity("full")
            end = time.monotonic() + p["full_s"]
            while not self.stop.wait(0.2) and time.monotonic() < end:
                st = self.disk.stats()
                if st["used"] < (st["capacity"] or 0):
                    self.disk.set_capacity("full")
            self.disk.set_capacity(DISK_BYTES)

    def _store_full(self, p: dict[str, Any]) -> None:
        """The platform's store full for full_s (the tmpfs shrunk to what it holds, again
        whenever something is freed). Nothing may be acknowledged that was not stored;
        delivery must resume once there is room."""
        if not self.store_mounted:
            self.result.faults["store_full"] -= 1
            return
        with self._fault("store_full"):
            end = time.monotonic() + p["full_s"]
            while time.monotonic() < end:
                st = os.statvfs(self.store)
                if st.f_bavail:
                    used = (st.f_blocks - st.f_bfree) * st.f_frsize
                    self._remount_store(f"{max(used, 4096)}")
                if self.stop.wait(0.2):
                    break
            self._remount_store(STORE_SIZE)
        self.result.store_full.append({"back": time.time()})

    def _remount_store(self, size: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.store)],
            capture_output=True,
            check=False,
        )

    def _gps_unplug(self, p: dict[str, Any]) -> None:
        with self._fault("gps_unplug"):
            self.gps.unplug()
            self.stop.wait(p["away_s"])
            self.gps.replug()
        self._live_resume("gps_unplug", time.monotonic(), self.result.gps_resume)

    def _camera_lost(self, p: dict[str, Any]) -> None:
        with self._fault("camera_lost"):
            self.camera.lose()
            self.stop.wait(p["away_s"])
            self.camera.restore()

    def _clock_jump(self, p: dict[str, Any]) -> None:
        with self._fault("clock_jump"):
            for jump, hold in zip(CLOCK_JUMPS_S, p["holds"], strict=True):
                self._set_clock(jump)
                began = time.time()
                self.operator.nudge()  # a command on the jumped clock
                self.stop.wait(hold / 2)
                self.operator.nudge()
                self.stop.wait(hold / 2)
                self.result.clock_jumps.append((jump, began, time.time()))
            self._set_clock(0.0)

    def run_faults(self) -> None:
        self.stop.wait(self.plan.lead_s)  # some evidence before the first fault
        for step in self.plan.steps:
            self.inject(step)
            if not self.agent.alive():
                raise AssertionError(f"the agent died; see {self.agent.log_path}")
            self._check_ingest()
            self.stop.wait(step.gap_s)
        kinds = self.plan.kinds()
        for k in FAULTS:
            if not kinds.get(k) and k not in self.result.not_exercised:
                self.result.not_exercised[k] = "not in this schedule"

    # -- the end ----------------------------------------------------------------------------

    def drain(self, limit: float = 180) -> None:
        """Every fault repaired; commands and messages answered; the recording stopped, the
        agent stopped (it seals what it holds), the rest forwarded."""
        self.proxy.restore()
        self.proxy.fast()
        self.camera.restore()
        self._set_clock(0.0)
        self.disk.set_capacity(DISK_BYTES)
        if self.store_mounted:
            self._remount_store(STORE_SIZE)
        if not self.gps.plugged:
            self.gps.replug()
        self.broker.start()
        self._check_ingest()
        if not self.ingest.alive():
            self.ingest.start()
        # Every fault repaired: the live position must flow again (an agent pipeline that
        # died during a fault would stay dead).
        probe: list[tuple[str, float, float]] = []
        self._live_resume("all repaired", time.monotonic() + 3, probe)
        self.result.final_live_s = probe[0][2] if probe else None
        self.final_probe_at = time.time()
        self.operator.finish(40)
        self.talker.finish(40)
        self.hostile.close()
        with contextlib.suppress(OSError, ValueError):
            control(self.sock, "video.stop")
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
        self.logs.follow("forwarder", fwd.log_path)
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
        self._check_ingest()
        self.ingest.terminate(30)
        self.logs.poll()

    # -- the invariants ---------------------------------------------------------------------

    def check(self) -> Result:
        res = self.result
        res.acks = dict(self.monitor.acks)
        res.alarms = dict(self.monitor.alarms)
        res.thread_deaths = [asdict(d) for d in self.logs.deaths]
        self._check_evidence(res)
        self._check_live(res)
        self._check_commands(res)
        self._check_talk(res)
        res.hostile = {"sent": dict(self.hostile.sent), "connects": self.hostile.connects}
        res.violations = violations(res, self.logs.deaths)
        for v in res.violations:
            log(f"INVARIANT BROKEN ({v.invariant}): {v.text}" + (f" [{v.bug}]" if v.bug else ""))
        return res

    def _check_evidence(self, res: Result) -> None:
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
        res.sealed = len(
            {p.relative_to(dev_store) for p in stored}
            | {p.relative_to(self.archive) for p in archived}
            | {p.relative_to(self.spool) for p in leftover}
        )
        names = Counter((p.parent.name, int(p.stem)) for p in stored)
        res.duplicated = sum(n - 1 for n in names.values() if n > 1)
        # Nothing acknowledged that was not stored (the platform's disk filled).
        for stream, seq in sorted(self.monitor.stored):
            if not (dev_store / "seg" / stream / f"{seq:012d}.seg").exists():
                res.acked_not_stored.append(f"{stream}/{seq}")
        for back in res.store_full:
            t = self.monitor.stored_after(back["back"])
            back["resume_s"] = None if t is None else round(t - back["back"], 2)
            back["back"] = time.strftime("%X", time.localtime(back["back"]))
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
        self.evidence = [
            json.loads(p.read_text())
            for p in sorted((self.root / "plain" / DEVICE / "event").glob("*.json"))
            if not p.name.endswith(".meta.json")
        ]
        res.events = dict(Counter(str(e.get("type")) for e in self.evidence))
        self._check_parts(report.segments, report.metas, res)
        self._check_clock(report.segments, res)
        self._check_resume(res)

    def _check_resume(self, res: Result) -> None:
        """Each power cut during a recording: recording_interrupted, then recording_resumed
        with the same recording id (the video stream's)."""
        interrupted = [
            e for e in self.evidence
            if e.get("type") == "recording_interrupted" and e.get("stream") == "video"
        ]  # fmt: skip
        resumed = [
            e for e in self.evidence
            if e.get("type") == "recording_resumed" and e.get("stream") == "video"
        ]  # fmt: skip
        ids = {e.get("recording") for e in interrupted}
        res.resumes = {
            "cuts_while_recording": sum(1 for c in res.power_cuts if c["recording"]),
            "interrupted": len(interrupted),
            "resumed": len(resumed),
            "resumed_without_interruption": [
                e.get("recording") for e in resumed if e.get("recording") not in ids
            ],
        }

    def _check_parts(
        self, segments: list[tuple[Path, Any]], metas: dict[str, dict[str, Any]], res: Result
    ) -> None:
        """A recording numbers its video segments (meta.part); a missing part is a gap in
        time that only the agent's own record of a refusal may explain."""
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
        if res.events.get("evidence_refused"):
            res.parts_explained_by_event = missing
        elif res.alarms.get("evidence_refused"):
            res.parts_explained_by_live_alarm_only = missing
        else:
            res.parts_unexplained = missing

    def _check_clock(self, segments: list[tuple[Path, Any]], res: Result) -> None:
        """Which clock each segment was sealed on (its sealed_utc against the real time the
        watcher saw it) and whether its clock.offset_s (GNSS - system) shows the jump."""
        dev_store = self.store / DEVICE
        jumps = sorted({j for j, _a, _b in res.clock_jumps})
        for jump in jumps:
            spans = [(a, b) for j, a, b in res.clock_jumps if j == jump]
            dead = [self._dead_at_wall(a) or self._dead_at_wall(b) for a, b in spans]
            if all(dead):
                res.not_judged.append(f"clock jump {jump:+g} s: {dead[0]} was dead")
                res.clock_segments[f"{jump:+g}"] = {"not_judged": 1}
        for p, info in segments:
            seen = self.watcher.seen_at.get(str(p.relative_to(dev_store)))
            if seen is None or self._dead_at_wall(seen):
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
                c = res.clock_segments.setdefault(f"{jump:+g}", {})
                c["sealed"] = c.get("sealed", 0) + 1
                which = (
                    "none"
                    if offset is None
                    else "shows"
                    if abs(offset + jump) <= CLOCK_TOLERANCE_S
                    else "stale"
                )
                c[which] = c.get(which, 0) + 1
            on_true_clock = abs(shift) <= CLOCK_TOLERANCE_S and offset is not None
            if on_true_clock and any(abs(offset + j) <= CLOCK_TOLERANCE_S for j in jumps):
                res.clock_stale_after_repair += 1

    # Dead windows: an agent thread that died stays dead until the agent restarts; what the
    # live lane shows meanwhile is its consequence, not judged again.

    def _dead_windows(self) -> list[tuple[float, float, str]]:
        """(start, end) in time.time() of each agent thread death, to the agent's restart."""
        out = []
        mono_now, wall_now = time.monotonic(), time.time()
        starts = [wall_now - (mono_now - m) for m in self.restarts[1:]]
        for d in self.logs.deaths:
            if d.process != "agent":
                continue
            end = min((s for s in starts if s > d.at), default=float("inf"))
            out.append((d.at - 1.0, end, d.thread))
        return out

    def _dead_at_wall(self, wall: float) -> str | None:
        for a, b, thread in self._dead_windows():
            if a <= wall <= b:
                return thread
        return None

    def _dead_at_mono(self, mono: float) -> str | None:
        return self._dead_at_wall(time.time() - (time.monotonic() - mono))

    def _check_live(self, res: Result) -> None:
        def judged(rows: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
            keep = []
            for what, wall, s in rows:
                dead = self._dead_at_wall(wall)
                if dead:
                    stamp = time.strftime("%X", time.localtime(wall))
                    res.not_judged.append(f"live fix after {what} at {stamp}: {dead} was dead")
                else:
                    keep.append((what, wall, s))
            return keep

        res.live_resume = judged(res.live_resume)
        res.gps_resume = judged(res.gps_resume)
        dead = self._dead_at_wall(getattr(self, "final_probe_at", time.time()))
        if dead:
            res.not_judged.append(f"the live fix after every fault was repaired: {dead} was dead")
            res.final_live_s = -1.0
        for f in self.monitor.fixes_between(0, float("inf")):
            if f.age_s is None or self._dead_at_mono(f.mono):
                continue
            if any(
                w.kind in LINK_FAULTS and w.holds(f.mono, QUIET_AFTER_FAULT_S) for w in self.windows
            ):
                continue
            if f.mono < self.restarts[1] + 10:
                continue
            apart = [
                w.kind
                for w in self.windows
                if w.kind in ("disk_full", "store_full") and w.holds(f.mono, QUIET_AFTER_FAULT_S)
            ]
            if apart:
                ages = res.disk_ages if "disk_full" in apart else res.store_ages
                ages.append(round(f.age_s, 3))
                continue
            res.quiet_ages.append(round(f.age_s, 3))
            if f.age_s > QUIET_AGE_LIMIT_S:
                during = [w.kind for w in self.windows if w.holds(f.mono)] or ["none"]
                stamp = time.strftime("%X", time.localtime(time.time() - time.monotonic() + f.mono))
                res.quiet_late.append((round(f.age_s, 2), during[-1], stamp))

    def _check_commands(self, res: Result) -> None:
        """Each command answered (once or more: a resend of an id already run is refused as a
        replay), run at most once, and what it did in the evidence exactly as often."""
        marks = Counter(str(e.get("note")) for e in self.evidence if e.get("type") == "mark")
        settings: Counter[float] = Counter()
        for e in self.evidence:
            if e.get("type") == "settings_changed":
                ch = (e.get("changes") or {}).get("health.heartbeat_s") or {}
                if isinstance(ch.get("to"), int | float):
                    settings[float(ch["to"])] += 1
        outcomes: Counter[str] = Counter()
        during: Counter[str] = Counter()
        unanswered, twice, lost_effect, double_effect, refused_but_ran = [], [], [], [], []
        for s in self.operator.sent.values():
            answers = self.monitor.answers_of(s.id)
            during[s.during or "none"] += 1
            oks = [a for a in answers if a.get("ok")]
            if not answers:
                unanswered.append(
                    f"{s.cmd} {s.id} (sent {s.sends}x, first during {s.during or '-'})"
                )
                outcomes["unanswered"] += 1
                continue
            if len(oks) > 1:
                twice.append(f"{s.cmd} {s.id}")
            reason = str(answers[0].get("reason", ""))
            # ok; or the first refusal's reason ("replayed" alone: the device ran it, or began
            # to, and its first answer was lost; a resend was refused as a replay).
            outcomes["ok" if oks else _reason_kind(reason)] += 1
            effect: int | None = None
            if s.cmd == "record.mark":
                effect = marks[str(s.args["note"])]
                if oks and not (oks[0].get("result") or {}).get("recorded", True):
                    effect = None  # answered "recorded: false": the event could not be stored
            elif s.cmd == "settings.set":
                effect = settings[float(s.args["health.heartbeat_s"])]
                if oks and not (oks[0].get("result") or {}).get("recorded", True):
                    effect = None  # answered "recorded: false": the event could not be sealed
            if effect is None:
                continue
            replayed = any("replayed" in str(a.get("reason", "")) for a in answers)
            if effect > 1:
                double_effect.append(f"{s.cmd} {s.id}: {effect} times in the evidence")
            elif oks and effect == 0:
                lost_effect.append(f"{s.cmd} {s.id}: answered ok, not in the evidence")
            elif not oks and effect and not replayed:
                refused_but_ran.append(f"{s.cmd} {s.id}: refused ({reason[:60]}) but ran")
        res.commands = {
            "sent": len(self.operator.sent),
            "outcomes": dict(outcomes),
            "during": dict(during),
            "resends": sum(s.sends - 1 for s in self.operator.sent.values()),
            "unanswered": unanswered,
            "answered_ok_twice": twice,
            "ran_twice": double_effect,
            "ok_but_not_in_evidence": lost_effect,
            "refused_but_ran": refused_but_ran,
        }

    def _check_talk(self, res: Result) -> None:
        played: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.agent.log_path.read_text(errors="replace").splitlines():
                if "talk: message " in line and line.rstrip().endswith(" played"):
                    played[line.rsplit("talk: message ", 1)[1].split()[0]] += 1
        statuses: Counter[str] = Counter()
        during: Counter[str] = Counter()
        unreported, twice = [], []
        for s in self.talker.sent.values():
            during[s.during or "none"] += 1
            final = [x for x in s.statuses() if x != "incomplete"] or s.statuses() or ["none"]
            statuses[final[-1]] += 1
            if not s.reported():
                unreported.append(f"{s.id} (sent {s.sends}x, first during {s.during or '-'})")
            n = max(played[s.id], s.statuses().count("played"))
            if n > 1:
                twice.append(f"{s.id}: played {n} times")
        res.talk = {
            "sent": len(self.talker.sent),
            "last_status": dict(statuses),
            "during": dict(during),
            "resends": sum(s.sends - 1 for s in self.talker.sent.values()),
            "played": sum(1 for s in self.talker.sent.values() if played[s.id]),
            "unreported": unreported,
            "played_twice": twice,
        }

    def close(self) -> None:
        self.stop.set()
        for fn in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                fn()


def _reason_kind(reason: str) -> str:
    for key in ("expired", "in the future", "replayed", "failed"):
        if key in reason:
            return key.replace(" ", "_")
    return "refused"


def run_chaos(root: Path, plan: Plan, name: str = "") -> Result:
    began = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    chaos = Chaos(root, plan, name)
    try:
        chaos.setup()
        chaos.run_faults()
        chaos.drain()
        res = chaos.check()
    finally:
        chaos.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    res.wall_s = round(time.monotonic() - began, 1)
    res.cpu_s = round(
        after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        + own.ru_utime + own.ru_stime, 1
    )  # fmt: skip
    return res


# --------------------------------------------------------------------------- the invariants


def violations(res: Result, deaths: list[ThreadDeath] | None = None) -> list[Violation]:
    """The invariants broken; empty when all hold."""
    out: list[Violation] = []

    def add(invariant: str, text: str, bug: str | None = None) -> None:
        out.append(Violation(invariant, text, bug))

    # Evidence: nothing sealed lost, altered, doubled or refused; chains whole.
    if res.lost:
        add("nothing lost", f"lost: {res.lost[:10]}")
    if res.mismatched:
        add("byte-identical", f"differ from what was sealed: {res.mismatched[:10]}")
    if res.duplicated:
        add("stored once", f"{res.duplicated} stored twice")
    if res.chain_problems:
        add("chains whole", f"chain problems: {res.chain_problems[:10]}")
    if res.acks.get("reject"):
        add("nothing refused", f"{res.acks['reject']} segments refused by the platform")
    if res.acked_not_stored:
        add("acknowledged only when stored", f"not in the store: {res.acked_not_stored[:10]}")
    if res.parts_unexplained:
        add("gaps explained", f"{res.parts_unexplained} video parts missing, no record of why")
    if res.sealed == 0 or not res.streams.get("video") or not res.streams.get("gps"):
        add("enough evidence", f"too little evidence to judge: {res.streams}")
    # Threads.
    for d in deaths or []:
        bug = next((b.key for b in KNOWN_BUGS if b.matches(d)), None)
        add("threads survive", d.signature(), bug)
    if res.ingest_exits:
        add("threads survive", f"the ingest ended by itself: {res.ingest_exits}")
    # The live lane.
    if res.final_live_s is None or res.final_live_s == float("inf"):
        add("live lane", "no live position after every fault was repaired")
    gps_never = [_row(r) for r in res.gps_resume if r[2] == float("inf")]
    if gps_never:
        add("live lane", f"no position after the GNSS receiver came back: {gps_never}")
    late = [_row(r) for r in res.live_resume if r[2] > LIVE_RESUME_LIMIT_S]
    if late:
        add("live lane", f"live fix later than {LIVE_RESUME_LIMIT_S} s after the link: {late}")
    slow = [a for a in res.slow_ages if a > SLOW_AGE_LIMIT_S]
    if slow:
        add("live lane", f"on the slow link, fixes older than {SLOW_AGE_LIMIT_S} s: {slow[:10]}")
    for ages, what in ((res.disk_ages, "device's"), (res.store_ages, "platform's")):
        if len(ages) >= QUIET_MIN_FIXES and percentile(ages, 95) > QUIET_AGE_LIMIT_S:
            add(
                "live lane",
                f"while the {what} disk was full: live fixes p95 "
                f"{percentile(ages, 95):.2f} s old, max {max(ages):.2f} s",
            )
    if len(res.quiet_ages) >= QUIET_MIN_FIXES:
        p95 = percentile(res.quiet_ages, 95)
        if p95 > QUIET_AGE_LIMIT_S:
            add(
                "live lane",
                f"no fault of the live lane's path in effect: live fixes p95 {p95:.2f} s old "
                f"(older than {QUIET_AGE_LIMIT_S} s: age, during, at: {res.quiet_late[:12]})",
            )
    # The clock.
    for key, c in sorted(res.clock_segments.items()):
        if c.get("not_judged"):
            continue
        if not c.get("shows"):
            add("clock jump noticed", f"clock jump {key} s: no segment shows its offset: {c}")
    for jump in sorted({j for j, _a, _b in res.clock_jumps}):
        if f"{jump:+g}" not in res.clock_segments:
            add("clock jump noticed", f"clock jump {jump:+g} s: no segment sealed on it")
    # Power cuts: the recording resumes by itself.
    for c in res.power_cuts:
        if c["recording"] and c["resumed_s"] is None:
            add("recording resumes", f"power cut at {c['at']}: not recording {RESUME_LIMIT_S} s on")
    r = res.resumes
    if r and (r["resumed"] < r["cuts_while_recording"] or r["resumed_without_interruption"]):
        add("recording resumes", f"recording_interrupted/resumed events do not match: {r}")
    # The platform's disk.
    for sf in res.store_full:
        if sf.get("resume_s") is None or sf["resume_s"] > STORE_RESUME_LIMIT_S:
            add(
                "delivery resumes", f"store full until {sf['back']}: next stored {sf['resume_s']} s"
            )
    # Commands and push-to-talk.
    cmd = res.commands
    for key, text in (
        ("unanswered", "never answered"),
        ("answered_ok_twice", "run twice (two ok answers)"),
        ("ran_twice", "run twice (evidence)"),
        ("ok_but_not_in_evidence", "answered ok, effect not in the evidence"),
        ("refused_but_ran", "refused, yet ran"),
    ):
        if cmd.get(key):
            add("commands once", f"commands {text}: {cmd[key][:5]}")
    if res.talk.get("unreported"):
        add(
            "push-to-talk reported", f"neither delivered nor reported: {res.talk['unreported'][:5]}"
        )
    if res.talk.get("played_twice"):
        add("push-to-talk once", f"played twice: {res.talk['played_twice'][:5]}")
    return out


def percentile(values: list[float], pct: float) -> float:
    q = sorted(values)
    return q[min(len(q) - 1, int(len(q) * pct / 100))]


def _row(r: tuple[str, float, float]) -> str:
    return f"{r[0]} at {time.strftime('%X', time.localtime(r[1]))}: {r[2]}"
