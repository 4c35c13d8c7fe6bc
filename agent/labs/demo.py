"""``make demo``: the agent's main job on simulated sources, against a local broker.

1. a throwaway PKI, platform and device keys, and mosquitto with mutual TLS on loopback;
2. the platform's reference ingest (``edge-agent ingest``) subscribed to it;
3. the agent in the ``bodycam`` profile: synthetic camera, a replayed GPS drive and, where
   PulseAudio can run, a 440 Hz sine microphone (an Opus track in the video segments); a
   simulated battery (a power_supply tree as the kernel lays it out) and a simulated LTE
   modem (a fake ``mmcli``), shown in the ``power`` and ``link`` lines of ``status``;
4. a recording started and stopped with ``edge-agent record``, a mark and a still;
5. once the spool is empty (everything acknowledged by the platform), everything stops and
   ``edge-agent verify`` checks what the platform holds and decrypts it for playback.

Beside it, a truck: the agent in the ``tracker`` profile with ``[jt808]``, reporting to a
reference JT/T 808 platform (``agent/labs/jt808_platform.py``) on loopback (see
:func:`jt808_tracker`).

Every process it starts is stopped at the end, whatever happens. Output: ./demo-out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.errors import SourceError
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki, make_pki
from agent.labs.mmcli import write_fake_mmcli
from agent.labs.nmea import truck_log
from agent.labs.power import lay_out_power_supply
from agent.labs.pulse import PulseServer
from agent.labs.waiting import TimedOut, wait_for
from agent.storage.keys import init_device_keys, init_platform_keys
from agent.uplink.control import init_ack_keys

OUT = Path("demo-out").resolve()
DEVICE = "cam-demo-01"
RECORD_S = 30.0  # EDGE_AGENT_DEMO_RECORD_S shortens it (CI runs the demo in ~20 s)


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, check=False
    )
    if check and res.returncode != 0:
        raise SystemExit(f"edge-agent {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
    return res


@contextlib.contextmanager
def process(name: str, args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, always stopped (SIGTERM, then SIGKILL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print(f"   stopped {name} (log: {log})")


def write_config(pki: Pki, port: int, keys: Path, audio: bool) -> Path:
    device = pki.client(DEVICE)
    g = time.gmtime(time.time() - 2)
    (OUT / "drive.nmea").write_bytes(
        truck_log(900, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    )
    cfg = OUT / "agent.toml"
    cfg.write_text(
        f"""# written by make demo
