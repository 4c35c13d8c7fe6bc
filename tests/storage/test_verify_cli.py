"""``edge-agent verify`` as a platform engineer runs it, on copies of a real spool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet, make_sealer


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def sealed_store(
    tmp_path_factory: pytest.TempPathFactory, keyset: KeySet
) -> tuple[Path, list[bytes]]:
    d = tmp_path_factory.mktemp("store")
    sp = Spool(SpoolSettings(dir=d / "spool", reserve_mb=0), make_sealer(keyset))
    payloads = [os.urandom(70_000 + i) for i in range(5)]
    for p in payloads:
        sp.put_bytes("video", p, content_type="video/mp4")
    sp.put_bytes("still", b"\xff\xd8jpeg", content_type="image/jpeg", meta={"camera": "front"})
    sp.close()
    return d / "spool", payloads


@pytest.fixture
def store(tmp_path: Path, sealed_store: tuple[Path, list[bytes]]) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(sealed_store[0], dest)
    return dest


def _seg(store: Path, seq: int) -> Path:
    return store / "seg" / "video" / f"{seq:012d}.seg"


def test_intact_store_verifies_and_decrypts(
    store: Path, keyset: KeySet, sealed_store: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    out = tmp_path / "plain"
    res = edge_agent(
        "verify",
        str(store),
        "--platform-key",
        str(keyset.platform_key_path),
        "--device-key",
        str(keyset.device_pub_path),
        "--decrypt-to",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "dev-1/video: 5 segments, seq 0..4" in res.stdout
    for i, payload in enumerate(sealed_store[1]):
        assert (out / "dev-1" / "video" / f"{i:012d}.mp4").read_bytes() == payload
    assert (out / "dev-1" / "still" / "000000000000.jpg").read_bytes() == b"\xff\xd8jpeg"


def _fails_with(store: Path, kind: str, where: str, *extra: str) -> None:
    res = edge_agent("verify", str(store), *extra)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"FAIL {kind}: " in res.stderr and where in res.stderr, res.stderr


def test_dropped_segment_is_a_named_gap(store: Path) -> None:
    _seg(store, 2).unlink()
    _fails_with(store, "gap", "dev-1/video#2")


def test_duplicated_segment(store: Path, tmp_path: Path) -> None:
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    shutil.copy(_seg(store, 1), extra / "copy.seg")
    res = edge_agent("verify", str(store), str(extra))
    assert res.returncode == 1
    assert "FAIL duplicate: dev-1/video#1" in res.stderr


def test_reordered_segments(store: Path) -> None:
    a, b = _seg(store, 1), _seg(store, 3)
    tmp = a.with_suffix(".tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    _fails_with(store, "misplaced", "dev-1/video#3")


def test_truncated_segment(store: Path) -> None:
    p = _seg(store, 4)
    with p.open("r+b") as f:
        f.truncate(p.stat().st_size - 1000)
    _fails_with(store, "truncated", "000000000004.seg")


@pytest.mark.parametrize(
    ("offset", "kind"), [(3, "bad_format"), (5000, "body_altered"), (-30, "bad_signature")]
)
def test_bit_flips(store: Path, offset: int, kind: str) -> None:
    p = _seg(store, 0)
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x80
    p.write_bytes(bytes(data))
    _fails_with(store, kind, "000000000000.seg")


def test_substituted_segment_breaks_the_chain(store: Path, keyset: KeySet, tmp_path: Path) -> None:
    """A validly signed segment from a parallel history does not fit the chain."""
    other = Spool(SpoolSettings(dir=tmp_path / "fork", reserve_mb=0), make_sealer(keyset))
    for _ in range(3):
        r = other.put_bytes("video", b"forged history")
    other.close()
    shutil.copy(r.path, _seg(store, 2))
    _fails_with(store, "chain_break", "dev-1/video#2")


def test_wrong_platform_key_cannot_decrypt(store: Path, tmp_path: Path) -> None:
    assert edge_agent("keys", "platform-init", str(tmp_path / "other")).returncode == 0
    _fails_with(
        store,
        "decrypt_failed",
        "dev-1/video",
        "--platform-key",
        str(tmp_path / "other" / "platform.key"),
    )


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    res = edge_agent("verify", str(tmp_path / "nope"))
    assert res.returncode == 1 and "no such file or directory" in res.stderr


def test_deleted_first_segment_fails_unless_partial(store: Path) -> None:
    _seg(store, 0).unlink()
    _fails_with(store, "gap", "dev-1/video#0")
    res = edge_agent("verify", str(store), "--partial")
    assert res.returncode == 0, res.stderr
    assert "chain begins at seq 1" in res.stdout


def test_deleted_key_record_fails_without_the_platform_key(store: Path) -> None:
    for key in (store / "keys").glob("*.key"):
        key.unlink()
    _fails_with(store, "key_missing", "dev-1/video#0")


def test_meta_is_shown_with_the_platform_key_only(store: Path, keyset: KeySet) -> None:
    res = edge_agent("verify", str(store), "--show-meta")
    assert res.returncode == 0, res.stderr
    assert "meta dev-1/still#0: (sealed: needs --platform-key)" in res.stdout
    res = edge_agent(
        "verify", str(store), "--show-meta", "--platform-key", str(keyset.platform_key_path)
    )
    assert res.returncode == 0, res.stderr
    assert 'meta dev-1/still#0: {"camera": "front"}' in res.stdout


def test_decrypt_to_writes_only_under_its_directory(
    store: Path, keyset: KeySet, tmp_path: Path
) -> None:
    """A crafted manifest naming an absolute device path, validly signed, with a matching key
    record: nothing is written outside --decrypt-to (the manifest is refused)."""
    from tests.storage.forge import resign

    outside = tmp_path / "outside"

    def edit(m: dict[str, object]) -> None:
        m["device"] = str(outside)

    for p in [*store.rglob("*.seg"), *store.rglob("*.key")]:
        p.write_bytes(resign(p.read_bytes(), keyset.signing_key, edit))
    out = tmp_path / "out"
    res = edge_agent(
        "verify",
        str(store),
        "--platform-key",
        str(keyset.platform_key_path),
        "--decrypt-to",
        str(out),
    )
    assert res.returncode == 1
    assert "FAIL bad_format" in res.stderr and "device" in res.stderr
    assert not outside.exists()
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_decrypt_to_does_not_follow_a_symlink_out(
    store: Path, keyset: KeySet, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "dev-1").symlink_to(elsewhere)
    res = edge_agent(
        "verify",
        str(store),
        "--platform-key",
        str(keyset.platform_key_path),
        "--decrypt-to",
        str(out),
    )
    assert res.returncode == 1
    assert "FAIL output_refused: dev-1/video#0" in res.stderr
    assert list(elsewhere.iterdir()) == []


def test_decrypted_files_and_their_meta_are_private(
    store: Path, keyset: KeySet, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = edge_agent(
        "verify",
        str(store),
        "--platform-key",
        str(keyset.platform_key_path),
        "--decrypt-to",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    meta = out / "dev-1" / "still" / "000000000000.meta.json"
    assert meta.read_text() == '{"camera":"front"}\n'
    for p in (out / "dev-1").rglob("*"):
        assert p.stat().st_mode & 0o077 == 0, p
