"""Replays every saved case under tests/fuzz/corpus/ (seeds and inputs the fuzzers found)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import AgentError, ConfigError, FormatError, VerificationError
from agent.gps.receiver import ReceiverReader
from agent.ingest.store import Store
from agent.storage.seal import parse_key_record, read_segment_info, verify_segment
from agent.uplink import protocol as proto
from tests.fuzz.common import CORPUS, TRIED

CASES = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


def test_corpus_is_not_empty() -> None:
    assert {p.parent.name for p in CASES} >= {"nmea", "segment", "chunk", "command", "config"}


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_replay(case: Path, tmp_path: Path) -> None:
    target, data = case.parent.name, case.read_bytes()
    TRIED[f"corpus/{target}"] += 1
    if target == "nmea":
        reader = ReceiverReader("corpus")  # NMEA and u-blox UBX, as a receiver's port
        reader.feed(data)
        reader.flush()
    elif target == "segment":
        # Every saved segment is tampered or not a segment: it must be rejected, checked
        # against the device key embedded in it (no pin), with one of the two errors.
        with pytest.raises((FormatError, VerificationError)):
            f = io.BytesIO(data)
            verify_segment(f, read_segment_info(f))
    elif target == "key-record":
        with pytest.raises((FormatError, VerificationError)):
            parse_key_record(data)
    elif target == "chunk":
        store = Store(tmp_path / "store")
        try:
            header, body = proto.decode_chunk(data)
        except FormatError:
            return
        with contextlib.suppress(AgentError):
            store.put_chunk("corpus-dev", header, body)
        assert not list((tmp_path / "store").glob("*/seg/*/*.seg"))
    elif target == "command":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from agent.uplink.control import CommandChannel, SeenIds

        ch = CommandChannel(
            "cam-fuzz", Ed25519PrivateKey.generate().public_key(), SeenIds(tmp_path / "s.json")
        )
        answer = ch.handle(data)
        assert answer["ok"] is False and answer["reason"]
    elif target == "config":
        with contextlib.suppress(ConfigError):
            parse_config(data.decode("utf-8", "replace"), str(case))
    else:
        pytest.fail(f"unknown corpus target {target}")
