"""A sealed file placed whose index row then fails (SQLite's "database or disk is full" at the
commit) is taken out again: the retry seals under the same seq, and must not replace a file in
place (found by the chaos soak, seed 7: ``sealed-file-replaced``). The index is filled for
real: SQLite's own ``max_page_count`` limit, through the spool's connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.storage.seal import read_segment_info
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer


def _fill_index(sp: Spool) -> None:
    db = sp._index.db
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")


def _unfill_index(sp: Spool) -> None:
    sp._index.db.execute("PRAGMA max_page_count = 1073741823")


def _fill_until_the_index_refuses(sp: Spool) -> int:
    """Puts until one fails at its index row; returns how many went in."""
    n = 0
    with pytest.raises(SpoolError, match="full"):
        while True:
            sp.put_bytes("gps", b"x" * 200 + str(n).encode())
            n += 1
            assert n < 10_000, "the index never filled"
    return n


def test_a_put_whose_index_row_fails_leaves_no_file_and_the_retry_is_whole(
    tmp_path: Path, keyset: KeySet
) -> None:
    sp = Spool(SpoolSettings(dir=tmp_path / "spool", reserve_mb=0), make_sealer(keyset))
    try:
        sp.put_bytes("gps", b"first")
        _fill_index(sp)
        stored = 1 + _fill_until_the_index_refuses(sp)
        failed_seq = stored  # the chain did not move past it
        seg = tmp_path / "spool" / "seg" / "gps" / f"{failed_seq:012d}.seg"
        assert not seg.exists(), "a put that raised left its sealed file in place"
        _unfill_index(sp)
        sp.put_bytes("gps", b"the retry")  # the same seq, other bytes
        with seg.open("rb") as f:
            assert read_segment_info(f).seq == failed_seq
        assert len(sp.items("gps")) == stored + 1
    finally:
        sp.close()
    report = verify_paths([tmp_path / "spool"], platform_private=keyset.platform_private)
    assert report.ok, [str(p) for p in report.problems][:5]


def test_the_index_works_after_a_failed_commit(tmp_path: Path, keyset: KeySet) -> None:
    """SQLITE_FULL at COMMIT may leave the transaction open; the next BEGIN must still work."""
    sp = Spool(SpoolSettings(dir=tmp_path / "spool", reserve_mb=0), make_sealer(keyset))
    try:
        _fill_index(sp)
        _fill_until_the_index_refuses(sp)
        _unfill_index(sp)
        before = len(sp.items())
        sp.put_bytes("gps", b"after")
        assert len(sp.items()) == before + 1
    finally:
        sp.close()
