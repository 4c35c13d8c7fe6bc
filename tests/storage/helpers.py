"""Reading back what the spool sealed, the way the platform would."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.storage.seal import (
    decrypt_segment,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_segment,
)
from agent.storage.spool import Spool


def open_sealed(path: Path, key_dir: Path, platform_private: X25519PrivateKey) -> bytes:
    """Verify and decrypt one segment file; its key record is looked up in ``key_dir``."""
    with path.open("rb") as f:
        info = read_segment_info(f)
        verify_segment(f, info)
        rec = parse_key_record((key_dir / f"{info.key_id}.key").read_bytes())
        out = bytearray()
        decrypt_segment(f, info, rec.unwrap(platform_private), out.extend)
    return bytes(out)


@dataclass(frozen=True)
class Sealed:
    """A stored segment as the platform reads it: its manifest, decrypted bytes and meta."""

    stream: str
    seq: int
    manifest: dict[str, Any]
    data: bytes
    meta: dict[str, Any]

    @property
    def record(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


def decrypt_stream(
    spool: Spool, platform_private: X25519PrivateKey, stream: str | None = None
) -> list[Sealed]:
    """Every stored segment (of ``stream``), verified and decrypted through the seal API."""
    out = []
    for item in spool.items(stream):
        with item.path.open("rb") as f:
            info = read_segment_info(f)
            verify_segment(f, info)
            dk = parse_key_record(spool.key_record(info.key_id)).unwrap(platform_private)
            buf = bytearray()
            decrypt_segment(f, info, dk, buf.extend)
        out.append(Sealed(info.stream, info.seq, info.manifest, bytes(buf), open_meta(info, dk)))
    return out
