"""Fixtures of the GPS tests: figure reporting, gpsfake on a random port, a pty serial port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.labs.waiting import wait_for

_LINES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_lines(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines a test wants printed in the terminal summary (measured figures)."""
    lines: list[str] = []
    yield lines
    request.config.stash.setdefault(_LINES, []).extend(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_LINES, [])
    if lines:
        terminalreporter.section("GPS figures")
        for line in lines:
            terminalreporter.write_line(line)


# ------------------------------------------------------------------- real parts: gpsfake, pty


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GpsFake:
    """``gpsfake`` (a real gpsd fed from a log) on a loopback port, in its own process group.

    ``once`` plays the log one time. gpsd (``-n``) reads the fake receiver whether or not a
    client is there, so a one-time log must not start before the client watches: ``held``
    fakes (gpsfake's single-stepping, ``-i``) play nothing until :meth:`play`.
    """

    def __init__(
        self, log: Path, port: int, cycle: float = 0.01, once: bool = True, held: bool = False
    ) -> None:
        self.log, self.port, self.cycle, self.once, self.held = log, port, cycle, once, held
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GpsFake:
        # gpsfake adds its pty to gpsd through gpsd's control socket, and gives up silently when
        # that socket exists but does not accept yet (a loaded machine): gpsd then never has a
        # device and the test sees no fix. Such a start is seen (gpsd lists no device) and made
        # again; nothing was played (nobody read the pty).
        for _attempt in range(3):
            self._spawn()
            if self._has_device():
                return self
            self.kill()
        raise AssertionError("gpsfake never gave gpsd its device (3 starts)")

    def _spawn(self) -> None:
        cmd = ["gpsfake", "-n", "-q", "-P", str(self.port), "-c", str(self.cycle)]
        if self.once:
            cmd.insert(1, "-1")
        if self.held:
            cmd.insert(1, "-i")  # waits for a line on its input before each sentence
        self.proc = subprocess.Popen(
            [*cmd, str(self.log)],
            start_new_session=True,  # its own process group: gpsfake + gpsd die together
            stdin=subprocess.PIPE if self.held else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, 20.0, f"gpsd on port {self.port}")

    def _has_device(self, timeout: float = 5.0) -> bool:
        """gpsd lists the fake's pty (``?DEVICES``) within ``timeout`` (or a one-time fake
        has already played its log and ended: it had its device)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return True
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(2)
                    s.sendall(b"?DEVICES;\n")
                    buf = b""
                    while b'"DEVICES"' not in buf or not buf.endswith(b"\n"):
                        data = s.recv(4096)
                        if not data:
                            break
                        buf += data
                for line in buf.splitlines():
                    if b'"DEVICES"' in line and json.loads(line).get("devices"):
                        return True
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        return False

    def play(self) -> None:
        """Let a held fake play its log (every sentence, at its cycle)."""
        assert self.proc is not None and self.proc.stdin is not None and self.held
        lines = self.log.read_bytes().count(b"\n") + 1
        self.proc.stdin.write(b"\n" * lines)
        self.proc.stdin.flush()

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None and not self.once:
            raise AssertionError(f"gpsfake exited with {self.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc = None


@pytest.fixture
def gpsfake_factory() -> Iterator[Callable[..., GpsFake]]:
    if shutil.which("gpsfake") is None:
        pytest.skip("gpsfake not installed (Debian gpsd-clients)")
    started: list[GpsFake] = []

    def make(log: Path, port: int | None = None, **kw: object) -> GpsFake:
        fake = GpsFake(log, port or free_port(), **kw)  # type: ignore[arg-type]
        started.append(fake)
        return fake.start()

    yield make
    for fake in started:
        fake.kill()


class PtySerial:
    """A serial port without hardware: a pty whose slave is reached through a stable symlink.

    ``vanish()`` closes the master (reads on the slave fail, as when a USB receiver is
    unplugged) and removes the link; ``reappear()`` makes a new pty behind the same link.
    ``write_paced`` writes at the pace of ``baud`` (10 bits per byte), waiting on an event.
    """

    def __init__(self, link: Path, baud: int = 9600) -> None:
        self.link = link
        self.baud = baud
        self.master: int | None = None
        self.slave: int | None = None
        self.reappear()

    def reappear(self) -> None:
        self.master, self.slave = os.openpty()
        import tty

        tty.setraw(self.master)
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(os.ttyname(self.slave))

    def vanish(self) -> None:
        if self.link.is_symlink():
            self.link.unlink()
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    def write_paced(self, data: bytes, stop: threading.Event, chunk: int = 96) -> None:
        assert self.master is not None
        per_byte = 10.0 / self.baud
        start = time.monotonic()
        for i in range(0, len(data), chunk):
            part = data[i : i + chunk]
            due = start + (i + len(part)) * per_byte
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            os.write(self.master, part)

    def close(self) -> None:
        self.vanish()


@pytest.fixture
def pty_serial(tmp_path: Path) -> Iterator[PtySerial]:
    port = PtySerial(tmp_path / "ttyGPS0")
    yield port
    port.close()
