"""Settings of the camera, stills and microphone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.config.fields import Check, check, in_range, one_of

WATERMARK_FIELDS = ("time", "device", "officer", "vehicle", "unit", "position")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _fields_of(allowed: tuple[str, ...]) -> Check:
    def _check(v: Any) -> str | None:
        bad = [x for x in v if x not in allowed]
        if bad:
            return f"unknown field(s) {', '.join(map(repr, bad))}; known: {', '.join(allowed)}"
        return None

    return _check


@dataclass(frozen=True)
class VideoSettings:
    enabled: bool = False
    # auto (the board's: picamera2 on a Raspberry Pi, synthetic elsewhere; docs/video.md)
    # | picamera2 (the Pi camera, watermark burned in, the Pi's encoder)
    # | rpicam (rpicam-vid's H.264 passed through) | encoded (stream_url passed through)
    # | synthetic | a V4L2 device path (/dev/video0, USB cameras) | a video file
    # | a stream URL decoded and re-encoded through OpenCV (rtsp://, udp://)
    source: str = "auto"
    # The CSI camera (picamera2, rpicam): 0 or 1 on a Pi 5 / Compute Module.
    camera: int = field(default=0, metadata=check(in_range(0, 15)))
    # source = "encoded": the camera's H.264 stream: rtsp://, tcp:// or udp:// (MPEG-TS), ...
    stream_url: str = ""
    # source = "rpicam": replaces the rpicam-vid command line (it must write Annex-B H.264 with
    # SPS/PPS before every IDR to stdout); empty: built from these settings.
    rpicam_command: tuple[str, ...] = ()
    # An encoded source that delivers nothing for this long is lost (reported, reopened).
    stall_s: float = field(default=5.0, metadata=check(in_range(0.5, 120)))
    width: int = field(default=1280, metadata=check(in_range(16, 7680)))
    height: int = field(default=720, metadata=check(in_range(16, 4320)))
    fps: int = field(default=30, metadata=check(in_range(1, 120)))
    # event: body camera, records between a start and a stop trigger; continuous: truck camera.
    mode: str = field(default="event", metadata=check(one_of("event", "continuous")))
    segment_s: int = field(default=30, metadata=check(in_range(1, 600)))
    prebuffer_s: int = field(default=30, metadata=check(in_range(0, 120)))
    # auto: h264_v4l2m2m where the device has it (Raspberry Pi 4), else libx264.
    encoder: str = field(default="auto", metadata=check(one_of("auto", "libx264", "h264_v4l2m2m")))
    bitrate_kbps: int = field(default=4000, metadata=check(in_range(100, 100000)))
    # libx264 speed/quality trade-off (ignored by the hardware encoder).
    preset: str = field(
        default="veryfast",
        metadata=check(
            one_of("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
        ),
    )
    # A keyframe (and so a fragment, the unit of segments and of the pre-event buffer) this often.
    keyframe_s: float = field(default=1.0, metadata=check(in_range(0.2, 10)))
    # Frames waiting between the camera and the encoder; beyond it frames are dropped and counted.
    queue_frames: int = field(default=30, metadata=check(in_range(1, 600)))
    # Seconds between reopen attempts after the camera is lost (doubles up to reopen_max_s).
    reopen_s: float = field(default=1.0, metadata=check(in_range(0.05, 60)))
    reopen_max_s: float = field(default=10.0, metadata=check(in_range(0.05, 600)))
    # The GA/T 947 watermark burned into every frame.
    watermark: bool = True
    watermark_fields: tuple[str, ...] = field(
        default=("time", "device", "officer", "vehicle", "position"),
        metadata=check(_fields_of(WATERMARK_FIELDS)),
    )
    watermark_position: str = field(default="bottom-left", metadata=check(one_of(*CORNERS)))
    watermark_scale: float = field(default=1.0, metadata=check(in_range(0.25, 4)))
    # Stills: a JPEG every stills_interval_s seconds (0: only on trigger or command).
    stills_interval_s: int = field(default=0, metadata=check(in_range(0, 86400)))
    stills_quality: int = field(default=90, metadata=check(in_range(10, 100)))
    # A trigger button / microcontroller on a serial line ("" for none): a device path or a
    # pyserial URL (loop://, socket://host:port, rfc2217://...). Protocol in docs/video.md.
    trigger_port: str = ""
    trigger_baud: int = field(default=9600, metadata=check(in_range(300, 4000000)))


@dataclass(frozen=True)
class AudioSettings:
    enabled: bool = False
    # "" the default input, digits a PortAudio device index, else (part of) a device name.
    device: str = ""
    # Sample rates Opus encodes natively; 16000 for speech, 48000 full band.
    rate: int = field(
        default=48000,
        metadata=check(
            lambda v: (
                None
                if v in (8000, 12000, 16000, 24000, 48000)
                else f"must be 8000, 12000, 16000, 24000 or 48000, got {v}"
            )
        ),
    )
    # event: records between start and stop triggers; continuous: always (an audio recorder).
    mode: str = field(default="event", metadata=check(one_of("event", "continuous")))
    segment_s: int = field(default=30, metadata=check(in_range(1, 600)))
    # Audio from before the start trigger: off unless configured (enforcement-camera practice).
    prebuffer_s: int = field(default=0, metadata=check(in_range(0, 120)))
    bitrate_kbps: int = field(default=24, metadata=check(in_range(6, 256)))
    # Samples per callback block, and blocks waiting for the encoder (beyond: dropped, counted).
    block_ms: int = field(default=20, metadata=check(in_range(5, 200)))
    queue_blocks: int = field(default=250, metadata=check(in_range(2, 10000)))
    # Seconds between reopen attempts while the microphone is missing (doubling up to max).
    reopen_s: float = field(default=1.0, metadata=check(in_range(0.05, 60)))
    reopen_max_s: float = field(default=10.0, metadata=check(in_range(0.05, 600)))
