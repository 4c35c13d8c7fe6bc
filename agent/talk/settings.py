"""Settings of push-to-talk (``[talk]``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.config.fields import check, in_range

RATES = (8000, 12000, 16000, 24000, 48000)
GROUP_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


def _groups(v: Any) -> str | None:
    bad = [g for g in v if not isinstance(g, str) or not GROUP_RE.match(g)]
    if bad:
        return f"group names must be 1-64 of A-Z a-z 0-9 . _ -, got {', '.join(map(repr, bad))}"
    return None


def _rate(v: Any) -> str | None:
    if v in RATES:
        return None
    return f"must be one of {', '.join(map(str, RATES))} (Opus rates), got {v!r}"


@dataclass(frozen=True)
class TalkSettings:
    enabled: bool = False
    # "" the default device, digits a PortAudio device index, else (part of) a device name.
    microphone: str = ""
    speaker: str = ""
    # Opus's own rates; 16000 is enough for speech, 48000 is what PulseAudio runs at.
    rate: int = field(default=48000, metadata=check(_rate))
    bitrate_kbps: int = field(default=24, metadata=check(in_range(6, 128)))
    # Audio per MQTT message while the officer speaks.
    chunk_ms: int = field(default=300, metadata=check(in_range(100, 1000)))
    # A press longer than this is released by the agent.
    max_message_s: float = field(default=120.0, metadata=check(in_range(1, 600)))
    # Groups whose messages this device plays (groups/{group}/talk/in; needs broker ACL lines).
    groups: tuple[str, ...] = field(default=(), metadata=check(_groups))
    # The tone before each incoming message.
    tone_hz: int = field(default=880, metadata=check(in_range(100, 4000)))
    tone_ms: int = field(default=150, metadata=check(in_range(0, 1000)))
    # An incoming message silent this long before its last chunk: ask for what is missing;
    # silent resume_s: give up, report it "incomplete" (final), never play it.
    gap_s: float = field(default=2.0, metadata=check(in_range(0.2, 60)))
    resume_s: float = field(default=60.0, metadata=check(in_range(1, 3600)))
    max_message_kib: int = field(default=2048, metadata=check(in_range(16, 65536)))
    # Incoming messages waiting to be played (beyond it: receipt "not_played", queue full).
    queue_messages: int = field(default=16, metadata=check(in_range(1, 256)))
    # A dedicated serial line for PTT DOWN / PTT UP ("" none; a shared trigger line needs the
    # two-line hook in agent/capture/triggers.py, see docs/talk.md).
    ptt_port: str = ""
    ptt_baud: int = field(default=9600, metadata=check(in_range(300, 4000000)))
    # A GPIO button: chip and line offset (-1 none), to ground with the internal pull-up; via
    # libgpiod v2 (PyPI gpiod), the binding agent/lines/inputs.py uses.
    ptt_gpio_chip: str = "/dev/gpiochip0"
    ptt_gpio_line: int = field(default=-1, metadata=check(in_range(-1, 1023)))
