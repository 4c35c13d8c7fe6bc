"""Fragment journal benchmarks (part of ``make bench B=video``): what recording costs the SD card.

- ``journal-write-amplification``: bytes written to the file system per byte of video while
  recording (the journal, the sealed segments' trailers, key records, event records, the spool
  index), target <= 1.2. The baseline, in the same run on the same frames: the spool without a
  journal (each segment sealed from memory when complete, which loses it at a power cut).
- ``journal-fsyncs-per-minute``: fsync, fdatasync and directory fsyncs per minute of video,
  against a budget of one a second; the baseline's count beside it.

Both are counted by the power-cut file system (``tests/fixtures/powercut_fs.py``, FUSE), which
sees every write and sync of the agent, SQLite's included. It needs root and /dev/fuse; without
them the figures are reported as not measured.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import Reporter

GROUP = "video"
SECONDS = 90


class _NoJournal:
    """The spool seen through the recorders' protocol only: no fragment journal (baseline)."""

    def __init__(self, spool: Any) -> None:
        self.put = spool.put
        self.put_event = spool.put_event
        self.put_bytes = spool.put_bytes


def _record(root: Path, fs: Any, images: list[Any], settings: Any, journal: bool) -> dict[str, Any]:
    from agent.capture.recorder import Recorder
    from bench.bench_video import _Replay, _spool

    where = root / ("journal" if journal else "plain")
    where.mkdir()
    spool = _spool(where)
    before = fs.stats()
    stop = threading.Event()
    frames = settings.fps * SECONDS
    target = spool if journal else _NoJournal(spool)
    rec = Recorder(settings, _Replay(images, settings.fps, frames), target, stop)
    rec.start_threads()
    if not rec.join(900):
        stop.set()
        rec.join(30)
    spool.close()
    after = fs.stats()
    if rec.error is not None:
        raise rec.error
    syncs = sum(after[k] - before[k] for k in ("fsync", "fdatasync", "fsyncdir"))
    return {
        "video_bytes": rec.stats.segment_bytes,
        "written": after["bytes_written"] - before["bytes_written"],
        "syncs": syncs,
        "minutes": frames / settings.fps / 60,
        "segments": rec.stats.segments,
    }


def run(report: Reporter) -> None:
    from agent.capture.settings import VideoSettings
    from bench.bench_video import _frames
    from tests.fixtures.powercut_fs import PowerCutFS, fuse_unavailable

    why = fuse_unavailable()
    if why is not None:
        print(f"bench {GROUP}/journal-write-amplification: not measured ({why})")
        return
    settings = VideoSettings(width=1280, height=720, fps=30, mode="continuous", prebuffer_s=0)
    images = _frames(settings.width, settings.height, settings.fps)
    with (
        tempfile.TemporaryDirectory(prefix="bench-journal-") as d,
        PowerCutFS(Path(d) / "disk") as fs,
    ):
        t0 = time.monotonic()
        base = _record(fs.mountpoint, fs, images, settings, journal=False)
        jnl = _record(fs.mountpoint, fs, images, settings, journal=True)
        wall = time.monotonic() - t0
    amp = jnl["written"] / jnl["video_bytes"]
    base_amp = base["written"] / base["video_bytes"]
    report.figure(
        GROUP,
        "journal-write-amplification",
        amp,
        "bytes written per byte of video",
        ratio=amp,
        baseline=f"{jnl['video_bytes'] / 2**20:.1f} MB of 720p30 video in {SECONDS} s; without "
        f"a journal {base_amp:.3f}",
        target=1.2,
        higher_is_better=False,
    )
    per_min = jnl["syncs"] / jnl["minutes"]
    report.figure(
        GROUP,
        "journal-fsyncs-per-minute",
        per_min,
        "fsyncs per minute of video",
        ratio=per_min / 60,
        baseline=f"a budget of one a second; without a journal "
        f"{base['syncs'] / base['minutes']:.0f}/min; {jnl['segments']} segments of "
        f"{settings.segment_s} s, keyframe every {settings.keyframe_s} s",
        target=2.0,
        higher_is_better=False,
    )
    report.info(GROUP, "journal-bench-wall", wall, "s")
