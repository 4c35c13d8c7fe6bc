"""Power cuts: a writer is killed at random moments and the disk keeps only what was synced.

The spool lives on the power-cut file system (``tests/fixtures/powercut_fs.py``): at each cut
the writer is SIGKILLed and every write not made durable (file data without ``fsync``,
directory entries without a directory ``fsync``) is thrown away, with torn tails (a random part
of a file's unsynced writes survives, in order). Every promise the writer printed must hold.

CI runs 50 cuts; ``make soak`` (EDGE_AGENT_SOAK=1) runs 1,000. A spool with one ``fsync``
removed must lose data here, while a SIGKILL alone (page cache intact) would not notice.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.storage.records import JOURNAL_CONTENT_TYPE, RecordLog, decrypt_journal, unpack_records
from agent.storage.seal import decrypt_segment, open_meta, parse_key_record, read_segment_info
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer
from tests.fixtures.powercut_fs import PowerCutFS, require_fuse

REPO = Path(__file__).resolve().parents[2]
CUTS = 1000 if os.environ.get("EDGE_AGENT_SOAK") else 50


@pytest.fixture
def powercut(tmp_path: Path) -> Iterator[PowerCutFS]:
    require_fuse()
    with PowerCutFS(tmp_path / "disk", torn_seed=20261130) as fs:
        yield fs


def _run_child(
    spool_dir: Path, keyset: KeySet, seed: int, rng: random.Random, drop: str = ""
) -> list[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.storage.powercut_child",
            str(spool_dir),
            str(keyset.device_key_path),
            str(keyset.platform_pub_path),
            str(seed),
            drop,
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
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
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


def _cuts(
    spool_dir: Path,
    keyset: KeySet,
    cuts: int,
    *,
    cut: PowerCutFS | None,
    drop: str = "",
    stop_at_first_loss: bool = False,
) -> tuple[dict[str, int], list[str]]:
    """Run ``cuts`` power cuts; return the totals and every broken promise, by cut."""
    rng = random.Random(20261127)
    promised_records: set[str] = set()
    seen_records: set[str] = set()
    broken: list[str] = []
    totals = {"puts": 0, "records": 0, "adopted": 0, "tmp_removed": 0, "journals": 0}
    for n in range(cuts):
        lines = _run_child(spool_dir, keyset, n, rng, drop)
        if cut is not None:
            cut.cut()
        puts = [ln.split() for ln in lines if ln.startswith("PUT ")]
        promised_records.update(ln.split()[1] for ln in lines if ln.startswith("REC "))
        totals["puts"] += len(puts)
        spool = Spool(SpoolSettings(dir=spool_dir, reserve_mb=0), make_sealer(keyset))
        try:
            totals["adopted"] += spool.recovery["adopted"]
            totals["tmp_removed"] += spool.recovery["tmp_removed"]
            for what in ("quarantined", "lost"):
                if spool.recovery[what]:
                    broken.append(f"cut {n}: spool recovery {what} {spool.recovery[what]}")
            totals["journals"] += (
                RecordLog(spool, "telem", content_type="application/x-edge-fix").recovered
                is not None
            )
            # Opens without repair: every stored segment verifies, chains are continuous (from
            # the first one the platform has not acknowledged yet: a part of each stream).
            report = verify_paths([spool_dir], partial=True)
            broken += [f"cut {n}: {p}" for p in report.problems]
            for left in ("tmp", "quarantine"):
                if list((spool_dir / left).iterdir()):
                    broken.append(f"cut {n}: files left in {left}/")
            stored = {(i.stream, i.seq): i.manifest_hash for i in spool.items()}
            for _tag, stream, seq, mhash, _sha in puts:
                if stored.get((stream, int(seq))) != mhash:
                    broken.append(f"cut {n}: lost {stream}#{seq}")
            plain = _platform_read(spool, keyset, seen_records)
            for _tag, stream, seq, _mhash, sha in puts:
                if (stream, int(seq)) in plain and plain[(stream, int(seq))] != sha:
                    broken.append(f"cut {n}: {stream}#{seq} differs from what was put")
        finally:
            spool.close()
        if broken and stop_at_first_loss:
            break
    totals["records"] = len(promised_records)
    missing = promised_records - seen_records
    if missing:
        broken.append(f"{len(missing)} durable records lost, e.g. {sorted(missing)[:5]}")
    return totals, broken


@pytest.mark.timeout(120 + 3 * CUTS)
def test_power_cuts_lose_nothing_that_was_promised(powercut: PowerCutFS, keyset: KeySet) -> None:
    totals, broken = _cuts(powercut.mountpoint / "spool", keyset, CUTS, cut=powercut)
    stats = powercut.stats()
    print(f"\npower cuts (unsynced writes dropped): {CUTS}, {totals}, file system {stats}")
    assert not broken, broken[:10]
    assert totals["puts"] > CUTS  # the cuts landed while work was being done
    assert stats["cuts"] == CUTS
    assert stats["torn_kept_bytes"] > 0  # torn tails were exercised, not only clean drops


def test_a_spool_missing_one_fsync_loses_data_at_a_power_cut(
    powercut: PowerCutFS, keyset: KeySet, tmp_path: Path
) -> None:
    """The directory fsync after a segment is renamed into place, removed (in the child
    only): a SIGKILL alone keeps every promise, the power-cut file system does not."""
    drop = "segment-dir-fsync"
    _totals, broken_by_kill = _cuts(tmp_path / "plain-spool", keyset, 8, cut=None, drop=drop)
    assert not broken_by_kill, broken_by_kill[:5]
    _totals, broken = _cuts(
        powercut.mountpoint / "spool", keyset, 20, cut=powercut, drop=drop,
        stop_at_first_loss=True,
    )  # fmt: skip
    assert any("lost video#" in b or "lost gps#" in b or "lost event#" in b for b in broken), broken
