"""The sealer and the spool as the agent's config describes them (for ``run`` and commands).

The running agent, ``edge-agent seal``, ``spool``, ``uplink forward`` and the self-test all
open the one spool of this device with its keys; this is the one place that does it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.model import Alarm, ClockState
from agent.storage.keys import load_platform_public, load_signing_key
from agent.storage.sealer import Sealer
from agent.storage.spool import Spool

if TYPE_CHECKING:
    from agent.config.schema import AgentConfig

log = logging.getLogger(__name__)


def boot_id() -> str:
    """The kernel's id of this boot (so segments say which power-on they belong to)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return uuid.uuid4().hex


def build_sealer(cfg: AgentConfig, boot: str | None = None) -> Sealer:
    return Sealer(
        device_id=cfg.device.id,
        boot_id=boot or boot_id(),
        signing_key=load_signing_key(cfg.keys.device_key),
        platform_public=load_platform_public(cfg.keys.platform_public),
        settings=cfg.seal,
    )


def log_alarm(alarm: Alarm) -> None:
    log.warning("alarm %s: %s", alarm.kind, alarm.message)


def build_spool(
    cfg: AgentConfig,
    *,
    alarm: Callable[[Alarm], None] = log_alarm,
    clock: Callable[[], ClockState] = ClockState,
    boot: str | None = None,
) -> Spool:
    return Spool(cfg.spool, build_sealer(cfg, boot), alarm=alarm, clock=clock)
