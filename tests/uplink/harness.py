"""Test helpers: a device (keys, sealer, spool), an ingest worker, and delivery checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.ingest.receiver import Ingest
from agent.ingest.store import Store
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_private,
    load_platform_public,
    load_signing_key,
)
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool
from agent.uplink.control import init_ack_keys, load_ack_private
from agent.uplink.mqtt import LinkConfig
from agent.uplink.service import Uplink
from agent.uplink.settings import UplinkSettings

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def unique_id(tmp_path: Path) -> str:
    """A device id per test: each test's fresh spool starts its chains at seq 0 again, and the
    broker keeps sessions (and queued messages) across tests."""
    return "cam-" + "".join(c for c in tmp_path.name.lower() if c.isalnum())[-24:]


@dataclass
class Platform:
    """The platform's keys and its register of device keys (as in production)."""

    dir: Path
    key: Path
    pub: Path
    ack_key: Path
    ack_pub: Path
    devices: Path

    def register(self, device_id: str, device_pub: Path) -> None:
        """What the platform does with the <id>.pub that edge-agent provision writes."""
        self.devices.mkdir(parents=True, exist_ok=True)
        (self.devices / f"{device_id}.pub").write_bytes(device_pub.read_bytes())


def make_platform(directory: Path) -> Platform:
    init_platform_keys(directory)
    ack = init_ack_keys(directory)
    devices = directory / "devices"
    devices.mkdir()
    return Platform(
        directory,
        directory / "platform.key",
        directory / "platform.pub",
        ack,
        ack.with_name("ack.pub"),
        devices,
    )


@dataclass
class Device:
    id: str
    dir: Path
    pki: Pki
    platform: Platform
    port: int
    uplink: UplinkSettings
    seal: SealSettings = field(default_factory=SealSettings)
    expected: dict[tuple[str, int], bytes] = field(default_factory=dict)

    @property
    def spool_dir(self) -> Path:
        return self.dir / "spool"

    def sealer(self, boot: str = "boot1", sealed_as: str | None = None) -> Sealer:
        return Sealer(
            device_id=sealed_as or self.id,
            boot_id=boot,
            signing_key=load_signing_key(self.dir / "keys" / "device.key"),
            platform_public=load_platform_public(self.platform.pub),
            settings=self.seal,
        )

    def open_spool(self, boot: str = "boot1", sealed_as: str | None = None) -> Spool:
        return Spool(SpoolSettings(dir=self.spool_dir), self.sealer(boot, sealed_as))

    def put(self, spool: Spool, stream: str, data: bytes) -> None:
        r = spool.put_bytes(stream, data)
        self.expected[(stream, r.seq)] = r.path.read_bytes()

    def fill(self, spool: Spool, *, video_mib: int = 4, videos: int = 2, gps: int = 40) -> None:
        """Every stream: events, many small GPS batches, a still, audio, multi-chunk video."""
        spool.put_event("boot", {"n": 1})
        for p in spool.items("event"):
            self.expected[("event", p.seq)] = p.path.read_bytes()
        for i in range(gps):
            self.put(spool, "gps", f'{{"i":{i},"lat":52.5,"lon":13.4}}'.encode() * 20)
        self.put(spool, "still", os.urandom(300_000))
        self.put(spool, "audio", os.urandom(700_000))
        for _ in range(videos):
            self.put(spool, "video", os.urandom(video_mib * 1024 * 1024))

    def service(self, spool: Spool, stop: threading.Event, boot: str = "boot1") -> Uplink:
        return Uplink(self.uplink, device_id=self.id, boot_id=boot, spool=spool, stop=stop)

    def toml(self, port: int | None = None, **extra: Any) -> Path:
        s = replace(self.uplink, port=port or self.uplink.port, **extra)
        lines = [
            "[device]",
            f'id = "{self.id}"',
            "[keys]",
            f'device_key = "{self.dir / "keys" / "device.key"}"',
            f'platform_public = "{self.platform.pub}"',
            "[spool]",
            f'dir = "{self.spool_dir}"',
            "[uplink]",
            "enabled = true",
            f'host = "{s.host}"',
            f"port = {s.port}",
            f'ca = "{s.ca}"',
            f'cert = "{s.cert}"',
            f'key = "{s.key}"',
            f"keepalive_s = {s.keepalive_s}",
            f"backoff_min_s = {s.backoff_min_s}",
            f"backoff_max_s = {s.backoff_max_s}",
            f"ack_timeout_s = {s.ack_timeout_s}",
            f"bandwidth_bps = {s.bandwidth_bps}",
            f"window = {s.window}",
            f'state_dir = "{self.dir / "state"}"',
        ]
        if s.ack_key is not None:
            lines.append(f'ack_key = "{s.ack_key}"')
        path = self.dir / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def make_device(
    directory: Path, device_id: str, pki: Pki, platform: Platform, port: int, **uplink: Any
) -> Device:
    directory.mkdir(parents=True, exist_ok=True)
    init_device_keys(directory / "keys")
    platform.register(device_id, directory / "keys" / "device.pub")
    client = pki.client(device_id)
    if not client.cert.exists():
        client = pki.issue(device_id)
    settings = UplinkSettings(
        enabled=True,
        host="127.0.0.1",
        port=port,
        ca=pki.ca,
        cert=client.cert,
        key=client.key,
        keepalive_s=5,
        backoff_min_s=0.1,
        backoff_max_s=1.0,
        connect_timeout_s=3.0,
        ack_timeout_s=3.0,
        state_dir=directory / "state",
        ack_key=platform.ack_pub,
    )
    settings = replace(settings, **uplink)
    return Device(device_id, directory, pki, platform, port, settings)


