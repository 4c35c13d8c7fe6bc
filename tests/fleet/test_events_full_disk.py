"""Issue 21: fleet event records the spool refuses (a real full disk, a small tmpfs) stay
queued, in order, and are stored once there is room; the outage raises one alarm, and the SOS
alarm itself goes out at once whatever the disk does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.loops.guard import FAILING_ALARM, RECOVERED_ALARM
from agent.model import Alarm
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.full_disk import fill, small_tmpfs
from tests.fixtures.keys import KeySet, make_sealer
from tests.fleet.harness import make_service, sealed_events

T0 = 1_780_000_000.0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny") as mnt:
        yield mnt


def test_refused_event_records_wait_and_are_stored_in_order(
    tiny_fs: Path, tmp_path: Path, keyset: KeySet
) -> None:
    spool = Spool(SpoolSettings(dir=tiny_fs / "spool", reserve_mb=0), make_sealer(keyset))
    spool.put_event("start", {})  # this epoch's key record is on the disk
    alarms: list[Alarm] = []
    svc = make_service(spool, tmp_path / "fleet", alarm=alarms.append)
    filler = fill(tiny_fs)
    try:
        svc.sos(T0)
        svc.sos(T0 + 1)
        assert svc.pending() == 2
        assert [a.kind for a in alarms] == ["sos", FAILING_ALARM, "sos"]
        assert alarms[1].details["thread"] == "fleet-events"
    finally:
        filler.unlink()
    svc.join(1)  # the stop's last try, now that there is room
    assert svc.pending() == 0 and svc.events_recorded == 2 and svc.events_failed == 0
    assert [a.kind for a in alarms][-1] == RECOVERED_ALARM
    sos = sealed_events(spool, keyset.platform_private, "fleet_sos")
    spool.close()
    assert [r["t"] for r in sos] == [T0, T0 + 1]
