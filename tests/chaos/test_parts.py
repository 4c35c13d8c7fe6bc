"""The chaos suite's own parts, checked alone: the power-cut file system's capacity (the device's
full disk), the shaping proxy (a slow link), the fault schedules (CI coverage, regressions)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.powercut_fs import Layers, PowerCutFS, require_fuse


def test_a_capacity_makes_growth_fail_with_enospc_and_unlinking_frees() -> None:
    fs = Layers(capacity=10_000)
    fh = fs.create("/a", 0o600)
    node = fs.node_of(None, fh)
    fs.write(node, b"x" * 6_000, 0)
    fs.write(node, b"y" * 1_000, 0)  # overwriting within the file takes no more room
    with pytest.raises(OSError) as exc:
        fs.write(node, b"z" * 5_000, 6_000)
    assert exc.value.errno == errno.ENOSPC
    assert fs.space() == (10_000, 4_000) and fs.stats["enospc"] == 1
    b = fs.node_of(None, fs.create("/b", 0o600))
    fs.write(b, b"b" * 4_000, 0)
    with pytest.raises(OSError):
        fs.truncate(b, 4_001)
    fs.unlink("/a")  # its bytes are free at once (the open handle keeps no room)
    assert fs.space() == (10_000, 6_000)
    fs.write(node, b"orphan" * 1000, 0)  # writing to the unlinked file counts for nothing
    assert fs.space() == (10_000, 6_000)
    fs.rename("/b", "/c")
    c = fs.node_of(None, fs.create("/d", 0o600))
    fs.write(c, b"d" * 100, 0)
    fs.rename("/d", "/c")  # replacing /c frees its 4,000 bytes
    assert fs.space() == (10_000, 9_900)
    fs.set_capacity("full")
    with pytest.raises(OSError):
        fs.write(c, b"!", 100)
    fs.set_capacity("none")
    fs.write(c, b"!" * 100_000, 100)


def test_a_cut_counts_what_survived() -> None:
    fs = Layers(capacity=1_000)
    a = fs.node_of(None, fs.create("/a", 0o600))
    fs.write(a, b"a" * 300, 0)
    fs.fsync(a, False)
    fs.fsyncdir(fs.resolve("/"))
    b = fs.node_of(None, fs.create("/b", 0o600))
    fs.write(b, b"b" * 600, 0)  # never synced: gone at the cut
    assert fs.space() == (1_000, 100)
    fs.cut()
    assert fs.space() == (1_000, 700)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[PowerCutFS]:
    require_fuse()
    with PowerCutFS(tmp_path / "disk", capacity=1 << 20) as fs:
        yield fs


def test_the_mounted_file_system_is_a_small_disk_that_can_be_filled(mounted: PowerCutFS) -> None:
    mnt = mounted.mountpoint
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 1 << 20
    (mnt / "a").write_bytes(b"a" * 100_000)
    mounted.set_capacity("full")
    assert os.statvfs(mnt).f_bavail == 0
    with pytest.raises(OSError) as exc, (mnt / "b").open("wb") as f:
        f.write(b"b" * 10_000)
        f.flush()
    assert exc.value.errno == errno.ENOSPC
    (mnt / "a").unlink()
    (mnt / "c").write_bytes(b"c" * 50_000)  # what was freed is there to use
    assert mounted.stats()["used"] == 50_000
    mounted.set_capacity(None)
    assert os.statvfs(mnt).f_bavail * 4096 > 1 << 30
