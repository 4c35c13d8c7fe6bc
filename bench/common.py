"""Shared helpers for benchmarks: throwaway keys, spools and timing."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.storage.keys import (
    init_device_keys,
    init_platform_keys,
    load_platform_private,
    load_platform_public,
    load_signing_key,
)
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool


class Lab:
    """Keys and a spool in a temporary directory (under /var/tmp: a real disk, not tmpfs)."""

    def __init__(self, root: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(dir=root or Path("/var/tmp"), prefix="ea-bench-")
        self.dir = Path(self._tmp.name)
        dev, _ = init_device_keys(self.dir / "keys")
        plat, _ = init_platform_keys(self.dir / "keys")
        self.device_key = dev
        self.platform_key = plat
        self.signing_key = load_signing_key(dev)
        self.platform_public = load_platform_public(plat.with_suffix(".pub"))
        self.platform_private = load_platform_private(plat)

    def sealer(self, **seal: object) -> Sealer:
        return Sealer(
            device_id="bench-1",
            boot_id="bench-boot",
            signing_key=self.signing_key,
            platform_public=self.platform_public,
            settings=SealSettings(**seal),  # type: ignore[arg-type]
        )

    def spool(self, name: str = "spool", **spool: object) -> Spool:
        return Spool(
            SpoolSettings(dir=self.dir / name, reserve_mb=0, **spool),  # type: ignore[arg-type]
            self.sealer(),
        )

    def close(self) -> None:
        self._tmp.cleanup()


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs, in seconds (least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def child_rss_mb(code: str, env: dict[str, str] | None = None) -> float:
    """Peak RSS (MB, VmHWM) of a fresh interpreter after running ``code`` (in ``env``)."""
    probe = (
        f"{code}\n"
        "import re\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env
    ).stdout
    return int(out.strip().splitlines()[-1]) / 1024
