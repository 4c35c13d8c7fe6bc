"""``time.sync``: the GNSS-minus-system offset, and stepping the system clock to GNSS time.

The command reports the offset :class:`agent.gps.clock.ClockMonitor` measures and, with
``{"apply": true}``, steps the system clock to GNSS time, but only where the process may
(``may_step_clock``) and the clock is not kept by NTP. On a Raspberry Pi the clock is normally
set by chrony or systemd-timesyncd (which can use the GNSS receiver through gpsd as a
reference), and the systemd unit forbids the agent to set it (``ProtectClock=yes``, no
``CAP_SYS_TIME``): there the command refuses with that reason and only reports. A step is
sealed as a ``time_sync`` event record.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.config.remote import record_event
from agent.errors import CommandError

if TYPE_CHECKING:
    from agent.gps.clock import ClockMonitor

log = logging.getLogger(__name__)

#: Below this GNSS-minus-system offset, stepping the clock does nothing useful.
STEP_MIN_S = 0.5


def timedatectl() -> dict[str, str] | None:
    """``timedatectl show`` as a dict, or None where it cannot answer (no systemd)."""
    try:
        res = subprocess.run(
            ["timedatectl", "show"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def ntp_synchronised() -> bool | None:
    """``timedatectl``'s NTPSynchronized, or None where it cannot tell."""
    info = timedatectl()
    if info is None:
        return None
    return info.get("NTPSynchronized") == "yes"


class TimeSync:
    """The ``time.sync`` command: report the offset; with ``{"apply": true}`` step the clock."""

    def __init__(
        self,
        clock: ClockMonitor,
        *,
        spool: Any = None,
        may_step_clock: bool = False,
        ntp_synchronised: Callable[[], bool | None] = ntp_synchronised,
        step: Callable[[float], None] | None = None,
    ) -> None:
        self.clock = clock
        self.spool = spool
        self.may_step_clock = may_step_clock
        self._ntp = ntp_synchronised
        self._step = step or (lambda t: time.clock_settime(time.CLOCK_REALTIME, t))

    def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        apply = args.get("apply", False)
        if not isinstance(apply, bool):
            raise CommandError("apply: must be true or false")
        st = self.clock.state()
        now = time.time()
        ntp = self._ntp()
        report: dict[str, Any] = {
            "source": st.source.value,
            "offset_s": st.offset_s,
            "system_time": now,
            "gnss_time": None if st.offset_s is None else now + st.offset_s,
            "ntp_synchronised": ntp,
            "stepped": False,
        }
        if not apply:
            return report
        if st.offset_s is None:
            raise CommandError("no GNSS time to set the clock from (no recent fix)")
        if not self.may_step_clock:
            raise CommandError(
                "this agent may not set the system clock (the service runs with "
                "ProtectClock=yes and no CAP_SYS_TIME); chrony or systemd-timesyncd keeps it: "
                f"GNSS - system = {st.offset_s:+.3f} s"
            )
        if ntp:
            raise CommandError(
                "the clock is kept by NTP (timedatectl: NTPSynchronized=yes); stepping it "
                "would fight the NTP daemon"
            )
        if abs(st.offset_s) < STEP_MIN_S:
            report["note"] = f"offset below {STEP_MIN_S} s: clock left alone"
            return report
        target = self.clock.gnss_now()
        assert target is not None
        try:
            self._step(target)
        except PermissionError:
            raise CommandError(
                "the operating system refused to set the clock (needs CAP_SYS_TIME)"
            ) from None
        except OSError as exc:
            raise CommandError(f"cannot set the clock: {exc}") from None
        report["stepped"] = True
        report["recorded"] = record_event(
            self.spool, "time_sync", {"stepped_by_s": st.offset_s, "to": target}
        )
        log.warning("system clock stepped by %+.3f s to GNSS time", st.offset_s)
        return report
