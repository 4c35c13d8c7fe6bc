"""Fixtures for the talk tests: PulseAudio (440 Hz sine microphone, a null sink as the speaker,
its monitor recorded with ``parec``), a mosquitto with the talk ACL (groups), device and
control-room links.

PulseAudio's default sink is the null sink ``null``: the device plays into it through ALSA's
``pulse`` device, and :class:`MonitorRecorder` records ``null.monitor``, so the test hears
exactly what an officer would.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.labs.broker import Mosquitto, Pki, acl_text
from agent.labs.pulse import PulseServer
from agent.labs.waiting import wait_for
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.talk import wire
from agent.talk.codec import tone
from agent.talk.device import Talk
from agent.talk.settings import TalkSettings
from agent.uplink.control import SeenIds
from agent.uplink.mqtt import Inbound, LinkConfig, MqttLink
from tests.fixtures.keys import KeySet, make_sealer
from tests.fixtures.pulse import serving_pulse

DEVICES = ("talk-a", "talk-b", "talk-c", "talk-d", "talk-e")
CONTROL = ("control", "control-send", "control-listen")
GROUP = "north"
RATE = 48000


def talk_acl() -> str:
    """The lab ACL plus what talk adds: control-room identities, and group topics per device."""
    lines = [acl_text(CONTROL).rstrip("\n")]
    for identity in CONTROL:
        lines += [f"user {identity}", "topic write groups/+/talk/in"]
    for device in DEVICES:
        lines += [f"user {device}", f"topic read groups/{GROUP}/talk/in"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def talk_pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    with serving_pulse(tmp_path_factory.mktemp("talk-pulse")) as server:
        yield server


@pytest.fixture(scope="session")
def talk_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    for identity in DEVICES + CONTROL:
        pki.issue(identity)
    m = Mosquitto(tmp_path_factory.mktemp("talk-mosquitto"), pki, ingest_identities=CONTROL)
    m.acl.write_text(talk_acl())
    m.start()
    try:
        yield m
    finally:
        m.kill()


@pytest.fixture(scope="session")
def command_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.uplink.control import init_command_keys

    return init_command_keys(tmp_path_factory.mktemp("talk-cmdkey"))


def link_config(broker: Mosquitto, identity: str) -> LinkConfig:
    c = broker.pki.client(identity)
    return LinkConfig(
        host=broker.host,
        port=broker.port,
        client_id=identity,
        ca=broker.pki.ca,
        cert=c.cert,
        key=c.key,
        backoff_min_s=0.2,
        backoff_max_s=1.0,
    )


def broker_argv(broker: Mosquitto, identity: str) -> list[str]:
    c = broker.pki.client(identity)
    return [
        "--broker",
        f"{broker.host}:{broker.port}",
        "--ca",
        str(broker.pki.ca),
        "--cert",
        str(c.cert),
        "--cert-key",
        str(c.key),
        "--client-id",
        identity,
    ]


def write_tone_wav(path: Path, hz: float, seconds: float, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone(hz, int(seconds * 1000), rate, amplitude=0.5))
    return path


@dataclass
class Device:
    id: str
    talk: Talk
    spool: Spool
    link: MqttLink
    stop: threading.Event


@pytest.fixture
def make_device(
    talk_broker: Mosquitto,
    talk_pulse: PulseServer,
    keyset: KeySet,
    command_key: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Device]]:
    made: list[Device] = []

    def make(device_id: str, **settings: Any) -> Device:
        from agent.talk.audio_io import AudioIO
        from agent.uplink.control import load_command_public

        stop = threading.Event()
        spool = Spool(
            SpoolSettings(dir=tmp_path / device_id / "spool", reserve_mb=0),
            make_sealer(keyset, device_id=device_id),
        )
        link = MqttLink(link_config(talk_broker, device_id), stop)
        io: AudioIO | None = settings.pop("io", None)
        cfg = TalkSettings(enabled=True, groups=(GROUP,), **settings)
        talk = Talk(
            cfg,
            device_id=device_id,
            spool=spool,
            stop=stop,
            link=link,
            command_key=load_command_public(command_key.with_name("command.pub")),
            signing_key=keyset.signing_key,
            seen=SeenIds(tmp_path / device_id / "talk-seen.json"),
            io=io,
        )
        link.start()
        talk.start_threads()
        d = Device(device_id, talk, spool, link, stop)
        made.append(d)
        wait_for(lambda: link.connected, 10, f"{device_id} connected")
        return d

    yield make
    for d in made:
        d.stop.set()
    for d in made:
        assert d.talk.join(10), "talk threads did not end"
        d.link.join(5)
        d.spool.close()


@dataclass
class ControlRoom:
    link: MqttLink
    receipts: Any  # queue.Queue[Inbound]
    got: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self) -> list[dict[str, Any]]:
        import queue

        while True:
            try:
                msg: Inbound = self.receipts.get_nowait()
            except queue.Empty:
                break
            self.link.ack(msg)
            with self.lock:
                self.got.append(wire.parse_json(msg.payload, "receipt"))
        with self.lock:
            return list(self.got)

    def statuses(self, mid: str) -> list[str]:
        return [r["status"] for r in self.poll() if r["id"] == mid]

    def wait_status(self, mid: str, status: str, timeout: float = 15) -> dict[str, Any]:
        wait_for(lambda: status in self.statuses(mid), timeout, f"receipt {status} for {mid}")
        return next(r for r in self.poll() if r["id"] == mid and r["status"] == status)


@pytest.fixture
def control(talk_broker: Mosquitto) -> Iterator[ControlRoom]:
    stop = threading.Event()
    link = MqttLink(link_config(talk_broker, "control"), stop)
    receipts = link.route(wire.RECEIPT_FILTER)
    link.start()
    wait_for(lambda: link.connected, 10, "control room connected")
    try:
        yield ControlRoom(link, receipts)
    finally:
        stop.set()
        link.join(5)


def message_chunks(
    command_key: Path, path: Path, to: str, chunk_bytes: int = 2048
) -> list[wire.Chunk]:
    from agent.talk.codec import SAMPLE_BYTES, decode_to_pcm, encode_pcm
    from agent.uplink.control import load_command_private

    pcm = decode_to_pcm(path, RATE)
    body = encode_pcm(pcm, RATE)
    key: Ed25519PrivateKey = load_command_private(command_key)
    return wire.build_message(
        key,
        body,
        sender=wire.PLATFORM,
        to=to,
        duration_s=len(pcm) / SAMPLE_BYTES / RATE,
        chunk_bytes=chunk_bytes,
    )


class MonitorRecorder:
    """``parec`` on the null sink's monitor: what the device's speaker played."""

    def __init__(self, pulse: PulseServer, rate: int = RATE) -> None:
        exe = shutil.which("parec")
        if exe is None:
            pytest.fail("parec is not installed (Debian pulseaudio-utils)")
        self.rate = rate
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                exe,
                "-d",
                "null.monitor",
                "--raw",
                f"--rate={rate}",
                "--channels=1",
                "--format=s16le",
                "--latency-msec=20",
            ],
            env=pulse.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):  # type: ignore[attr-defined]
            self._data += chunk

    def seconds(self) -> float:
        return len(self._data) / 2 / self.rate

    def stop(self) -> Any:
        import numpy as np

        self.proc.terminate()
        self.proc.wait(5)
        self._thread.join(5)
        return np.frombuffer(bytes(self._data[: len(self._data) // 2 * 2]), "<i2") / 32768.0


def tone_runs(
    samples: Any, rate: int, freqs: tuple[float, ...], window_ms: int = 10, level: float = 0.05
) -> list[tuple[float, float, float]]:
    """(frequency, start s, duration s) of each run of windows dominated by one of ``freqs``."""
    import numpy as np

    n = rate * window_ms // 1000
    runs: list[list[float]] = []
    fft_n = n * 8  # zero-padded: finer bins
    for k in range(len(samples) // n):
        w = samples[k * n : (k + 1) * n]
        if np.sqrt(np.mean(w * w)) < level:
            continue
        spec = np.abs(np.fft.rfft(w * np.hanning(n), fft_n))
        peak = float(np.argmax(spec) * rate / fft_n)
        f = min(freqs, key=lambda x: abs(x - peak))
        if abs(f - peak) > 60:
            continue
        t = k * n / rate
        if runs and runs[-1][0] == f and abs(runs[-1][1] + runs[-1][2] - t) < 1e-6:
            runs[-1][2] += n / rate
        else:
            runs.append([f, t, n / rate])
    return [(f, s, d) for f, s, d in runs if d > 2 * n / rate]
