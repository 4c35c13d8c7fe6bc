"""Regression for a bug the chaos suite found (seed 11, ``python -m tests.chaos --minutes 8``).

When the disk was full, acknowledging segments (``Spool.ack_many``, which is what frees space)
raised ``sqlite3.OperationalError: database or disk is full`` from the index's COMMIT and the
forwarder thread died. Now the spool keeps a few MB of ballast it gives back when the disk
fills, so the acknowledgements commit and free space; without ballast (a disk too small for
it) the failure is a SpoolError the forwarder survives and retries.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import EvidenceRefused, SpoolError
from agent.gps.clock import ClockMonitor
from agent.gps.replay import ReplaySource
from agent.gps.service import GpsService
from agent.gps.settings import GpsSettings
from agent.labs.nmea import truck_log
from agent.labs.waiting import wait_for
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet, make_sealer
from tests.storage.helpers import open_sealed


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


def test_a_refusal_on_a_full_disk_is_recorded_as_an_event(roomy_fs: Path, keyset: KeySet) -> None:
    """The ballast is given back for the record of why evidence is missing (reliability.md:
    'a full disk leaves no durable record of what it refused', fixed)."""
    sp = Spool(SpoolSettings(dir=roomy_fs / "spool", reserve_mb=0), make_sealer(keyset))
    first = sp.put_bytes("video", b"x")  # this epoch's key record is on the disk
    _fill(roomy_fs)
    try:
        with pytest.raises(EvidenceRefused):
            sp.put_bytes("video", os.urandom(2_000_000))
        events = sp.items("event")
        assert len(events) == 1  # sealed and indexed, on the full disk
        assert [i.seq for i in sp.items("video")] == [first.seq]
    finally:
        (roomy_fs / "filler").unlink()
        sp.close()
    reopened = Spool(SpoolSettings(dir=roomy_fs / "spool", reserve_mb=0), make_sealer(keyset))
    try:
        assert [i.seq for i in reopened.items("event")] == [events[0].seq]  # durable
    finally:
        reopened.close()


def test_gps_goes_on_through_a_full_disk(roomy_fs: Path, keyset: KeySet, tmp_path: Path) -> None:
    """A batch of fixes the full disk refuses stays in the journal; the consumer keeps taking
    fixes and seals the batch once there is room (reliability.md: 'GPS stops for good on a
    full disk', fixed)."""
    g = time.gmtime(time.time() - 60)
    log = tmp_path / "drive.nmea"
    log.write_bytes(truck_log(50, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, 0)))
    settings = SpoolSettings(dir=roomy_fs / "spool", reserve_mb=0, batch_max_records=5)
    sp = Spool(settings, make_sealer(keyset))
    stop = threading.Event()
    gps = GpsService(
        GpsSettings(source="replay", replay_file=log),
        sp,
        stop,
        clock=ClockMonitor(),
        source=ReplaySource(log, speed=50, loop=True),
    )
    sp.put_event("start", {})  # this epoch's key record is on the disk
    _fill(roomy_fs)
    filler = roomy_fs / "filler"
    try:
        gps.start()
        # each refused record costs the consumer a 1 s pause: a few fixes show it goes on
        wait_for(lambda: gps.fixes_seen >= 6, 60, "fixes while the disk is full")
        assert gps.is_alive()
        sealed = len(sp.items("gps"))
        filler.unlink()
        wait_for(lambda: len(sp.items("gps")) > sealed, 60, "the batches sealed once there is room")
        assert gps.is_alive()
    finally:
        stop.set()
        gps.join(10)
        filler.unlink(missing_ok=True)
        sp.close()


def test_a_full_disk_before_an_epochs_first_segment_is_a_storage_error(
    roomy_fs: Path, keyset: KeySet
) -> None:
    """Found while writing the tests above: when the disk is full before the first segment of a
    key epoch, the key record's write fails with a bare OSError (Spool.ensure_key_stored), not
    the spool's EvidenceRefused/SpoolError, so the GPS consumer (which survives AgentError
    only) died. The spool refuses the segment now, as for a segment that does not fit."""
    sp = Spool(SpoolSettings(dir=roomy_fs / "spool", reserve_mb=0), make_sealer(keyset))
    _fill(roomy_fs)
    try:
        with pytest.raises(EvidenceRefused):
            sp.put_bytes("video", os.urandom(100_000))
    finally:
        (roomy_fs / "filler").unlink()
        sp.close()


def test_a_nearly_full_disk_keeps_the_ballast_for_a_refusals_record(
    roomy_fs: Path, keyset: KeySet
) -> None:
    """Chaos soak: the ballast was given back as soon as the disk was *nearly* full (any index
    commit), and whatever was filling the disk took that room before a refusal needed it for
    its record (reliability.md Open: 'a disk that stays full gets no durable record')."""
    sp = Spool(SpoolSettings(dir=roomy_fs / "spool", reserve_mb=0), make_sealer(keyset))
    first = sp.put_bytes("video", b"x")  # this epoch's key record is on the disk
    filler = roomy_fs / "filler"
    try:
        with filler.open("wb") as f:  # leave less room than the ballast's size
            while os.statvfs(roomy_fs).f_bavail * os.statvfs(roomy_fs).f_frsize > 2 << 20:
                f.write(b"\0" * 65536)
                f.flush()
        sp.put_event("note", {"while": "nearly full"})  # an index commit on a nearly full disk
        assert (roomy_fs / "spool" / ".ballast").exists()
        with filler.open("ab") as f:  # the runaway writer takes every byte left
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        with pytest.raises(EvidenceRefused):
            sp.put_bytes("video", os.urandom(2_000_000))
        kinds = [
            json.loads(open_sealed(i.path, roomy_fs / "spool" / "keys", keyset.platform_private))[
                "type"
            ]
            for i in sp.items("event")
        ]
        assert kinds == ["note", "evidence_refused"]
        assert [i.seq for i in sp.items("video")] == [first.seq]
    finally:
        filler.unlink(missing_ok=True)
        sp.close()
