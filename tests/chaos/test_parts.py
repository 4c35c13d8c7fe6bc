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


def test_the_proxy_cuts_and_slows_a_link() -> None:
    import contextlib
    import socket
    import threading
    import time

    from tests.chaos.netem import LinkProxy

    server = socket.create_server(("127.0.0.1", 0))
    got = bytearray()

    def echo() -> None:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):  # reset when the proxy closes
            while data := conn.recv(65536):
                got.extend(data)
                conn.sendall(data[:1])

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    proxy = LinkProxy(server.getsockname())
    try:
        c = socket.create_connection(("127.0.0.1", proxy.port))
        c.sendall(b"a")
        assert c.recv(1) == b"a"
        began = time.monotonic()
        c.sendall(b"b")
        assert c.recv(1) == b"b"
        fast_rtt = time.monotonic() - began
        proxy.slow(400_000, 0.1)  # 50 kB/s, 100 ms each way
        began = time.monotonic()
        c.sendall(b"c")
        assert c.recv(1) == b"c"
        assert time.monotonic() - began >= 0.2 > fast_rtt
        began = time.monotonic()
        c.sendall(b"x" * 50_000)
        while len(got) < 3 + 50_000:
            time.sleep(0.01)
        took = time.monotonic() - began
        assert took >= 0.9, took  # 50 kB at 50 kB/s, plus the delay
        proxy.fast()
        proxy.cut()
        c.sendall(b"d")
        time.sleep(0.3)
        assert got[-1:] == b"x", "forwarded while cut"
        proxy.restore()
        while got[-1:] != b"d":
            time.sleep(0.01)
    finally:
        proxy.close()
        server.close()
        echoer.join(5)


# --------------------------------------------------------------------------- schedules


def test_ci_schedules_inject_every_kind_of_fault_at_least_twice() -> None:
    from tests.chaos.schedule import CI, FAULTS

    counts = {k: 0 for k in FAULTS}
    for s in CI:
        for kind, n in s.plan().kinds().items():
            counts[kind] += n
    assert len(CI) == 3
    assert min(counts.values()) >= 2, counts


def test_a_schedule_is_drawn_whole_from_its_seed() -> None:
    from tests.chaos.schedule import plan

    a, b = plan(4242, 4), plan(4242, 4)
    assert a == b and a.estimate_s() >= 4 * 60 > a.prefix(len(a.steps) - 1).estimate_s()
    assert plan(4243, 4) != a
    assert plan(4242, 4, "v1").steps[:6] != a.steps[:6]  # the old rules are kept apart


def test_every_regression_replays_up_to_the_fault_that_broke_it() -> None:
    from tests.chaos.schedule import CI, FAULTS, REGRESSIONS, by_name

    names = [s.name for s in CI + REGRESSIONS]
    assert len(set(names)) == len(names)
    for s in REGRESSIONS:
        steps = s.plan().steps
        assert s.fault in FAULTS and s.found, s.name
        assert steps and steps[-1].kind == s.fault, (s.name, [x.kind for x in steps])
        assert by_name(s.name) is s
    # Issue 21's schedule: seed 4242, 4 minutes, as the suite before issue 21 drew it: the
    # disk_full during which the gps-consumer died is its sixth fault.
    r = by_name("gps-consumer-dies-on-full-disk")
    assert (r.seed, r.minutes, r.generator) == (4242, 4, "v1")
    assert [x.kind for x in r.plan().steps] == [
        "gps_unplug", "broker_kill", "net_cut", "agent_kill", "ingest_kill", "disk_full",
    ]  # fmt: skip


def test_an_open_bug_that_shows_sometimes_is_known_by_the_words_of_its_violation() -> None:
    from tests.chaos.schedule import OPEN_BUGS, REGRESSIONS, by_name, open_bug_of

    for s in REGRESSIONS:
        if s.open_bug is not None and not s.strict:
            assert s.open_bug in OPEN_BUGS, s.name
    store_full = "live lane: while the platform's disk was full, fixes older than 3.0 s: [5.3]"
    assert open_bug_of(store_full) == "live-lane-store-full"
    assert open_bug_of("lost: ['seg/video/000000000003.seg']") is None
    # A fixed bug's violation is no longer expected, by any run or by its own regression.
    assert open_bug_of("on the slow link, fixes older than 3.0 s: [3.4]") is None
    r = by_name("live-lane-behind-backlog-on-slow-link")
    assert r.open_bug is None
    assert r.expected("live lane: on the slow link, fixes older than 3.0 s: [3.4]") is None
    assert r.expected(store_full) == "live-lane-store-full"
    assert r.expected("nothing lost: lost: ['seg/video/000000000003.seg']") is None