[device]
id = "{DEVICE}"
profile = "bodycam"
officer = "A1234"
unit = "ENF-03"
[keys]
device_key = "{keys}/device/device.key"
platform_public = "{keys}/platform/platform.pub"
[spool]
dir = "{OUT}/device/spool"
reserve_mb = 0
batch_s = 10
[gps]
source = "replay"
replay_file = "{OUT}/drive.nmea"
replay_speed = 1.0
[gps.strategy]
interval_s = 5.0
[uplink]
enabled = true
host = "127.0.0.1"
port = {port}
ca = "{pki.ca}"
cert = "{device.cert}"
key = "{device.key}"
state_dir = "{OUT}/device/uplink"
ack_key = "{keys}/platform/ack.pub"
[video]
enabled = true
source = "synthetic"
width = 640
height = 360
fps = 15
segment_s = 10
prebuffer_s = 5
[audio]
enabled = {"true" if audio else "false"}
[health]
heartbeat_s = 10.0
status_file = "{OUT}/device/run/status.json"
control_socket = "{OUT}/device/run/control.sock"
{simulated_body()}"""
    )
    return cfg


def simulated_body() -> str:
    """A battery (kernel power_supply layout, on battery at 78 %), the firmware's flags and an
    LTE modem (a fake mmcli printing ModemManager's JSON): the [power] and [cellular] tables."""
    sim = OUT / "sim"
    cls = lay_out_power_supply(sim / "sys", {
        "ac": {"type": "Mains", "online": 0},
        "battery": {"type": "Battery", "status": "Discharging", "capacity": 78,
                    "voltage_now": 3_870_000, "current_now": -640_000},
    })  # fmt: skip
    (sim / "get_throttled").write_text("0\n")
    mmcli = write_fake_mmcli(sim / "modem", {"signal_rate": 30})
    return f"""[power]
source = "sysfs"
throttled = "sysfs"
throttled_file = "{sim / "get_throttled"}"
[power.sysfs]
root = "{cls}"
[cellular]
source = "modemmanager"
mmcli = "{mmcli}"
poll_s = 5.0
traffic_file = "{OUT}/device/traffic.json"
"""


@contextlib.contextmanager
def jt808_tracker(keys: Path) -> Iterator[Callable[[], str]]:
    """A tracker reporting to a reference JT/T 808 platform while the body camera records;
    yields a function that says what the platform received."""
    from agent.labs.jt808_platform import ReferencePlatform

    d = OUT / "truck"
    d.mkdir()
    g = time.gmtime(time.time() - 2)
    (d / "drive.nmea").write_bytes(truck_log(900, start=(g[0], g[1], g[2], g[3], g[4], g[5])))
    (d / "agent.toml").write_text(
        f"""# written by make demo: a sanitation truck with a JT/T 808 terminal
[device]
id = "trk-demo-01"
profile = "tracker"
[keys]
device_key = "{keys}/device/device.key"
platform_public = "{keys}/platform/platform.pub"
[spool]
dir = "{d}/spool"
reserve_mb = 0
[gps]
source = "replay"
replay_file = "{d}/drive.nmea"
[gps.strategy]
interval_s = 5.0
[fleet]
enabled = true
state_dir = "{d}/fleet"
[fleet.inputs]
source = "sim"
sim_state = "ign=1 brush=1"
[jt808]
enabled = true
server = "127.0.0.1:{{port}}"
phone = "013800000001"
manufacturer_id = "EDGEA"
terminal_id = "TRKDEMO01"
plate = "粤B00001"
plate_color = 2
state_dir = "{d}/jt808"
[health]
status_file = "{d}/run/status.json"
control_socket = "{d}/run/control.sock"
"""
    )
    with ReferencePlatform() as platform:
        cfg = d / "agent.toml"
        cfg.write_text(cfg.read_text().replace("{port}", str(platform.port)))
        say(f"a truck reporting to a reference JT/T 808 platform on {platform.address}")
        args = [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)]
        with process("tracker", args, d / "agent.log"):

            def summary() -> str:
                got = platform.locations()
                live = sum(r.kind == "live" for r in got)
                return (
                    f"jt808: tracker trk-demo-01 (phone 013800000001, 粤B00001) registered "
                    f"{len(platform.registrations)}x, authenticated "
                    f"{len(platform.authentications)}x; the 808 platform received "
                    f"{len(got)} location reports ({live} live, {len(got) - live} in batches)"
                )

            yield summary


def backlog_empty(status_file: Path) -> bool:
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return False
    return not status.get("backlog")


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    say("keys and a throwaway PKI")
    keys = OUT / "keys"
    init_device_keys(keys / "device")
    init_platform_keys(keys / "platform")
    init_ack_keys(keys / "platform")
    # What the platform registers for the device (edge-agent provision writes it as <id>.pub).
    (keys / "platform" / "devices").mkdir()
    shutil.copy(keys / "device" / "device.pub", keys / "platform" / "devices" / f"{DEVICE}.pub")
    pki = make_pki(OUT / "pki", identities=(DEVICE, INGEST_IDENTITY))
    print(f"   device key, platform key and certificates under {OUT}")
    broker = Mosquitto(OUT / "broker", pki)
    say(f"mosquitto with mutual TLS on 127.0.0.1:{broker.port}")
    broker.start()
    try:
        return run(broker, pki, keys)
    finally:
        broker.stop()
        print("   stopped mosquitto")


