"""Settings of the sealer and the spool."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.fields import at_least, check, in_range, one_of

MIB = 1024 * 1024


@dataclass(frozen=True)
class SealSettings:
    # auto: aes-256-gcm where the CPU has AES instructions (Pi 5, x86), chacha20-poly1305 where
    # it has none (Pi 4, Zero 2 W): agent/storage/cipherchoice.py. Or one of the two, always.
    cipher: str = field(
        default="auto", metadata=check(one_of("auto", "aes-256-gcm", "chacha20-poly1305"))
    )
    # Plaintext bytes per AEAD chunk: a chunk and its frame (128 KiB at 64 KiB) stay in the
    # L2 cache of the smallest board (Zero 2 W: 512 KiB shared by four cores) between the
    # hash and the cipher; per-chunk Python costs a few % of the crypto (docs/scale.md).
    chunk_size: int = field(default=65536, metadata=check(in_range(1024, 16 * MIB)))
    # A new data key (wrapped to the platform key) at most this often, and at every boot.
    key_epoch_s: int = field(default=3600, metadata=check(in_range(60, 86400)))


@dataclass(frozen=True)
class SpoolSettings:
    dir: Path = Path("/var/lib/edge-agent/spool")
    # Evidence (video, audio, still, event) is never evicted before the platform has it.
    evidence_quota_mb: int = field(default=8192, metadata=check(at_least(1)))
    # Telemetry (gps, status) overwrites its own oldest when over quota.
    telemetry_quota_mb: int = field(default=256, metadata=check(at_least(1)))
    # Free disk always left for the operating system.
    reserve_mb: int = field(default=256, metadata=check(at_least(0)))
    # Small telemetry records are batched into one segment per stream this often.
    batch_s: int = field(default=60, metadata=check(in_range(1, 3600)))
    batch_max_records: int = field(default=600, metadata=check(in_range(1, 100000)))
