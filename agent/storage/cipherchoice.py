"""The cipher a segment is sealed with: ``[seal] cipher = "auto"`` chooses by the CPU.

Both ciphers of the format (``docs/format.md``) are as strong; what differs is speed. AES-GCM is
fast where the CPU has AES instructions (x86 AES-NI with PCLMULQDQ, the ARMv8 Cryptography
Extension): OpenSSL then runs it at GB/s. Without them OpenSSL falls back to constant-time
table-free code several times slower than ChaCha20-Poly1305, which needs only ordinary integer
and NEON instructions. The Raspberry Pi 4 (BCM2711) and Zero 2 W (RP3A0) cores were built
without the Cryptography Extension; the Pi 5 (BCM2712) and x86 machines have it.

The kernel lists the CPU's features in ``/proc/cpuinfo``: on ARM a ``Features`` line per core
(``aes`` among them when the extension is there, the same word for a 64-bit kernel, a 32-bit
one and a 32-bit program on a 64-bit kernel), on x86 a ``flags`` line (``aes``). Every core
must have it (a core without would run AES-GCM slowly whenever the seal thread lands there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

AES = "aes-256-gcm"
CHACHA = "chacha20-poly1305"
AUTO = "auto"
CPUINFO = Path("/proc/cpuinfo")
FEATURE_KEYS = ("Features", "flags")  # ARM, x86 (not "vmx flags" nor "bugs")


@dataclass(frozen=True)
class CipherChoice:
    cipher: str
    reason: str  # one line for the log and the status: why this cipher

    def __str__(self) -> str:
        return f"{self.cipher} ({self.reason})"


def cpu_features(text: str) -> list[frozenset[str]]:
    """The feature words of each core, from the text of ``/proc/cpuinfo``."""
    cores: list[frozenset[str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in FEATURE_KEYS:
            cores.append(frozenset(value.split()))
    return cores


def choose_cipher(setting: str, cpuinfo: Path = CPUINFO) -> CipherChoice:
    """The cipher for ``setting`` (``auto``, or a cipher named in the config)."""
    if setting != AUTO:
        return CipherChoice(setting, "set in the config")
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError as exc:
        return CipherChoice(AES, f"auto: cannot read {cpuinfo} ({exc.strerror}); the default")
    cores = cpu_features(text)
    if not cores:
        return CipherChoice(AES, f"auto: {cpuinfo} lists no CPU features; the default")
    if all("aes" in core for core in cores):
        return CipherChoice(AES, f"auto: the CPU has AES instructions ('aes' in {cpuinfo})")
    return CipherChoice(
        CHACHA,
        f"auto: the CPU has no AES instructions (no 'aes' in {cpuinfo}), where "
        "ChaCha20-Poly1305 is several times faster than AES-GCM",
    )
