"""``edge-agent review``: the platform's review page over an ingest store, on its own.

    edge-agent review --store DIR --web HOST:PORT --token T [--platform-key KEY]
        [--devices DIR] [--tile-url https://tiles.example/{z}/{x}/{y}.png]
        [--allowed-host review.example.org] [--trusted-proxy 127.0.0.1]

The token may also come from $EDGE_AGENT_REVIEW_TOKEN (so it stays out of ``ps``). The same
page runs inside the ingest worker with ``edge-agent ingest --web HOST:PORT``. Nothing heavy is
imported at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TOKEN_ENV = "EDGE_AGENT_REVIEW_TOKEN"


def add_web_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    """--web, --token, --tile-url, --allowed-host, --trusted-proxy (shared with
    ``edge-agent ingest``)."""
    p.add_argument(
        "--web",
        metavar="HOST:PORT",
        required=required,
        help="serve the review page here (read-only, behind --token)",
    )
    p.add_argument(
        "--token",
        help=f"the review page's token, 16+ characters (default: ${TOKEN_ENV})",
    )
    p.add_argument(
        "--tile-url",
        help="the operator's own map tiles, e.g. https://tiles.example/{z}/{x}/{y}.png "
        "(default: the track on a plain metre grid)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the page is reached by (repeatable); IP addresses and localhost "
        "always work, any other Host header is refused (DNS rebinding)",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR",
        help="a reverse proxy (address or network, repeatable) whose X-Forwarded-For names "
        "the client: the page's throttles and connection caps then count that client",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "review", help="platform side: the review page over an ingest store (read-only)"
    )
    p.add_argument("--store", type=Path, required=True, help="the ingest store directory")
    p.add_argument(
        "--platform-key", type=Path, help="platform X25519 private key (decrypt on demand)"
    )
    p.add_argument("--devices", type=Path, help="directory of pinned <device>.pub keys")
    add_web_args(p, required=True)
    p.set_defaults(func=cmd_review)


def review_token(args: argparse.Namespace) -> str:
    import os

    from agent.errors import ConfigError

    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ConfigError(f"--token: the review page needs a token (or ${TOKEN_ENV})")
    return str(token)


def start_from_args(args: argparse.Namespace, stop: Any, platform_key: Any = None) -> Any:
    """Start the review page named by ``--web`` (used by ``ingest --web`` too)."""
    from agent.web.httpbase import Limits
    from agent.web.review import parse_address, serve_review

    host, port = parse_address(args.web)
    proxies = tuple(getattr(args, "trusted_proxy", None) or ())
    server = serve_review(
        args.store,
        host,
        port,
        review_token(args),
        platform_key,
        args.tile_url,
        stop,
        devices_dir=getattr(args, "devices", None),
        allowed_hosts=getattr(args, "allowed_host", None) or (),
        limits=Limits(trusted_proxies=proxies),
    )
    print(f"review page: {server.url}", flush=True)
    return server


def cmd_review(args: argparse.Namespace) -> int:
    import signal
    import threading

    from agent.errors import ConfigError
    from agent.storage.keys import load_platform_private

    if not args.store.is_dir():
        raise ConfigError(f"--store {args.store}: no such directory")
    key = load_platform_private(args.platform_key) if args.platform_key else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = start_from_args(args, stop, key)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.join()
    return 0
