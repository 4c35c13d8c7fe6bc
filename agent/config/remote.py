"""Remote settings (``settings.get``, ``settings.set``), for the command channels.

The platform (signed commands) and the device's control socket may change a chosen set of
settings: report intervals, segment lengths, bitrates, ... Each change is

- **validated** exactly as the config loader validates the file (the new
  :class:`~agent.config.schema.AgentConfig` is built with
  :func:`agent.config.fields.load_dataclass`, so a bad value is refused with the loader's
  message naming the field, e.g. ``video.bitrate_kbps: must be 100..100000, got 5``);
- **persisted** in an overrides file under the state directory (``/var/lib/edge-agent/
  overrides.toml`` by default: the service may not write ``/etc/edge-agent``), which
  :func:`load_with_overrides` merges over ``agent.toml`` at every start;
- **applied live** where the running part can take it (the GPS reporting strategy, the log
  level), else at the next start; the answer says which;
- **recorded** as a ``settings_changed`` event record in the spool (sealed evidence of who
  changed what, from which value to which).

Settable keys are limited to :data:`SETTABLE` (tables or single keys): identity, keys, paths
and the broker connection are not, because a wrong value sent remotely could cut the device off
for good; those change on the device with ``edge-agent provision``.

``time.sync`` (the clock, not a setting) is :mod:`agent.gps.time_sync`; the root gives both
to each channel (:mod:`agent.runtime.routing`).
"""

from __future__ import annotations

import copy
import logging
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config.fields import load_dataclass
from agent.config.schema import AgentConfig, check_profile
from agent.config.toml_write import config_to_dict, render_toml
from agent.errors import AgentError, CommandError, ConfigError
from agent.storage.durable import write_atomic

if TYPE_CHECKING:
    from agent.gps.service import GpsService

log = logging.getLogger(__name__)

OVERRIDES_NAME = "overrides.toml"

#: What may be changed remotely: whole tables ("gps.strategy") or single keys.
SETTABLE: tuple[str, ...] = (
    "gps.strategy",
    "gps.stale_after_s",
    "spool.batch_s",
    "spool.batch_max_records",
    "spool.evidence_quota_mb",
    "spool.telemetry_quota_mb",
    "video.segment_s",
    "video.bitrate_kbps",
    "video.fps",
    "video.width",
    "video.height",
    "video.prebuffer_s",
    "video.keyframe_s",
    "video.stills_interval_s",
    "video.stills_quality",
    "video.watermark",
    "video.watermark_fields",
    "video.watermark_position",
    "video.watermark_scale",
    "audio.segment_s",
    "audio.bitrate_kbps",
    "audio.prebuffer_s",
    "uplink.bandwidth_bps",
    "uplink.priority",
    "health.heartbeat_s",
    "health.storage_alarm_pct",
    "log.level",
)

#: Keys a running agent takes at once (the rest: at the next start).
LIVE: tuple[str, ...] = ("gps.strategy", "log.level")


def _covered(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def default_overrides_path(cfg: AgentConfig) -> Path:
    """``<state dir>/overrides.toml``: beside the spool (``/var/lib/edge-agent``)."""
    return cfg.spool.dir.parent / OVERRIDES_NAME


# --------------------------------------------------------------------------- merging


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> ``{"gps.strategy.interval_s": 10, ...}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"gps.strategy.interval_s": 10}`` -> ``{"gps": {"strategy": {"interval_s": 10}}}``."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *tables, name = key.split(".")
        t = out
        for part in tables:
            nxt = t.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {part} is a value, not a table")
            t = nxt
        t[name] = v
    return out


