"""``edge-agent talk ...``: press-to-talk on the device, and the control room's send / listen.

Device (through the running agent's local control socket)::

    edge-agent talk press | release | status     hold / let go of the talk button
    edge-agent talk say FILE                     send a file (any format FFmpeg reads)

Control room (platform side; broker arguments as ``edge-agent uplink send``)::

    edge-agent talk send (--device ID | --group G) FILE --key command.key ...
    edge-agent talk listen [--save DIR] [--play] [--devices DIR] ...

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from agent.uplink.cli import add_broker_args

    talk = sub.add_parser("talk", help="push-to-talk voice: press/release/say, send, listen")
    tsub = talk.add_subparsers(dest="talk_command", metavar="TALK_COMMAND")
    talk.set_defaults(func=lambda args: _help(talk))

    for name, help_ in (
        ("press", "start talking (the talk button held)"),
        ("release", "stop talking: the message is sent"),
        ("status", "microphone, speaker and message counters"),
    ):
        p = tsub.add_parser(name, help=help_)
        p.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
        p.set_defaults(func=_local, action=name)
    say = tsub.add_parser("say", help="send an audio file as a message from this device")
    say.add_argument("file", type=Path)
    say.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    say.set_defaults(func=_local, action="say")

    send = tsub.add_parser("send", help="(platform) send an audio file to a device or a group")
    to = send.add_mutually_exclusive_group(required=True)
    to.add_argument("--device", help="device id")
    to.add_argument("--group", help="group name (groups/<g>/talk/in)")
    send.add_argument("file", type=Path, help="any audio file FFmpeg reads (WAV, MP3, Ogg ...)")
    send.add_argument("--key", type=Path, required=True, help="command.key (Ed25519, 0600)")
    send.add_argument("--rate", type=int, default=48000, help="Opus rate (default %(default)s)")
    send.add_argument("--bitrate", type=int, default=24, help="kb/s (default %(default)s)")
    send.add_argument("--chunk-bytes", type=int, default=4096, help="bytes per MQTT message")
    send.add_argument("--ttl", type=float, default=3600, help="seconds the message is valid")
    send.add_argument("--wait", type=float, default=60, help="seconds to wait for receipts")
    send.add_argument("--expect", type=int, default=0, help="(group) stop after N devices")
    add_broker_args(send, identity_help="client id (the platform's certificate identity)")
    send.set_defaults(func=cmd_send)

    listen = tsub.add_parser("listen", help="(platform) receive what devices send")
    listen.add_argument("--save", type=Path, help="directory for <device>/<time>-<id>.ogg")
    listen.add_argument("--play", action="store_true", help="play each message here")
    listen.add_argument("--devices", type=Path, help="directory of pinned <device>.pub keys")
    listen.add_argument("--count", type=int, default=0, help="exit after N messages")
    listen.add_argument("--timeout", type=float, default=0, help="exit after S seconds")
    add_broker_args(listen, identity_help="client id (the platform's certificate identity)")
    listen.set_defaults(func=cmd_listen)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _local(args: argparse.Namespace) -> int:
    import json

    from agent.config.reading import read_config
    from agent.runtime.local_control import send

    cfg = read_config(args.config)
    request: dict[str, Any] = {}
    if args.action == "say":
        request["path"] = str(args.file.resolve())
    result = send(cfg.health.control_socket, f"talk.{args.action}", request)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import json
    import threading

    from agent.talk import wire
    from agent.talk.codec import SAMPLE_BYTES, decode_to_pcm, encode_pcm
    from agent.uplink.cli import broker_config
    from agent.uplink.control import load_command_private
    from agent.uplink.mqtt import MqttLink

    key = load_command_private(args.key)
    pcm = decode_to_pcm(args.file, args.rate)
    body = encode_pcm(pcm, args.rate, args.bitrate)
    duration = len(pcm) / SAMPLE_BYTES / args.rate
    if args.device:
        topic, to = wire.in_topic(args.device), wire.device_address(args.device)
    else:
        topic, to = wire.group_topic(args.group), wire.group_address(args.group)
    chunks = wire.build_message(
        key,
        body,
        sender=wire.PLATFORM,
        to=to,
        duration_s=duration,
        chunk_bytes=args.chunk_bytes,
        ttl_s=args.ttl,
    )
    stop = threading.Event()
    link = MqttLink(broker_config(args, session_expiry_s=0), stop)
    receipts = link.route(wire.receipt_topic(args.device) if args.device else wire.RECEIPT_FILTER)
    link.start()
    try:
        from agent.talk.platform import send_message, wait_connected

        wait_connected(link, stop, args.wait)
        print(
            json.dumps(
                {
                    "sent": chunks[0].id,
                    "to": to,
                    "chunks": len(chunks),
                    "bytes": len(body),
                    "duration_s": round(duration, 3),
                }
            ),
            flush=True,
        )
        result = send_message(
            link,
            receipts,
            chunks,
            topic,
            stop,
            wait_s=args.wait,
            device=args.device,
            expect=args.expect,
            on_receipt=lambda r: print(json.dumps(r, sort_keys=True), flush=True),
        )
    finally:
        stop.set()
        link.join()
    statuses = result.statuses()
    if args.device:
        return 0 if "played" in statuses else 1
    return 0 if statuses else 1


def cmd_listen(args: argparse.Namespace) -> int:
    import json
    import signal
    import threading
    import time

    from agent.talk.platform import Listener
    from agent.uplink.cli import broker_config
    from agent.uplink.mqtt import MqttLink

    if args.save is None and not args.play:
        from agent.errors import ConfigError

        raise ConfigError("talk listen: give --save DIR and/or --play")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    link = MqttLink(broker_config(args, session_expiry_s=0), stop)
    got = [0]

    def on_event(event: dict[str, Any]) -> None:
        print(json.dumps(event, sort_keys=True), flush=True)
        if event["event"] == "message":
            got[0] += 1
            if args.count and got[0] >= args.count:
                stop.set()

    player = _player() if args.play else None
    listener = Listener(link, stop, out_dir=args.save, device_keys=args.devices, play=player,
                        on_event=on_event)  # fmt: skip
    link.start()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    t = threading.Thread(target=listener.run, name="talk-listen")
    t.start()
    try:
        while not stop.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        t.join()
        link.join()
    return 0


def _player() -> Any:
    from agent.talk.audio_io import SoundDeviceIO
    from agent.talk.codec import decode_to_pcm

    io = SoundDeviceIO("", "")

    def play(body: bytes) -> None:
        pcm = decode_to_pcm(body, 48000)
        out = io.open_output(48000)
        try:
            out.write(pcm)
        finally:
            out.close()

    return play
