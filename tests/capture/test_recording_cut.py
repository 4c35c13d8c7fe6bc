"""A recording cut by power losses: every fragment the journal made durable reaches the
platform, and the recording resumes by itself, on the power-cut file system.

Each cut SIGKILLs a recording child and throws away everything not synced (torn tails
included). Then, as at the next start, the journal is recovered; the child that follows resumes
the recording. CI runs 50 cuts; ``make soak`` (EDGE_AGENT_SOAK=1) runs 1,000.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.storage.seal import parse_key_record
from agent.storage.segjournal import RECOVERED_CONTENT_TYPE, SegmentJournal, open_recovered
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer
from tests.fixtures.powercut_fs import PowerCutFS, require_fuse
from tests.storage.helpers import decrypt_stream

REPO = Path(__file__).resolve().parents[2]
CUTS = int(os.environ.get("EDGE_AGENT_CUTS", 1000 if os.environ.get("EDGE_AGENT_SOAK") else 50))


@pytest.fixture
def powercut(tmp_path: Path) -> Iterator[PowerCutFS]:
    require_fuse()
    with PowerCutFS(tmp_path / "disk", torn_seed=7) as fs:
        yield fs


def _run_child(
    spool_dir: Path, keyset: KeySet, n: int, rng: random.Random, drop: str = ""
) -> list[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.capture.recording_cut_child",
            str(spool_dir),
            str(keyset.device_key_path),
            str(keyset.platform_pub_path),
            str(n),
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
    threading.Event().wait(rng.uniform(0.1, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    return [ln for ln in lines if ln.endswith("\n")]


def _boxes(mp4: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos + 8 <= len(mp4):
        size, kind = struct.unpack_from(">I4s", mp4, pos)
        if size < 8 or pos + size > len(mp4):
            break
        out.append((kind, mp4[pos : pos + size]))
        pos += size
    return out


def _fragment_hashes(mp4: bytes) -> set[str]:
    """The hashes of what the pipeline handed the journal: init + first fragment, then each
    moof + mdat (free boxes are the journal's padding)."""
    boxes = [(k, b) for k, b in _boxes(mp4) if k != b"free"]
    init = b"".join(b for k, b in boxes if k in (b"ftyp", b"moov"))
    frags = [b for k, b in boxes if k in (b"moof", b"mdat")]
    pairs = [frags[i] + frags[i + 1] for i in range(0, len(frags) - 1, 2)]
    out = {hashlib.sha256(p).hexdigest() for p in pairs}
    if pairs:
        out.add(hashlib.sha256(init + pairs[0]).hexdigest())
    return out


def _platform_read(spool: Spool, keyset: KeySet) -> tuple[list[dict[str, Any]], set[str]]:
    """Every video segment's meta, and the hashes of every fragment the platform holds."""
    metas: list[dict[str, Any]] = []
    hashes: set[str] = set()
    for s in decrypt_stream(spool, keyset.platform_private, "video"):
        media = s.data
        if s.manifest["content_type"] == RECOVERED_CONTENT_TYPE:
            dk = parse_key_record(spool.key_record(s.meta["inner_key_id"])).unwrap(
                keyset.platform_private
            )
            rec = open_recovered(s.data, s.meta, dk)
            assert not rec.failed, (s.meta, rec.failed)
            media = rec.media
        metas.append(s.meta)
        hashes |= _fragment_hashes(media)
    return metas, hashes


@pytest.mark.timeout(120 + 6 * CUTS)
def test_a_recording_survives_power_cuts_and_resumes(powercut: PowerCutFS, keyset: KeySet) -> None:
    spool_dir = powercut.mountpoint / "spool"
    rng = random.Random(14)
    promised: dict[str, tuple[str, int, int]] = {}  # hash -> (recording, part, cut)
    recovered_parts = 0
    interruptions = 0
    for n in range(CUTS):
        for line in _run_child(spool_dir, keyset, n, rng):
            if line.startswith("FRAG "):
                _tag, recording, part, digest = line.split()
                promised[digest] = (recording, int(part), n)
        powercut.cut()
        spool = Spool(
            SpoolSettings(dir=spool_dir, reserve_mb=0), make_sealer(keyset, device_id="cam-cut")
        )
        try:
            assert spool.recovery["quarantined"] == 0 and spool.recovery["lost"] == 0, (
                n,
                spool.recovery,
            )
            interrupted = SegmentJournal(spool).recover("video")
            if interrupted is None:
                # Killed before the recording's state was durable: nothing was promised yet.
                assert not promised, f"cut {n}: the recording was not kept"
                continue
            assert interrupted.resume, n
            interruptions += interrupted.reported
            recovered_parts += sum(1 for r in interrupted.recovered if r["seq"] is not None)
        finally:
            spool.close()
    spool = Spool(
        SpoolSettings(dir=spool_dir, reserve_mb=0), make_sealer(keyset, device_id="cam-cut")
    )
    try:
        report = verify_paths([spool_dir], platform_private=keyset.platform_private)
        assert report.ok, [str(p) for p in report.problems][:10]
        metas, held = _platform_read(spool, keyset)
        events = [s.record for s in decrypt_stream(spool, keyset.platform_private, "event")]
    finally:
        spool.close()
    missing = {d: w for d, w in promised.items() if d not in held}
    stats = powercut.stats()
    print(
        f"\nrecording power cuts: {CUTS}, fragments promised {len(promised)}, "
        f"segments {len(metas)} ({recovered_parts} recovered), file system {stats}"
    )
    assert not missing, f"{len(missing)} durable fragments lost, e.g. {list(missing.values())[:5]}"
    # One recording, resumed after every cut: its parts are numbered without a gap or a repeat.
    assert len({m["recording"] for m in metas}) == 1
    parts = sorted(m["part"] for m in metas)
    assert parts == list(range(len(parts))), parts
    kinds = [e["type"] for e in events]
    # The start's state is durable before its event record (written by the writer thread):
    # a cut in between loses the record_start, and the resume that follows says what started
    # the recording and when.
    starts = [e for e in events if e["type"] == "record_start"]
    resumed = [e for e in events if e["type"] == "recording_resumed"]
    assert len(starts) == 1 or (
        not starts
        and resumed
        and resumed[0]["trigger"] == "continuous"
        and resumed[0]["started_utc"]
    ), kinds[:10]
    # Each interruption reported once (a start cut before it resumed does not report it again);
    # a resume is recorded by the start that follows (unless cut before it is durable).
    assert kinds.count("recording_interrupted") == interruptions >= CUTS // 2
    assert interruptions >= kinds.count("recording_resumed") >= interruptions // 2
    assert recovered_parts > CUTS // 4  # most cuts landed in a part in progress


def test_a_journal_missing_its_fragment_fsync_loses_fragments_at_a_cut(
    powercut: PowerCutFS, keyset: KeySet
) -> None:
    """The per-fragment fsync removed (in the child only): fragments it called durable are
    lost at a power cut, which the test above would catch."""
    spool_dir = powercut.mountpoint / "spool"
    rng = random.Random(15)
    for n in range(10):
        promised: set[str] = set()
        for line in _run_child(spool_dir, keyset, n, rng, "no-fragment-fsync"):
            if line.startswith("FRAG "):
                promised.add(line.split()[3])
        powercut.cut()
        spool = Spool(SpoolSettings(dir=spool_dir, reserve_mb=0), make_sealer(keyset, "cam-cut"))
        try:
            SegmentJournal(spool).recover("video")
            _metas, held = _platform_read(spool, keyset)
        finally:
            spool.close()
        if promised - held:
            return
    pytest.fail("10 power cuts without the fragment fsync lost no promised fragment")
