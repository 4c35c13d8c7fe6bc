"""The power monitor: one thread that reads the configured source and the firmware's flags,
keeps the figures for status and heartbeat, raises the alarms, and acts on a critical battery.

Alarms (live lane), each once per change: ``power_source_failed`` / ``power_source_restored``
(the HAT or gauge cannot be read, or reads garbage), ``power_low`` / ``power_ok``,
``power_critical`` (then :class:`agent.power.poweroff.CriticalShutdown`), ``undervoltage`` /
``undervoltage_cleared`` (the firmware's "under-voltage now" flag) and
``undervoltage_occurred`` (once, when the flags say it happened since boot). The thread
survives anything its source does: an error is reported once, the next read waits longer
(doubling up to ``retry_max_s``: :class:`agent.contain.Reconnect`), and it goes on until the
stop event is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.contain import Poller, Reconnect, Why
from agent.errors import SourceError
from agent.model import Alarm, Severity
from agent.power.reading import PowerReading, PowerSource
from agent.power.settings import PowerSettings
from agent.power.throttle import Throttled, ThrottleReader

log = logging.getLogger(__name__)

#: Charge above low_pct + this ends the low state (no flapping around the threshold).
LOW_HYSTERESIS_PCT = 2.0


def open_power_source(settings: PowerSettings) -> PowerSource | None:
    """The source ``[power] source`` names (None for ``none``)."""
    if settings.source == "sysfs":
        from agent.power.sysfs import SysfsPower

        return SysfsPower(settings.sysfs)
    if settings.source == "ina219":
        from agent.power.ina219 import Ina219Power

        return Ina219Power(settings.ina219)
    if settings.source == "pisugar":
        from agent.power.pisugar import PiSugarPower

        return PiSugarPower(settings.pisugar)
    return None


class PowerMonitor(Poller):
    def __init__(
        self,
        settings: PowerSettings,
        source: PowerSource | None,
        stop: threading.Event,
        *,
        alarm: Callable[[Alarm], None],
        on_critical: Callable[[PowerReading], None] | None = None,
        throttle: ThrottleReader | None = None,
    ) -> None:
        super().__init__("power", stop, alarm, log)
        self.s = settings
        self.source = source
        self.on_critical = on_critical
        self.throttle = throttle or ThrottleReader(settings.throttled, settings.throttled_file)
        self._lock = threading.Lock()
        # guarded by _lock:
        self._reading: PowerReading | None = None
        self._read_at = 0.0
        self._error: str | None = None
        self._state = "starting" if source is not None else "off"
        self._throttled: Throttled | None = None
        self._throttle_error: str | None = None
        # the poller's own (one thread):
        self.retry = Reconnect(
            "power",
            stop,
            log,
            min_s=min(2 * settings.poll_s, settings.retry_max_s),
            max_s=settings.retry_max_s,
            on_lost=self._source_failed,
            on_retry=self._still_failing,
            on_restored=self._source_restored,
        )
        self._low = False
        self._critical_count = 0
        self._critical_done = False
        self._under_voltage = False
        self._occurred_told = False
        self._throttle_failed = False

    # ------------------------------------------------------------------ figures

    def health(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {"state": self._state, "source": self.s.source}
            if self._reading is not None:
                out.update(self._reading.to_json())
                out["age_s"] = round(time.monotonic() - self._read_at, 1)
            if self._error is not None:
                out["error"] = self._error
            out["throttled"] = self._throttled.to_json() if self._throttled else None
            if self._throttle_error is not None:
                out["throttled_error"] = self._throttle_error
            return out

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    # ------------------------------------------------------------------ the thread

    def closed(self) -> None:
        if self.source is not None:
            self.source.close()

    def poll_round(self) -> float:
        return self.poll_once()

    def poll_once(self) -> float:
        """One round: the flags, then the source; the delay before the next round."""
        self._poll_throttle()
        if self.source is None:
            return self.s.poll_s
        try:
            reading = self.source.read()
        except SourceError as exc:
            return self._failed(str(exc))
        except Exception as exc:  # a bug or a library surprise: reported, never fatal
            log.exception("power: reading %s failed", self.source.name)
            return self._failed(f"{type(exc).__name__}: {exc}")
        self._good(reading)
        return self.s.poll_s

    def _failed(self, why: str) -> float:
        self._critical_count = 0
        with self._lock:
            self._state, self._error = "error", why
        return self.retry.failed(why)

    def _still_failing(self, why: Why) -> None:
        if str(why) != self.retry.reason:
            log.warning("power: %s", why)

    def _source_failed(self, why: Why) -> None:
        log.warning("power: %s", why)
        self.raise_alarm("power_source_failed", f"power source unreadable: {why}",
                    Severity.WARNING, {"source": self.s.source, "error": str(why)})  # fmt: skip

    def _source_restored(self, gap_s: float, attempts: int) -> None:
        with self._lock:
            r = self._reading
        assert r is not None
        log.info("power: %s readable again", r.source)
        self.raise_alarm("power_source_restored", f"power source {r.source} readable again",
                    Severity.INFO, r.to_json())  # fmt: skip

    def _good(self, r: PowerReading) -> None:
        s = self.s
        charge = r.charge_pct
        on_battery = r.on_battery
        low = (
            on_battery
            and charge is not None
            and (charge <= s.low_pct or (self._low and charge <= s.low_pct + LOW_HYSTERESIS_PCT))
        )
        critical = on_battery and charge is not None and charge <= s.critical_pct
        self._critical_count = self._critical_count + 1 if critical else 0
        state = "critical" if critical else "low" if low else "ok"
        with self._lock:
            self._state, self._reading, self._read_at, self._error = (
                state, r, time.monotonic(), None
            )  # fmt: skip
        self.retry.restored()
        if low and not self._low:
            self.raise_alarm("power_low", f"battery low: {charge:.0f} % on battery",
                        Severity.WARNING, r.to_json())  # fmt: skip
        elif self._low and not low and not critical:
            why = "external power" if not on_battery else f"{charge:.0f} %"
            self.raise_alarm(
                "power_ok", f"battery no longer low ({why})", Severity.INFO, r.to_json()
            )
        self._low = low or critical
        if self._critical_count >= s.critical_readings and not self._critical_done:
            self._critical_done = True
            self.raise_alarm("power_critical",
                        f"battery critical: {charge:.0f} % on battery: sealing and powering off",
                        Severity.CRITICAL, r.to_json())  # fmt: skip
            if self.on_critical is not None:
                self.on_critical(r)

    def _poll_throttle(self) -> None:
        try:
            t = self.throttle.read()
        except SourceError as exc:
            with self._lock:
                self._throttle_error, self._throttled = str(exc), None
            if not self._throttle_failed:
                log.warning("power: %s", exc)
                self._throttle_failed = True
            return
        except Exception as exc:
            log.exception("power: reading the firmware's throttling flags failed")
            with self._lock:
                self._throttle_error = f"{type(exc).__name__}: {exc}"
            return
        self._throttle_failed = False
        with self._lock:
            self._throttled, self._throttle_error = t, None
        if t is None:
            return
        if t.flag("under_voltage_occurred") and not self._occurred_told and not t.under_voltage:
            self._occurred_told = True
            self.raise_alarm("undervoltage_occurred",
                        "the supply voltage dropped below 4.63 V since boot (weak supply or "
                        "cable?)", Severity.WARNING, t.to_json())  # fmt: skip
        if t.under_voltage != self._under_voltage:
            self._under_voltage = t.under_voltage
            self._occurred_told = True
            if t.under_voltage:
                self.raise_alarm("undervoltage", "supply under-voltage now (the Pi may throttle or "
                            "corrupt writes)", Severity.WARNING, t.to_json())  # fmt: skip
            else:
                self.raise_alarm("undervoltage_cleared", "supply voltage normal again",
                            Severity.INFO, t.to_json())  # fmt: skip
