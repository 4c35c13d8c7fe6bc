"""Reading back what the spool sealed, the way the platform would."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.storage.seal import decrypt_segment, parse_key_record, read_segment_info, verify_segment


def open_sealed(path: Path, key_dir: Path, platform_private: X25519PrivateKey) -> bytes:
    """Verify and decrypt one segment file; its key record is looked up in ``key_dir``."""
    with path.open("rb") as f:
        info = read_segment_info(f)
        verify_segment(f, info)
        rec = parse_key_record((key_dir / f"{info.key_id}.key").read_bytes())
        out = bytearray()
        decrypt_segment(f, info, rec.unwrap(platform_private), out.extend)
    return bytes(out)
