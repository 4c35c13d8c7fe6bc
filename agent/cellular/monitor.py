"""The link monitor: one thread that reads the modem through ModemManager and keeps the
traffic counters on disk.

Status and heartbeat carry the modem's state, registration, operator, access technology,
signal figures and byte counters (``cellular.modem``) and what the agent sent per lane today
and on the last days (``cellular.traffic``). Alarms: ``modem_lost`` (the modem or
ModemManager gone) and ``modem_unregistered`` (no network, SIM locked or missing, failed),
each once the condition has lasted ``alarm_after_s``, and ``modem_ok`` when it ends. Nothing
here touches the recording or the spool; garbage from mmcli is a state, never a dead thread.

:meth:`LinkMonitor.signal_csq` gives the signal to a JT/T 808 terminal (location item 0x30),
on the 0..31 scale of the ``+CSQ`` answer (3GPP TS 27.007, 8.5) that terminals' modules report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.cellular.settings import CellularSettings
from agent.cellular.traffic import TrafficMeter
from agent.contain import Poller, Reconnect, Why
from agent.errors import SourceError
from agent.model import Alarm, Severity

if TYPE_CHECKING:
    from agent.cellular.mmcli import ModemManagerLink, ModemReading

log = logging.getLogger(__name__)

ABSENT = ("absent", "no-modemmanager", "no-mmcli")
RETRY_MAX_S = 300.0  # a modem that cannot be read is asked again at most this far apart
STALE_POLLS = 3  # a reading older than this many polls is no longer the modem's signal


def csq(r: ModemReading) -> int | None:
    """The signal as ``+CSQ`` reports it (3GPP TS 27.007, 8.5): 0 for -113 dBm or less, then
    2 dB a step up to 31 for -51 dBm or more. From the RSSI ModemManager reports (its extended
    signal figures, the first technology that has one), else its signal quality (percent)."""
    from agent.cellular.mmcli import SIGNAL_TECHS  # loaded already: r came from it

    if not r.present:
        return None
    for tech in SIGNAL_TECHS:
        rssi = r.signal.get(tech, {}).get("rssi")
        if rssi is not None:
            return min(max(int((rssi + 113) // 2), 0), 31)
    if r.signal_pct is not None:
        return min(max(round(r.signal_pct * 31 / 100), 0), 31)
    return None


def link_state(r: ModemReading) -> str:
    """ok | absent | no-modemmanager | no-mmcli | locked | failed | disabled | unregistered"""
    if not r.present:
        return r.state
    if r.state in ("failed", "locked", "disabled"):
        return r.state
    return "ok" if r.registered else "unregistered"


class LinkMonitor(Poller):
    def __init__(
        self,
        settings: CellularSettings,
        stop: threading.Event,
        *,
        alarm: Callable[[Alarm], None],
        traffic: TrafficMeter | None = None,
        modem: ModemManagerLink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("link", stop, alarm, log)
        self.s = settings
        self.traffic = traffic
        self.clock = clock
        if modem is None and settings.source == "modemmanager":
            # Only with a modem to read (a device without one never imports mmcli's parser).
            from agent.cellular.mmcli import ModemManagerLink

            modem = ModemManagerLink(settings.mmcli, settings.modem,
                                     timeout_s=settings.timeout_s,
                                     signal_rate_s=settings.signal_rate_s)  # fmt: skip
        self.modem = modem
        self._lock = threading.Lock()
        self._reading: ModemReading | None = None
        self._state = "starting" if modem is not None else "off"
        self._error: str | None = None
        self._read_at = 0.0
        # the poller's own:
        self._bad_since: float | None = None
        self._alarmed: str | None = None
        # Reading failures: the next read waits longer (alarms are _judge's, after alarm_after_s).
        self.retry = Reconnect(
            "link",
            stop,
            log,
            min_s=settings.poll_s,
            max_s=max(settings.poll_s, RETRY_MAX_S),
            on_lost=lambda why: log.warning("link: %s", why),
            on_retry=self._still_failing,
            on_restored=lambda gap_s, attempts: None,  # the new state is logged by poll_once
        )
        self._last_save = clock()

    def health(self) -> dict[str, Any]:
        with self._lock:
            modem: dict[str, Any] = {"state": self._state, "source": self.s.source}
            if self._reading is not None:
                modem.update(self._reading.to_json())
                modem["age_s"] = round(self.clock() - self._read_at, 1)
                if self._state == "error":  # the last good reading stays, with its age
                    modem["state"] = "error"
            modem["link"] = self._state
            if self._error is not None:
                modem["error"] = self._error
        out: dict[str, Any] = {"modem": modem}
        if self.traffic is not None:
            out["traffic"] = self.traffic.snapshot()
        return out

    def signal_csq(self) -> int | None:
        """The modem's signal on the ``+CSQ`` scale (:func:`csq`); None without a reading of
        the last few polls (no modem, or reading it fails)."""
        with self._lock:
            r, state, at = self._reading, self._state, self._read_at
        if r is None or state == "error" or self.clock() - at > STALE_POLLS * self.s.poll_s:
            return None
        return csq(r)

    def closed(self) -> None:
        if self.traffic is not None:
            self.traffic.save()

    def poll_round(self) -> float:
        delay = self.s.traffic_save_s
        if self.modem is not None:
            delay = min(delay, self.poll_once())
        if self.traffic is not None and self.clock() - self._last_save >= self.s.traffic_save_s:
            self._last_save = self.clock()
            self.traffic.save()
        return delay

    def poll_once(self) -> float:
        assert self.modem is not None
        try:
            r = self.modem.read()
        except SourceError as exc:
            return self._failed(str(exc))
        except Exception as exc:
            log.exception("link: reading the modem failed")
            return self._failed(f"{type(exc).__name__}: {exc}")
        self.retry.restored()
        state = link_state(r)
        with self._lock:
            was = self._state
            self._reading, self._state, self._error = r, state, None
            self._read_at = self.clock()
        if state != was:
            log.info("link: modem %s (%s)", state, r.state)
        self._judge(state, r.to_json())
        return self.s.poll_s

    def _failed(self, why: str) -> float:
        with self._lock:
            self._state, self._error = "error", why
        self._judge("error", {"error": why})
        return self.retry.failed(why)

    def _still_failing(self, why: Why) -> None:
        if str(why) != self.retry.reason:
            log.warning("link: %s", why)

    def _judge(self, state: str, details: dict[str, Any]) -> None:
        now = self.clock()
        if state == "ok":
            self._bad_since = None
            if self._alarmed is not None:
                self._alarmed = None
                self.raise_alarm(
                    "modem_ok", "cellular link registered again", Severity.INFO, details
                )
            return
        if self._bad_since is None:
            self._bad_since = now
        if self._alarmed is None and now - self._bad_since >= self.s.alarm_after_s:
            kind = "modem_lost" if state in ABSENT else "modem_unregistered"
            self._alarmed = kind
            what = {
                "absent": "no modem found by ModemManager",
                "no-modemmanager": "ModemManager is not running",
                "no-mmcli": "mmcli is not installed (apt-get install modemmanager)",
                "error": f"the modem cannot be read: {details.get('error')}",
            }.get(state, f"the modem is {state}")
            self.raise_alarm(kind, f"cellular link down: {what}", Severity.WARNING, details)
