"""Asking systemd for a clean power-off, and what the agent does first when the battery is
critical."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from agent.power.reading import PowerReading

log = logging.getLogger(__name__)

#: A power-off request: the reason; True when the system accepted it.
PowerOff = Callable[[str], bool]

#: logind's documented D-Bus call (org.freedesktop.login1.Manager.PowerOff, interactive=false):
#: polkit decides, and the installer's rule allows exactly this for the service user.
LOGIND_POWER_OFF = [
    "busctl", "call", "--system", "org.freedesktop.login1", "/org/freedesktop/login1",
    "org.freedesktop.login1.Manager", "PowerOff", "b", "false",
]  # fmt: skip
SYSTEMCTL_POWER_OFF = ["systemctl", "poweroff", "--no-wall"]


def system_power_off(method: str) -> PowerOff:
    """The configured way to power the device off (``logind``, ``systemctl`` or ``none``)."""
    argv = {"logind": LOGIND_POWER_OFF, "systemctl": SYSTEMCTL_POWER_OFF}.get(method)

    def power_off(reason: str) -> bool:
        if argv is None:
            log.warning("power: %s; power.power_off = none: leaving the power to the HAT", reason)
            return True
        log.warning("power: %s: asking systemd to power off (%s)", reason, " ".join(argv[:2]))
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("power: cannot ask for a power-off: %s", exc)
            return False
        if res.returncode != 0:
            log.error(
                "power: power-off refused (%d): %s (is the polkit rule from install.sh in "
                "/etc/polkit-1/rules.d/?)",
                res.returncode,
                (res.stderr or res.stdout).strip()[:300],
            )
            return False
        return True

    return power_off


class CriticalShutdown:
    """Battery critical: the ordered, clean end (runs once, on the power monitor's thread).

    1. a ``power_critical`` event record, sealed in the spool (the reading, what follows);
    2. every recording ended (each recorder seals its open segment);
    3. the uplink gets up to ``flush_s`` to deliver the live alarm and that event;
    4. the agent's stop event is set: the agent stops every part and seals what they hold;
    5. after that, :meth:`finish` (called by the agent once its spool is closed) asks systemd
       to power off.
    """

    def __init__(
        self,
        stop: threading.Event,
        *,
        put_event: Callable[[str, dict[str, Any]], object],
        end_recordings: list[Callable[[], None]],
        delivered: Callable[[], bool],
        flush_s: float,
        power_off: PowerOff,
    ) -> None:
        self.stop = stop
        self.put_event = put_event
        self.end_recordings = end_recordings
        self.delivered = delivered
        self.flush_s = flush_s
        self.power_off = power_off
        self.reason = ""
        self.requested = threading.Event()
        self.accepted: bool | None = None

    def __call__(self, reading: PowerReading) -> None:
        if self.requested.is_set():
            return
        self.reason = (
            f"battery critical: {reading.charge_pct:.0f} % on battery"
            if reading.charge_pct is not None
            else "battery critical"
        )
        log.critical("power: %s: ending the recording, sealing, powering off", self.reason)
        try:
            self.put_event("power_critical", {"reading": reading.to_json(), "action": "power_off"})
        except Exception:  # the power-off must go on even if the spool refuses the record
            log.exception("power: the power_critical event could not be recorded")
        for end in self.end_recordings:
            try:
                end()
            except Exception:
                log.exception("power: ending a recording failed")
        waited = 0.0
        while waited < self.flush_s and not self.delivered():
            if self.stop.wait(0.2):
                break
            waited += 0.2
        self.requested.set()
        self.stop.set()

    def finish(self) -> None:
        """After the agent has sealed everything and closed the spool: power off."""
        if self.requested.is_set():
            self.accepted = self.power_off(self.reason)