def start_microphone() -> PulseServer | None:
    """A sine microphone where PulseAudio can run here (else the demo goes on without)."""
    pulse = PulseServer(OUT / "pulse")
    try:
        pulse.start()
    except SourceError as exc:
        print(f"   no microphone in this demo: {exc}")
        return None
    os.environ.update(pulse.env())
    print("   PulseAudio with a 440 Hz sine source as the microphone")
    return pulse


def run(broker: Mosquitto, pki: Pki, keys: Path) -> int:
    pulse = start_microphone()
    try:
        return run_agent(broker, pki, keys, audio=pulse is not None)
    finally:
        if pulse is not None:
            pulse.stop()
            print("   stopped PulseAudio")


def run_agent(broker: Mosquitto, pki: Pki, keys: Path, audio: bool) -> int:
    cfg = write_config(pki, broker.port, keys, audio)
    store = OUT / "platform"
    ingest = pki.client(INGEST_IDENTITY)
    ingest_args = [
        sys.executable, "-m", "agent.cli", "ingest", "--store", str(store),
        "--broker", f"127.0.0.1:{broker.port}", "--ca", str(pki.ca), "--cert", str(ingest.cert),
        "--cert-key", str(ingest.key), "--client-id", INGEST_IDENTITY,
        "--platform-key", str(keys / "platform" / "platform.key"),
        "--devices", str(keys / "platform" / "devices"),
        "--ack-key", str(keys / "platform" / "ack.key"),
    ]  # fmt: skip
    say("the platform's ingest, then the agent (bodycam: synthetic camera, replayed GPS)")
    with (
        jt808_tracker(keys) as jt808,
        process("ingest", ingest_args, OUT / "ingest.log"),
        process(
            "agent",
            [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
            OUT / "agent.log",
        ) as agent,
    ):
        sock = OUT / "device" / "run" / "control.sock"
        wait_for(sock.exists, 60, "the agent to start", step=0.25)
        record_s = float(os.environ.get("EDGE_AGENT_DEMO_RECORD_S", RECORD_S))
        say(f"recording for {record_s:.0f} s (edge-agent record start / mark / still / stop)")
        cli("record", "start", "--config", str(cfg))
        time.sleep(record_s / 2)
        cli("record", "mark", "--note", "demo: something happened", "--config", str(cfg))
        cli("still", "--config", str(cfg))
        time.sleep(record_s / 2)
        cli("record", "stop", "--config", str(cfg))
        status_file = OUT / "device" / "run" / "status.json"
        say("waiting until the platform has acknowledged everything")
        time.sleep(min(12.0, record_s))  # let the last GPS batch be sealed
        wait_for(lambda: backlog_empty(status_file) or agent.poll() is not None, 120, "delivery",
                 step=0.25)  # fmt: skip
        print(cli("status", "--config", str(cfg)).stdout)
        print(jt808())
    say("what the platform received and verified (edge-agent verify)")
    device_store = store / DEVICE
    res = cli(
        "verify", str(device_store / "seg"), str(device_store / "keys"),
        "--platform-key", str(keys / "platform" / "platform.key"),
        "--device-key", str(keys / "device" / "device.pub"),
        "--decrypt-to", str(OUT / "decrypted"),
        check=False,
    )  # fmt: skip
    print(res.stdout + res.stderr)
    videos = sorted((OUT / "decrypted" / DEVICE / "video").glob("*.mp4"))
    if videos:
        print(f"play the decrypted video: ffplay {videos[0]}   ({len(videos)} segments)")
    left = cli("spool", "--config", str(cfg), check=False).stdout.strip()
    print(f"left on the device for its next connection:\n{left}")
    print(
        f"review page: .venv/bin/edge-agent review --store {store} --web 127.0.0.1:8090 "
        f"--token demo-review-token-0001 --platform-key {keys / 'platform' / 'platform.key'}\n"
        "   then open http://127.0.0.1:8090/?token=demo-review-token-0001"
    )
    print(f"everything is under {OUT}")
    return res.returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TimedOut as exc:
        sys.exit(f"demo: {exc}")
