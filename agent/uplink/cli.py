"""``edge-agent uplink ...``: run the forwarder alone, make the command key, send a command.

- ``edge-agent uplink forward --config FILE``: drain this device's spool to the platform (the
  same forwarder ``edge-agent run`` starts), until interrupted or, with ``--until-empty``, until
  the spool is empty.
- ``edge-agent uplink command-key DIR``: the platform's Ed25519 command-signing key pair
  (``command.key`` 0600, ``command.pub`` to install on devices as ``uplink.command_key``).
- ``edge-agent uplink ack-key DIR``: the platform's Ed25519 acknowledgement-signing key pair
  (``ack.key`` 0600 for ``edge-agent ingest --ack-key``, ``ack.pub`` to install on devices as
  ``uplink.ack_key``: they delete a segment only on an acknowledgement signed by it).
- ``edge-agent uplink send DEVICE CMD``: (platform side) sign a command, publish it and print
  the device's answer.

The channel's module is :mod:`agent.uplink.control` (this name is the CLI's). Nothing heavy is
imported at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    up = sub.add_parser("uplink", help="MQTT uplink: forward the spool, command keys, commands")
    usub = up.add_subparsers(dest="uplink_command", metavar="UPLINK_COMMAND")
    up.set_defaults(func=lambda args: _help(up))

    fwd = usub.add_parser("forward", help="send the spool to the platform (forwarder only)")
    fwd.add_argument("--config", help="agent TOML (default $EDGE_AGENT_CONFIG or /etc/...)")
    fwd.add_argument("--until-empty", action="store_true", help="exit 0 once the spool is empty")
    fwd.add_argument("--boot-id", default="", help="boot id (default: the kernel's)")
    fwd.set_defaults(func=cmd_forward)

    ck = usub.add_parser("command-key", help="create the platform's command-signing key pair")
    ck.add_argument("dir", type=Path)
    ck.add_argument("--force", action="store_true", help="replace an existing key")
    ck.set_defaults(func=cmd_command_key)

    ak = usub.add_parser("ack-key", help="create the platform's acknowledgement-signing key pair")
    ak.add_argument("dir", type=Path)
    ak.add_argument("--force", action="store_true", help="replace an existing key")
    ak.set_defaults(func=cmd_ack_key)

    send = usub.add_parser("send", help="sign and send a command to a device; print its answer")
    send.add_argument("device")
    send.add_argument("cmd")
    send.add_argument("--args", default="{}", help="JSON object of arguments")
    send.add_argument("--key", type=Path, required=True, help="command.key (Ed25519, 0600)")
    add_broker_args(send, identity_help="client id (the platform's certificate identity)")
    send.add_argument("--ttl", type=float, default=300, help="seconds the command is valid")
    send.add_argument("--wait", type=float, default=30, help="seconds to wait for the answer")
    send.set_defaults(func=cmd_send)


def add_broker_args(p: argparse.ArgumentParser, identity_help: str) -> None:
    p.add_argument("--broker", default="127.0.0.1:8883", help="HOST:PORT (default %(default)s)")
    p.add_argument("--ca", type=Path, required=True, help="CA certificate of the broker")
    p.add_argument("--cert", type=Path, required=True, help="client certificate (PEM)")
    p.add_argument("--cert-key", type=Path, required=True, help="client private key (PEM)")
    p.add_argument("--client-id", default="ingest", help=identity_help)
    p.add_argument("--server-name", default="", help="name to check in the broker's cert")
    p.add_argument("--protocol", default="mqtt5", choices=("mqtt5", "mqtt311"))


def broker_config(args: argparse.Namespace, **extra: Any) -> Any:
    from agent.errors import ConfigError
    from agent.uplink.mqtt import LinkConfig

    host, _, port = str(args.broker).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--broker: must be HOST:PORT, got {args.broker!r}")
    return LinkConfig(
        host=host,
        port=int(port),
        client_id=args.client_id,
        ca=args.ca,
        cert=args.cert,
        key=args.cert_key,
        server_name=args.server_name,
        protocol=args.protocol,
        **extra,
    )


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_forward(args: argparse.Namespace) -> int:
    import signal
    import threading

    from agent.config.reading import read_config
    from agent.errors import ConfigError
    from agent.storage.from_config import boot_id
    from agent.storage.keys import load_platform_public, load_signing_key
    from agent.storage.sealer import Sealer
    from agent.storage.spool import Spool
    from agent.uplink.service import Uplink

    cfg = read_config(args.config)
    if not cfg.device.id:
        raise ConfigError("device.id: required")
    boot = args.boot_id or boot_id()
    sealer = Sealer(
        device_id=cfg.device.id,
        boot_id=boot,
        signing_key=load_signing_key(cfg.keys.device_key),
        platform_public=load_platform_public(cfg.keys.platform_public),
        settings=cfg.seal,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    spool = Spool(cfg.spool, sealer)
    uplink = Uplink(cfg.uplink, device_id=cfg.device.id, boot_id=boot, spool=spool, stop=stop)
    uplink.start()
    try:
        while not stop.wait(0.5):
            if args.until_empty and not spool.backlog():
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        uplink.join()
        spool.close()
    return 0


def cmd_command_key(args: argparse.Namespace) -> int:
    from agent.uplink.control import init_command_keys

    path = init_command_keys(args.dir, force=args.force)
    print(f"command signing key: {path} (keep it on the platform)")
    print(f"install on devices:  {path.with_name('command.pub')} (uplink.command_key)")
    return 0


def cmd_ack_key(args: argparse.Namespace) -> int:
    from agent.uplink.control import init_ack_keys

    path = init_ack_keys(args.dir, force=args.force)
    print(f"ack signing key:    {path} (keep it on the platform: edge-agent ingest --ack-key)")
    print(f"install on devices: {path.with_name('ack.pub')} (uplink.ack_key)")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import json
    import threading
    import time

    from agent.errors import CommandError, ConfigError
    from agent.uplink import protocol as proto
    from agent.uplink.control import load_command_private, sign_command
    from agent.uplink.mqtt import MqttLink

    try:
        cmd_args = json.loads(args.args)
    except ValueError as exc:
        raise ConfigError(f"--args: not JSON: {exc}") from None
    if not isinstance(cmd_args, dict):
        raise ConfigError("--args: must be a JSON object")
    key = load_command_private(args.key)
    payload = sign_command(key, args.device, args.cmd, cmd_args, ttl_s=args.ttl)
    cid = json.loads(payload)["id"]
    topics = proto.Topics(args.device)
    stop = threading.Event()
    link = MqttLink(broker_config(args, session_expiry_s=0), stop)
    answers = link.route(topics.command_result)
    link.start()
    deadline = time.monotonic() + args.wait
    try:
        while not link.connected:
            if time.monotonic() > deadline:
                raise CommandError(f"could not connect to {args.broker} within {args.wait:g} s")
            stop.wait(0.05)
        link.publish(topics.command, payload, qos=1)
        while time.monotonic() < deadline:
            try:
                msg = answers.get(timeout=0.2)
            except Exception:
                continue
            link.ack(msg)
            try:
                answer = proto.loads_object(msg.payload, "answer")
            except Exception:
                continue
            if answer.get("id") == cid:
                print(json.dumps(answer, indent=2, sort_keys=True))
                return 0 if answer.get("ok") else 1
        raise CommandError(f"no answer from {args.device} within {args.wait:g} s")
    finally:
        stop.set()
        link.join()