def merge_overrides(base: str | Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config (TOML text or its parsed dict) with ``overrides`` laid over it.

    ``overrides`` may be nested tables (as read from ``overrides.toml``) or flat dotted keys
    (``{"video.segment_s": 20}``), or both. Only the keys named are replaced; tables merge key
    by key. The result is a new dict for :func:`agent.config.fields.load_dataclass`; neither input
    is changed. Validation is the loader's: unknown keys and bad values fail there, naming the
    field.
    """
    if isinstance(base, str):
        try:
            merged = tomllib.loads(base)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: not valid TOML: {exc}") from None
    else:
        merged = copy.deepcopy(dict(base))
    for key, value in flatten(overrides).items():
        *tables, name = key.split(".")
        t = merged
        for i, part in enumerate(tables):
            nxt = t.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(tables[: i + 1])}: must be a table")
            t = nxt
        t[name] = copy.deepcopy(value)
    return merged


def read_overrides(path: Path) -> dict[str, Any]:
    """The overrides file as flat dotted keys (empty when there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return flatten(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def build_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> AgentConfig:
    """Validate the merged config exactly as the loader does (errors name the field)."""
    cfg = load_dataclass(AgentConfig, merge_overrides(base, overrides))
    if not cfg.device.id:
        raise ConfigError("device.id: required")
    return cfg


def load_with_overrides(config_path: Path, overrides_path: Path | None = None) -> AgentConfig:
    """``agent.toml`` with the remote overrides merged over it (what ``run`` should load).

    ``overrides_path`` defaults to :func:`default_overrides_path` of the config. An overrides
    file that cannot be read or no longer validates (e.g. after an upgrade changed a limit) is
    logged and ignored: the device starts with its config rather than not at all.
    """
    from agent.config.schema import load_config

    cfg = load_config(config_path)
    path = overrides_path or default_overrides_path(cfg)
    try:
        flat = read_overrides(path)
        if not flat:
            return cfg
        bad = sorted(k for k in flat if not _covered(k, SETTABLE))
        if bad:
            raise ConfigError(f"{', '.join(bad)}: not settable remotely")
        base = tomllib.loads(config_path.read_text(encoding="utf-8"))
        merged = build_config(base, flat)
    except ConfigError as exc:
        log.error("ignoring the remote settings in %s: %s", path, exc)
        return cfg
    log.info("remote settings from %s: %s", path, ", ".join(sorted(flat)))
    return merged


# --------------------------------------------------------------------------- settings


def record_event(spool: Any, kind: str, details: dict[str, Any]) -> bool:
    """Seal an event record; a spool that cannot take it is logged, never fatal to a command
    whose change has already been made (the answer says ``recorded: false``)."""
    if spool is None:
        return False
    try:
        spool.put_event(kind, details)
    except (AgentError, OSError) as exc:
        log.error("cannot record the %s event %s: %s", kind, details, exc)
        return False
    return True


def _value(cfg: AgentConfig, key: str) -> Any:
    d: Any = config_to_dict(cfg)
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


class RemoteSettings:
    """The handlers' state: the base config, the overrides, and the parts to update live."""

    def __init__(
        self,
        *,
        running: AgentConfig,
        overrides_path: Path,
        config_path: Path | None = None,
        spool: Any = None,
        gps: GpsService | None = None,
    ) -> None:
        self.overrides_path = overrides_path
        self.spool = spool
        self.gps = gps
        self._lock = threading.Lock()  # the local socket and the platform may both set
        self.running = running  # what the running parts use
        # The base the overrides are laid over: agent.toml itself when we know where it is,
        # else the running config (which already holds the earlier overrides: the same result,
        # since overrides only ever replace keys).
        self.base: dict[str, Any] = config_to_dict(running)
        if config_path is not None:
            try:
                self.base = tomllib.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{config_path}: cannot read: {exc}") from None
        try:
            self.overrides = read_overrides(overrides_path)
        except ConfigError as exc:
            log.error("remote settings: %s; starting from none", exc)
            self.overrides = {}
        self.effective = running

    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        keys = args.get("keys")
        if keys is not None and (
            not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
        ):
            raise CommandError("keys: must be a list of setting names")
        flat = {k: v for k, v in flatten(config_to_dict(self.effective)).items()
                if _covered(k, SETTABLE)}  # fmt: skip
        if keys:
            unknown = [k for k in keys if not any(f == k or f.startswith(k + ".") for f in flat)]
            if unknown:
                raise CommandError(f"{', '.join(unknown)}: not a remotely settable key")
            flat = {k: v for k, v in flat.items() if _covered(k, tuple(keys))}
        pending = sorted(
            k for k in flat if _value(self.running, k) != flat[k] and not _covered(k, LIVE)
        )
        return {
            "settings": flat,
            "overrides": dict(sorted(self.overrides.items())),
            "pending_restart": pending,
            "settable": list(SETTABLE),
        }

    def set(self, args: dict[str, Any], origin: str = "platform") -> dict[str, Any]:
        with self._lock:
            return self._set(args, origin)

    def _set(self, args: dict[str, Any], origin: str) -> dict[str, Any]:
        if not args:
            raise CommandError('no settings given (e.g. {"video.segment_s": 20})')
        changes = flatten(args)
        refused = sorted(k for k in changes if not _covered(k, SETTABLE))
        if refused:
            raise CommandError(
                f"{', '.join(refused)}: not settable remotely (settable: {', '.join(SETTABLE)})"
            )
        overrides = {**self.overrides, **changes}
        try:
            new = build_config(self.base, overrides)
            check_profile(new)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        old = self.effective
        diff = {
            k: {"from": _value(old, k), "to": _value(new, k)}
            for k in sorted(changes)
            if _value(old, k) != _value(new, k)
        }
        self._persist(overrides)
        self.overrides = overrides
        self.effective = new
        live, restart = self._apply(new, list(diff))
        recorded = self._record(
            "settings_changed",
            {"changes": diff, "origin": origin, "applied_live": live, "on_restart": restart},
        ) if diff else False  # fmt: skip
        log.info(
            "settings changed by %s: %s (live: %s; at restart: %s)",
            origin,
            ", ".join(f"{k}={v['to']!r}" for k, v in diff.items()) or "nothing",
            ", ".join(live) or "-",
            ", ".join(restart) or "-",
        )
        return {"changed": diff, "applied_live": live, "on_restart": restart, "recorded": recorded}

    def _record(self, kind: str, details: dict[str, Any]) -> bool:
        return record_event(self.spool, kind, details)

    def _persist(self, overrides: Mapping[str, Any]) -> None:
        header = (
            "Remote settings (edge-agent settings.set), laid over /etc/edge-agent/agent.toml\n"
            "at every start. Written by the agent; delete this file to return to agent.toml."
        )
        text = render_toml(nest(overrides), header)
        tomllib.loads(text)  # never write what we could not read back
        path = self.overrides_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text.encode())
        except OSError as exc:
            raise CommandError(f"cannot save the settings in {path}: {exc}") from None

    def _apply(self, new: AgentConfig, keys: list[str]) -> tuple[list[str], list[str]]:
        live: list[str] = []
        restart: list[str] = []
        for key in keys:
            gps_live = _covered(key, ("gps.strategy",)) and self.gps is not None
            if gps_live or key == "log.level":
                live.append(key)
            else:
                restart.append(key)
        if any(_covered(k, ("gps.strategy",)) for k in live) and self.gps is not None:
            # The strategy keeps its state (last report, last kept fix); only the rules change.
            # One attribute assignment: the consumer thread sees the old or the new settings.
            self.gps.strategy.s = new.gps.strategy
            gps_settings = replace(self.running.gps, strategy=new.gps.strategy)
            self.running = replace(self.running, gps=gps_settings)
        if "log.level" in live:
            logging.getLogger().setLevel(new.log.level.upper())
            self.running = replace(self.running, log=new.log)
        return live, restart
