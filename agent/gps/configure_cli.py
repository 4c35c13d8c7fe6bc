"""``edge-agent gps configure`` (u-blox), ``gps udev-rule`` and ``gps chrony-conf`` (installer).

    sudo edge-agent gps configure                      # the configured receiver, [receiver]
    sudo edge-agent gps configure --port /dev/ttyACM0 --rate 5 --model automotive --json
    edge-agent gps udev-rule --config /etc/edge-agent/agent.toml   # what install.sh writes
    edge-agent gps chrony-conf --pps auto                          # likewise, for chrony

Defaults come from the agent's config (``[gps] serial_port``/``baud``, ``[receiver]``,
``device.profile`` for the dynamic model); options override them. The exit code is 0 only
when every step was acknowledged. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")


def register(sub: Any) -> None:
    c = sub.add_parser(
        "configure",
        help="set up a u-blox receiver: rate, constellations, dynamic model, saved (UBX)",
        description="Configure a u-blox GNSS receiver over UBX (generation 9+: CFG-VALSET into "
        "RAM, BBR and flash; older: CFG-RATE, CFG-GNSS, CFG-NAV5, CFG-CFG). Each step is "
        "reported as acknowledged, refused (ACK-NAK) or timed out. Stop the agent and gpsd "
        "first: they hold the port.",
    )
    c.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent TOML config")
    c.add_argument("--port", help="the receiver (default: [gps] serial_port)")
    c.add_argument("--baud", type=int, help="its speed (default: [gps] baud)")
    c.add_argument("--rate", type=float, help="navigation solutions per second")
    c.add_argument(
        "--constellations", help="comma-separated: gps,galileo,beidou (sbas, qzss, glonass)"
    )
    c.add_argument("--model", help="dynamic model: automotive, pedestrian, portable, ...")
    c.add_argument("--profile", choices=("bodycam", "tracker", "dashcam"),
                   help="choose the model by profile (default: device.profile)")  # fmt: skip
    c.add_argument("--no-save", action="store_true", help="RAM only: lost at power off")
    c.add_argument("--timeout", type=float, help="seconds to wait for each acknowledgement")
    c.add_argument("--json", action="store_true", help="a machine-readable report")
    c.set_defaults(func=cmd_configure)

    u = sub.add_parser(
        "udev-rule",
        help="print the udev rule that keeps ModemManager off our serial ports",
    )
    u.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent TOML config")
    u.add_argument("--port", action="append", default=[], help="one more port (repeatable)")
    u.set_defaults(func=cmd_udev_rule)

    t = sub.add_parser(
        "chrony-conf",
        help="print the chrony refclock lines for gpsd's GNSS time (and PPS)",
    )
    t.add_argument(
        "--pps",
        default="auto",
        help="auto (from a pps-gpio overlay in config.txt), none, /dev/ppsN, or sock:/dev/ppsN "
        "(gpsd reads the pulse)",
    )
    t.add_argument("--boot-root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    t.add_argument("--nmea-offset", type=float, default=None, help="NMEA latency (s, 0.1)")
    t.set_defaults(func=cmd_chrony_conf)


def _load(path: Path) -> Any:
    from agent.config.schema import AgentConfig, load_config

    if not path.exists():
        return AgentConfig()
    return load_config(path)


def plan_from(cfg: Any, args: argparse.Namespace) -> Any:
    from agent.errors import ConfigError
    from agent.gps.time_settings import dynamic_model_for
    from agent.gps.ubx_config import Plan

    r = cfg.receiver
    constellations = (
        tuple(c.strip().lower() for c in args.constellations.split(",") if c.strip())
        if args.constellations
        else r.constellations
    )
    profile = args.profile or cfg.device.profile
    try:
        return Plan(
            rate_hz=args.rate if args.rate is not None else r.rate_hz,
            constellations=constellations,
            dynamic_model=args.model or dynamic_model_for(profile, r.dynamic_model),
            save=r.save and not args.no_save,
        )
    except ValueError as exc:
        raise ConfigError(f"gps configure: {exc}") from None


def cmd_configure(args: argparse.Namespace) -> int:
    from agent.gps.ubx_config import configure_port

    cfg = _load(args.config)
    plan = plan_from(cfg, args)
    port = args.port or cfg.gps.serial_port
    baud = args.baud or cfg.gps.baud
    timeout = args.timeout if args.timeout is not None else cfg.receiver.ack_timeout_s
    report = configure_port(port, baud, plan, timeout=timeout)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(f"receiver on {port} at {baud} baud:")
        for step in report.steps:
            print("  " + step.line())
        print("configured" if report.ok else "NOT fully configured (see above)")
    return 0 if report.ok else 1


def cmd_udev_rule(args: argparse.Namespace) -> int:
    from agent.gps.serial_ports import our_ports, udev_rule

    cfg = _load(args.config)
    sys.stdout.write(udev_rule([*our_ports(cfg), *args.port]))
    return 0


def cmd_chrony_conf(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from agent.gps.chrony_conf import NMEA_OFFSET_S, render
    from agent.gps.serial_ports import BootFiles, pps_configured

    pps: str | None = args.pps
    if pps == "auto":
        pps = "/dev/pps0" if pps_configured(BootFiles(args.boot_root)) else None
    elif pps == "none":
        pps = None
    offset = NMEA_OFFSET_S if args.nmea_offset is None else args.nmea_offset
    if not -1.0 <= offset <= 1.0:
        raise ConfigError("--nmea-offset: must be -1..1 seconds")
    try:
        sys.stdout.write(render(pps, nmea_offset_s=offset))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0
