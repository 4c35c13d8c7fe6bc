"""Commands and the local control socket contain everything (issue 15, findings 7 and 12).

- ``issued`` = 1 followed by 400 zeros (or 1e300) is refused as out of range *before* the
  signature is checked (it was an OverflowError that ended the command thread);
- a handler that raises anything (EvidenceRefused, AgentError, TOMLDecodeError, a bug) is
  answered ``ok: false`` with the reason, on the platform's channel and on the local socket;
- on the real broker, hostile commands leave the device's command thread alive and the next
  genuine command answered; on the real socket, deep JSON leaves its thread alive;
- the health loop watches the socket thread: one that ended anyway is reported.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import AgentError, EvidenceRefused
from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.runtime.local_control import MAX_REQUEST, LocalControl, send
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
from tests.security import hostile
from tests.uplink.harness import (
    ingest_config,
    make_device,
    make_platform,
    running_uplink,
    unique_id,
)

NOW = 1_800_000_000.0


def _raise(exc: BaseException) -> Any:
    def handler(args: dict[str, Any]) -> dict[str, Any]:
        raise exc

    return handler


def _toml_error() -> Exception:
    try:
        tomllib.loads('x = "a\x01b"')
    except tomllib.TOMLDecodeError as exc:
        return exc
    raise AssertionError("tomllib accepted a control character")


FAILURES: list[tuple[str, Exception, str]] = [
    ("refused", EvidenceRefused("evidence quota full"), "evidence quota full"),
    ("agent", AgentError("camera busy"), "camera busy"),
    ("toml", _toml_error(), "TOMLDecodeError"),
    ("bug", ZeroDivisionError("division by zero"), "ZeroDivisionError"),
    ("deep", RecursionError("maximum recursion depth exceeded"), "RecursionError"),
]


def _channel(tmp_path: Path, key: Ed25519PrivateKey) -> CommandChannel:
    ch = CommandChannel(
        "cam-1", key.public_key(), SeenIds(tmp_path / "seen.json"), clock=lambda: NOW
    )
    for name, exc, _why in FAILURES:
        ch.register(f"fail.{name}", _raise(exc))
    ch.register("weird", lambda args: {"not json": object()})
    return ch


def test_absurd_times_are_refused_before_the_signature(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    ch = _channel(tmp_path, key)
    body = {"v": 1, "id": "0123456789abcdef", "device": "cam-1", "cmd": "ping", "args": {},
            "expires": NOW + 10, "sig": "00" * 64}  # fmt: skip
    # (the id is read back for the answer only from a document that parses within bounds)
    for issued, why, cid in (
        (b"1" + b"0" * 400, "integer of 401 digits", None),
        (b"1e309", "out of range", None),
        (b"1e300", "out of range", "0123456789abcdef"),
        (b"-5", "out of range", "0123456789abcdef"),
    ):
        raw = json.dumps({**body, "issued": 0}).encode()
        raw = raw.replace(b'"issued": 0', b'"issued": ' + issued)
        answer = ch.handle(raw)
        assert answer["ok"] is False and why in answer["reason"], (issued[:10], answer)
        assert answer["id"] == cid


def test_every_handler_failure_is_answered(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    ch = _channel(tmp_path, key)
    for name, _exc, why in FAILURES:
        answer = ch.handle(sign_command(key, "cam-1", f"fail.{name}", now=NOW))
        assert answer["ok"] is False and why in answer["reason"], answer
    answer = ch.handle(sign_command(key, "cam-1", "ping", now=NOW))
    assert answer["ok"] is True


def test_local_control_contains_everything(tmp_path: Path) -> None:
    stop = threading.Event()
    lc = LocalControl(tmp_path / "control.sock", stop)
    for name, exc, _why in FAILURES:
        lc.register(f"fail.{name}", _raise(exc))
    lc.register("ping", lambda args: {"pong": True})
    lc.register("weird", lambda args: {"not json": object()})
    lc.start()
    try:
        for name, _exc, why in FAILURES:
            with pytest.raises(AgentError, match=why):
                send(lc.path, f"fail.{name}")
        with pytest.raises(AgentError, match="not JSON"):
            send(lc.path, "weird")
        for payload in hostile.json_payloads():
            if len(payload) > MAX_REQUEST:
                continue  # below
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(lc.path))
                s.sendall(payload.replace(b"\n", b" ") + b"\n")
                reply = json.loads(s.makefile("rb").readline())
            assert reply["ok"] is False, (payload[:40], reply)
        # Requests over the size limit (50,000-deep JSON among them): refused, read no
        # further (the sender may see its connection reset), the thread goes on.
        for payload in (hostile.deep_json(), b"[" * 200_000):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(lc.path))
                with contextlib.suppress(OSError):
                    s.sendall(payload)
                    assert b"too long" in s.makefile("rb").readline()
        assert lc.is_alive()
        assert send(lc.path, "ping") == {"pong": True}
    finally:
        stop.set()
        lc.join(10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_control_socket_thread_that_dies_anyway_is_seen(tmp_path: Path) -> None:
    """Past every ``except Exception`` (sys.exit in a handler): the thread ends, and
    is_alive(), which the health loop asks before each watchdog ping, says so."""
    stop = threading.Event()
    lc = LocalControl(tmp_path / "control.sock", stop)
    lc.register("exit", _raise(SystemExit(3)))
    lc.start()
    try:
        assert lc.is_alive()
        with contextlib.suppress(AgentError):
            send(lc.path, "exit")
        wait_for(lambda: not lc.is_alive(), 10, "the thread's end to be seen")
    finally:
        stop.set()
        lc.join(10)


def test_hostile_commands_over_the_broker(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    keyfile = init_command_keys(tmp_path / "cmdkeys")
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    dev.uplink = replace(dev.uplink, command_key=keyfile.with_name("command.pub"))
    spool = dev.open_spool()
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
            assert up.control is not None
            for name, exc, _why in FAILURES:
                up.control.register(f"fail.{name}", _raise(exc))
            wait_for(lambda: ops.connected and up.link.connected, 20, "connections")
            # Probe until the device listens (see test_commands.py).
            for _ in range(50):
                ops.publish(topics.command, sign_command(signer, dev.id, "ping"))
                try:
                    ops.ack(answers.get(timeout=0.5))
                    break
                except queue.Empty:
                    continue
            hostile_cmds = [
                *hostile.json_payloads(),
                *(sign_command(signer, dev.id, f"fail.{n}") for n, _e, _w in FAILURES),
            ]
            for payload in hostile_cmds:
                ops.publish(topics.command, payload)
            final = sign_command(signer, dev.id, "ping")
            ops.publish(topics.command, final)
            final_id = json.loads(final)["id"]
            got: list[dict[str, Any]] = []
            while not any(a.get("id") == final_id for a in got):
                msg = answers.get(timeout=20)
                ops.ack(msg)
                got.append(json.loads(msg.payload))
            assert up.is_alive(), "an uplink thread died"
        assert next(a for a in got if a.get("id") == final_id)["ok"] is True
        refused = [a for a in got if a.get("ok") is False]
        assert len(refused) >= len(hostile_cmds), got  # every one answered
    finally:
        stop.set()
        ops.join()
        spool.close()
