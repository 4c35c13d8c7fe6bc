"""Which config file the commands read, and reading it as ``run`` does.

``--config`` wins, else ``$EDGE_AGENT_CONFIG``, else /etc/edge-agent/agent.toml; the file is
read with the platform's remote overrides laid over it (:mod:`agent.config.remote`).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.config.remote import load_with_overrides
from agent.config.schema import AgentConfig

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")


def config_path(given: str | None) -> Path:
    """The config file: ``--config``, else $EDGE_AGENT_CONFIG, else /etc/edge-agent/agent.toml."""
    if given:
        return Path(given)
    env = os.environ.get("EDGE_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def read_config(given: str | None) -> AgentConfig:
    """The config file with the platform's remote overrides merged over it."""
    return load_with_overrides(config_path(given))
