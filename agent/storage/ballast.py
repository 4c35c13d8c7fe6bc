"""The spool's ballast: a few MB kept allocated, given back when the disk fills.

``<spool>/.ballast`` is allocated at open (when the disk has room for it beyond the reserve).
When the disk fills, it is deleted so the index can still commit what frees space (the
platform's acknowledgements) and record refusals; once acknowledgements have removed
segments, it is allocated again if the disk has room for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

BALLAST = ".ballast"
BALLAST_BYTES = 4 * 1024 * 1024


class Ballast:
    """The ballast file of the spool at ``root`` (``reserve``: bytes left to the system)."""

    def __init__(self, root: Path, reserve: int) -> None:
        self.root = root
        self.reserve = reserve
        self.released = False

    def disk_free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def ensure(self) -> None:
        """Keep a few MB allocated that can be given back when the disk fills up, so the
        index can still record acknowledgements (which free space) and refusals."""
        path = self.root / BALLAST
        if path.exists():
            return
        if self.disk_free() < self.reserve + 4 * BALLAST_BYTES:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, BALLAST_BYTES)
            os.fsync(fd)
        except OSError as exc:
            log.debug("spool: no ballast: %s", exc)
            os.close(fd)
            path.unlink(missing_ok=True)
            return
        os.close(fd)
        self.released = False

    def release(self, why: str) -> bool:
        path = self.root / BALLAST
        if not path.exists():
            return False
        path.unlink()
        if not self.released:
            log.warning("spool: released the %d-byte ballast: %s", BALLAST_BYTES, why)
        self.released = True
        return True
