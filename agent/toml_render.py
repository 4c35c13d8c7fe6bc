"""Writing TOML: the agent's settings (plain tables of scalars and lists) back to text.

Python reads TOML (``tomllib``) but does not write it. What the agent writes is small and
regular (``edge-agent provision``'s ``agent.toml``, the remote-settings overrides file): tables
of strings, numbers, booleans, paths and lists of strings, nested one or two levels. This
renderer covers exactly that, and every output is read back with ``tomllib`` by its callers
before it replaces a file.

:func:`config_to_dict` turns a settings dataclass (e.g. :class:`agent.config.AgentConfig`) into
the nested dict :func:`agent.settings.load_dataclass` reads (``None`` values left out, paths as
strings), so ``load_dataclass(AgentConfig, config_to_dict(cfg)) == cfg``.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
        elif isinstance(value, Path):
            out[f.name] = str(value)
        elif isinstance(value, tuple):
            # Tuples of tuples (power.ina219.curve) as lists of lists, as TOML loads them.
            out[f.name] = [
                str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
                for v in value
            ]
        else:
            out[f.name] = value
    return out


def _key(k: str) -> str:
    if k and all(c.isalnum() or c in "-_" for c in k):
        return k
    return json.dumps(k)


def value_text(v: Any) -> str:
    """One TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError(f"cannot write {v} as a setting")
        return repr(v)
    if isinstance(v, Path):
        return json.dumps(str(v))
    if isinstance(v, str):
        # A JSON string is a valid TOML basic string for everything json.dumps emits.
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    raise ValueError(f"cannot write a {type(v).__name__} as a setting")


def render_toml(data: Mapping[str, Any], header: str = "") -> str:
    """Nested tables of scalars and lists as TOML text (tables after the scalars they hold)."""
    lines: list[str] = [f"# {line}".rstrip() for line in header.splitlines()]
    if lines:
        lines.append("")

    def table(prefix: str, t: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in t.items() if not isinstance(v, Mapping)]
        subs = [(k, v) for k, v in t.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not subs):
            lines.append(f"[{prefix}]")
        for k, v in scalars:
            lines.append(f"{_key(k)} = {value_text(v)}")
        if prefix and (scalars or not subs):
            lines.append("")
        for k, v in subs:
            table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"
