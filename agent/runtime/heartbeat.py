"""The health thread: the systemd watchdog, the status file, the heartbeat, the state alarms.

Every tick (5 s, or a third of ``WatchdogSec=`` when systemd sets one):

- ``WATCHDOG=1`` to systemd only while no watched part is dead (agent/runtime/liveness.py);
  a dead part, or a stuck agent, stops the pings and systemd restarts the agent;
- the status figures into the status file (``[health] status_file``, for ``edge-agent status``);
- every ``heartbeat_s``, the figures on the status topic when the uplink runs;
- the alarms on changes of state (agent/runtime/alarms.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.runtime.alarms import StateAlarms
from agent.runtime.liveness import Parts
from agent.runtime.systemd import Notifier
from agent.storage.durable import write_atomic

log = logging.getLogger(__name__)

TICK_S = 5.0


class Heartbeat:
    """Runs :meth:`tick` in its own thread (``health``) until ``stop``."""

    def __init__(
        self,
        *,
        parts: Parts,
        stop: threading.Event,
        notifier: Notifier,
        status: Callable[[], dict[str, Any]],
        status_file: Path,
        alarms: StateAlarms,
        heartbeat_s: float,
        report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.parts = parts
        self.stop = stop
        self.notifier = notifier
        self.status = status
        self.status_file = status_file
        self.alarms = alarms
        self.heartbeat_s = heartbeat_s
        self.report = report
        self.tick_s = TICK_S
        if notifier.watchdog_s:
            self.tick_s = min(self.tick_s, notifier.watchdog_s / 3)
        self._dead: list[str] = []
        self._next_beat = time.monotonic()
        self._status_warned = False
        self.thread = threading.Thread(target=self._run, name="health")

    def _run(self) -> None:
        while not self.stop.wait(self.tick_s):
            self.tick()

    def tick(self) -> None:
        dead = self.parts.dead()
        if not dead:
            self.notifier.notify("WATCHDOG=1")
        elif dead != self._dead:
            log.error(
                "parts stopped (%s): %s",
                ", ".join(dead),
                "withholding the watchdog: systemd restarts the agent"
                if self.notifier.watchdog_s
                else "restart the agent",
            )
        self._dead = dead
        status = self.status()
        self.write(status)
        if self.report is not None and time.monotonic() >= self._next_beat:
            self.report(status)
            self._next_beat = time.monotonic() + self.heartbeat_s
        self.alarms.check(status)

    def write(self, status: dict[str, Any]) -> None:
        """The status file (atomically; a failure is logged once)."""
        path = self.status_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(status, indent=1, default=str).encode())
        except OSError as exc:
            if not self._status_warned:
                log.warning("cannot write status file %s: %s", path, exc)
                self._status_warned = True
