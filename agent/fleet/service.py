"""The fleet part of a running tracker: rules on every fix, vehicle inputs, SOS, commands.

::

    GpsService.handle(fix) ──▶ FleetService.on_fix(fix) ──▶ RuleEngine.feed(fix, inputs)
                                        │  each event: spool.put_event("fleet_<kind>", record)
                                        │              alarm(Alarm("fleet_<kind>", ...))
    input source ─▶ InputThread ─▶ _on_input: SOS ──▶ alarm(Alarm("sos", CRITICAL)) first,
                  (debounced)                        then spool.put_event("fleet_sos", ...)
                                   level change ──▶ spool.put_event("fleet_input", ...)

Every event record carries the capture time of the fix that decided it (``time``, ``t``), so
events decided while the truck had no coverage reach the platform later, in order (the
``event`` stream's sequence numbers), with their true times.

Thread safety: ``on_fix`` (GPS consumer thread), the command handlers (command thread) and
the input thread meet only under ``self._lock``, held for the engine's pure work; spool writes
and alarms happen outside it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.errors import CommandError, ConfigError, SpoolError
from agent.fleet.plan import Plan, parse_plan
from agent.fleet.rules import FleetEvent, Inputs, RuleEngine
from agent.fleet.schedule import LocalClock
from agent.fleet.settings import FleetSettings, InputSettings
from agent.fleet.store import PlanStore
from agent.lines.inputs import (
    GpioInputSource,
    InputEvent,
    InputSource,
    InputThread,
    SerialInputSource,
    SimInputSource,
    parse_levels,
)
from agent.model import Alarm, Fix, Severity, format_utc
from agent.storage.spool import Spool

log = logging.getLogger(__name__)

AlarmSink = Callable[[Alarm], None]
Handler = Callable[[dict[str, Any]], dict[str, Any]]

MESSAGES = {
    "area_enter": "entered area {subject}",
    "area_exit": "left area {subject}",
    "off_assigned": "outside the assigned work area during its shift",
    "on_assigned": "back in the assigned work area",
    "route_left": "left the corridor of route {subject}",
    "route_back": "back on route {subject}",
    "speeding": "speeding: {speed_kmh} km/h where the limit is {limit_kmh} km/h",
    "speeding_end": "speed back under the limit (max {max_kmh} km/h)",
    "stopped": "stopped since {since}",
    "stopped_end": "moving again after {duration_s} s",
    "idle": "idling (ignition on, not moving) since {since}",
    "idle_end": "no longer idling ({why})",
    "route_coverage": "route {subject}: {share_pct} % covered in shift {shift}",
}


def open_input_source(s: InputSettings) -> InputSource | None:
    """The source named by ``s.source``; None for ``none``. GPIO imports gpiod only here."""
    if s.source == "serial":
        return SerialInputSource(s.serial_port, s.baud, reconnect_max_s=s.reconnect_max_s)
    if s.source == "gpio":
        lines = s.gpio_lines()
        if not lines:
            raise ConfigError("fleet.inputs: source 'gpio' needs at least one *_line >= 0")
        return GpioInputSource(
            s.gpio_chip,
            lines,
            active_low=s.active_low,
            bias=s.bias,
            debounce_s=s.debounce_ms / 1000.0,
            reconnect_max_s=s.reconnect_max_s,
        )
    if s.source == "sim":
        return SimInputSource(parse_levels(s.sim_state))
    return None


def describe(ev: FleetEvent) -> str:
    fields: dict[str, Any] = {"subject": ev.subject, **ev.details}
    if "share" in fields:
        fields["share_pct"] = round(float(fields["share"]) * 100, 1)
    try:
        return MESSAGES.get(ev.kind, ev.kind).format(**fields)
    except (KeyError, ValueError, IndexError):
        return ev.kind


class FleetService:
    """Owns the rule engine, the plan store and the input thread."""

    def __init__(
        self,
        settings: FleetSettings,
        spool: Spool,
        stop: threading.Event,
        *,
        alarm: AlarmSink,
        source: InputSource | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.stop = stop
        self._alarm = alarm
        self._lock = threading.Lock()
        self.clock = LocalClock(settings.timezone, settings.utc_offset_min)
        self.store = PlanStore(settings.state_dir)
        self.engine = RuleEngine(
            self.store.load(settings.areas_file), settings.rule_settings(), self.clock
        )
        self.events_recorded = 0
        self.events_failed = 0
        self.sos_count = 0
        src = source if source is not None else open_input_source(settings.inputs)
        self.input_thread: InputThread | None = None
        if src is not None:
            s = settings.inputs
            self.input_thread = InputThread(
                src,
                stop,
                debounce_s=s.debounce_ms / 1000.0,
                sos_refractory_s=s.sos_refractory_s,
                maxsize=s.queue_size,
                on_event=self._on_input,
            )
        log.info(
            "fleet: %d areas, %d routes (plan %s from %s)",
            len(self.engine.plan.areas),
            len(self.engine.plan.routes),
            self.engine.plan.version,
            self.store.origin,
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.input_thread is not None:
            self.input_thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.input_thread is not None:
            self.input_thread.join(timeout)

    # ------------------------------------------------------------------ state
    @property
    def inputs(self) -> Inputs:
        return self.input_thread.inputs if self.input_thread is not None else Inputs()

    @property
    def parked(self) -> bool:
        """Ignition known and off: the reporting strategy uses its parked (stopped) interval."""
        return self.inputs.ignition is False

    def live_fields(self) -> dict[str, object]:
        """What each position report carries besides the fix: inputs and the shapes we are in."""
        with self._lock:
            inside = self.engine.inside()
        return {"inputs": self.inputs.to_json(), "in": inside}

    @property
    def plan(self) -> Plan:
        with self._lock:
            return self.engine.plan

    # ------------------------------------------------------------------ fixes
    def on_fix(self, fix: Fix, inputs: Inputs | None = None) -> list[FleetEvent]:
        """Run the rules on one fix; record and raise every event. ``inputs`` overrides the
        input thread's snapshot (replays and tests)."""
        snap = inputs if inputs is not None else self.inputs
        with self._lock:
            events = self.engine.feed(fix, snap)
        for ev in events:
            self._emit(ev)
        return events

    def _emit(self, ev: FleetEvent) -> None:
        record = ev.to_record()
        kind = f"fleet_{ev.kind}"
        try:
            self.spool.put_event(kind, record)
            self.events_recorded += 1
        except (SpoolError, OSError) as exc:
            self.events_failed += 1
            log.error("fleet: cannot record %s at %s: %s", kind, record["time"], exc)
        self._alarm(Alarm(kind, describe(ev), ev.severity, time=ev.time, details=record))

    # ------------------------------------------------------------------ inputs
    def _on_input(self, ev: InputEvent) -> None:
        """Called in the input thread for each debounced change and each SOS press."""
        if ev.kind == "sos":
            self.sos(ev.time)
            return
        record = {"time": format_utc(ev.time), "t": ev.time, "input": ev.name, "value": ev.value}
        try:
            self.spool.put_event("fleet_input", record)
        except (SpoolError, OSError) as exc:
            log.error("fleet: cannot record input %s=%s: %s", ev.name, ev.value, exc)

    def sos(self, t: float) -> None:
        """An SOS press: a critical alarm first (the live lane sends alarms before anything
        else), then the event record."""
        self.sos_count += 1
        with self._lock:
            last = self.engine.last_fix
        details: dict[str, Any] = {"time": format_utc(t), "t": t}
        if last is not None:
            details |= {"lat": last.lat, "lon": last.lon, "fix_time": format_utc(last.time)}
        self._alarm(Alarm("sos", "SOS button pressed", Severity.CRITICAL, time=t, details=details))
        try:
            self.spool.put_event("fleet_sos", details)
        except (SpoolError, OSError) as exc:
            log.critical("fleet: cannot record the SOS at %s: %s", details["time"], exc)

    # ------------------------------------------------------------------ commands
    def command_handlers(self) -> dict[str, Handler]:
        return {
            "fleet.set_areas": self.cmd_set_areas,
            "fleet.get_areas": self.cmd_get_areas,
            "fleet.coverage": self.cmd_coverage,
        }

    def install(self, plan: Plan) -> None:
        """Persist ``plan`` and run it, carrying over the state of unchanged items."""
        engine = RuleEngine(plan, self.settings.rule_settings(), self.clock)
        with self._lock:
            self.store.save(plan)
            engine.adopt(self.engine)
            self.engine = engine
        log.info(
            "fleet: plan %s installed (%d areas, %d routes)",
            plan.version,
            len(plan.areas),
            len(plan.routes),
        )

    def cmd_set_areas(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"areas": [...], "routes": [...], "replace": true, "remove": [ids]}``."""
        unknown = sorted(set(args) - {"areas", "routes", "replace", "remove"})
        if unknown:
            raise CommandError(f"fleet.set_areas: unknown argument(s) {', '.join(unknown)}")
        replace = args.get("replace", True)
        remove = args.get("remove", [])
        if not isinstance(replace, bool):
            raise CommandError("fleet.set_areas: replace must be true or false")
        if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
            raise CommandError("fleet.set_areas: remove must be a list of ids")
        try:
            incoming = parse_plan(
                {"areas": args.get("areas", []), "routes": args.get("routes", [])}
            )
            plan = incoming if replace else self.plan.merged(incoming, remove)
        except ConfigError as exc:
            raise CommandError(f"fleet.set_areas: {exc}") from None
        try:
            self.install(plan)
        except OSError as exc:
            raise CommandError(f"fleet.set_areas: cannot store the plan: {exc}") from None
        return {"version": plan.version, "areas": len(plan.areas), "routes": len(plan.routes)}

    def cmd_get_areas(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"full": false}`` -> version, counts and ids (``full``: the whole plan)."""
        plan = self.plan
        out: dict[str, Any] = {
            "version": plan.version,
            "origin": self.store.origin,
            "areas": [a.id for a in plan.areas],
            "routes": [r.id for r in plan.routes],
        }
        if args.get("full"):
            out["plan"] = plan.to_json()
        return out

    def cmd_coverage(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"route": "r12"}`` (optional) -> coverage of every (route, shift) kept."""
        route = args.get("route")
        if route is not None and not isinstance(route, str):
            raise CommandError("fleet.coverage: route must be a route id")
        with self._lock:
            reports = self.engine.coverage_report(route)
        return {"coverage": [r.to_json() for r in reports]}
