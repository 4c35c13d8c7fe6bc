"""Manifests of sealed objects: their one byte form and the value of every field.

``docs/format.md`` is normative; this module is the part of it a verifier without any key
checks in a manifest: every field present, no other, and each value of the documented form
(not only of the right JSON type). The device runs the same checks on what it is about to sign,
so it never writes a manifest its verifier would refuse.

A manifest is read with :func:`agent.boundedjson.loads` (bounded size, depth and integers) and
must re-encode to exactly the bytes it came from (:func:`canonical_json`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from itertools import pairwise
from typing import Any

from agent import boundedjson
from agent.errors import FormatError
from agent.ids import check_boot_id, check_device_id, check_hash, check_key_id, check_seq
from agent.ids import check_stream as _check_stream
from agent.storage.keys import fingerprint

KEY_VERSION = 1
SEGMENT_VERSIONS = (1, 2)
SEGMENT_VERSION = 2  # what the sealer writes
MAX_MANIFEST = 256 * 1024
CIPHERS = ("aes-256-gcm", "chacha20-poly1305")
WRAP_ALG = "x25519-hkdf-sha256-aes256gcm"
TAG_LEN = 16
FRAME_HEADER = 4
MIN_CHUNK = 1024
MAX_CHUNK = 16 * 1024 * 1024
MAX_PLAIN = 1 << 40
MAX_MONO_NS = 1 << 63
MAX_OFFSET_S = 1e9
CLOCK_SOURCES = ("gnss", "pps", "ntp", "rtc", "none")
CLOCK_VIA = ("chrony", "fixes")
# The streams a device may overwrite when its telemetry quota is full (and then say so).
TELEMETRY_STREAMS = ("gps", "status")
EVENT_STREAM = "event"

# ASCII digits only, and \Z (``$`` would also match before a final newline).
UTC_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z")
CONTENT_TYPE_RE = re.compile(
    r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z"
)
_HEX = re.compile(r"^(?:[0-9a-f]{2})*\Z")

KEY_FIELDS = frozenset(
    {
        "v",
        "kind",
        "device",
        "boot",
        "key_id",
        "created_utc",
        "wrap",
        "platform_key",
        "epk",
        "wrapped",
        "device_pub",
        "signer",
    }
)
_SEGMENT_COMMON = frozenset(
    {
        "v",
        "kind",
        "device",
        "stream",
        "boot",
        "seq",
        "prev",
        "start_utc",
        "end_utc",
        "start_mono_ns",
        "end_mono_ns",
        "clock",
        "content_type",
        "plain_len",
        "plain_sha256",
        "cipher",
        "key_id",
        "salt",
        "chunk_size",
        "chunks",
        "body_len",
        "body_sha256",
        "device_pub",
        "signer",
        "sealed_utc",
    }
)
SEGMENT_FIELDS = {
    1: _SEGMENT_COMMON | {"meta"},
    2: _SEGMENT_COMMON | {"batch", "evicted", "sealed_meta"},
}


def canonical_json(obj: dict[str, Any]) -> bytes:
    """The one byte form of a manifest: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def parse_manifest(body: bytes, what: str, *, max_depth: int) -> dict[str, Any]:
    """Decode a manifest within bounds and check it is in canonical form."""
    manifest: dict[str, Any] = boundedjson.loads(
        body, f"{what}: manifest", max_bytes=MAX_MANIFEST, max_depth=max_depth
    )
    if canonical_json(manifest) != body:
        raise FormatError(f"{what}: manifest is not in canonical form")
    return manifest


# --------------------------------------------------------------------------- value checks


def _fields(m: dict[str, Any], want: frozenset[str], what: str) -> None:
    missing = sorted(want - m.keys())
    if missing:
        raise FormatError(f"{what}: manifest lacks {', '.join(map(repr, missing))}")
    extra = sorted(m.keys() - want)
    if extra:
        raise FormatError(f"{what}: manifest has unknown field(s) {', '.join(map(repr, extra))}")


def _int(m: dict[str, Any], name: str, lo: int, hi: int, what: str) -> int:
    value = m[name]
    if type(value) is not int or not lo <= value < hi:
        raise FormatError(f"{what}: {name} must be an integer {lo} <= n < {hi}, got {value!r}")
    return value


def _str(m: dict[str, Any], name: str, what: str) -> str:
    value = m[name]
    if not isinstance(value, str):
        raise FormatError(f"{what}: {name} must be a string")
    return value


