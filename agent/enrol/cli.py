"""CLI: ``edge-agent provision`` (a technician enrols a device) and ``edge-agent selftest``.

    sudo edge-agent provision                      # asks what it needs (stdin a terminal)
    sudo edge-agent provision --device-id cam-0042 --profile bodycam --officer A1234 \\
        --unit ENF-03 --broker mqtts://broker.city.example:8883 --from-dir /media/usb
    sudo edge-agent provision --install-cert /media/usb/cam-0042.pem
    sudo edge-agent selftest [--json]

The work is in :mod:`agent.enrol.provision` and :mod:`agent.enrol.selftest`; nothing heavy is
imported at module level (``--help`` stays fast on a Pi Zero).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "provision",
        help="enrol this device: identity, keys, CSR, certificate, config, self-test",
        description="Take a device from blank to enrolled. Asks for what is missing when run "
        "on a terminal; with every answer given as an option it asks nothing (fleet scripts).",
    )
    p.add_argument("--root", type=Path, default=Path("/"), help="target root (default /)")
    p.add_argument("--device-id", help="device id (the certificate's CN and MQTT identity)")
    p.add_argument("--profile", choices=("bodycam", "tracker", "dashcam"))
    p.add_argument("--officer", help="officer number (body cameras)")
    p.add_argument("--vehicle", help="vehicle id (trucks)")
    p.add_argument("--unit", help="unit code")
    p.add_argument("--broker", help="broker URL, mqtts://HOST:PORT")
    p.add_argument("--platform-key", type=Path, help="the platform's public key (platform.pub)")
    p.add_argument("--ca", type=Path, help="the platform CA certificate (PEM)")
    p.add_argument("--command-key", type=Path, help="the platform's command key (command.pub)")
    p.add_argument(
        "--ack-key",
        type=Path,
        help="the platform's acknowledgement key (ack.pub): the device deletes a segment only "
        "on an acknowledgement signed by it",
    )
    p.add_argument(
        "--from-dir",
        type=Path,
        help="a directory (USB stick) holding platform.pub, ack.pub, ca.pem or ca.crt, "
        "command.pub; the device's <id>.pub and <id>.csr are copied back onto it",
    )
    p.add_argument("--gps-source", choices=("serial", "gpsd", "replay", "none"))
    p.add_argument("--gps-port", help="serial GNSS receiver (default /dev/ttyACM0)")
    p.add_argument("--gps-replay", type=Path, help="NMEA/gpsd log (with --gps-source replay)")
    p.add_argument(
        "--video-source",
        help="auto (the board's camera, default), picamera2, rpicam, /dev/video0, a file, a "
        "stream URL or 'synthetic'",
    )
    p.add_argument("--force", action="store_true", help="replace existing keys (re-enrolment)")
    p.add_argument(
        "--non-interactive", action="store_true", help="never ask; fail naming what is missing"
    )
    p.add_argument("--install-cert", type=Path, metavar="FILE", help="install the signed cert")
    p.add_argument("--no-selftest", action="store_true", help="do not run the self-test")
    p.add_argument(
        "--skip-receiver",
        action="store_true",
        help="leave the GNSS receiver alone (no UART check, udev rule or u-blox configuration)",
    )
    p.add_argument("--json", action="store_true", help="self-test report as JSON")
    p.add_argument("--gps-timeout", type=float, default=60.0, help="self-test: wait for a fix")
    p.add_argument("--ack-timeout", type=float, default=60.0, help="self-test: wait for the ack")
    p.add_argument("--max-clock-offset", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_provision)

    s = sub.add_parser(
        "selftest",
        help="check camera, microphone, GPS, clock, broker and delivery: PASS/FAIL/SKIP each",
    )
    s.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    s.add_argument("--json", action="store_true", help="print a machine-readable report")
    s.add_argument("--gps-timeout", type=float, default=60.0, help="seconds to wait for a fix")
    s.add_argument("--ack-timeout", type=float, default=60.0, help="seconds to wait for the ack")
    s.add_argument(
        "--max-clock-offset",
        type=float,
        default=2.0,
        help="largest GNSS-minus-system offset that passes (seconds, default %(default)s)",
    )
    s.set_defaults(func=cmd_selftest)


# --------------------------------------------------------------------------- answers


class Prompter:
    """Asks on the terminal, showing the default in brackets; loops until an answer passes."""

    def __init__(self, ask: Callable[[str], str] = input, say: Callable[[str], None] = print):
        self._ask = ask
        self._say = say

    def __call__(
        self, label: str, default: str = "", check: Callable[[str], str | None] | None = None
    ) -> str:
        while True:
            shown = f" [{default}]" if default else ""
            try:
                value = self._ask(f"{label}{shown}: ").strip() or default
            except EOFError:
                value = default
            problem = check(value) if check else None
            if problem is None:
                return value
            self._say(f"  {problem}")


CAMERA_PROMPT = (
    "Camera: auto (the board's), picamera2 or rpicam (the Pi camera module; its stack comes "
    "with deploy/install.sh --camera picamera2|rpicam), /dev/video0 (USB), a stream URL, "
    "or synthetic"
)


def camera_stack_note(source: str) -> str | None:
    """What to do when the Pi camera stack a source needs is not installed here."""
    import importlib.util
    import shutil

    if source == "picamera2" and importlib.util.find_spec("picamera2") is None:
        return (
            "NOTE: picamera2 is not installed for the agent: rerun deploy/install.sh "
            "--camera picamera2 (docs/deploy.md); until then the camera is reported lost"
        )
    if source == "rpicam" and shutil.which("rpicam-vid") is None:
        return (
            "NOTE: rpicam-vid is not installed: rerun deploy/install.sh --camera rpicam "
            "(docs/deploy.md); until then the camera is reported lost"
        )
    return None


def _required(v: str) -> str | None:
    return None if v else "an answer is required"


def _file(v: str) -> str | None:
    return None if v and Path(v).is_file() else f"no such file: {v!r}"


def _choice(*choices: str) -> Callable[[str], str | None]:
    return lambda v: None if v in choices else f"one of: {', '.join(choices)}"


def gather(args: argparse.Namespace, ask: Prompter | None) -> Any:
    """The answers: options, else prompts (terminal), else the previous config's values."""
    from agent.enrol.provision import (
        Answers,
        Layout,
        defaults_from,
        device_id_problem,
        find_on_media,
        parse_broker_url,
        previous_config,
    )
    from agent.errors import ConfigError

    layout = Layout(args.root)
    d = defaults_from(previous_config(layout), layout)
    missing: list[str] = []

    def get(
        name: str,
        flag: str,
        label: str,
        check: Callable[[str], str | None] | None = None,
        required: bool = True,
    ) -> str:
        given = getattr(args, name, None)
        default = str(d.get(name, "") or "")
        if given is not None:
            value = str(given)
        elif ask is not None:
            value = ask(label, default, check if required else None)
            return value
        else:
            value = default
        if required and not value:
            missing.append(flag)
        elif value and check is not None and (problem := check(value)):
            raise ConfigError(f"{flag}: {problem}")
        return value

    def bid(v: str) -> str | None:
        return device_id_problem(v) if v else "an answer is required"

    def url(v: str) -> str | None:
        try:
            parse_broker_url(v)
        except ConfigError as exc:
            return str(exc)
        return None

    device_id = get("device_id", "--device-id", "Device id (e.g. cam-0042)", bid)
    profile = get("profile", "--profile", "Profile (bodycam, tracker, dashcam)",
                  _choice("bodycam", "tracker", "dashcam"))  # fmt: skip
    officer = vehicle = ""
    if profile == "bodycam":
        officer = get("officer", "--officer", "Officer number", required=False)
        vehicle = str(args.vehicle or d.get("vehicle", "") or "")
    else:
        vehicle = get("vehicle", "--vehicle", "Vehicle id", required=False)
        officer = str(args.officer or d.get("officer", "") or "")
    unit = get("unit", "--unit", "Unit code", required=False)
    broker = get("broker", "--broker", "Broker URL (mqtts://host:port)", url)

    media = args.from_dir
    files: dict[str, Path | None] = {}
    for name, flag, label, installed, names in (
        ("platform_key", "--platform-key", "Platform public key file", layout.platform_pub,
         ("platform.pub",)),
        ("ca", "--ca", "Platform CA certificate file", layout.ca, ("ca.pem", "ca.crt")),
        ("ack_key", "--ack-key", "Platform ack key file (ack.pub)", layout.ack_pub,
         ("ack.pub",)),
        ("command_key", "--command-key", "Platform command key file (Enter: none)",
         layout.command_pub, ("command.pub",)),
    ):  # fmt: skip
        given = getattr(args, name) or find_on_media(media, *names)
        if given is not None:
            files[name] = Path(given)
        elif installed.exists():
            files[name] = None  # keep what is installed
        elif ask is not None:
            optional = name == "command_key"
            value = ask(label, "", None if optional else _file)
            files[name] = Path(value) if value else None
        else:
            files[name] = None
            if name != "command_key":
                missing.append(flag + " (or --from-dir)")
    gps_source = get("gps_source", "--gps-source", "GPS source (serial, gpsd, replay, none)",
                     _choice("serial", "gpsd", "replay", "none"))  # fmt: skip
    gps_port = str(args.gps_port or d.get("gps_port") or "/dev/ttyACM0")
    if gps_source == "serial" and ask is not None and args.gps_port is None:
        gps_port = ask("GPS serial port", gps_port)
    gps_replay = args.gps_replay or d.get("gps_replay")
    if gps_source == "replay" and gps_replay is None:
        missing.append("--gps-replay")
    video_source = str(args.video_source or d.get("video_source") or "auto")
    if profile != "tracker" and ask is not None and args.video_source is None:
        video_source = ask(CAMERA_PROMPT, video_source)
    if missing:
        raise ConfigError(
            "missing answers (stdin is not a terminal, so nothing was asked): "
            + ", ".join(dict.fromkeys(missing))
        )
    return Answers(
        device_id=device_id,
        profile=profile,
        unit=unit,
        broker=broker,
        officer=officer,
        vehicle=vehicle,
        platform_key=files["platform_key"],
        ca=files["ca"],
        command_key=files["command_key"],
        ack_key=files["ack_key"],
        gps_source=gps_source,
        gps_port=gps_port,
        gps_replay=Path(gps_replay) if gps_replay else None,
        video_source=video_source,
    )


