"""Settings of the sealer and the spool."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.fields import at_least, check, in_range, one_of

MIB = 1024 * 1024


@dataclass(frozen=True)
class SealSettings:
    # aes-256-gcm, or chacha20-poly1305 for CPUs without AES instructions (Raspberry Pi 4).
    cipher: str = field(
        default="aes-256-gcm", metadata=check(one_of("aes-256-gcm", "chacha20-poly1305"))
    )
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
