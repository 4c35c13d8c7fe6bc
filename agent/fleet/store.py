"""Where the fleet plan lives: ``<state_dir>/plan.json`` (from the platform) or ``areas_file``.

The platform's ``fleet.set_areas`` command is validated completely (:func:`parse_plan`) before
anything is written; the new plan then replaces ``plan.json`` atomically (temp file, fsync,
rename, fsync of the directory: after a power cut the device has the old plan or the new one,
never a mixture). At start, ``plan.json`` wins over ``areas_file``: once the platform has
spoken, the local file is only a fallback for a device that was never given a plan.

A ``plan.json`` that no longer parses (a bug, a hand edit) is moved aside to
``plan.json.bad-<time>`` and logged; the device then runs ``areas_file`` (or nothing) until
the platform sends the plan again.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

from agent import wallclock
from agent.errors import ConfigError
from agent.fleet.plan import Plan, parse_plan
from agent.storage.durable import write_atomic

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
FORMAT_VERSION = 1


def load_areas_file(path: Path) -> Plan:
    """A TOML file of ``[[areas]]`` and ``[[routes]]`` tables (the command's JSON shape)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"fleet.areas_file: cannot read {path}: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"fleet.areas_file: {path}: not TOML: {exc}") from None
    unknown = sorted(set(data) - {"areas", "routes"})
    if unknown:
        raise ConfigError(f"fleet.areas_file: {path}: unknown table(s) {', '.join(unknown)}")
    try:
        return parse_plan(data)
    except ConfigError as exc:
        raise ConfigError(f"fleet.areas_file: {path}: {exc}") from None


class PlanStore:
    """The installed plan on disk. Not thread-safe: the service serialises commands."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / PLAN_FILE
        self.origin = "none"  # none | areas_file | platform
        self.installed_at: float | None = None

    def load(self, areas_file: Path | None = None) -> Plan:
        plan = self._load_installed()
        if plan is not None:
            self.origin = "platform"
            return plan
        if areas_file is not None:
            self.origin = "areas_file"
            return load_areas_file(areas_file)
        self.origin = "none"
        return Plan()

    def _load_installed(self) -> Plan | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
                raise ConfigError(f"format must be {FORMAT_VERSION}")
            plan = parse_plan({"areas": doc.get("areas", []), "routes": doc.get("routes", [])})
        except (ValueError, ConfigError) as exc:
            aside = self.path.with_name(f"{PLAN_FILE}.bad-{int(wallclock.now())}")
            log.error("fleet: %s does not load (%s); moved to %s", self.path, exc, aside.name)
            self.path.replace(aside)
            return None
        t = doc.get("installed_at")
        self.installed_at = float(t) if isinstance(t, int | float) else None
        return plan

    def save(self, plan: Plan, *, now: float | None = None) -> None:
        """Persist ``plan`` atomically (it was validated by whoever built it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.installed_at = wallclock.now() if now is None else now
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "version": plan.version,
            "installed_at": self.installed_at,
            **plan.to_json(),
        }
        write_atomic(self.path, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        self.origin = "platform"
