"""CLI of the running agent: ``run``, ``status``, ``record``, ``still``, ``mute``, ``unmute``.

``run`` is the one importer of the composition root (:mod:`agent.runtime.app`); the others
talk to a running agent through its status file and control socket.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def register(sub: Any) -> None:
    register_run(sub)
    register_status(sub)
    register_record(sub)
    register_mute(sub)


def register_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run the agent (what the config enables, by profile)")
    run.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent.runtime.deferred import defer

    defer()  # before any library is imported: what they import and the agent never uses
    from agent.config.reading import read_config
    from agent.runtime.app import Agent

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

    from agent.config.reading import read_config
    from agent.errors import AgentError
    from agent.runtime.status_text import format_status

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
    from agent.config.reading import read_config
    from agent.runtime.local_control import send

    cfg = read_config(args.config)
    result = send(
        cfg.health.control_socket, f"video.{args.action}", {"note": args.note} if args.note else {}
    )
    if result.get("recorded") is False:
        print(f"recording: mark NOT recorded: {result.get('reason', 'unknown')}", file=sys.stderr)
        return 1
    print("recording: mark recorded" if args.action == "mark" else f"recording: {args.action} sent")
    return 0


def _still(args: argparse.Namespace) -> int:
    from agent.config.reading import read_config
    from agent.runtime.local_control import send

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
    from agent.config.reading import read_config
    from agent.runtime.local_control import send

    cfg = read_config(args.config)
    send(cfg.health.control_socket, f"audio.{args.action}")
    print(f"microphone: {args.action}d")
    return 0
