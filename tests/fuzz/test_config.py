"""Config files: whatever TOML (or not-TOML) arrives, ``parse_config`` raises only ConfigError."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, parse_config
from agent.errors import ConfigError
from tests.fuzz.common import TRIED, keep

EXAMPLE = (Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml").read_text()


def _schema(cls: type, prefix: str = "") -> dict[str, list[str]]:
    """Table name -> its field names, from the config dataclasses themselves."""
    out: dict[str, list[str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_schema(tp, f"{prefix}{f.name}."))  # type: ignore[arg-type]
        else:
            out.setdefault(prefix.rstrip("."), []).append(f.name)
    return out


SCHEMA = {k: v for k, v in _schema(AgentConfig).items() if k}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


VALUES = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["", "/dev/null", "none", "replay", "bodycam", "tracker", "0", "-1"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _check(text: str) -> None:
    TRIED["config"] += 1
    try:
        parse_config(text, "fuzz.toml")
    except ConfigError:
        pass
    except Exception:
        keep("config", text.encode("utf-8", "surrogatepass"))
        raise


@given(st.data())
def test_known_fields_with_random_values(data: Any) -> None:
    tables: dict[str, dict[str, Any]] = {}
    for _ in range(data.draw(st.integers(1, 5))):
        table = data.draw(st.sampled_from(sorted(SCHEMA)))
        name = data.draw(st.sampled_from([*SCHEMA[table], "unknown_key"]))
        tables.setdefault(table, {})[name] = data.draw(VALUES)
    if data.draw(st.booleans()):
        tables.setdefault("device", {}).setdefault("id", data.draw(st.text(max_size=12)))
    lines = []
    for table, fields in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
    _check("\n".join(lines) + "\n")


@given(st.data())
def test_mutated_example_config(data: Any) -> None:
    lines = EXAMPLE.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if "=" in line and not line.lstrip().startswith("#"):
            key = line.split("=", 1)[0]
            lines[i] = f"{key}= {_toml_value(data.draw(VALUES))}"
        else:
            lines[i] = data.draw(st.text(max_size=30))
    _check("\n".join(lines) + "\n")


@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _check(text)