def ingest_config(pki: Pki, port: int, identity: str = INGEST_IDENTITY) -> LinkConfig:
    c = pki.client(identity)
    return LinkConfig(
        host="127.0.0.1",
        port=port,
        client_id=identity,
        ca=pki.ca,
        cert=c.cert,
        key=c.key,
        keepalive_s=5,
        backoff_min_s=0.1,
        backoff_max_s=1.0,
        connect_timeout_s=3.0,
    )


@contextmanager
def running_ingest(
    store_dir: Path, pki: Pki, port: int, platform: Platform | None, **store: Any
) -> Iterator[Ingest]:
    """An ingest worker as production runs it: registered device keys, signed acks (without
    ``platform``: trust on first use, unsigned acks, no plaintext). Entered once the broker
    acknowledged its subscriptions: a device message published from then on reaches it (one
    published before would reach no subscriber, since each test starts without the ingest's
    session: tests/fixtures/broker.py)."""
    stop = threading.Event()
    key = load_platform_private(platform.key) if platform else None
    devices = platform.devices if platform else None
    ack_key = load_ack_private(platform.ack_key) if platform else None
    s = Store(store_dir, platform_key=key, devices=devices, **store)
    ingest = Ingest(s, ingest_config(pki, port), stop, ack_key=ack_key)
    ingest.start()
    try:
        wait_for(lambda: ingest.link.subscribed, 30, "the ingest's subscriptions")
        yield ingest
    finally:
        stop.set()
        ingest.join()


@contextmanager
def running_uplink(device: Device, spool: Spool, boot: str = "boot1") -> Iterator[Uplink]:
    stop = threading.Event()
    up = device.service(spool, stop, boot)
    up.start()
    try:
        yield up
    finally:
        stop.set()
        up.join()


def ingest_process(
    store_dir: Path, pki: Pki, port: int, platform: Platform
) -> subprocess.Popen[bytes]:
    c = pki.client(INGEST_IDENTITY)
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "agent.cli",
            "-v",
            "ingest",
            "--store",
            str(store_dir),
            "--broker",
            f"127.0.0.1:{port}",
            "--ca",
            str(pki.ca),
            "--cert",
            str(c.cert),
            "--cert-key",
            str(c.key),
            "--platform-key",
            str(platform.key),
            "--devices",
            str(platform.devices),
            "--ack-key",
            str(platform.ack_key),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(store_dir.parent / "ingest.log").open("ab"),
        start_new_session=True,
    )


def forwarder_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "agent.cli", "-v", "uplink", "forward", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            sigkill(proc)


def stored(store_dir: Path, device: str) -> dict[tuple[str, int], Path]:
    base = store_dir / device / "seg"
    out: dict[tuple[str, int], Path] = {}
    if base.exists():
        for p in base.glob("*/*.seg"):
            out[(p.parent.name, int(p.stem))] = p
    return out


def all_delivered(store_dir: Path, device: Device) -> bool:
    return set(stored(store_dir, device.id)) >= set(device.expected)


def assert_delivered(store_dir: Path, device: Device, *, plain: bool = True) -> None:
    """Every sealed segment is at the platform exactly once, byte-identical; spool empty."""
    have = stored(store_dir, device.id)
    assert set(have) == set(device.expected), (
        f"missing {sorted(set(device.expected) - set(have))[:10]}, "
        f"extra {sorted(set(have) - set(device.expected))[:10]}"
    )
    for k, sealed in device.expected.items():
        assert have[k].read_bytes() == sealed, f"{k} differs from what the device sealed"
        if plain:
            assert (store_dir / device.id / "plain" / k[0] / f"{k[1]:012d}.bin").exists(), k
    leftovers = (
        list((store_dir / device.id / "partial").glob("*/*"))
        if (store_dir / device.id / "partial").exists()
        else []
    )
    assert not leftovers, f"partial uploads left in the store: {leftovers[:3]}"
    spool = device.open_spool(boot="check")
    try:
        assert spool.items() == [], f"spool not empty: {spool.items()[:3]}"
    finally:
        spool.close()


def broker_queue_shipped(broker: Mosquitto) -> bool:
    """The broker bounds every client's queue as deploy/mosquitto/edge-agent.conf does."""
    from agent.labs.broker import SHIPPED_CONF

    shipped = {
        line
        for line in SHIPPED_CONF.read_text().splitlines()
        if line.startswith(("max_queued_messages ", "max_queued_bytes "))
    }
    return len(shipped) == 2 and shipped <= set(broker.conf.read_text().splitlines())
