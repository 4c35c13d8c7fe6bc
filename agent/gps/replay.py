"""Replay of a recorded NMEA log or gpsd JSON log, for demos, CI and technicians.

``speed`` 1.0 replays in real time, 10.0 ten times faster, 0 as fast as possible. Pacing
follows the fixes' own timestamps (the first fix is delivered at once, each later one when
its time, relative to the first, has elapsed on the monotonic clock divided by ``speed``);
waiting is ``stop.wait``, so a replay ends at once on shutdown.

The format is recognised from the whole content, not from its first lines: a file that holds
gpsd TPV reports (``{"class":"TPV",...}`` lines: ``gpspipe -w`` output, gpsd's ``.chk`` files,
whose NMEA echo lines are then skipped) is a gpsd log; anything else is what a receiver sent
and is read with :class:`~agent.gps.receiver.ReceiverReader` (NMEA and u-blox UBX, with gpsd's
``VERSION``/``DEVICES``/``WATCH`` banner, comments and binary noise skipped).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from agent.errors import SourceError
from agent.gps.receiver import ReceiverReader
from agent.gps.source import Emit
from agent.gps.tpv import TpvAssembler
from agent.model import Fix

log = logging.getLogger(__name__)

CHUNK = 4096


#: A gpsd TPV report on a line of its own.
_TPV_LINE = re.compile(rb'(?m)^[ \t]*\{[ \t]*"class"[ \t]*:[ \t]*"TPV"')
_SCAN = 1 << 20


def detect_format(path: Path) -> str:
    """``"gpsd-json"`` when the file holds gpsd TPV reports, else ``"receiver"``.

    The whole file is scanned (a chunk at a time, overlapping by one line): a log may start
    with gpsd's JSON banner and carry NMEA after it, or carry its first TPV late.
    """
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(_SCAN):
            data = tail + chunk
            if _TPV_LINE.search(data):
                return "gpsd-json"
            tail = data[data.rfind(b"\n") + 1 :][-256:]
    return "receiver"


def read_fixes(path: Path) -> Iterator[Fix]:
    """All fixes of a log, unpaced (a generator: memory stays flat for long logs)."""
    try:
        fmt = detect_format(path)
        f = path.open("rb")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with f:
        if fmt == "gpsd-json":
            tpv = TpvAssembler(f"replay:{path.name}")
            for line in f:
                yield from tpv.feed_line(line)
            yield from tpv.flush()
        else:
            reader = ReceiverReader(source=f"replay:{path.name}")
            while chunk := f.read(CHUNK):
                yield from reader.feed(chunk)
            yield from reader.flush()


class ReplaySource:
    """A :class:`~agent.gps.source.FixSource` replaying ``path`` at ``speed``."""

    def __init__(self, path: Path, *, speed: float = 1.0, loop: bool = False) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.path = Path(path)
        self.speed = speed
        self.loop = loop
        self.delivered = 0

    @property
    def name(self) -> str:
        return f"replay:{self.path.name}"

    @property
    def finite(self) -> bool:
        """A log played once ends; its end is the end of its input, not a failure."""
        return not self.loop

    def run(self, stop: threading.Event, emit: Emit) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such replay file")
        while not stop.is_set():
            start_wall: float | None = None
            start_fix: float | None = None
            for fix in read_fixes(self.path):
                if stop.is_set():
                    return
                if self.speed > 0:
                    if start_wall is None or start_fix is None or fix.time < start_fix:
                        start_wall, start_fix = time.monotonic(), fix.time
                    due = start_wall + (fix.time - start_fix) / self.speed
                    delay = due - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return
                emit(fix)
                self.delivered += 1
            if not self.loop:
                return
            log.debug("%s: looping", self.name)
