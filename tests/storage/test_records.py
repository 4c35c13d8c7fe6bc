"""Small telemetry records: durable journal, batches, overhead on the wire."""

from __future__ import annotations

import struct
from pathlib import Path

from agent.storage.records import RecordLog, unpack_records
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet
from tests.storage.helpers import open_sealed


def test_batches_roll_by_count_and_read_back(spool: Spool, keyset: KeySet) -> None:
    log = RecordLog(spool, "gps", content_type="application/x-edge-fix", batch_max_records=5)
    recs = [struct.pack(">dff", 1.79e9 + i, 48.1 + i / 1e4, 11.5) for i in range(12)]
    for r in recs:
        log.append(r)
    assert [i.seq for i in spool.items("gps")] == [0, 1]
    assert log.pending() == 2
    # The journal holds the pending records as ciphertext only.
    journal = log.journal_path.read_bytes()
    assert all(r not in journal for r in recs[10:])
    log.close()
    back: list[bytes] = []
    for item in spool.items("gps"):
        back += unpack_records(open_sealed(item.path, spool.root / "keys", keyset.platform_private))
    assert back == recs
    assert not log.journal_path.exists()


def test_overhead_per_small_record_is_under_64_bytes(spool: Spool) -> None:
    """A minute of 1 Hz fixes in one segment: each fix pays a 2-byte length and its share."""
    log = RecordLog(spool, "gps", content_type="application/x-edge-fix", batch_max_records=60)
    record = bytes(28)
    for _ in range(60):
        log.append(record, durable=False)
    item = spool.items("gps")[0]
    overhead = (item.size - 60 * len(record)) / 60
    print(f"\noverhead per 28-byte record in a 60-record segment: {overhead:.1f} bytes")
    assert overhead < 64


def test_group_commit(spool: Spool, tmp_path: Path) -> None:
    log = RecordLog(spool, "status", content_type="application/x-edge-fix", batch_max_records=100)
    for i in range(10):
        log.append(f"{i}".encode(), durable=False)
    log.commit()
    assert log.journal_path.stat().st_size > 10 * (4 + 16)
    assert log.roll() is not None
    assert log.roll() is None
