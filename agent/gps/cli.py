"""``edge-agent gps replay`` and ``edge-agent gps watch``.

``edge-agent gps replay FILE --json [--speed X]`` prints one JSON object per fix and line,
named as gpsd's TPV (``time`` ISO 8601 UTC with milliseconds, ``mode``, ``lat``, ``lon``,
``alt`` (MSL), ``speed`` (m/s), ``track``). ``--speed`` 0 (the default) replays as fast as
possible, 1 in real time. FILE is a NMEA log or a gpsd JSON log.

``edge-agent gps watch [--config FILE]`` shows live fixes from the configured source for a
technician, with what the reporting strategy would do with each and the clock offset.

Nothing heavy is imported at module level: the CLI imports this module for ``--help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")


def register(subparsers: Any) -> None:
    gps = subparsers.add_parser(
        "gps", help="GNSS: replay logs, watch live fixes, configure a u-blox receiver"
    )
    sub = gps.add_subparsers(dest="gps_command", metavar="GPS_COMMAND")
    gps.set_defaults(func=lambda args: _help(gps))

    replay = sub.add_parser("replay", help="print the fixes of a NMEA or gpsd JSON log")
    replay.add_argument("file", type=Path, help="NMEA log or gpsd JSON log")
    replay.add_argument("--json", action="store_true", help="one gpsd-style TPV JSON per line")
    replay.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="replay speed: 0 = as fast as possible (default), 1 = real time",
    )
    replay.set_defaults(func=cmd_replay)

    watch = sub.add_parser("watch", help="show live fixes from the configured source")
    watch.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent TOML config")
    watch.add_argument("--count", type=int, default=0, help="stop after N fixes (0 = never)")
    watch.set_defaults(func=cmd_watch)

    from agent.gps.configure_cli import register as register_configure

    register_configure(sub)  # gps configure (u-blox), gps udev-rule


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_replay(args: argparse.Namespace) -> int:
    import threading

    from agent.errors import ConfigError
    from agent.gps.replay import ReplaySource
    from agent.model import Fix

    if args.speed < 0:
        raise ConfigError("--speed: must be >= 0")
    source = ReplaySource(args.file, speed=args.speed)
    out = sys.stdout

    def emit(fix: Fix) -> None:
        if args.json:
            out.write(json.dumps(fix.to_tpv(), separators=(",", ":")) + "\n")
        else:
            out.write(describe(fix) + "\n")
        out.flush()

    try:
        source.run(threading.Event(), emit)
    except BrokenPipeError:  # `| head`
        return 0
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import queue
    import threading

    from agent.config.schema import load_config
    from agent.gps.clock import ClockMonitor
    from agent.gps.source import SourceThread, open_source
    from agent.gps.strategy import ReportingStrategy

    cfg = load_config(args.config).gps
    source = open_source(cfg)
    stop = threading.Event()
    pump = SourceThread(source, stop, maxsize=cfg.queue_size)
    strategy = ReportingStrategy(cfg.strategy)
    clock = ClockMonitor()
    print(f"watching {source.name} (Ctrl-C to stop)", flush=True)
    pump.start()
    shown = 0
    try:
        while pump.is_alive() or not pump.queue.empty():
            try:
                fix = pump.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            decision = strategy.decide(fix)
            state = clock.observe(fix)
            offset = "?" if state.offset_s is None else f"{state.offset_s:+.2f}s"
            live = "LIVE" if decision.report_live else "    "
            print(f"{describe(fix)}  {live} {decision.reason:<18} clock {offset}", flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        pump.join(timeout=5.0)
    if pump.error is not None:
        raise pump.error
    return 0


def describe(fix: Any) -> str:
    """One human line: time, mode, position, speed, course, quality."""
    mode = {1: "no fix", 2: "2D", 3: "3D"}.get(int(fix.mode), "?")
    parts = [fix.iso_time(), f"{mode:<6}"]
    if fix.has_position:
        parts.append(f"{fix.lat:11.7f} {fix.lon:12.7f}")
        parts.append("alt " + ("-" if fix.alt is None else f"{fix.alt:.1f}m"))
        parts.append("speed " + ("-" if fix.speed is None else f"{fix.speed * 3.6:.1f}km/h"))
        parts.append("course " + ("-" if fix.track is None else f"{fix.track:.0f}"))
    parts.append("hdop " + ("-" if fix.hdop is None else f"{fix.hdop:.1f}"))
    parts.append("sats " + ("-" if fix.sats_used is None else str(fix.sats_used)))
    return "  ".join(parts)
