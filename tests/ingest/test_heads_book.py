"""The platform's record of signed stream heads: only the device's key counts, a replay never
lowers a head, and a head beyond the store is reported only once delivery has settled."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import AgentError
from agent.ingest.heads import HeadsBook
from agent.ingest.store import Store
from agent.storage.keys import init_device_keys, load_signing_key
from agent.uplink.heads import sign_heads

DEV = "cam-h"
A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    path, _fp = init_device_keys(tmp_path / "keys")
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / f"{DEV}.pub").write_bytes(path.with_suffix(".pub").read_bytes())
    return load_signing_key(path)


def _book(tmp_path: Path, now: list[float], settle_s: float = 100.0) -> HeadsBook:
    store = Store(tmp_path / "store", devices=tmp_path / "devices")
    return HeadsBook(store, settle_s=settle_s, clock=lambda: now[0])


def test_only_the_devices_key_counts(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    book = _book(tmp_path, [0.0])
    chains = {"gps": (5, A)}
    for payload, device in (
        (sign_heads(Ed25519PrivateKey.generate(), DEV, "b", 1, chains, {}), DEV),  # another key
        (sign_heads(key, "cam-other", "b", 1, chains, {}), DEV),  # names another device
        (sign_heads(key, DEV, "b", 1, chains, {}).replace(b'"seq":4', b'"seq":9'), DEV),
        (sign_heads(key, DEV, "b", 1, chains, {}), "cam-unregistered"),
        (b'{"v":1,"device":"cam-h"}', DEV),
    ):
        with pytest.raises(AgentError):
            book.record(device, payload)
    assert not book.path(DEV).exists()


def test_replays_never_lower_a_head_and_settling_reports_once(
    tmp_path: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    book = _book(tmp_path, now)
    old = sign_heads(key, DEV, "b", 10, {"gps": (3, A)}, {"gps": 2})
    new = sign_heads(key, DEV, "b", 20, {"gps": (5, B), "video": (1, C)}, {"gps": 4, "video": 1})
    assert book.record(DEV, new) == []  # still pending: nothing to say yet
    assert book.record(DEV, old) == []  # a replay of an older message
    head = book.load(DEV)["streams"]["gps"]
    assert (head["seq"], head["hash"], head["pending"]) == (4, B, 4)
    # Still pending, but known for settle_s: reported (once).
    now[0] += 101
    found = book.check(DEV)
    assert sorted((f.stream, f.seq, f.why) for f in found) == [("gps", 4, "missing"),
                                                               ("video", 0, "missing")]  # fmt: skip
    assert book.check(DEV) and sum("segments the device sealed are missing" in r.getMessage()
                                   for r in caplog.records) == 2  # fmt: skip
    assert book.load(DEV)["missing"]["gps"] == {"seq": 4, "hash": B, "stored_max": None}
