"""The parts of a chaos run that stand in for the world: processes in their own groups, a GNSS
receiver on a pty, an IP camera, the watcher copying what the agent seals, the watch on the
logs for threads that die, and the agent's control socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.labs.broker import free_port
from agent.labs.nmea import truck_log

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- processes


class Proc:
    """A child in its own process group, its output appended to a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name, self.args, self.log_path, self.env = name, args, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def terminate(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left in its group
        self.proc = None
        return rc


# --------------------------------------------------------------------------- GNSS on a pty


class GpsPty:
    """A GNSS receiver on a pty: a replayed truck drive at 1 Hz, with the current time.

    ``path`` is a symlink to the pty's slave. ``unplug()`` closes the master (the agent's reads
    fail as on a pulled USB receiver) and removes the link; ``replug()`` makes a new pty.
    """

    def __init__(self, path: Path, stop: threading.Event) -> None:
        self.path = path
        self._stop = stop
        self._lock = threading.Lock()
        self._master: int | None = None
        self._t0 = float(int(time.time()))
        g = time.gmtime(self._t0)
        start = (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
        lines = truck_log(4 * 3600, start=start, header=False).splitlines(keepends=True)
        self._epochs = [b"".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
        self.plugged = False
        self._thread = threading.Thread(target=self._run, name="gps-pty", daemon=True)

    def start(self) -> None:
        self.replug()
        self._thread.start()

    def replug(self) -> None:
        with self._lock:
            master, slave = os.openpty()
            os.set_blocking(master, False)
            name = os.ttyname(slave)
            os.close(slave)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path.symlink_to(name)
            self._master = master
            self.plugged = True

    def unplug(self) -> None:
        with self._lock:
            if self._master is not None:
                os.close(self._master)
                self._master = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.plugged = False

    def _run(self) -> None:
        while not self._stop.wait(1.0 - (time.time() % 1.0)):
            i = int(time.time() - self._t0)
            if i >= len(self._epochs):
                i %= len(self._epochs)
            with self._lock:
                if self._master is None:
                    continue
                with contextlib.suppress(OSError):
                    os.write(self._master, self._epochs[i])

    def close(self) -> None:
        self.unplug()


# --------------------------------------------------------------------------- camera over TCP


class TcpCamera:
    """ffmpeg serving a test pattern as MPEG-TS on a loopback port (one client at a time).

    It exits when its client goes away (an agent SIGKILL), so a supervisor restarts it unless
    the camera is meant to be lost.
    """

    def __init__(self, directory: Path, stop: threading.Event, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.lost = False
        self._stop = stop
        self._proc = Proc(
            "camera",
            [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-re",
                "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10",
                "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts", f"{self.url}?listen=1",
            ],
            directory / "camera.log",
            env,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="camera", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                if not self.lost and not self._proc.alive():
                    self._proc.start()

    def lose(self) -> None:
        with self._lock:
            self.lost = True
            self._proc.kill()

    def restore(self) -> None:
        with self._lock:
            self.lost = False

    def close(self) -> None:
        with self._lock:
            self.lost = True
            self._proc.kill()


# --------------------------------------------------------------------------- watcher


class SealedWatcher:
    """Copies every sealed segment and key record out of the spool as soon as it appears.

    :meth:`paused` holds it off the spool's file system (a power cut unmounts it);
    :meth:`forget` drops what a power cut took back before it was durable, so the segment the
    agent seals under the same name afterwards is copied (the old copy kept aside).
    """

    POLL_S = 0.05

    def __init__(self, spool: Path, archive: Path, stop: threading.Event) -> None:
        self.spool, self.archive, self._stop = spool, archive, stop
        self.seen: set[str] = set()
        # relative path -> real time (time.time()) when it was first seen
        self.seen_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextlib.contextmanager
    def paused(self) -> Any:
        with self._lock:
            yield

    def sweep(self) -> None:
        with self._lock:
            for sub in ("seg", "keys"):
                for path in _listing(self.spool / sub, depth=2 if sub == "seg" else 1):
                    rel = os.path.relpath(path, self.spool)
                    if rel in self.seen or not path.endswith((".seg", ".key")):
                        continue
                    self.seen_at.setdefault(rel, time.time())
                    dst = self.archive / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        shutil.copyfile(path, dst)
                    except OSError:
                        continue  # acknowledged and removed between listing and copying
                    self.seen.add(rel)

    def forget(self, rel: str, why: str) -> None:
        """``rel`` was copied but is gone, never made durable: keep the copy aside."""
        with self._lock:
            self.seen.discard(rel)
            self.seen_at.pop(rel, None)
            src = self.archive / rel
            dst = self.archive.parent / why / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.replace(src, dst)

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            self.sweep()


def _listing(base: Path, depth: int) -> list[str]:
    """Files under ``base`` down to ``depth`` levels (directories closed at once: a power cut
    must be able to unmount the file system)."""
    out: list[str] = []
    try:
        with os.scandir(base) as it:
            entries = [(e.path, e.is_dir(follow_symlinks=False)) for e in it]
    except OSError:
        return out
    for path, is_dir in entries:
        if is_dir and depth > 1:
            out += _listing(Path(path), depth - 1)
        elif not is_dir:
            out.append(path)
    return out


# --------------------------------------------------------------------------- thread deaths


@dataclass
class ThreadDeath:
    """An ``Exception in thread`` in a log: which thread, which exception, where."""

    process: str  # "agent" or "ingest"
    thread: str
    exception: str  # the last line of the traceback
    where: str  # file:line in function, of the innermost frame
    at: float  # time.time() when the watch saw it (within LOG_POLL_S)
    traceback: str

    def signature(self) -> str:
        return f"{self.process} thread {self.thread} died: {self.exception} at {self.where}"


LOG_POLL_S = 0.5
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


class LogWatch:
    """Follows log files and records each ``Exception in thread`` with the time it appeared
    (the interpreter prints it without a time stamp)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._files: dict[str, tuple[Path, int]] = {}
        self._partial: dict[str, str] = {}
        self.deaths: list[ThreadDeath] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="logwatch", daemon=True)

    def follow(self, process: str, path: Path) -> None:
        self._files[process] = (path, 0)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(LOG_POLL_S):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            for process, (path, offset) in list(self._files.items()):
                try:
                    with path.open("rb") as f:
                        f.seek(offset)
                        data = f.read()
                except OSError:
                    continue
                self._files[process] = (path, offset + len(data))
                text = self._partial.get(process, "") + data.decode(errors="replace")
                self._partial[process] = self._scan(process, text)

    def _scan(self, process: str, text: str) -> str:
        """Record every complete traceback in ``text``; return what may still be growing."""
        lines = text.split("\n")
        rest = lines.pop()  # an unfinished last line
        i = 0
        while i < len(lines):
            m = re.match(r"^Exception in thread (\S+?):?$", lines[i].split(" (")[0].rstrip())
            if not m:
                i += 1
                continue
            j = _traceback_end(lines, i + 1)
            if j >= len(lines):
                return "\n".join([*lines[i:], rest])  # the traceback is still being written
            frames = [f for f in map(_FRAME.match, lines[i:j]) if f]
            where = "?"
            if frames:
                f = frames[-1]
                where = f"{_short(f['file'])}:{f['line']} in {f['func']}"
            tb = "\n".join(lines[i : j + 1])
            death = ThreadDeath(process, m.group(1), lines[j].strip(), where, time.time(), tb)
            self.deaths.append(death)
            i = j + 1
        return rest


_CHAINED = ("During handling of the above", "The above exception was the direct cause")


def _traceback_end(lines: list[str], j: int) -> int:
    """The index of the exception line that ends the traceback starting at ``j`` (the last
    one of a chain)."""
    while True:
        while j < len(lines) and (lines[j].startswith((" ", "Traceback")) or not lines[j]):
            j += 1
        k = j + 1
        while k < len(lines) and not lines[k]:
            k += 1
        if k < len(lines) and lines[k].startswith(_CHAINED):
            j = k + 1
            continue
        return j


def _short(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPO))
    return path


# --------------------------------------------------------------------------- control socket


def control(path: Path, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to the agent's control socket (one JSON line each way): the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            data = sock.recv(65536)
            if not data:
                break
            buf += data
    reply = json.loads(buf or b"{}")
    return reply if isinstance(reply, dict) else {}
