"""Settings of the camera, stills and microphone."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.settings import check, in_range, one_of


@dataclass(frozen=True)
class VideoSettings:
    enabled: bool = False
    # synthetic | a V4L2 device path (/dev/video0) | a file | a stream URL
    source: str = "synthetic"
    width: int = field(default=1280, metadata=check(in_range(16, 7680)))
    height: int = field(default=720, metadata=check(in_range(16, 4320)))
    fps: int = field(default=30, metadata=check(in_range(1, 120)))
    mode: str = field(default="event", metadata=check(one_of("event", "continuous")))
    segment_s: int = field(default=30, metadata=check(in_range(1, 600)))
    prebuffer_s: int = field(default=30, metadata=check(in_range(0, 120)))


@dataclass(frozen=True)
class AudioSettings:
    enabled: bool = False
    device: str = ""
    rate: int = field(default=48000, metadata=check(in_range(8000, 48000)))
