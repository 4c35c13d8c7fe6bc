"""``edge-agent ingest``: the platform's reference receiver (see agent.ingest.receiver), and
``edge-agent heads``: which devices' streams lack segments their signed heads name.

    edge-agent ingest --store DIR --broker HOST:PORT --ca CA --cert CRT --cert-key KEY \\
        (--devices DIR | --trust-on-first-use) [--ack-key ack.key] \\
        [--platform-key platform.key] [--group ingest] [--client-id ingest]
    edge-agent heads --store DIR [--settle-s S]

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# The exit status of `edge-agent ingest` when one of its threads died (EX_SOFTWARE): systemd
# restarts it (Restart=on-failure) instead of leaving a worker that no longer ingests.
EXIT_THREAD_DIED = 70


def register(sub: Any) -> None:
    from agent.uplink.cli import add_broker_args

    p = sub.add_parser(
        "ingest", help="platform side: receive, verify, store and acknowledge segments"
    )
    p.add_argument("--store", type=Path, required=True, help="store directory")
    p.add_argument(
        "--platform-key", type=Path, help="platform X25519 private key: also store plaintext"
    )
    p.add_argument(
        "--devices",
        type=Path,
        help="directory of registered device keys, <device>.pub (what edge-agent provision "
        "writes for the platform): the production setting",
    )
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="laboratories only: pin the first key an unregistered device presents",
    )
    p.add_argument(
        "--ack-key",
        type=Path,
        help="the platform's Ed25519 ack.key (edge-agent uplink ack-key): sign acknowledgements",
    )
    p.add_argument("--group", default="ingest", help="shared-subscription group")
    p.add_argument(
        "--partial-quota-mb",
        type=int,
        default=4096,
        help="per device: bytes of unfinished uploads held, and the largest segment announced "
        "(default %(default)s)",
    )
    p.add_argument(
        "--partial-expiry-h",
        type=float,
        default=24.0,
        help="drop an unfinished upload idle this long (default %(default)s)",
    )
    from agent.web.cli import add_web_args

    add_web_args(p, required=False)
    add_broker_args(p, identity_help="client id = the ingest certificate's identity")
    p.set_defaults(func=cmd_ingest)

    h = sub.add_parser(
        "heads", help="platform side: streams whose signed head is beyond what the store holds"
    )
    h.add_argument("--store", type=Path, required=True, help="the ingest store directory")
    h.add_argument(
        "--settle-s",
        type=float,
        default=6 * 3600,
        help="a head not stored after this long is missing even while the device still "
        "sends (default %(default)s)",
    )
    h.set_defaults(func=cmd_heads)


def store_from_args(args: argparse.Namespace) -> Any:
    from agent.errors import ConfigError
    from agent.ingest.store import PartialLimits, Store
    from agent.storage.keys import load_platform_private

    if args.devices is None and not args.trust_on_first_use:
        raise ConfigError(
            "--devices DIR: required (the registered device keys, <device>.pub, that edge-agent "
            "provision writes); --trust-on-first-use instead pins whatever key a device first "
            "presents (laboratories only)"
        )
    if args.devices is not None and not args.devices.is_dir():
        raise ConfigError(f"--devices {args.devices}: not a directory")
    if args.partial_quota_mb < 1 or not args.partial_expiry_h > 0:
        raise ConfigError("--partial-quota-mb and --partial-expiry-h: must be positive")
    key = load_platform_private(args.platform_key) if args.platform_key else None
    limits = PartialLimits(
        quota_bytes=args.partial_quota_mb << 20, expiry_s=args.partial_expiry_h * 3600
    )
    return Store(
        args.store,
        platform_key=key,
        devices=args.devices,
        trust_on_first_use=bool(args.trust_on_first_use),
        limits=limits,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from agent.ingest.receiver import Ingest
    from agent.uplink.cli import broker_config
    from agent.uplink.control import load_ack_private

    log = logging.getLogger("edge-agent")
    store = store_from_args(args)
    ack_key = load_ack_private(args.ack_key) if args.ack_key else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    web = None
    if args.web:
        from agent.web.cli import start_from_args

        web = start_from_args(args, stop, store.platform_key)
    ingest = Ingest(store, broker_config(args), stop, group=args.group, ack_key=ack_key)
    ingest.start()
    status = 0
    try:
        status = watch(ingest, stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        ingest.join()
        if web is not None:
            web.join()
        log.info("ingest: %s", store.stats)
    return status


def watch(ingest: Any, stop: Any, poll_s: float = 1.0) -> int:
    """Wait until ``stop``: 0. A thread of the worker that ends before (whatever ended it, past
    its containment) makes it return EXIT_THREAD_DIED, so the process exits non-zero and the
    service manager (Restart=on-failure) starts a whole worker again."""
    import logging

    while not stop.wait(poll_s):
        gone = ingest.dead()
        if gone:
            logging.getLogger("edge-agent").critical(
                "ingest: thread %s ended; exiting so that the service manager restarts the worker",
                ", ".join(gone),
            )
            return EXIT_THREAD_DIED
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from agent.ingest.heads import HeadsBook
    from agent.ingest.store import Store

    if not args.store.is_dir():
        raise ConfigError(f"--store {args.store}: not a directory")
    store = Store(args.store, trust_on_first_use=False)
    findings = HeadsBook(store, settle_s=args.settle_s).check_all()
    for f in findings:
        print(f.text())
    if not findings:
        print("every stream's signed head is in the store (or still on its way)")
    return 1 if findings else 0
