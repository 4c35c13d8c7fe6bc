"""Writing TOML: the agent's settings back to text, with tomli-w.

Python reads TOML (``tomllib``) but does not write it. ``edge-agent provision`` writes
``agent.toml`` and ``settings.set`` the remote-settings overrides file; both go through
tomli-w, which escapes every character TOML forbids in a string (the C0 controls and DEL:
the renderer this replaced wrote DEL raw, which ``tomllib`` then refused). Callers still read
every output back with ``tomllib`` before it replaces a file.

:func:`config_to_dict` turns a settings dataclass (e.g. :class:`agent.config.schema.AgentConfig`)
into the nested dict :func:`agent.config.fields.load_dataclass` reads (``None`` values left
out, paths as strings), so ``load_dataclass(AgentConfig, config_to_dict(cfg)) == cfg``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def config_to_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as the nested dict its TOML would load into."""
    assert dataclasses.is_dataclass(obj) and not isinstance(obj, type)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = _plain(value)
    return out


def _plain(v: Any) -> Any:
    """Paths as strings, tuples as lists, tables key by key (what tomli-w writes)."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def render_toml(data: Mapping[str, Any], header: str = "") -> str:
    """Nested tables of scalars and lists as TOML text, under ``header`` as comments."""
    import tomli_w  # only when writing: a running tracker never needs it

    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = tomli_w.dumps(_plain(data))
    return comments + ("\n" if comments else "") + body