# --------------------------------------------------------------------------- commands


def cmd_provision(args: argparse.Namespace) -> int:
    from agent.enrol.provision import Layout, install_cert, provision

    layout = Layout(args.root)
    if args.install_cert is not None:
        install_cert(layout, args.install_cert, ca_file=args.ca)
        return _after(args, layout)
    interactive = not args.non_interactive and sys.stdin.isatty()
    answers = gather(args, Prompter() if interactive else None)
    out = provision(answers, layout, force=args.force)
    for note in out.notes:
        print(note)
    camera_note = camera_stack_note(answers.video_source)
    if camera_note and answers.profile != "tracker":
        print(camera_note)
    print(f"config written: {out.config} (checked: edge-agent config check {out.config})")
    print(out.ownership)
    _receiver(args, layout)
    print(
        f"register with the platform: {out.registration} (the device's signing key; it goes "
        "into the directory `edge-agent ingest --devices DIR` reads)"
    )
    _copy_back(args.from_dir, answers.device_id, [out.registration, out.csr])
    if not out.cert_installed:
        print(
            f"\nNEXT: send the certificate request {out.csr} to the platform CA "
            f"(it asks for CN={answers.device_id}) and {out.registration} to the platform.\n"
            "When the signed certificate comes back, install it and run the self-test:\n"
            f"  sudo edge-agent provision --install-cert FILE"
            + ("" if args.root == Path("/") else f" --root {args.root}")
        )
        return 0
    print(f"certificate {layout.cert}: installed and matching this device")
    return _after(args, layout)


