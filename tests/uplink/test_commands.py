"""The signed command channel: ping and status over the broker; every refusal has a reason."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import CommandError
from agent.labs.broker import Mosquitto, Pki
from agent.uplink import protocol as proto
from agent.uplink.control import (
    CommandChannel,
    SeenIds,
    init_command_keys,
    load_command_private,
    sign_command,
)
from agent.uplink.mqtt import MqttLink
from tests.fixtures.pki import OPERATOR
from tests.uplink.harness import (
    ingest_config,
    make_device,
    make_platform,
    running_uplink,
    unique_id,
)

NOW = 1_800_000_000.0


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def channel(tmp_path: Path, key: Ed25519PrivateKey) -> CommandChannel:
    return CommandChannel(
        "cam-1", key.public_key(), SeenIds(tmp_path / "seen.json"), clock=lambda: NOW
    )


def test_ping(channel: CommandChannel, key: Ed25519PrivateKey) -> None:
    answer = channel.handle(sign_command(key, "cam-1", "ping", now=NOW))
    assert answer["ok"] and answer["result"]["pong"] is True


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: sign_command(k, "cam-1", "ping", now=NOW - 4000), "expired"),
        (lambda k: sign_command(k, "cam-1", "ping", now=NOW + 4000), "future"),
        (lambda k: sign_command(k, "cam-1", "ping", now=NOW, ttl_s=90000), "lifetime"),
        (lambda k: sign_command(k, "cam-2", "ping", now=NOW), "addressed to"),
        (lambda k: sign_command(k, "cam-1", "reboot", now=NOW), "unknown command"),
        (
            lambda k: sign_command(Ed25519PrivateKey.generate(), "cam-1", "ping", now=NOW),
            "bad signature",
        ),
        (lambda k: b"not json", "not JSON"),
        (lambda k: b'{"v":1}', "must be a string"),
    ],
)
def test_refusals_carry_the_reason(
    channel: CommandChannel, key: Ed25519PrivateKey, make: object, reason: str
) -> None:
    payload = make(key)  # type: ignore[operator]
    answer = channel.handle(payload)
    assert answer["ok"] is False and reason in answer["reason"]


def test_tampered_args_are_refused(channel: CommandChannel, key: Ed25519PrivateKey) -> None:
    cmd = json.loads(sign_command(key, "cam-1", "ping", {"a": 1}, now=NOW))
    cmd["args"] = {"a": 2}
    assert "bad signature" in channel.handle(proto.dumps(cmd))["reason"]


def test_replay_refused_even_after_restart(
    tmp_path: Path, channel: CommandChannel, key: Ed25519PrivateKey
) -> None:
    payload = sign_command(key, "cam-1", "ping", now=NOW)
    assert channel.handle(payload)["ok"]
    assert "replayed" in channel.handle(payload)["reason"]
    again = CommandChannel(
        "cam-1", key.public_key(), SeenIds(tmp_path / "seen.json"), clock=lambda: NOW
    )
    assert "replayed" in again.handle(payload)["reason"]


def test_handlers_register_and_refuse(channel: CommandChannel, key: Ed25519PrivateKey) -> None:
    def boom(args: dict[str, object]) -> dict[str, object]:
        raise CommandError("camera busy")

    channel.register("snap", boom)
    answer = channel.handle(sign_command(key, "cam-1", "snap", now=NOW))
    assert answer == {
        "v": 1,
        "id": answer["id"],
        "cmd": "snap",
        "ok": False,
        "reason": "camera busy",
    }


def test_ping_and_status_over_the_broker(tmp_path: Path, pki: Pki, broker_alive: Mosquitto) -> None:
    keyfile = init_command_keys(tmp_path / "cmdkeys")
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    dev.uplink = replace(dev.uplink, command_key=keyfile.with_name("command.pub"))
    spool = dev.open_spool()
    dev.put(spool, "gps", b"x" * 10)
    signer = load_command_private(keyfile)
    topics = proto.Topics(dev.id)
    stop = threading.Event()
    ops = MqttLink(
        replace(ingest_config(pki, broker_alive.port, OPERATOR), session_expiry_s=0), stop
    )
    answers = ops.route(topics.command_result)
    ops.start()
    try:
        with running_uplink(dev, spool) as up:
            deadline = threading.Event()
            while not (ops.connected and up.link.connected):
                deadline.wait(0.05)
            # CONNACK comes before the device's SUBACK: until a probe is answered, a command
            # may reach the broker before the device listens (and, with no session yet, be
            # dropped). Probe with fresh ids until one is answered.
            for _ in range(50):
                ops.publish(topics.command, sign_command(signer, dev.id, "ping"))
                try:
                    ops.ack(answers.get(timeout=0.5))
                    break
                except queue.Empty:
                    continue
            while True:  # drain answers to probes that were still on their way
                try:
                    ops.ack(answers.get(timeout=0.5))
                except queue.Empty:
                    break
            ping = sign_command(signer, dev.id, "ping")
            status = sign_command(signer, dev.id, "status")
            ops.publish(topics.command, ping)
            ops.publish(topics.command, status)
            ops.publish(topics.command, ping)  # a replay
            got: dict[str, list[dict[str, object]]] = {}
            seen: set[bytes] = set()
            while len(seen) < 3:
                msg = answers.get(timeout=10)
                ops.ack(msg)
                if msg.payload in seen:
                    continue  # QoS 1 is at least once: a redelivered answer, not a new one
                seen.add(msg.payload)
                a = json.loads(msg.payload)
                got.setdefault(a["cmd"], []).append(a)
    finally:
        stop.set()
        ops.join()
        spool.close()
    assert got["ping"][0]["ok"] and not got["ping"][1]["ok"]
    assert "replayed" in got["ping"][1]["reason"]
    st = got["status"][0]
    assert st["ok"] and st["result"]["connected"] is True and "gps" in st["result"]["backlog"]
