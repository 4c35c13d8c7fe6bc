"""Loading TOML tables into frozen dataclasses, with errors that name the field.

Each part of the agent declares its own settings dataclass next to its code (for example
``agent/gps/settings.py``); :mod:`agent.config` puts them together. A field may carry a check
in its metadata: ``field(default=1883, metadata=check(port_number))``. A check returns ``None``
when the value is good, or a short phrase saying what it must be.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError

T = TypeVar("T")
Check = Callable[[Any], str | None]


def check(fn: Check) -> dict[str, Check]:
    """Field metadata carrying a value check."""
    return {"check": fn}


def in_range(lo: float, hi: float) -> Check:
    def _check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be {_num(lo)}..{_num(hi)}, got {_num(v)}"

    return _check


def at_least(lo: float) -> Check:
    def _check(v: Any) -> str | None:
        return None if v >= lo else f"must be >= {_num(lo)}, got {_num(v)}"

    return _check


def one_of(*choices: str) -> Check:
    def _check(v: Any) -> str | None:
        if v in choices:
            return None
        return f"must be one of {', '.join(choices)}, got {v!r}"

    return _check


def not_empty(v: Any) -> str | None:
    return None if v else "must not be empty"


def port_number(v: Any) -> str | None:
    return in_range(1, 65535)(v)


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def load_dataclass(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build ``cls`` from a TOML table; unknown keys and bad values raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: must be a table, got {_tname(data)}")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(_join(where, k) for k in unknown)
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{names}: unknown setting (known here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: required")
            continue
        value = _convert(hints[name], data[name], path)
        chk = f.metadata.get("check")
        if chk is not None:
            problem = chk(value)
            if problem:
                raise ConfigError(f"{path}: {problem}")
        kwargs[name] = value
    return cls(**kwargs)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _tname(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(non_none[0], value, path)
        raise ConfigError(f"{path}: unsupported type {tp}")  # pragma: no cover
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return load_dataclass(tp, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list, got {_tname(value)}")
        item = args[0]
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(f"{path}: must be one of {choices}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {_tname(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be an integer, got {_tname(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: must be a number, got {_tname(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {_tname(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: must be a path string, got {_tname(value)}")
        return Path(value)
    raise ConfigError(f"{path}: unsupported type {tp}")  # pragma: no cover
