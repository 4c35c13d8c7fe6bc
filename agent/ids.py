"""Identifiers that name things on disk, on the wire and in topics: one definition each.

A device id becomes an MQTT topic level, a directory in the platform's store, a certificate
CN and a file name; a stream name, a key id and a command id do likewise. Each is checked
here, by the config loader, provisioning, the protocol, the store, ``verify`` and the web
pages alike, so no part accepts a name another part would turn into a path outside its root.

Rules (docs/format.md, "Identifiers"):

- **device id**: 1-64 ASCII characters from ``A-Z a-z 0-9 . _ -``; it may not start with
  ``.`` or ``-`` (no ``.``/``..``, no hidden files, no option-like names), and it may not be
  one of the reserved names the platform uses for itself (:data:`RESERVED_DEVICE_IDS`),
  compared case-insensitively.
- **stream**: 1-32 of ``a-z 0-9 _ -``, starting with a letter.
- **key id**: 16 lower-case hex digits (the first 8 bytes of a key's hash).
- **command id**: 1-64 of ``A-Z a-z 0-9 _ -``, starting with a letter or digit.
- **boot id**: 1-64 of ``A-Z a-z 0-9 . _ : -``, not starting with ``.``.
- **hash**: 64 lower-case hex digits (SHA-256).
- **seq**: an integer ``0 <= seq < MAX_SEQ`` (10^12: 12 decimal digits, the store's file names).
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.errors import FormatError

DEVICE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")
STREAM_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
BOOT_RE = re.compile(r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,63}\Z")
HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
MAX_SEQ = 10**12

# Names the platform's store, broker ACL and web pages use for themselves: never a device.
RESERVED_DEVICE_IDS = frozenset(
    {
        "ingest",
        "platform",
        "operator",
        "control",
        "broker",
        "admin",
        "root",
        "all",
        "any",
        "partial",
        "static",
        "api",
        "keys",
        "devices",
        "con",
        "nul",
        "null",
    }
)


def device_id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid device id, or None when it is."""
    if not isinstance(value, str) or not value:
        return "must not be empty"
    if not value.isascii() or not DEVICE_RE.fullmatch(value):
        return (
            f"must be 1-64 ASCII letters, digits, '.', '_' or '-', not starting with '.' or '-',"
            f" got {value!r}"
        )
    if value.lower() in RESERVED_DEVICE_IDS:
        return f"{value!r} is reserved for the platform"
    return None


def _check(value: object, pattern: re.Pattern[str], what: str, rule: str) -> str:
    if not isinstance(value, str) or not value.isascii() or not pattern.fullmatch(value):
        raise FormatError(f"{what} {value!r}: must be {rule}")
    return value


def check_device_id(value: object, what: str = "device id") -> str:
    problem = device_id_problem(value)
    if problem is not None:
        raise FormatError(f"{what}: {problem}")
    assert isinstance(value, str)
    return value


def check_stream(value: object, what: str = "stream") -> str:
    return _check(value, STREAM_RE, what, "1-32 of a-z 0-9 _ -, starting with a letter")


def check_key_id(value: object, what: str = "key id") -> str:
    return _check(value, KEY_ID_RE, what, "16 lower-case hex digits")


def check_command_id(value: object, what: str = "command id") -> str:
    return _check(value, COMMAND_ID_RE, what, "1-64 of A-Z a-z 0-9 _ -, starting alphanumeric")


def check_boot_id(value: object, what: str = "boot id") -> str:
    return _check(value, BOOT_RE, what, "1-64 of A-Z a-z 0-9 . _ : -, not starting with '.'")


def check_hash(value: object, what: str = "hash") -> str:
    return _check(value, HASH_RE, what, "64 lower-case hex digits")


def check_seq(value: object, what: str = "seq") -> int:
    if type(value) is not int or not 0 <= value < MAX_SEQ:
        raise FormatError(f"{what} {value!r}: must be an integer 0 <= seq < {MAX_SEQ}")
    return value


def contained(root: Path, *parts: str) -> Path:
    """``root / parts``, refused with FormatError unless it resolves to a path under ``root``.

    Each part must be a single, non-empty path component (no separator, no NUL, not ``.`` or
    ``..``); the joined path is then resolved (symlinks followed) and must stay inside the
    resolved root. Use it for every path built from a name that came from outside.
    """
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part or "\\" in part:
            raise FormatError(f"path component {part!r}: not a plain name")
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise FormatError(f"path {path} is outside {base}")
    return path
