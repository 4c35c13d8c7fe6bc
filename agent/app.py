"""The composition root: every long-lived part of the agent is built here, and only here."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from agent.config import AgentConfig, load_config
from agent.model import Alarm
from agent.storage.keys import load_platform_public, load_signing_key
from agent.storage.sealer import Sealer
from agent.storage.spool import Spool

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")


def config_path(given: str | None) -> Path:
    """The config file: ``--config``, else $EDGE_AGENT_CONFIG, else /etc/edge-agent/agent.toml."""
    if given:
        return Path(given)
    env = os.environ.get("EDGE_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def read_config(given: str | None) -> AgentConfig:
    return load_config(config_path(given))


def boot_id() -> str:
    """The kernel's id of this boot (so segments say which power-on they belong to)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return uuid.uuid4().hex


def build_sealer(cfg: AgentConfig) -> Sealer:
    return Sealer(
        device_id=cfg.device.id,
        boot_id=boot_id(),
        signing_key=load_signing_key(cfg.keys.device_key),
        platform_public=load_platform_public(cfg.keys.platform_public),
        settings=cfg.seal,
    )


def _log_alarm(alarm: Alarm) -> None:
    log.warning("alarm %s: %s", alarm.kind, alarm.message)


def build_spool(cfg: AgentConfig) -> Spool:
    return Spool(cfg.spool, build_sealer(cfg), alarm=_log_alarm)
