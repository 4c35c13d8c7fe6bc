"""Per-board defaults: the device-tree model, the table, ``auto`` settled, and the probe."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from agent.capture.boards import (
    BOARDS,
    GENERIC,
    apply_board_defaults,
    board_for,
    choose_source,
    detect,
    read_model,
)
from agent.capture.settings import VideoSettings
from agent.cli import main as cli_main

MODELS = {
    "Raspberry Pi 5 Model B Rev 1.0": "pi5",
    "Raspberry Pi Compute Module 5 Rev 1.0": "pi5",
    "Raspberry Pi 4 Model B Rev 1.5": "pi4",
    "Raspberry Pi 400 Rev 1.0": "pi4",
    "Raspberry Pi Compute Module 4 Rev 1.0": "pi4",
    "Raspberry Pi Zero 2 W Rev 1.0": "zero2w",
    "Raspberry Pi 3 Model B Plus Rev 1.3": "zero2w",
    "": "generic",
    "Pine64 RockPro64": "generic",
}


@pytest.mark.parametrize(("model", "key"), MODELS.items())
def test_board_rows_follow_the_model(model: str, key: str) -> None:
    assert board_for(model).key == key


def test_model_file_is_read_as_the_device_tree_writes_it(tmp_path: Path) -> None:
    f = tmp_path / "model"
    f.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert read_model(f) == "Raspberry Pi 4 Model B Rev 1.4"
    assert detect(f)[1].key == "pi4"
    assert read_model(tmp_path / "absent") == "" and detect(tmp_path / "absent")[1] is GENERIC


def test_generic_row_is_the_settings_defaults() -> None:
    """Off a Pi, loading a config changes nothing (CI, laptops, the demo)."""
    assert apply_board_defaults(VideoSettings(), set(), GENERIC) == VideoSettings()


def test_keys_the_file_gives_are_kept() -> None:
    pi4 = board_for("Raspberry Pi 4 Model B")
    s = apply_board_defaults(VideoSettings(width=640, height=480), {"width", "height"}, pi4)
    assert (s.width, s.height, s.fps, s.bitrate_kbps) == (640, 480, 30, pi4.bitrate_kbps)
    pi5 = board_for("Raspberry Pi 5")
    s = apply_board_defaults(VideoSettings(), set(), pi5)
    assert (s.encoder, s.width, s.height, s.preset) == ("libx264", 1280, 720, "ultrafast")


def test_every_row_is_a_valid_setting() -> None:
    from agent.config.fields import load_dataclass

    for b in BOARDS:
        load_dataclass(
            VideoSettings,
            {k: getattr(b, k) for k in ("encoder", "width", "height", "fps", "bitrate_kbps")},
        )


def test_auto_source_is_settled_with_a_reason() -> None:
    pi4 = board_for("Raspberry Pi 4")
    auto = VideoSettings(source="auto")
    yes, no = (lambda _m: True), (lambda _m: False)
    assert choose_source(auto, GENERIC).source == "synthetic"
    c = choose_source(auto, pi4, importable=yes, which=lambda _c: None)
    assert c.source == "picamera2" and "picamera2 is installed" in c.reason
    c = choose_source(auto, pi4, importable=no, which=lambda c: f"/usr/bin/{c}")
    assert c.source == "rpicam" and "no burned-in watermark" in c.reason
    c = choose_source(auto, pi4, importable=no, which=lambda _c: None)
    assert c.source == "picamera2" and "neither" in c.reason
    c = choose_source(VideoSettings(source="/dev/video0"), pi4)
    assert (c.source, c.reason) == ("/dev/video0", "configured")


def test_probe_prints_board_source_and_encoder_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "cam-1"\nprofile = "bodycam"\n'
        '[video]\nenabled = true\nsource = "synthetic"\nwidth = 160\nheight = 120\nfps = 10\n'
    )
    code = cli_main(["video", "probe", "--config", str(cfg), "--board-model", str(model), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["board"] == {"model": "Raspberry Pi 5 Model B Rev 1.0", "row": "pi5",
                            "name": "Raspberry Pi 5"}  # fmt: skip
    assert out["source"]["chosen"] == "synthetic" and out["source"]["why"] == "configured"
    # The file set size and rate; the encoder and preset follow the Pi 5's row.
    assert out["encoder"] == {"codec": "libx264", "asked": "libx264", "why": "configured"}
    assert out["mp4"]["frames"] == 10 and out["mp4"]["init_problem"] is None
    if importlib.util.find_spec("picamera2") or shutil.which("rpicam-vid"):
        return  # a Pi's camera stack is installed here: the rest is about its absence
    code = cli_main(["video", "probe", "--board-model", str(model), "--frames", "2"])
    text = capsys.readouterr().out
    assert code == 1  # picamera2 is what a Pi 5 uses, and it is not installed here
    assert "board:    Raspberry Pi 5 Model B Rev 1.0 -> Raspberry Pi 5 defaults" in text
    assert "source:   picamera2:0" in text and "error:" in text and "python3-picamera2" in text
