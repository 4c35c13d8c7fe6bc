"""Regression for a bug the chaos suite found (seed 11, ``python -m tests.chaos --minutes 8``).

When the disk was full, acknowledging segments (``Spool.ack_many``, which is what frees space)
raised ``sqlite3.OperationalError: database or disk is full`` from the index's COMMIT and the
forwarder thread died. Now the spool keeps a few MB of ballast it gives back when the disk
fills, so the acknowledgements commit and free space; without ballast (a disk too small for
it) the failure is a SpoolError the forwarder survives and retries.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet, make_sealer


def _mount(mnt: Path, size: str) -> None:
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"NOT EXERCISED: mounting a small tmpfs was refused ({res.stderr.strip()})")


def _fill(fs: Path) -> None:
    with (fs / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    _mount(mnt, "2m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def roomy_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "roomy"
    _mount(mnt, "40m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_acknowledgements_commit_on_a_full_disk_with_the_ballast(
    roomy_fs: Path, keyset: KeySet
) -> None:
    sp = Spool(SpoolSettings(dir=roomy_fs / "spool", reserve_mb=0), make_sealer(keyset))
    assert (roomy_fs / "spool" / ".ballast").exists()
    put = [sp.put_bytes("video", os.urandom(1_000_000)) for _ in range(5)]
    _fill(roomy_fs)
    try:
        assert sp.ack_many([(r.stream, r.seq, r.manifest_hash) for r in put]) == [True] * 5
        assert sp.items() == []
    finally:
        (roomy_fs / "filler").unlink()
        sp.close()


def test_without_ballast_a_full_disk_is_a_spool_error(small_fs: Path, keyset: KeySet) -> None:
    sp = Spool(SpoolSettings(dir=small_fs / "spool", reserve_mb=0), make_sealer(keyset))
    put = [sp.put_bytes("video", os.urandom(100_000)) for _ in range(5)]
    _fill(small_fs)
    try:
        try:
            done = sp.ack_many([(r.stream, r.seq, r.manifest_hash) for r in put])
        except SpoolError as exc:
            assert "full" in str(exc)  # the spool's own terms: the forwarder retries
        else:
            assert done == [True] * 5
    finally:
        (small_fs / "filler").unlink()
        sp.close()
