"""Configuration: the shipped example loads; bad files fail naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid() -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "config",
            "check",
            str(REPO / "deploy" / "agent.example.toml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "OK (device cam-0001, profile bodycam" in res.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[device]\nid="a"\n[uplink]\nport=70000\n', "uplink.port: must be 1..65535, got 70000"),
        ('[device]\nid="a"\nfoo=1\n', "device.foo: unknown setting"),
        (
            '[device]\nid="a"\n[spool]\nevidence_quota_mb="big"\n',
            "spool.evidence_quota_mb: must be an integer",
        ),
        (
            '[device]\nid="a"\n[seal]\ncipher="rot13"\n',
            "seal.cipher: must be one of auto, aes-256-gcm, chacha20-poly1305",
        ),
        ('[device]\nid="a b"\n', "device.id: must be 1-64 ASCII letters"),
        ("[device]\n", "device.id: required"),
        ('[device]\nid="a"\n[gps]\nbaud=true\n', "gps.baud: must be an integer, got a boolean"),
        ('[device]\nid="a"\nuplink=3\n', "device.uplink: unknown setting"),
        ("[device\n", "not valid TOML"),
        ('[device]\nid="a"\n[nonsense]\n', "nonsense: unknown setting"),
    ],
)
def test_bad_values_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert message in str(err.value)


def test_config_check_reports_missing_file(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "config", "check", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1
    assert "no such config file" in res.stderr


def test_values_are_typed_and_frozen() -> None:
    cfg = parse_config('[device]\nid="t1"\n[spool]\ndir="/x"\n[uplink]\npriority=["video"]\n')
    assert cfg.spool.dir == Path("/x")
    assert cfg.uplink.priority == ("video",)
    with pytest.raises(AttributeError):
        cfg.device.id = "other"  # type: ignore[misc]


def _leaves(cls: type, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            out.append(f"{prefix}{f.name}")
    return out


def test_example_config_documents_every_setting() -> None:
    """deploy/agent.example.toml names every setting (set or commented), in its table."""
    import re

    from agent.config import AgentConfig

    text = (REPO / "deploy" / "agent.example.toml").read_text()
    tables: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        m = re.match(r"^\[([a-z0-9_.]+)\]", line)
        if m:
            current = m.group(1)
            continue
        k = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if k:
            tables.setdefault(current, "")
            tables[current] += f" {k.group(1)} "
    missing = []
    for leaf in _leaves(AgentConfig):
        table, _, name = leaf.rpartition(".")
        if f" {name} " not in tables.get(table, ""):
            missing.append(leaf)
    assert not missing, f"not in deploy/agent.example.toml: {missing}"
