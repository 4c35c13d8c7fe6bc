"""A laboratory PulseAudio for tests and the demo: a 440 Hz sine source as the default input.

Nothing here runs on a device. PulseAudio runs as a child (``--daemonize=no``, in its own
process group, killed by :meth:`PulseServer.stop`) with a private runtime directory and a tiny
configuration: the native protocol on a socket under ``root``, a null sink, and
``module-sine-source`` as the default source. sounddevice reaches it through ALSA's ``pulse``
device (Debian ``libasound2-plugins``), which connects to ``PULSE_SERVER``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from agent.errors import SourceError
from agent.labs.waiting import TimedOut, wait_for

SINE_HZ = 440
CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name=null
load-module module-sine-source source_name=sine frequency={hz} rate=48000
set-default-source sine
set-default-sink null
"""


class PulseServer:
    """One PulseAudio process on a private socket; ``start``/``stop`` may be called again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "run"
        self.socket = self.runtime / "native"
        self.log_path = root / "pulseaudio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.root),
            "PULSE_RUNTIME_PATH": str(self.runtime),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "PULSE_STATE_PATH": str(self.root / "state"),
            "PULSE_SERVER": self.server,
        }

    def start(self, timeout: float = 15.0) -> None:
        exe = shutil.which("pulseaudio")
        if exe is None:
            raise SourceError(
                "pulseaudio is not installed (make setup installs Debian 'pulseaudio')"
            )
        self.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.root / "pulse.pa"
        conf.write_text(CONFIG.format(socket=self.socket, hz=SINE_HZ))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                exe,
                "--daemonize=no",
                "--system=false",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=false",
                "--log-target=stderr",
                "-n",
                "-F",
                str(conf),
            ],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for(self._ready, timeout, "PulseAudio")
        except TimedOut:
            reason = self._tail()
            self.stop()
            raise SourceError(
                f"PulseAudio did not start within {timeout:.0f} s:\n{reason}"
            ) from None

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise SourceError(f"PulseAudio exited with {self.proc.returncode}:\n{self._tail()}")
        if not self.socket.exists():
            return False
        r = subprocess.run(
            ["pactl", "info"], env=self.env(), capture_output=True, text=True, check=False
        )
        return r.returncode == 0 and "Default Source: sine" in r.stdout

    def _tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.socket.unlink(missing_ok=True)
