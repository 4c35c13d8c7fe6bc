"""The record log on a real full disk (a small tmpfs, root only), issue 21.

An append the disk refuses raises and stores nothing: no descriptor leaks, no half-made
journal, no torn frame left in the journal, and the batch takes no further record under the
same key (a nonce is never used twice). Once space returns the next append seals what the
batch held and starts a new one: every record is read back once, in order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import AgentError
from agent.storage.records import RecordLog, unpack_records
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.full_disk import fill, small_tmpfs
from tests.fixtures.keys import KeySet, make_sealer
from tests.storage.helpers import decrypt_stream


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny") as mnt:
        yield mnt


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_refused_append_stores_nothing_and_the_batch_is_sealed_later(
    tiny_fs: Path, keyset: KeySet
) -> None:
    spool = Spool(SpoolSettings(dir=tiny_fs / "spool", reserve_mb=0), make_sealer(keyset))
    spool.put_event("start", {})  # this epoch's key record is on the disk
    rl = RecordLog(spool, "gps", content_type="application/x-edge-fix", batch_max_records=100)
    # records big enough that each needs a new page of the file system
    records = [bytes([i]) * 6000 for i in range(4)]
    rl.append(records[0])
    rl.append(records[1])
    journal = rl.journal_path
    size = journal.stat().st_size
    filler = fill(tiny_fs)
    try:
        fds = _fds()
        for _ in range(3):
            with pytest.raises((OSError, AgentError)):
                rl.append(records[2])
        assert _fds() == fds  # no descriptor left behind by the failures
        assert rl.pending() == 2
        assert journal.stat().st_size == size  # the torn frame was cut off
        assert not journal.with_suffix(".part").exists()
    finally:
        filler.unlink()
    # room again: the old batch is sealed first (its key is not used again), then r2 stored
    rl.append(records[2])
    rl.append(records[3])
    assert rl.roll() is not None
    sealed = decrypt_stream(spool, keyset.platform_private, "gps")
    assert [unpack_records(s.data) for s in sealed] == [records[:2], records[2:]]
    assert not journal.exists()
    spool.close()


def test_a_refused_first_record_leaves_no_journal(tiny_fs: Path, keyset: KeySet) -> None:
    """The chaos run's failure (seed 4242): ENOSPC from the journal header's write."""
    spool = Spool(SpoolSettings(dir=tiny_fs / "spool", reserve_mb=0), make_sealer(keyset))
    spool.put_event("start", {})
    rl = RecordLog(spool, "gps", content_type="application/x-edge-fix")
    filler = fill(tiny_fs)
    try:
        fds = _fds()
        with pytest.raises(OSError):
            rl.append(b"fix")
        assert _fds() == fds
        assert not rl.journal_path.exists() and not rl.journal_path.with_suffix(".part").exists()
    finally:
        filler.unlink()
    rl.append(b"fix")
    rl.roll()
    [sealed] = decrypt_stream(spool, keyset.platform_private, "gps")
    assert unpack_records(sealed.data) == [b"fix"]
    spool.close()


def test_a_journal_left_by_a_stop_on_a_full_disk_is_held_and_sealed_later(
    tiny_fs: Path, keyset: KeySet
) -> None:
    """The agent starts on a full disk after a power cut: the journal the cut left cannot be
    sealed now; the record log opens anyway, holds the journal back and seals it once a batch
    finds room (before, the start itself failed)."""
    spool = Spool(SpoolSettings(dir=tiny_fs / "spool", reserve_mb=0), make_sealer(keyset))
    spool.put_event("start", {})
    before = RecordLog(spool, "gps", content_type="application/x-edge-fix")
    before.append(b"one")
    before.append(b"two")  # durable in the journal; the power is cut here (no roll)
    filler = fill(tiny_fs)
    try:
        after = RecordLog(spool, "gps", content_type="application/x-edge-fix")
        assert after.recovered is None
        assert [p.name.startswith("gps.held-") for p in after.journal_path.parent.iterdir()] == [
            True
        ]
    finally:
        filler.unlink()
    after.append(b"three")
    after.roll()
    assert list(after.journal_path.parent.iterdir()) == []  # the held journal was sealed
    sealed = decrypt_stream(spool, keyset.platform_private, "gps")
    assert [s.manifest["content_type"] for s in sealed] == [
        "application/x-edge-fix",
        "application/x-edge-journal",
    ]
    assert unpack_records(sealed[0].data) == [b"three"]
    assert sealed[1].meta["records"] == 2 and sealed[1].meta["recovered"] is True
    spool.close()
