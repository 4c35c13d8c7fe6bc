"""Hostile payloads (issue 15): what an attacker holding one device's certificate sends.

Each is a real byte string for one topic kind; the tests send them through the real broker
(or straight into a handler, for fuzzing) and require that no thread dies and that everyone
else's traffic goes on.
"""

from __future__ import annotations

import json
import struct

DEEP = 50_000  # nesting levels: json.loads raises RecursionError near 1,000
DEEP_SMALL = 30_000  # 60 kB: under the 64 KiB limits of live payloads and commands
H = "ab" * 32


def deep_json(levels: int = DEEP) -> bytes:
    return b"[" * levels + b"]" * levels


def deep_object(key: str, levels: int = DEEP) -> bytes:
    """``{"key": [[[...]]]}``: the right top-level type, nested far too deep."""
    return b'{"' + key.encode() + b'":' + deep_json(levels) + b"}"


def chunk(header: dict[str, object] | bytes, data: bytes = b"x" * 16) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return b"EAC1" + struct.pack(">H", len(head)) + head + data


def huge_seq_chunk(n: int) -> bytes:
    """Issue 15 finding 1a: a 301-digit seq made the store raise ENAMETOOLONG, unacknowledged."""
    seq = int("9" * 300 + str(n % 10))
    return chunk(
        {"stream": "gps", "seq": seq, "boot": "b", "hash": H, "size": 100, "offset": 0},
        b"x" * 16,
    )


def key_record(manifest: bytes) -> bytes:
    """A key record's framing around any manifest (the signature is junk)."""
    return (
        b"EAKEY\x00"
        + struct.pack(">H", 1)
        + manifest
        + b"\x00" * 64
        + struct.pack(">I", len(manifest))
    )


def chunk_payloads() -> list[bytes]:
    """Chunks the ingest must refuse without stalling (topic devices/<d>/up/seg/gps)."""
    return [
        huge_seq_chunk(0),
        chunk(deep_json(600)),  # a header of deep JSON (within the 1 KiB header limit)
        chunk(
            {"stream": "gps", "seq": 1, "boot": "b\x00\x1b[31m", "hash": H, "size": 10, "offset": 0}
        ),
        chunk({"stream": "gps", "seq": 1e300, "boot": "b", "hash": H, "size": 10, "offset": 0}),
        chunk({"stream": "gps", "seq": 1, "boot": "b", "hash": H, "size": 2**70, "offset": 0}),
        chunk(b'{"stream":"gps","seq":NaN}'),
        chunk(b"\xff\xfe not utf-8"),
        b"EAC1\xff\xff",
        b"",
    ]


def key_payloads() -> list[bytes]:
    """Key records (topic devices/<d>/up/key): issue 15 finding 1b is the first."""
    return [
        key_record(deep_object("v")),
        key_record(b'{"v":' + b"1" + b"0" * 400 + b"}"),
        key_record(b"\xff" * 100),
        b"EAKEY\x00\x00\x01" + b"\xff" * 10,
    ]


def json_payloads() -> list[bytes]:
    """JSON for live/status, state, heads, commands, acks, talk control, the control socket."""
    return [
        deep_json(),
        deep_json(DEEP_SMALL),
        deep_object("state", DEEP_SMALL),
        b'{"count": 1' + b"0" * 400 + b"}",
        b'{"issued": 1e300, "expires": 1e309}',
        b'{"v": 1, "id": "0123456789abcdef", "device": "x", "cmd": "ping", "args": {}, '
        b'"issued": 1' + b"0" * 400 + b', "expires": 1, "sig": "00"}',
        b'{"text": "\x00\x07\x1b[2J\xe2\x80\xae"}',
        b'{"a": NaN, "b": Infinity}',
        b"\xff\xfe\xfd",
        b"[]",
        b"null",
        b"{" * 10 + b"}",
    ]
