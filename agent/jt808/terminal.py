"""The JT/T 808 terminal as the agent sees it: fixes and alarms in, reports out.

Integration (the composition root)::

    terminal = Jt808Terminal(cfg.jt808, strategy=cfg.gps.strategy, stop=stop,
                             queue_key=derive_key(device_secret), fleet=fleet, spool=spool)
    gps = GpsService(..., observers=[terminal.on_fix])   # every fix, after the fleet rules
    alarms.add_sink(terminal.on_alarm)                    # SOS, fleet events, receiver lost
    terminal.start() ... terminal.join()

``on_fix`` runs the terminal's own :class:`~agent.gps.strategy.ReportingStrategy` (started
from ``[gps.strategy]``, changed by the platform's parameters) with ``alarm=True`` after a
fleet event or an SOS, and ``parked`` with the ignition off; a report is built (alarm and
status bits, additional items), stored durably in the queue, and the session is woken to send
it. It runs in the caller's thread (the GPS consumer), takes microseconds plus one fsync per
report, and never raises: a fault here must not stop the agent's own GPS path.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import __version__, wallclock
from agent.errors import FormatError, SpoolError
from agent.fleet.rules import Inputs
from agent.gps.settings import StrategySettings
from agent.gps.strategy import ReportingStrategy, distance_m
from agent.jt808 import messages as m
from agent.jt808.areas import KIND_OF_DELETE, KIND_OF_SET, AreaBook
from agent.jt808.client import Jt808Client
from agent.jt808.codec import Frame
from agent.jt808.location import (
    AlarmState,
    build_location,
    common_items,
    equipment_bits,
    status_bits,
)
from agent.jt808.params import EMERGENCY_DISTANCE, EMERGENCY_INTERVAL, ParamStore
from agent.jt808.queue import ReportQueue
from agent.jt808.settings import Jt808Settings
from agent.model import Alarm, Fix, FixMode, format_utc
from agent.storage.durable import write_atomic

if TYPE_CHECKING:
    from agent.fleet.service import FleetService
    from agent.storage.spool import Spool

log = logging.getLogger(__name__)

AUTH_FILE = "auth.json"
ODOMETER_FILE = "odometer.json"
ODOMETER_SAVE_S = 300.0
#: Below this speed (m/s) a fix adds nothing to the odometer (a parked receiver wanders).
ODOMETER_MIN_SPEED = 1.0
FAULTS = {"no-fix", "impossible-date", "time-not-advancing", "hdop", "jump"}


class Jt808Terminal:
    """Owns the session thread, the report queue and the terminal's state."""

    def __init__(
        self,
        settings: Jt808Settings,
        *,
        strategy: StrategySettings,
        stop: threading.Event,
        queue_key: bytes,
        fleet: FleetService | None = None,
        spool: Spool | None = None,
        inputs: Callable[[], Inputs] | None = None,
        signal: Callable[[], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.spool = spool
        self.dir = settings.state_dir
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._inputs = inputs if inputs is not None else (lambda: fleet.inputs) if fleet else None
        self._signal = signal
        self.params = ParamStore(self.dir, strategy, settings.heartbeat_s)
        self.strategy = ReportingStrategy(self.params.strategy())
        self.alarms = AlarmState()
        self.areas = AreaBook(self.dir, fleet)
        self.queue = ReportQueue(
            self.dir / "queue",
            queue_key,
            max_reports=settings.max_backlog,
            on_drop=self._dropped,
        )
        self._latches: dict[int, dict[int, int]] = {}
        self._odometer_m, self._odometer_saved = self._load_odometer()
        self._odometer_saved_at: float | None = None
        self.latest: Fix | None = None
        self.last_reported: Fix | None = None
        self.reports = 0
        self.texts: deque[dict[str, Any]] = deque(maxlen=5)
        self._failing: set[str] = set()
        self.client = Jt808Client(settings, self, stop)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.client.start()

    def join(self, timeout: float | None = None) -> None:
        self.client.join(timeout)
        with self._lock:
            self._save_odometer()
        self.queue.close()

    def is_alive(self) -> bool:
        return self.client.is_alive()

    def threads(self) -> list[threading.Thread]:
        """The session thread (the composition root watches it)."""
        return [self.client.thread]

    def health(self) -> dict[str, Any]:
        st = self.client.stats
        oldest = self.queue.oldest_time()
        with self._lock:
            bits = self.alarms.active
            mileage_km = round(self._odometer_m / 1000, 1)
        return {
            "server": self.settings.server,
            "state": st.state,
            "authenticated": st.authenticated,
            "registered": self.auth_code() is not None,
            "backlog": len(self.queue),
            "backlog_oldest_fix_age_s": (
                round(wallclock.now() - oldest, 1) if oldest is not None else None
            ),
            "reports": self.reports,
            "live_sent": st.live_sent,
            "batches_sent": st.batches_sent,
            "acked": st.reports_acked,
            "dropped": self.queue.dropped,
            "sessions": st.sessions,
            "platform_messages": st.platform_messages,
            "malformed": st.malformed,
            "unsupported": st.unsupported,
            "alarm_bits": f"0x{bits:08x}",
            "mileage_km": mileage_km,
            "last_error": st.last_error,
        }

    # ------------------------------------------------------------------ from the agent

    def on_fix(self, fix: Fix) -> None:
        """Every fix (GPS consumer thread), after the fleet rules saw it. Never raises."""
        try:
            with self._lock:
                self._on_fix(fix)
        except Exception as exc:
            self._fail("fix", exc)

    def on_alarm(self, alarm: Alarm) -> None:
        """Every alarm the agent raises (any thread). Never raises."""
        try:
            with self._lock:
                if not self.alarms.apply(alarm, self.areas.refs):
                    return
                last = self.strategy.last_good
                if alarm.kind == "sos" and last is not None:
                    self._report(last)  # at once, with the last good position
        except Exception as exc:
            self._fail("alarm", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        if what not in self._failing:
            self._failing.add(what)
            if isinstance(exc, (SpoolError, OSError)):
                log.error("jt808: cannot store a report: %s", exc)
            else:
                log.exception("jt808: %s failed", what)
        else:
            log.debug("jt808: %s failed again: %s", what, exc)

    def _on_fix(self, fix: Fix) -> None:
        prev = self.strategy.last_good
        inputs = self._inputs() if self._inputs is not None else Inputs()
        alarm = self.alarms.report_now or self._emergency_due(fix)
        d = self.strategy.decide(fix, alarm=alarm, parked=inputs.ignition is False)
        if d.reason in FAULTS:
            return
        self.latest = fix
        if prev is not None:
            self._odometer(prev, fix)
        if d.report_live:
            self._report(fix, inputs)
        self._failing.discard("fix")

    def _emergency_due(self, fix: Fix) -> bool:
        """While SOS is set, report at least every 0x0028 s and 0x002F m."""
        last = self.last_reported
        if not self.alarms.sos or last is None:
            return False
        p = self.params.values
        if fix.time - last.time >= p[EMERGENCY_INTERVAL]:
            return True
        dist = p[EMERGENCY_DISTANCE]
        if dist > 0 and fix.has_position and last.has_position:
            assert fix.lat is not None and fix.lon is not None
            assert last.lat is not None and last.lon is not None
            return distance_m(last.lat, last.lon, fix.lat, fix.lon) >= dist
        return False

    def _odometer(self, prev: Fix, fix: Fix) -> None:
        assert prev.lat is not None and prev.lon is not None
        assert fix.lat is not None and fix.lon is not None
        dt = fix.time - prev.time
        if dt <= 0:
            return
        d = distance_m(prev.lat, prev.lon, fix.lat, fix.lon)
        speed = fix.speed if fix.speed is not None and math.isfinite(fix.speed) else d / dt
        if speed >= ODOMETER_MIN_SPEED:
            self._odometer_m += d
        if self._odometer_saved_at is None:
            self._odometer_saved_at = fix.time
        elif fix.time - self._odometer_saved_at >= ODOMETER_SAVE_S:
            self._save_odometer()
            self._odometer_saved_at = fix.time

    def _report(self, fix: Fix, inputs: Inputs | None = None) -> None:
        if inputs is None:
            inputs = self._inputs() if self._inputs is not None else Inputs()
        snap = self.alarms.snapshot()
        body = self._location(fix, inputs, snap.alarm, snap.items)
        rid = self.queue.append(body, fix.time)
        if snap.latches:
            self._latches[rid] = snap.latches
        self.last_reported = fix
        self.reports += 1
        self.client.wake()

    def _location(
        self, fix: Fix, inputs: Inputs, alarm: int, extra: list[tuple[int, bytes]]
    ) -> bytes:
        s = self.settings
        equipment = None
        if s.equipment_item and self._inputs is not None:
            equipment = (s.equipment_item, equipment_bits(inputs.brush, inputs.pump, inputs.lift))
        signal = self._signal() if self._signal is not None else None
        items = common_items(
            mileage_m=self._odometer_m,
            satellites=fix.sats_used,
            signal=signal,
            equipment=equipment,
        )
        items = sorted([*items, *extra], key=lambda kv: kv[0])
        loc = build_location(
            fix, alarm=alarm, status=status_bits(fix, inputs.ignition), items=items
        )
        return m.encode_location(loc)

    def _dropped(self, rid: int, t: float) -> None:
        self._latches.pop(rid, None)
        if self.queue.dropped in (1, 10, 100) or self.queue.dropped % 1000 == 0:
            log.warning(
                "jt808: backlog full (%d reports): dropped the oldest (fix of %s); %d so far",
                self.settings.max_backlog,
                format_utc(t),
                self.queue.dropped,
            )

    # ------------------------------------------------------------------ odometer, codes

    def _load_odometer(self) -> tuple[float, float]:
        try:
            doc = json.loads((self.dir / ODOMETER_FILE).read_bytes())
            v = float(doc["m"])
            if not math.isfinite(v) or v < 0:
                raise ValueError(v)
            return v, v
        except FileNotFoundError:
            return 0.0, 0.0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("jt808: odometer file unreadable (%s): starting from 0", exc)
            return 0.0, 0.0

    def _save_odometer(self) -> None:
        if self._odometer_m == self._odometer_saved:
            return
        try:
            write_atomic(self.dir / ODOMETER_FILE, json.dumps({"m": self._odometer_m}).encode())
            self._odometer_saved = self._odometer_m
        except OSError as exc:
            log.error("jt808: cannot save the odometer: %s", exc)

    def auth_code(self) -> str | None:
        """The authentication code from the last registration with *this* server and phone."""
        try:
            doc = json.loads((self.dir / AUTH_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("jt808: %s unreadable (%s): registering again", AUTH_FILE, exc)
            return None
        if not isinstance(doc, dict):
            return None
        if doc.get("server") != self.settings.server or doc.get("phone") != self.settings.phone:
            return None
        code = doc.get("code")
        return code if isinstance(code, str) and code else None

    def store_auth_code(self, code: str) -> None:
        doc = {"server": self.settings.server, "phone": self.settings.phone, "code": code}
        write_atomic(self.dir / AUTH_FILE, json.dumps(doc).encode())

    def forget_auth_code(self) -> None:
        try:
            (self.dir / AUTH_FILE).unlink(missing_ok=True)
        except OSError as exc:
            log.error("jt808: cannot remove %s: %s", AUTH_FILE, exc)

    # ------------------------------------------------------------------ for the session

    def registration_body(self) -> bytes:
        s = self.settings
        reg = m.Registration(
            province=s.province_id,
            city=s.city_id,
            manufacturer=s.manufacturer_id,
            model=s.terminal_model,
            terminal_id=s.terminal_id,
            plate_color=s.plate_color,
            plate=s.plate,
        )
        return m.encode_registration(reg, s.v2019)

    def authentication_body(self, code: str) -> bytes:
        auth = m.Authentication(code, self.settings.imei, f"edge-agent {__version__}"[:20])
        return m.encode_authentication(auth, self.settings.v2019)

    def session_started(self) -> int:
        """An authenticated session begins: the id from which reports are live."""
        return self.queue.next_id

    def session_ended(self) -> None:
        pass

    def heartbeat_s(self) -> float:
        return self.params.heartbeat_s

    def acknowledged(self, ids: list[int], result: int) -> int:
        """The platform answered the message carrying ``ids`` with success (or "alarm
        handling confirmed"): forget them, clear the alarm bits they carried."""
        n = self.queue.ack(ids)
        with self._lock:
            for rid in ids:
                latches = self._latches.pop(rid, None)
                if latches:
                    self.alarms.acknowledged(latches)
        return n

    def handle_platform(self, frame: Frame) -> list[tuple[int, bytes]] | None:
        """A platform message -> the messages to send back; None: not supported. Raises
        FormatError for a body that does not parse (answered "message error")."""
        msg_id, body, v2019 = frame.msg_id, frame.body, frame.header.is_2019

        def answer(result: int) -> list[tuple[int, bytes]]:
            r = m.GeneralResponse(frame.serial, msg_id, result)
            return [(m.T_GENERAL_RESPONSE, m.encode_general_response(r))]

        if msg_id == m.P_SET_PARAMS:
            items = m.decode_params(body)
            with self._lock:
                try:
                    res = self.params.apply(items)
                except OSError as exc:
                    log.error("jt808: cannot store parameters: %s", exc)
                    return answer(m.FAILURE)
                if res.applied:
                    self.strategy.s = self.params.strategy()
            log.info(
                "jt808: parameters from the platform: applied %s, not supported %s%s",
                {f"0x{k:04x}": v for k, v in res.applied.items()},
                [f"0x{k:04x}" for k in res.unsupported],
                f", refused: {res.reason}" if res.reason else "",
            )
            return answer(res.result)
        if msg_id in (m.P_QUERY_PARAMS, m.P_QUERY_SOME_PARAMS):
            if msg_id == m.P_QUERY_PARAMS:
                if body:
                    raise FormatError("0x8104 query parameters: the body must be empty")
                ids = None
            else:
                ids = m.decode_param_ids(body)
            with self._lock:
                items = self.params.answer(ids)
            return [(m.T_PARAMS, m.encode_params_answer(frame.serial, items))]
        if msg_id == m.P_LOCATION_QUERY:
            if body:
                raise FormatError("0x8201 location query: the body must be empty")
            with self._lock:
                loc = self._answer_location()
            return [(m.T_LOCATION_ANSWER, m.encode_location_answer(frame.serial, loc))]
        if msg_id == m.P_ALARM_CONFIRM:
            _serial, bits = m.decode_alarm_confirm(body)
            with self._lock:
                self.alarms.confirm(bits)
            return answer(m.OK)
        if msg_id == m.P_TEXT:
            text = m.decode_text(body, v2019)
            self._text(frame, text)
            return answer(m.OK)
        if msg_id in KIND_OF_SET or msg_id in KIND_OF_DELETE:
            result, why = self.areas.handle(msg_id, body, v2019)
            level = logging.INFO if result == m.OK else logging.WARNING
            log.log(level, "jt808: 0x%04x: %s (%s)", msg_id, m.RESULTS[result], why)
            return answer(result)
        return None

    def _answer_location(self) -> bytes:
        fix = self.latest
        inputs = self._inputs() if self._inputs is not None else Inputs()
        if fix is None:  # no position yet: status bit 1 clear, as the standard has it
            fix = Fix(time=wallclock.now(), mode=FixMode.NO_FIX)
        return self._location(fix, inputs, self.alarms.active, [])

    def _text(self, frame: Frame, text: m.TextMessage) -> None:
        record = {
            "serial": frame.serial,
            "flags": text.flags,
            "text_type": text.kind,
            "text": text.text,
            "emergency": bool(text.flags & 1),
            "server": self.settings.server,
        }
        self.texts.append({**record, "time": wallclock.now()})
        log.info("jt808: text message from the platform: %r", text.text)
        if self.spool is not None:
            try:
                self.spool.put_event("jt808_text", record)
            except (SpoolError, OSError) as exc:
                log.error("jt808: cannot record the text message: %s", exc)
