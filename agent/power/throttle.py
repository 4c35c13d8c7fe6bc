"""The Raspberry Pi firmware's under-voltage and throttling flags (``get_throttled``).

Raspberry Pi OS exposes them in sysfs (``/sys/devices/platform/soc/soc:firmware/
get_throttled``, hexadecimal without a prefix, e.g. ``50005``); ``vcgencmd get_throttled``
prints ``throttled=0x50005``. The bits, as Raspberry Pi documents them: 0 under-voltage now,
1 ARM frequency capped now, 2 throttled now, 3 soft temperature limit active now; 16-19 the
same conditions have occurred since boot.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SourceError

BITS = {
    0: "under_voltage",
    1: "freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
_VCGENCMD = re.compile(r"^throttled=0x([0-9a-fA-F]{1,8})\Z")
_SYSFS = re.compile(r"^(?:0x)?([0-9a-fA-F]{1,8})\Z")

Runner = Callable[[list[str]], str]


@dataclass(frozen=True, slots=True)
class Throttled:
    raw: int
    via: str

    def flag(self, name: str) -> bool:
        for bit, n in BITS.items():
            if n == name:
                return bool(self.raw >> bit & 1)
        raise KeyError(name)

    @property
    def under_voltage(self) -> bool:
        return self.flag("under_voltage")

    def active(self) -> list[str]:
        return [n for bit, n in BITS.items() if self.raw >> bit & 1]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"raw": f"0x{self.raw:x}", "via": self.via}
        out.update({n: bool(self.raw >> bit & 1) for bit, n in BITS.items()})
        return out


def parse(text: str, via: str) -> Throttled:
    """``50005`` (sysfs) or ``throttled=0x50005`` (vcgencmd); garbage raises SourceError."""
    t = text.strip()
    m = (_VCGENCMD if via == "vcgencmd" else _SYSFS).match(t)
    if m is None:
        raise SourceError(f"get_throttled ({via}): garbage {t[:40]!r}")
    return Throttled(int(m.group(1), 16), via)


def run_command(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{argv[0]}: {exc}") from None
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip()[:200]
        raise SourceError(f"{' '.join(argv)} failed ({res.returncode}): {why}")
    return res.stdout


class ThrottleReader:
    """``mode``: auto (sysfs where the file exists, else vcgencmd where installed) | sysfs |
    vcgencmd | off. ``read`` returns None where the board has neither (not a Raspberry Pi)."""

    def __init__(self, mode: str, path: Path, run: Runner = run_command) -> None:
        self.mode = mode
        self.path = path
        self.run = run

    def available(self) -> str | None:
        if self.mode == "off":
            return None
        if self.mode == "sysfs" or (self.mode == "auto" and self.path.exists()):
            return "sysfs"
        if self.mode == "vcgencmd" or (self.mode == "auto" and shutil.which("vcgencmd")):
            return "vcgencmd"
        return None

    def read(self) -> Throttled | None:
        via = self.available()
        if via is None:
            return None
        if via == "sysfs":
            try:
                with self.path.open("rb") as f:
                    raw = f.read(64)
            except OSError as exc:
                raise SourceError(f"{self.path}: {exc}") from None
            return parse(raw.decode("ascii", "replace"), "sysfs")
        return parse(self.run(["vcgencmd", "get_throttled"]), "vcgencmd")
