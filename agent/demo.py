"""``make demo``: the agent's main job on simulated sources, and what the platform sees.

Today it seals synthetic evidence (event records, stills, a minute of GPS fixes, video-sized
segments) into a fresh spool, simulates a power cut in the middle of a batch of fixes,
reopens the spool, and verifies and decrypts everything with the platform key, as the
platform would. Output goes to ./demo-out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from agent.model import ClockSource, ClockState
from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_public,
    load_signing_key,
)
from agent.storage.records import RecordLog
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool

OUT = Path("demo-out")


def _sealer(keys: Path, boot: str) -> Sealer:
    return Sealer(
        device_id="cam-demo-01",
        boot_id=boot,
        signing_key=load_signing_key(keys / "device" / "device.key"),
        platform_public=load_platform_public(keys / "platform" / "platform.pub"),
        settings=SealSettings(),
    )


def _fix(i: int) -> bytes:
    """A 28-byte binary fix: time, lat, lon, speed, course."""
    t = time.time() - 60 + i
    lat = 52.52 + 0.0005 * math.sin(i / 10)
    lon = 13.405 + 0.0001 * i
    return struct.pack(">dddHH", t, lat, lon, 830, (i * 3) % 360)[:28]


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if OUT.exists():
        shutil.rmtree(OUT)
    keys = OUT / "keys"
    init_device_keys(keys / "device")
    init_platform_keys(keys / "platform")
    spool_dir = OUT / "spool"
    settings = SpoolSettings(dir=spool_dir, reserve_mb=0)
    clock = ClockState(ClockSource.GNSS, 0.004)
    print("1. sealing synthetic evidence into", spool_dir)
    with Spool(settings, _sealer(keys, "boot-1"), clock=lambda: clock) as spool:
        spool.put_event("record_start", {"trigger": "button", "officer": "A1234"})
        for _ in range(3):
            spool.put_bytes("video", os.urandom(2_000_000), content_type="video/mp4")
        spool.put_bytes(
            "still", b"\xff\xd8\xff\xe0" + os.urandom(40_000), content_type="image/jpeg"
        )
        fixes = RecordLog(spool, "gps", content_type="application/x-edge-fix", batch_max_records=60)
        for i in range(60):
            fixes.append(_fix(i), durable=False)
        fixes.commit()
        for i in range(60, 75):
            fixes.append(_fix(i))  # durable each; then the power fails mid-batch
        spool.put_event("record_stop", {"trigger": "button"})
        print("2. power cut: 15 GPS fixes are still in the encrypted journal")
        # No close(): this is what a power cut leaves behind.
    with Spool(settings, _sealer(keys, "boot-2"), clock=lambda: clock) as spool:
        log = RecordLog(spool, "gps", content_type="application/x-edge-fix")
        rec = spool.recovery
        print(
            "3. reopened after the cut:",
            json.dumps(rec),
            "- journal sealed as gps seq",
            log.recovered.seq if log.recovered else None,
        )
    print("4. the platform verifies and decrypts (edge-agent verify):\n")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "verify",
            str(spool_dir),
            "--platform-key",
            str(keys / "platform" / "platform.key"),
            "--device-key",
            str(keys / "device" / "device.pub"),
            "--decrypt-to",
            str(OUT / "platform"),
        ],
        check=False,
    )
    print(f"\ndecrypted evidence is under {OUT / 'platform'}")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
