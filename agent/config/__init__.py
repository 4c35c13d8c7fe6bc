"""The agent's configuration: one TOML file into frozen dataclasses, and what changes it.

``schema.py``     :class:`AgentConfig` (each part's section lives beside that part's code),
                  ``parse_config``/``load_config``, the profile rule ``check_profile``
``fields.py``     the loader of dataclasses and the field checks every section uses
``reading.py``    which file (``--config``, ``$EDGE_AGENT_CONFIG``, /etc) and reading it with
                  the remote overrides laid over it
``remote.py``     ``settings.get`` / ``settings.set``: validated, persisted, applied, recorded
``toml_write.py`` settings back to TOML text (tomli-w)
``cli.py``        ``edge-agent config check``

The names most callers want are importable from the package itself
(``from agent.config import AgentConfig, load_config, read_config``). They are resolved on
first use (PEP 562): every part's settings module imports ``agent.config.fields``, and
``schema.py`` imports every part's settings, so importing the schema here at once would make
each part's settings import itself back through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config.reading import DEFAULT_CONFIG as DEFAULT_CONFIG
    from agent.config.reading import config_path as config_path
    from agent.config.reading import read_config as read_config
    from agent.config.schema import AgentConfig as AgentConfig
    from agent.config.schema import check_profile as check_profile
    from agent.config.schema import load_config as load_config
    from agent.config.schema import parse_config as parse_config

_EXPORTS = {
    "AgentConfig": "agent.config.schema",
    "check_profile": "agent.config.schema",
    "load_config": "agent.config.schema",
    "parse_config": "agent.config.schema",
    "DEFAULT_CONFIG": "agent.config.reading",
    "config_path": "agent.config.reading",
    "read_config": "agent.config.reading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.config' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
