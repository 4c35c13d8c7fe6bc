"""``rpicam-vid`` on a pipe: the Pi camera's hardware-encoded H.264, passed through.

``rpicam-vid --codec h264 --inline --flush -t 0 -o -`` (rpicam-apps, on Raspberry Pi OS) runs
the camera through libcamera and the encoder (the VideoCore hardware encoder on Pi 4 and Zero
2 W; libx264 through libav on a Pi 5, where ``--low-latency`` keeps it free of B-frames) and
writes an Annex-B byte stream to stdout: an AUD before each picture, SPS and PPS before every
IDR (``--inline``), one picture per write (``--flush``), an IDR every ``--intra`` frames.

:class:`PipeSource` runs any such command and reads its stdout with
:class:`agent.capture.h264.AnnexBReader`, so a test can put ffmpeg in rpicam-vid's place and
exercise the very same code. It is an :class:`agent.capture.frames.EncodedSource`:

- each access unit is checked (:class:`agent.capture.h264.StreamChecker`); garbage raises
  :class:`~agent.errors.SourceError`, so the capture loop reports it once and reopens (the
  command is restarted);
- no byte for ``stall_s`` seconds, no IDR within ``idr_s`` of opening, or the command ending,
  are losses too (the message carries the end of its stderr);
- each access unit is stamped with the arrival time of its first byte.

No watermark can be burned into pictures encoded elsewhere (docs/video.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence

from agent import wallclock
from agent.capture.encoder import HARDWARE_DEVICE
from agent.capture.frames import AccessUnit, LiveEncoded
from agent.capture.h264 import AnnexBReader, StreamChecker
from agent.capture.settings import VideoSettings
from agent.errors import SourceError

log = logging.getLogger(__name__)

STDERR_TAIL = 2048
POLL_S = 0.25


def rpicam_command(s: VideoSettings, *, low_latency: bool | None = None) -> list[str]:
    """The ``rpicam-vid`` command line for these settings (or ``s.rpicam_command``).

    ``low_latency`` (default: where there is no hardware encoder, i.e. rpicam-vid will use
    libx264) adds ``--low-latency``, which keeps libx264 from making B-frames; the hardware
    encoder makes none, and rpicam-apps before 1.6 do not know the option.
    """
    if s.rpicam_command:
        return list(s.rpicam_command)
    if low_latency is None:
        low_latency = not HARDWARE_DEVICE.exists()
    return [
        "rpicam-vid",
        "--nopreview",
        "--camera", str(s.camera),
        "--codec", "h264",
        "--inline",
        "--flush",
        *(["--low-latency"] if low_latency else []),
        "--timeout", "0",
        "--width", str(s.width),
        "--height", str(s.height),
        "--framerate", str(s.fps),
        "--bitrate", str(s.bitrate_kbps * 1000),
        "--intra", str(max(1, round(s.fps * s.keyframe_s))),
        "--output", "-",
    ]  # fmt: skip


class PipeSource(LiveEncoded):
    """An H.264 Annex-B stream on a command's stdout. See the module docstring."""

    def __init__(
        self,
        command: Sequence[str],
        fps: float,
        *,
        name: str = "rpicam",
        encoder: str = "rpicam-vid",
        stall_s: float = 5.0,
        idr_s: float = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        if not command:
            raise SourceError(f"{name}: empty command")
        self.command = list(command)
        self._fps = float(fps)
        self._name = name
        self._encoder = encoder
        self.stall_s = stall_s
        self.idr_s = idr_s
        self._stop = stop or threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader = AnnexBReader()
        self._checker = StreamChecker()
        self._ready: deque[AccessUnit] = deque()
        self._stderr = bytearray()
        self._index = 0
        self._opened_at = 0.0
        self._last_data = 0.0
        self._seen_idr = False
        self._resync = True
        self._ended = False
        self._stalled = False

    @property
    def name(self) -> str:
        return f"{self._name}:{os.path.basename(self.command[0])}"

    @property
    def encoder(self) -> str:
        return self._encoder

    def open(self) -> None:
        self.close()
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                bufsize=0,
            )
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot run {self.command[0]}: {exc}") from None
        self._reader = AnnexBReader()
        self._checker = StreamChecker()
        self._ready.clear()
        self._stderr.clear()
        self._opened_at = self._last_data = time.monotonic()
        self._seen_idr = False
        self._resync = True
        self._ended = False
        self._stalled = False
        log.info("video: started %s (pid %d)", " ".join(self.command[:3]), self._proc.pid)

    def read(self) -> AccessUnit | None:
        proc = self._proc
        if proc is None or proc.stdout is None or proc.stderr is None:
            raise SourceError(f"{self.name}: not open")
        while not self._ready:
            if self._ended:
                raise SourceError(f"{self.name}: {self._exit_reason(proc)}")
            if self._stalled:
                raise SourceError(f"{self.name}: no data for {self.stall_s:g} s (camera stalled)")
            if self._stop.is_set():
                return None
            now = time.monotonic()
            if now - self._last_data > self.stall_s:
                # The last picture written is whole (one per write); hand it over, then fail.
                self._stalled = True
                self._take(self._reader.flush())
                continue
            if not self._seen_idr and now - self._opened_at > self.idr_s:
                raise SourceError(f"{self.name}: no IDR picture within {self.idr_s:g} s of opening")
            out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
            readable, _, _ = select.select([out_fd, err_fd], [], [], POLL_S)
            if err_fd in readable:
                self._keep_stderr(os.read(err_fd, 4096))
            if out_fd not in readable:
                continue
            data = os.read(out_fd, 1 << 16)
            stamp = (time.monotonic_ns(), wallclock.now())
            if not data:
                self._ended = True
                self._take(self._reader.flush())
                continue
            self._last_data = time.monotonic()
            self._take(self._reader.feed(data, stamp))
        return self._ready.popleft()

    def _take(self, units: list[tuple[list[bytes], object]]) -> None:
        for nals, stamp in units:
            unit = self._checker.check(nals)
            mono, utc = (
                stamp if isinstance(stamp, tuple) else (time.monotonic_ns(), wallclock.now())
            )
            self._seen_idr = self._seen_idr or unit.key
            self._ready.append(
                AccessUnit(unit.annexb(), unit.key, self._index, mono, utc, self._resync)
            )
            self._index += 1
            self._resync = False

    def _keep_stderr(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-STDERR_TAIL]

    def _exit_reason(self, proc: subprocess.Popen[bytes]) -> str:
        try:
            rc = proc.wait(2)
        except subprocess.TimeoutExpired:
            rc = None
        if proc.stderr is not None:
            try:
                while chunk := os.read(proc.stderr.fileno(), 4096):
                    self._keep_stderr(chunk)
            except OSError:
                pass
        tail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        said = f": {' | '.join(tail)}" if tail else ""
        return f"stream ended ({'still running' if rc is None else f'exit {rc}'}){said}"

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
