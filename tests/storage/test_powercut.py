"""Power cuts: SIGKILL a writer at random moments; every promise it printed must hold.

CI runs 50 cuts; ``make soak`` (EDGE_AGENT_SOAK=1) runs 1,000.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from agent.storage.records import JOURNAL_CONTENT_TYPE, RecordLog, decrypt_journal, unpack_records
from agent.storage.seal import decrypt_segment, open_meta, parse_key_record, read_segment_info
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer

REPO = Path(__file__).resolve().parents[2]


def _run_child(spool_dir: Path, keyset: KeySet, seed: int, rng: random.Random) -> list[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.storage.powercut_child",
            str(spool_dir),
            str(keyset.device_key_path),
            str(keyset.platform_pub_path),
            str(seed),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip() == "READY", proc.stderr.read() if proc.stderr else first
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    threading.Event().wait(rng.uniform(0.01, 0.25))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    # Only whole lines are promises: a line cut by the kill was never completed.
    return [ln for ln in lines if ln.endswith("\n")]


def _platform_read(
    spool: Spool, keyset: KeySet, seen_records: set[str]
) -> dict[tuple[str, int], str]:
    """Decrypt everything in the spool like the platform would; ack it; return plain hashes."""
    plain: dict[tuple[str, int], str] = {}
    keys: dict[str, bytes] = {}
    for kid in spool.unacked_keys():
        keys[kid] = parse_key_record(spool.key_record(kid)).unwrap(keyset.platform_private)
    for item in spool.items():
        with item.path.open("rb") as f:
            info = read_segment_info(f)
            out = bytearray()
            decrypt_segment(f, info, keys[info.key_id], out.extend)
        plain[(item.stream, item.seq)] = hashlib.sha256(out).hexdigest()
        if item.stream == "telem":
            if info.manifest["content_type"] == JOURNAL_CONTENT_TYPE:
                inner = keys[open_meta(info, keys[info.key_id])["inner_key_id"]]
                recs = decrypt_journal(bytes(out), inner, info.manifest["cipher"])
            else:
                recs = unpack_records(bytes(out))
            seen_records.update(r.decode() for r in recs)
        assert spool.ack(item.stream, item.seq, item.manifest_hash)
    return plain


def test_power_cuts_lose_nothing_that_was_promised(tmp_path: Path, keyset: KeySet) -> None:
    cuts = 1000 if os.environ.get("EDGE_AGENT_SOAK") else 50
    rng = random.Random(20261127)
    spool_dir = tmp_path / "spool"
    promised_records: set[str] = set()
    seen_records: set[str] = set()
    totals = {"puts": 0, "records": 0, "adopted": 0, "tmp_removed": 0, "journals": 0}
    for cut in range(cuts):
        lines = _run_child(spool_dir, keyset, cut, rng)
        puts = [ln.split() for ln in lines if ln.startswith("PUT ")]
        promised_records.update(ln.split()[1] for ln in lines if ln.startswith("REC "))
        totals["puts"] += len(puts)
        spool = Spool(SpoolSettings(dir=spool_dir, reserve_mb=0), make_sealer(keyset))
        try:
            totals["adopted"] += spool.recovery["adopted"]
            totals["tmp_removed"] += spool.recovery["tmp_removed"]
            assert spool.recovery["quarantined"] == 0, spool.recovery
            assert spool.recovery["lost"] == 0, spool.recovery
            totals["journals"] += (
                RecordLog(spool, "telem", content_type="application/x-edge-fix").recovered
                is not None
            )
            # Opens without repair: every stored segment verifies, chains are continuous (from
            # the first one the platform has not acknowledged yet: a part of each stream).
            report = verify_paths([spool_dir], partial=True)
            assert report.ok, [str(p) for p in report.problems]
            assert not list((spool_dir / "tmp").iterdir())
            assert not list((spool_dir / "quarantine").iterdir())
            stored = {(i.stream, i.seq): i.manifest_hash for i in spool.items()}
            for _tag, stream, seq, mhash, _sha in puts:
                assert stored.get((stream, int(seq))) == mhash, f"cut {cut}: lost {stream}#{seq}"
            plain = _platform_read(spool, keyset, seen_records)
            for _tag, stream, seq, _mhash, sha in puts:
                assert plain[(stream, int(seq))] == sha
        finally:
            spool.close()
    totals["records"] = len(promised_records)
    missing = promised_records - seen_records
    print(f"\npower cuts: {cuts}, {totals}")
    assert not missing, f"{len(missing)} durable records lost, e.g. {sorted(missing)[:5]}"
    assert totals["puts"] > cuts  # the cuts landed while work was being done
