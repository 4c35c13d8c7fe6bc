"""A real full disk: a small tmpfs mounted for the test (root only).

Where mounting is not permitted the test says so and what was not exercised.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import EvidenceRefused
from agent.model import Alarm
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(
            "NOT EXERCISED: a real ENOSPC needs mounting a small tmpfs, which this machine "
            f"refused ({res.stderr.strip()}); quota refusal is still tested in test_spool.py"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_enospc_refuses_evidence_and_keeps_what_was_stored(
    small_fs: Path, keyset: KeySet
) -> None:
    alarms: list[Alarm] = []
    settings = SpoolSettings(dir=small_fs / "spool", reserve_mb=0, evidence_quota_mb=100)
    sp = Spool(settings, make_sealer(keyset), alarm=alarms.append)
    stored = []
    with pytest.raises(EvidenceRefused, match="disk full"):
        for _ in range(100):
            stored.append(sp.put_bytes("video", os.urandom(400_000)))
    assert len(stored) >= 3
    assert any(a.kind == "evidence_refused" for a in alarms)
    # No half-written file is left, and everything stored before still verifies.
    assert list((settings.dir / "tmp").iterdir()) == []
    sp.close()
    sp2 = Spool(settings, make_sealer(keyset))
    assert sp2.recovery["quarantined"] == 0 and sp2.recovery["lost"] == 0
    assert [i.seq for i in sp2.items("video")] == [r.seq for r in stored]
    report = verify_paths([settings.dir / "seg" / "video", settings.dir / "keys"])
    assert report.ok, report.problems
    # Once the platform acknowledges, space returns and recording resumes on the same chain.
    for r in stored[:2]:
        assert sp2.ack("video", r.seq, r.manifest_hash)
    assert sp2.put_bytes("video", os.urandom(400_000)).seq == stored[-1].seq + 1
    sp2.close()


def test_reserve_keeps_disk_for_the_os(small_fs: Path, keyset: KeySet) -> None:
    settings = SpoolSettings(dir=small_fs / "spool", reserve_mb=2, evidence_quota_mb=100)
    sp = Spool(settings, make_sealer(keyset))
    with pytest.raises(EvidenceRefused, match="disk nearly full"):
        for _ in range(10):
            sp.put_bytes("video", os.urandom(300_000))
    st = os.statvfs(small_fs)
    assert st.f_bavail * st.f_frsize >= 2 * 1024 * 1024 - 400_000
    sp.close()
