"""``edge-agent``: the command line for devices, technicians and platform engineers.

Each part of the agent contributes its subcommands through a ``register(subparsers)`` function
in a small ``cli`` module of its package (``agent/gps/cli.py``, ...) that imports nothing heavy
at module level, so that a GPS-only tracker never imports OpenCV or numpy just to print
``--help``. (The *commands* of the platform and of the control socket are another thing:
agent/runtime/routing.py.)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import AgentError

# Modules that add subcommands, in the order they appear in --help.
CLI_MODULES = (
    "agent.storage.cli",
    "agent.gps.cli",
    "agent.uplink.cli",
    "agent.ingest.cli",
    "agent.capture.cli",
    "agent.runtime.cli",
    "agent.config.cli",
    "agent.enrol.cli",
    "agent.web.cli",
    "agent.talk.cli",
    "agent.jt808.cli",
)

log = logging.getLogger("edge-agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Capture, seal, store and forward evidence from body cameras and trackers.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(verbose: bool, level: str = "info") -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except AgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