def hex_field(m: dict[str, Any], name: str, size: int, what: str) -> bytes:
    """A field of exactly ``size`` bytes in lower-case hex."""
    value = _str(m, name, what)
    if len(value) != 2 * size or not _HEX.match(value):
        raise FormatError(f"{what}: {name} must be {size} bytes of lower-case hex")
    return bytes.fromhex(value)


def check_utc(value: object, name: str, what: str) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ``: UTC, exactly three fractional digits, a real date."""
    if not isinstance(value, str) or not UTC_RE.match(value):
        raise FormatError(
            f"{what}: {name} must be UTC as YYYY-MM-DDTHH:MM:SS.mmmZ, got {str(value)[:40]!r}"
        )
    try:  # the fields by position (the pattern fixed them): a real date and time?
        datetime(
            int(value[0:4]),
            int(value[5:7]),
            int(value[8:10]),
            int(value[11:13]),
            int(value[14:16]),
            int(value[17:19]),
        )
    except ValueError:
        raise FormatError(f"{what}: {name} {value!r} is not a real date and time") from None
    return value


def _named(check: Any, value: object, name: str, what: str) -> Any:
    try:
        return check(value, name)
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}") from None


def _signer(m: dict[str, Any], what: str) -> None:
    pub = hex_field(m, "device_pub", 32, what)
    hex_field(m, "signer", 8, what)
    if fingerprint(pub) != m["signer"]:
        raise FormatError(f"{what}: signer is not the fingerprint of device_pub")


def check_key_manifest(m: dict[str, Any], what: str = "key record") -> None:
    """Every field of a key record manifest (version 1), by value."""
    _fields(m, KEY_FIELDS, what)
    if type(m["v"]) is not int or m["v"] != KEY_VERSION:
        raise FormatError(f"{what}: manifest version {m['v']!r} is not supported")
    if m["kind"] != "key":
        raise FormatError(f"{what}: kind is {m['kind']!r}, not 'key'")
    if m["wrap"] != WRAP_ALG:
        raise FormatError(f"{what}: unsupported wrap {m['wrap']!r}")
    _named(check_device_id, m["device"], "device", what)
    _named(check_boot_id, m["boot"], "boot", what)
    _named(check_key_id, m["key_id"], "key_id", what)
    check_utc(m["created_utc"], "created_utc", what)
    hex_field(m, "platform_key", 8, what)
    hex_field(m, "epk", 32, what)
    hex_field(m, "wrapped", 48, what)
    _signer(m, what)


def expected_chunks(plain_len: int, chunk_size: int) -> int:
    """Chunks of a plaintext cut at ``chunk_size`` (an empty plaintext is one empty chunk)."""
    return max(1, -(-plain_len // chunk_size))


def frame_sizes(m: dict[str, Any]) -> tuple[int, int]:
    """(length of every frame but the last, length of the last), ciphertext with its tag."""
    chunk_size, chunks, plain_len = m["chunk_size"], m["chunks"], m["plain_len"]
    return chunk_size + TAG_LEN, plain_len - (chunks - 1) * chunk_size + TAG_LEN


def check_segment_manifest(m: dict[str, Any], what: str = "segment") -> None:
    """Every field of a segment manifest (version 1 or 2), by value."""
    version = m.get("v")
    if type(version) is not int or version not in SEGMENT_VERSIONS:
        raise FormatError(f"{what}: manifest version {version!r} is not supported")
    _fields(m, frozenset(SEGMENT_FIELDS[version]), what)
    if m["kind"] != "segment":
        raise FormatError(f"{what}: kind is {m['kind']!r}, not 'segment'")
    _named(check_device_id, m["device"], "device", what)
    stream = _named(_check_stream, m["stream"], "stream", what)
    _named(check_boot_id, m["boot"], "boot", what)
    seq = _named(check_seq, m["seq"], "seq", what)
    if seq == 0:
        if m["prev"] is not None:
            raise FormatError(f"{what}: seq 0 must have prev null")
    else:
        _named(check_hash, m["prev"], "prev", what)
    for name in ("start_utc", "end_utc", "sealed_utc"):
        check_utc(m[name], name, what)
    if version == 1:
        # The version 1 sealer derived a batch's start from wall-clock times, which step:
        # any 64-bit integers are accepted there.
        _int(m, "start_mono_ns", -MAX_MONO_NS, MAX_MONO_NS, what)
        _int(m, "end_mono_ns", -MAX_MONO_NS, MAX_MONO_NS, what)
    else:
        start = _int(m, "start_mono_ns", 0, MAX_MONO_NS, what)
        end = _int(m, "end_mono_ns", 0, MAX_MONO_NS, what)
        if end < start:
            raise FormatError(f"{what}: end_mono_ns is before start_mono_ns")
    _check_clock(m["clock"], what)
    ctype = _str(m, "content_type", what)
    if not CONTENT_TYPE_RE.match(ctype):
        raise FormatError(f"{what}: content_type {ctype[:80]!r} is not a lower-case type/subtype")
    plain_len = _int(m, "plain_len", 0, MAX_PLAIN, what)
    _named(check_hash, m["plain_sha256"], "plain_sha256", what)
    if m["cipher"] not in CIPHERS:
        raise FormatError(f"{what}: unknown cipher {str(m['cipher'])[:40]!r}")
    _named(check_key_id, m["key_id"], "key_id", what)
    hex_field(m, "salt", 16, what)
    chunk_size = _int(m, "chunk_size", MIN_CHUNK, MAX_CHUNK + 1, what)
    chunks = _int(m, "chunks", 1, MAX_PLAIN, what)
    if chunks != expected_chunks(plain_len, chunk_size):
        raise FormatError(
            f"{what}: {chunks} chunks, but {plain_len} bytes cut at {chunk_size} make "
            f"{expected_chunks(plain_len, chunk_size)}"
        )
    body_len = _int(m, "body_len", 0, 2 * MAX_PLAIN, what)
    if body_len != chunks * (FRAME_HEADER + TAG_LEN) + plain_len:
        raise FormatError(f"{what}: body_len {body_len} does not match plain_len and chunks")
    _named(check_hash, m["body_sha256"], "body_sha256", what)
    _signer(m, what)
    if version == 1:
        if not isinstance(m["meta"], dict):
            raise FormatError(f"{what}: meta must be an object")
        return
    if m["batch"] is not None:
        hex_field(m, "batch", 16, what)
    if m["evicted"] is not None:
        if stream != EVENT_STREAM:
            raise FormatError(f"{what}: only an {EVENT_STREAM} segment may name evicted seqs")
        check_evicted(m["evicted"], what)
    sealed = _str(m, "sealed_meta", what)
    if len(sealed) < 2 * (TAG_LEN + 2) or not _HEX.match(sealed):
        raise FormatError(f"{what}: sealed_meta must be lower-case hex of at least 18 bytes")


def _check_clock(clock: object, what: str) -> None:
    """``source`` and ``offset_s`` always; ``error_s``, ``synced`` and ``via`` when known."""
    if (
        not isinstance(clock, dict)
        or not {"source", "offset_s"} <= set(clock)
        or not set(clock) <= {"source", "offset_s", "error_s", "synced", "via"}
    ):
        raise FormatError(
            f"{what}: clock must be an object of source and offset_s, and optionally "
            "error_s, synced and via"
        )
    if clock["source"] not in CLOCK_SOURCES:
        raise FormatError(
            f"{what}: clock.source {str(clock['source'])[:40]!r} is not one of "
            f"{', '.join(CLOCK_SOURCES)}"
        )
    off = clock["offset_s"]
    if off is not None and not _seconds(off):
        raise FormatError(f"{what}: clock.offset_s must be null or a number of seconds")
    for name in ("error_s", "time_acc_s"):
        if name in clock and not (_seconds(clock[name]) and clock[name] >= 0):
            raise FormatError(f"{what}: clock.{name} must be a non-negative number of seconds")
    for name in ("synced", "time_confirmed"):
        if name in clock and not isinstance(clock[name], bool):
            raise FormatError(f"{what}: clock.{name} must be true or false")
    if "via" in clock and clock["via"] not in CLOCK_VIA:
        raise FormatError(f"{what}: clock.via must be one of {', '.join(CLOCK_VIA)}")


def _seconds(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and abs(value) < MAX_OFFSET_S
    )


def check_evicted(value: object, what: str) -> tuple[str, list[int]]:
    """``{"stream": a telemetry stream, "seqs": [increasing seqs, at least one]}``."""
    if not isinstance(value, dict) or set(value) != {"stream", "seqs"}:
        raise FormatError(f"{what}: evicted must be an object of exactly stream and seqs")
    stream, seqs = value["stream"], value["seqs"]
    if stream not in TELEMETRY_STREAMS:
        raise FormatError(
            f"{what}: evicted.stream {str(stream)[:40]!r} is not a telemetry stream "
            f"({', '.join(TELEMETRY_STREAMS)})"
        )
    if not isinstance(seqs, list) or not seqs:
        raise FormatError(f"{what}: evicted.seqs must be a non-empty list")
    for s in seqs:
        _named(check_seq, s, "evicted seq", what)
    if any(b <= a for a, b in pairwise(seqs)):
        raise FormatError(f"{what}: evicted.seqs must be strictly increasing")
    return str(stream), list(seqs)
