"""seal: seal + verify of 1 MiB and 64 MiB segments vs a bare SHA-256 + AES-GCM loop."""

from __future__ import annotations

import hashlib
import io
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from agent.model import ClockState
from agent.storage.seal import (
    ChainLink,
    SegmentHeader,
    decrypt_segment,
    parse_key_record,
    read_segment_info,
    verify_segment,
)
from bench import Reporter
from bench.common import Lab, best_of

CHUNK = 65536


def _bare(data: bytes, cipher: str) -> None:
    """The least any sealer must do: hash and encrypt, then decrypt and hash."""
    key = os.urandom(32)
    aead = AESGCM(key) if cipher == "aes-256-gcm" else ChaCha20Poly1305(key)
    h = hashlib.sha256()
    cts = []
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        chunk = view[i : i + CHUNK]
        h.update(chunk)
        cts.append(aead.encrypt(i.to_bytes(12, "big"), chunk, None))
    h2 = hashlib.sha256()
    for i, ct in enumerate(cts):
        h2.update(aead.decrypt((i * CHUNK).to_bytes(12, "big"), ct, None))
    assert h.digest() == h2.digest()


def _measure(lab: Lab, report: Reporter, cipher: str, mib: int) -> None:
    sealer = lab.sealer(cipher=cipher, chunk_size=CHUNK)
    key = sealer.current_key()
    dk = parse_key_record(key.record).unwrap(lab.platform_private)
    data = os.urandom(mib * 1024 * 1024)
    header = SegmentHeader("video", "video/mp4", 0.0, 1.0, 0, 1, ClockState(), {})

    def ours() -> None:
        out = io.BytesIO()
        sealer.seal(out, header, ChainLink(0, None), [data], key)
        info = read_segment_info(out)
        # The platform's verify: signature, then AEAD + signed plaintext hash (body proven).
        verify_segment(out, info, body=False)
        decrypt_segment(out, info, dk, lambda _b: None)

    repeat = 5 if mib == 1 else 2
    t_ours = best_of(ours, repeat)
    t_bare = best_of(lambda: _bare(data, cipher), repeat)
    short = "aes" if cipher.startswith("aes") else "chacha"
    report.figure(
        "seal",
        f"seal_verify_{mib}MiB_{short}",
        mib / t_ours,
        "MiB/s",
        ratio=t_bare / t_ours,
        baseline=f"bare SHA-256+{cipher} loop ({mib / t_bare:.0f} MiB/s)",
        target=0.85,
    )


def run(report: Reporter) -> None:
    lab = Lab()
    try:
        for cipher in ("aes-256-gcm", "chacha20-poly1305"):
            for mib in (1, 64):
                _measure(lab, report, cipher, mib)
    finally:
        lab.close()
