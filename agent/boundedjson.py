"""JSON from outside, read within bounds: size, nesting depth, integer size, finite numbers.

Every JSON document that crosses a trust boundary (an MQTT payload, a chunk header, a
manifest, a command, a socket request, a file on a seized SD card) is read with :func:`loads`,
never with :func:`json.loads` directly. What it refuses, with a :class:`FormatError` that says
why, instead of an exception a handler does not expect:

- more than ``max_bytes`` of input, or bytes that are not UTF-8;
- nesting deeper than ``max_depth`` (``json.loads`` itself raises ``RecursionError`` near
  1,000 levels, and code that walks the result may recurse too);
- integers with more than ``max_int_digits`` digits (``int("1" + "0" * 400)`` is cheap, but
  turning it into a ``datetime`` or a file name is not), and floats that are not finite
  (``1e400``, ``NaN``, ``Infinity``);
- a top level other than the type asked for (``want=dict`` by default).
"""

from __future__ import annotations

import json
import math
from typing import Any

from agent.errors import FormatError

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 16
DEFAULT_MAX_INT_DIGITS = 20


def _depth(obj: Any, limit: int) -> int:
    """The nesting depth of a decoded document (iterative: never recurses)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            values: Any = item.values()
        elif isinstance(item, list):
            values = item
        else:
            continue
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        stack.extend((v, level + 1) for v in values if isinstance(v, dict | list))
    return deepest


def loads(
    data: bytes | bytearray | memoryview | str,
    what: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
    want: type | None = dict,
) -> Any:
    """Decode one JSON document from outside; FormatError names ``what`` and the reason."""
    if len(data) > max_bytes:
        raise FormatError(f"{what}: {len(data)} bytes of JSON, more than {max_bytes}")
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{what}: not UTF-8") from None

    def parse_int(s: str) -> int:
        digits = len(s) - (1 if s.startswith("-") else 0)
        if digits > max_int_digits:
            raise FormatError(f"{what}: an integer of {digits} digits (at most {max_int_digits})")
        return int(s)

    def parse_float(s: str) -> float:
        if len(s) > 64:
            raise FormatError(f"{what}: a number of {len(s)} characters")
        value = float(s)
        if not math.isfinite(value):
            raise FormatError(f"{what}: a number out of range ({s[:20]})")
        return value

    def parse_constant(s: str) -> Any:
        raise FormatError(f"{what}: {s} is not JSON")

    try:
        obj = json.loads(
            text,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=parse_constant,
        )
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what}: not JSON ({exc.msg} at {exc.pos})") from None
    except RecursionError:
        raise FormatError(f"{what}: JSON nested too deep") from None
    if _depth(obj, max_depth) > max_depth:
        raise FormatError(f"{what}: JSON nested deeper than {max_depth}")
    if want is not None and not isinstance(obj, want):
        raise FormatError(f"{what}: a JSON {want.__name__} was expected")
    return obj
