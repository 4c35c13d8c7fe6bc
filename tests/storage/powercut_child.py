"""Child process of the power-cut test: puts segments and records until it is killed.

After each put returns it prints ``PUT stream seq manifest_hash sha256(data)``; after each
durable record ``REC text``. A line printed is a promise the spool must keep after SIGKILL.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from agent.storage.keys import load_platform_public, load_signing_key
from agent.storage.records import RecordLog
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool


def _drop_fsync(which: str) -> None:
    """A deliberately broken spool for the test that shows the power-cut file system catches
    a missing fsync: ``segment-dir-fsync`` skips the directory fsync after a segment file is
    renamed into ``seg/<stream>/``."""
    import agent.storage.spool as spool_module

    assert which == "segment-dir-fsync", which
    real = spool_module.fsync_dir

    def fsync_dir(path: Path) -> None:
        if path.parent.name != "seg":
            real(path)

    spool_module.fsync_dir = fsync_dir  # type: ignore[attr-defined]


def main() -> None:
    spool_dir, device_key, platform_pub, seed = sys.argv[1:5]
    if len(sys.argv) > 5 and sys.argv[5]:
        _drop_fsync(sys.argv[5])
    rng = random.Random(int(seed))
    sealer = Sealer(
        device_id="dev-pc",
        boot_id=f"boot-{seed}",
        signing_key=load_signing_key(Path(device_key)),
        platform_public=load_platform_public(Path(platform_pub)),
        settings=SealSettings(chunk_size=16384),
    )
    spool = Spool(SpoolSettings(dir=Path(spool_dir), reserve_mb=0), sealer)
    records = RecordLog(spool, "telem", content_type="application/x-edge-fix", batch_max_records=7)
    print("READY", flush=True)
    n = 0
    while True:
        stream = rng.choice(["video", "video", "gps", "event"])
        data = rng.randbytes(rng.randint(0, 150_000))
        r = spool.put_bytes(stream, data)
        print(
            f"PUT {r.stream} {r.seq} {r.manifest_hash} {hashlib.sha256(data).hexdigest()}",
            flush=True,
        )
        for _ in range(rng.randint(1, 4)):
            text = f"{seed}-{n}"
            records.append(text.encode())
            print(f"REC {text}", flush=True)
            n += 1


if __name__ == "__main__":
    main()
