"""``edge-agent ingest``: the platform's reference receiver (see agent.ingest.receiver).

    edge-agent ingest --store DIR --broker HOST:PORT --ca CA --cert CRT --cert-key KEY \\
        [--platform-key platform.key] [--devices DIR] [--group ingest] [--client-id ingest]

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from agent.uplink.commands import add_broker_args

    p = sub.add_parser(
        "ingest", help="platform side: receive, verify, store and acknowledge segments"
    )
    p.add_argument("--store", type=Path, required=True, help="store directory")
    p.add_argument(
        "--platform-key", type=Path, help="platform X25519 private key: also store plaintext"
    )
    p.add_argument(
        "--devices", type=Path, help="directory of <device>.pub keys (default: pin on first use)"
    )
    p.add_argument("--group", default="ingest", help="shared-subscription group")
    from agent.web.commands import add_web_args

    add_web_args(p, required=False)
    add_broker_args(p, identity_help="client id = the ingest certificate's identity")
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from agent.ingest.receiver import Ingest
    from agent.ingest.store import Store
    from agent.storage.keys import load_platform_private
    from agent.uplink.commands import broker_config

    key = load_platform_private(args.platform_key) if args.platform_key else None
    store = Store(args.store, platform_key=key, devices=args.devices)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    web = None
    if args.web:
        from agent.web.commands import start_from_args

        web = start_from_args(args, stop, key)
    ingest = Ingest(store, broker_config(args), stop, group=args.group)
    ingest.start()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        ingest.join()
        if web is not None:
            web.join()
        logging.getLogger("edge-agent").info("ingest: %s", store.stats)
    return 0
