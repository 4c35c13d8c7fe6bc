"""CLI: ``edge-agent config check FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    config = sub.add_parser("config", help="check a configuration file")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="load FILE and report the first problem, if any")
    check.add_argument("file", help="TOML config file")
    check.set_defaults(func=_config_check)


def _config_check(args: argparse.Namespace) -> int:
    from agent.config.schema import load_config

    cfg = load_config(Path(args.file))
    enabled = [
        name
        for name, on in (
            ("gps", cfg.gps.source != "none"),
            ("uplink", cfg.uplink.enabled),
            ("video", cfg.video.enabled),
            ("audio", cfg.audio.enabled),
        )
        if on
    ]
    print(
        f"{args.file}: OK (device {cfg.device.id}, profile {cfg.device.profile}, "
        f"enabled: {', '.join(enabled) or 'nothing but the spool'})"
    )
    return 0