def _receiver(args: argparse.Namespace, layout: Any) -> None:
    """The receiver's port and setup: agent/gps/receiver_setup.py (never stops provisioning)."""
    if args.skip_receiver:
        return
    from agent.config.schema import load_config
    from agent.gps.receiver_setup import provision_receiver

    provision_receiver(load_config(layout.config), layout.root)


def _copy_back(media: Path | None, device_id: str, files: list[Path | None]) -> None:
    """Put what the platform needs (key, CSR) on the technician's stick, where it is writable."""
    if media is None:
        return
    for f in files:
        if f is None or not f.exists():
            continue
        dest = media / f"{device_id}{f.suffix}"
        try:
            dest.write_bytes(f.read_bytes())
        except OSError as exc:
            print(f"could not copy {f.name} to {media} ({exc.strerror or exc}); copy it by hand")
            continue
        print(f"copied for the platform: {dest}")


def _after(args: argparse.Namespace, layout: Any) -> int:
    if args.no_selftest:
        print(f"self-test skipped; run it with: sudo edge-agent selftest --config {layout.config}")
        return 0
    from agent.enrol.selftest import run_selftest

    return run_selftest(
        layout.config,
        json_out=args.json,
        gps_timeout=args.gps_timeout,
        ack_timeout=args.ack_timeout,
        max_clock_offset_s=args.max_clock_offset,
    )


def cmd_selftest(args: argparse.Namespace) -> int:
    from agent.config.reading import config_path
    from agent.enrol.selftest import run_selftest

    return run_selftest(
        config_path(args.config),
        json_out=args.json,
        gps_timeout=args.gps_timeout,
        ack_timeout=args.ack_timeout,
        max_clock_offset_s=args.max_clock_offset,
    )
