"""spool: durable puts of 4 MiB segments and of small telemetry records; GPS-only RSS."""

from __future__ import annotations

import os
import time
from typing import BinaryIO, cast

from agent.model import ClockState
from agent.storage.records import RecordLog
from agent.storage.seal import ChainLink, SegmentHeader
from bench import Reporter
from bench.common import Lab, best_of, child_rss_mb

SEGMENTS = 16
SEG_SIZE = 4 * 1024 * 1024


class _Discard:
    """A sink that keeps nothing (sealing alone, without I/O)."""

    def write(self, data: bytes | memoryview) -> int:
        return len(data)


def run(report: Reporter) -> None:
    lab = Lab()
    try:
        payloads = [os.urandom(SEG_SIZE) for _ in range(SEGMENTS)]
        bare_dir = lab.dir / "bare"
        bare_dir.mkdir()

        def bare() -> None:
            for i, p in enumerate(payloads):
                fd = os.open(bare_dir / f"{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, p)
                os.fsync(fd)
                os.close(fd)

        spools = iter(range(100))

        def ours() -> None:
            with lab.spool(f"spool{next(spools)}") as sp:
                for p in payloads:
                    sp.put_bytes("video", p, content_type="video/mp4")

        sealer = lab.sealer()
        header = SegmentHeader("video", "video/mp4", 0.0, 1.0, 0, 1, ClockState(), {})

        def seal_only() -> None:
            key = sealer.current_key()
            for p in payloads:
                sealer.seal(cast(BinaryIO, _Discard()), header, ChainLink(0, None), [p], key)

        # Alternated, each the best of three: the machine is shared.
        t_bare = t_ours = t_seal = float("inf")
        for _ in range(2):
            t_bare = min(t_bare, best_of(bare, 3))
            t_ours = min(t_ours, best_of(ours, 3))
            t_seal = min(t_seal, best_of(seal_only, 3))
        mib = SEGMENTS * SEG_SIZE / 2**20
        report.figure(
            "spool",
            "durable_put_4MiB",
            mib / t_ours,
            "MiB/s",
            ratio=t_bare / t_ours,
            baseline=f"bare write+fsync ({mib / t_bare:.0f} MiB/s)",
            target=0.8,
        )
        report.info(
            "spool",
            "seal_alone_4MiB",
            mib / t_seal,
            "MiB/s",
            f"{sealer.settings.cipher}, no I/O: the put's CPU floor (SHA-256 of the plaintext and "
            f"of the body, AEAD); with every write and sync hidden behind it a put could reach "
            f"ratio {t_bare / t_seal:.2f} of bare write+fsync on one core",
        )

        # Small telemetry records (28-byte fixes): fsync per record vs group commit every 10.
        record = os.urandom(28)
        n = 400
        with lab.spool("records") as sp:
            log = RecordLog(sp, "gps", content_type="application/x-edge-fix", batch_max_records=600)
            t0 = time.perf_counter()
            for _ in range(n):
                log.append(record)
            per_record = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(n):
                log.append(record, durable=False)
                if i % 10 == 9:
                    log.commit()
            grouped = n / (time.perf_counter() - t0)
            log.close()
        fd = os.open(lab.dir / "bare-append", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(fd, record)
            os.fsync(fd)
        bare_rate = n / (time.perf_counter() - t0)
        os.close(fd)
        report.figure(
            "spool",
            "records_durable_each",
            per_record,
            "records/s",
            ratio=per_record / bare_rate,
            baseline=f"bare append+fsync per record ({bare_rate:.0f}/s)",
            target=0.8,
        )
        report.info(
            "spool",
            "records_group_commit_10",
            grouped,
            "records/s",
            "durable at each commit: a cut loses at most the 9 records since the last commit",
        )
        code = (
            "from agent.storage.spool import Spool; from agent.storage.records import RecordLog;"
            "import agent.cli, sys; agent.cli.build_parser();"
            "assert 'cv2' not in sys.modules and 'numpy' not in sys.modules"
        )
        bare_py = child_rss_mb("pass")
        rss = child_rss_mb(code)
        report.figure(
            "spool",
            "rss_gps_only_imports",
            rss,
            "MB",
            ratio=rss / 40.0,
            baseline=f"the 40 MB budget (bare interpreter {bare_py:.1f} MB)",
            target=1.0,
            higher_is_better=False,
        )
    finally:
        lab.close()
