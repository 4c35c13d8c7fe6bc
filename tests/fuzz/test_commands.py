"""Commands into the agent: every mutated signed command is refused with a reason and its
handler never runs (unless the mutation left the very same command, e.g. the signature's hex
in upper case, which is the same signature)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from agent.uplink.control import CommandChannel, SeenIds, sign_command
from tests.fuzz.common import TRIED, keep

DEVICE = "cam-fuzz"
NOW = 1_800_000_000.0
KEY = Ed25519PrivateKey.generate()
GENUINE = sign_command(KEY, DEVICE, "record.start", {"note": "x"}, now=NOW, ttl_s=300)


def _channel(state: Path) -> tuple[CommandChannel, list[dict[str, Any]]]:
    ran: list[dict[str, Any]] = []
    ch = CommandChannel(
        DEVICE, KEY.public_key(), SeenIds(state / "seen.json", clock=lambda: NOW), clock=lambda: NOW
    )

    def handler(args: dict[str, Any]) -> dict[str, Any]:
        ran.append(args)
        return {"ok": True}

    ch.register("record.start", handler)
    ch.register("record.stop", handler)
    return ch, ran


def _same_command(payload: bytes) -> bool:
    try:
        a, b = json.loads(payload), json.loads(GENUINE)
    except ValueError:
        return False
    if not isinstance(a, dict) or not isinstance(a.get("sig"), str):
        return False
    return {**a, "sig": a["sig"].lower()} == b


def _check(payload: bytes, state: Path) -> None:
    TRIED["command"] += 1
    ch, ran = _channel(state)
    try:
        answer = ch.handle(payload)
    except Exception:
        keep("command", payload)
        raise
    if _same_command(payload):
        return
    if answer.get("ok") is not False or not answer.get("reason") or ran:
        keep("command", payload)
        raise AssertionError(f"a mutated command was not refused: {answer}, ran {ran}")


def test_the_genuine_command_runs_once_and_its_replay_is_refused(tmp_path: Path) -> None:
    ch, ran = _channel(tmp_path)
    assert ch.handle(GENUINE)["ok"] is True and len(ran) == 1
    again = ch.handle(GENUINE)
    assert again["ok"] is False and "replayed" in again["reason"] and len(ran) == 1


def test_every_single_byte_change_is_refused(tmp_path: Path) -> None:
    for i in range(len(GENUINE)):
        for delta in (0x01, 0x20):
            mutated = bytearray(GENUINE)
            mutated[i] ^= delta
            _check(bytes(mutated), tmp_path / f"{i}-{delta}")


@given(st.data())
def test_mutated_fields_are_refused(tmp_path_factory: pytest.TempPathFactory, data: Any) -> None:
    obj = json.loads(GENUINE)
    field = data.draw(st.sampled_from(sorted(obj)))
    obj[field] = data.draw(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
            st.text(max_size=80), st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
            st.just(DEVICE), st.just("record.stop"), st.just(NOW + 10),
        )
    )  # fmt: skip
    if data.draw(st.booleans()):
        obj[data.draw(st.text(max_size=8))] = data.draw(st.integers())
    payload = json.dumps(obj).encode()
    _check(payload, tmp_path_factory.mktemp("cmd"))


@given(st.binary(max_size=300))
def test_random_payloads_are_refused(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    _check(blob, tmp_path_factory.mktemp("cmd"))
