"""Per-board video defaults: which source, encoder, size, rate and bitrate each board runs.

The board is read from the device tree (``/proc/device-tree/model``, e.g. ``Raspberry Pi 4
Model B Rev 1.4``). Its row in :data:`BOARDS` (the same table is in docs/video.md) gives the
``[video]`` defaults: a key the config file leaves out takes the board's value
(:func:`apply_board_defaults`, applied when the config is loaded); ``source = "auto"`` and
``encoder = "auto"`` are settled when the camera is opened (:func:`choose_source`, and
:func:`agent.capture.encoder.choose_encoder` for raw sources), each with a reason that
``edge-agent video probe`` prints.

Why these rows: the Pi 4 and Zero 2 W have the VideoCore hardware H.264 encoder (1080p30 on
a Pi 4; the Zero 2 W's 512 MB and slower cores make 720p the sensible default); the Pi 5 has
none, so its encoder is libx264 on the CPU, at 720p30 with the ``ultrafast`` preset to leave
the cores to everything else. The CPU shares are what to expect of the whole agent recording
(share of all cores); they are estimates from the published encoder figures until a rig
measures them (tests/hardware prints the measured share).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.capture.settings import VideoSettings

MODEL_PATH = Path("/proc/device-tree/model")


@dataclass(frozen=True)
class Board:
    key: str
    name: str
    source: str  # what source = "auto" prefers
    encoder: str  # the [video] encoder default
    encoder_note: str  # what that means on this board, for docs and the probe
    width: int
    height: int
    fps: int
    bitrate_kbps: int
    preset: str
    cpu_share: str  # expected share of the whole CPU while recording (estimate)
    match: tuple[str, ...] = ()


BOARDS: tuple[Board, ...] = (
    Board(
        "pi5", "Raspberry Pi 5", "picamera2", "libx264",
        "no hardware H.264 encoder: libx264 (picamera2 LibavH264Encoder)",
        1280, 720, 30, 3000, "ultrafast", "15-25 %", ("Raspberry Pi 5", "Compute Module 5"),
    ),
    Board(
        "pi4", "Raspberry Pi 4", "picamera2", "auto",
        "VideoCore hardware encoder (picamera2 H264Encoder)",
        1920, 1080, 30, 6000, "veryfast", "5-10 %",
        ("Raspberry Pi 4", "Raspberry Pi 400", "Compute Module 4"),
    ),
    Board(
        "zero2w", "Raspberry Pi Zero 2 W", "picamera2", "auto",
        "VideoCore hardware encoder (picamera2 H264Encoder)",
        1280, 720, 30, 3000, "veryfast", "10-20 %",
        ("Raspberry Pi Zero 2", "Raspberry Pi 3"),
    ),
    Board(
        "generic", "other (not a Raspberry Pi)", "synthetic", "auto",
        "h264_v4l2m2m if a probe encode passes, else libx264",
        1280, 720, 30, 4000, "veryfast", "n/a",
    ),
)  # fmt: skip

GENERIC = BOARDS[-1]
#: The [video] keys a board row decides when the config file does not.
BOARD_KEYS = ("encoder", "width", "height", "fps", "bitrate_kbps", "preset")


def read_model(path: Path = MODEL_PATH) -> str:
    """The device tree's model string ("" where there is none, e.g. a PC)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\x00").decode("utf-8", "replace").strip()


def board_for(model: str) -> Board:
    for board in BOARDS:
        if any(m in model for m in board.match):
            return board
    return GENERIC


def detect(path: Path = MODEL_PATH) -> tuple[str, Board]:
    model = read_model(path)
    return model, board_for(model)


def apply_board_defaults(video: VideoSettings, given: Iterable[str], board: Board) -> VideoSettings:
    """``video`` with the board's values for the keys the config file did not give."""
    given = set(given)
    changes = {k: getattr(board, k) for k in BOARD_KEYS if k not in given}
    return dataclasses.replace(video, **changes)


@dataclass(frozen=True)
class SourceChoice:
    source: str
    reason: str


def choose_source(
    settings: VideoSettings,
    board: Board,
    *,
    importable: Callable[[str], bool] = lambda m: importlib.util.find_spec(m) is not None,
    which: Callable[[str], str | None] = shutil.which,
) -> SourceChoice:
    """Settle ``source = "auto"``; any other value is taken as configured."""
    if settings.source != "auto":
        return SourceChoice(settings.source, "configured")
    if board.source != "picamera2":
        return SourceChoice(board.source, f"auto: {board.name} has no camera stack to use")
    if importable("picamera2"):
        return SourceChoice("picamera2", f"auto: {board.name}, picamera2 is installed")
    if which("rpicam-vid"):
        return SourceChoice(
            "rpicam",
            f"auto: {board.name}, picamera2 is not installed but rpicam-vid is "
            "(pass-through: no burned-in watermark; install picamera2 for it, docs/deploy.md)",
        )
    return SourceChoice(
        "picamera2",
        f"auto: {board.name}, but neither picamera2 nor rpicam-vid is installed "
        "(the camera will be reported lost until one is; docs/deploy.md)",
    )
