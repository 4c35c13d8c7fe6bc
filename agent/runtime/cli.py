"""CLI: ``run``, ``status``, ``record``, ``still`` and ``config check``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    register_run(sub)
    register_status(sub)
    register_record(sub)
    register_mute(sub)
    config = sub.add_parser("config", help="check a configuration file")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="load FILE and report the first problem, if any")
    check.add_argument("file", help="TOML config file")
    check.set_defaults(func=_config_check)


def _config_check(args: argparse.Namespace) -> int:
    from agent.config import load_config

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


def register_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run the agent (what the config enables, by profile)")
    run.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent.app import Agent, read_config

    cfg = read_config(args.config)
    logging.getLogger().setLevel(cfg.log.level.upper())
    return Agent(cfg).run()


def register_status(sub: Any) -> None:
    status = sub.add_parser("status", help="the running agent's health, readable at a glance")
    status.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    status.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from agent.app import read_config
    from agent.errors import AgentError
    from agent.health import format_status

    cfg = read_config(args.config)
    path = cfg.health.status_file
    try:
        figures = json.loads(path.read_text())
    except FileNotFoundError:
        raise AgentError(f"{path}: no status file: is the agent running?") from None
    except (OSError, ValueError) as exc:
        raise AgentError(f"{path}: cannot read the status file: {exc}") from None
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(format_status(figures, now=time.time()))
    return 0


def register_record(sub: Any) -> None:
    record = sub.add_parser("record", help="start, stop or mark a recording on this device")
    record.add_argument("action", choices=("start", "stop", "mark"))
    record.add_argument("--note", default="", help="text kept with a mark")
    record.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    record.set_defaults(func=_record)
    still = sub.add_parser("still", help="take a still photo now")
    still.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    still.set_defaults(func=_still)


def _record(args: argparse.Namespace) -> int:
    from agent.app import read_config
    from agent.local_control import send

    cfg = read_config(args.config)
    send(
        cfg.health.control_socket, f"video.{args.action}", {"note": args.note} if args.note else {}
    )
    print(f"recording: {args.action} sent")
    return 0


def _still(args: argparse.Namespace) -> int:
    from agent.app import read_config
    from agent.local_control import send

    cfg = read_config(args.config)
    send(cfg.health.control_socket, "video.still")
    print("still: taken")
    return 0


def register_mute(sub: Any) -> None:
    for name, help_ in (("mute", "mute the microphone"), ("unmute", "unmute the microphone")):
        p = sub.add_parser(name, help=help_ + " (an event record)")
        p.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
        p.set_defaults(func=_mute, action=name)


def _mute(args: argparse.Namespace) -> int:
    from agent.app import read_config
    from agent.local_control import send

    cfg = read_config(args.config)
    send(cfg.health.control_socket, f"audio.{args.action}")
    print(f"microphone: {args.action}d")
    return 0
