"""Settings written back as TOML (tomli-w) read back the same, whatever the strings hold."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from agent.config.remote import RemoteSettings
from agent.config.schema import AgentConfig, parse_config
from agent.config.toml_write import config_to_dict, render_toml
from agent.errors import CommandError

EVERY_CONTROL = "".join(chr(c) for c in (*range(0x20), 0x7F))


def test_every_control_character_round_trips() -> None:
    data = {
        "device": {"id": "cam-1", "officer": f"a{EVERY_CONTROL}b", "unit": 'q"u\\o\u2028te'},
        "gps": {"strategy": {"interval_s": 10.5}},
        "video": {"watermark_fields": ["time", "device\x7f"]},
        "odd key\x01": {"x": 1},
    }
    text = render_toml(data, "written by a test\nsecond line")
    assert text.startswith("# written by a test\n# second line\n")
    assert tomllib.loads(text) == data


def test_a_config_with_control_characters_round_trips_through_the_loader() -> None:
    """What provision writes: the whole config, a technician's free text included."""
    cfg = parse_config('[device]\nid = "cam-1"\n')
    cfg = dataclasses.replace(cfg, device=dataclasses.replace(cfg.device, officer="A\x7fB\x00C"))
    again = parse_config(render_toml(config_to_dict(cfg), "header"))
    assert again == cfg


def test_settings_set_with_a_control_character_is_refused_cleanly(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.toml"
    settings = RemoteSettings(running=AgentConfig(), overrides_path=overrides)
    settings.base = {"device": {"id": "cam-1"}}
    settings.set({"video.segment_s": 20}, origin="device")
    before = overrides.read_text()
    for args in (
        {"video.watermark_position": "bottom\x7fleft"},
        {"video.watermark_position": "bottom\x00left"},
        {"video.segment_s\x7f": 20},
    ):
        with pytest.raises(CommandError) as err:
            settings.set(args, origin="device")
        assert "video." in str(err.value)
    # nothing half-written: the file is what the last good change left, and it reads back
    assert overrides.read_text() == before
    assert tomllib.loads(before) == {"video": {"segment_s": 20}}
