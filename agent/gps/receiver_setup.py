"""What provisioning and the self-test check and do about the GNSS receiver's port and setup.

:func:`provision_receiver` runs at the end of ``edge-agent provision`` (the config is written):

1. the Pi's UART setup when the receiver is on it (:func:`agent.gps.serial_ports.check_uart`),
   printed with the exact change to make;
2. the udev rule for ModemManager, rewritten for the ports this config names (as root on the
   live system, or into a ``--root`` staging tree);
3. a u-blox receiver on ``gps.serial_port`` configured (``[receiver]``; MON-VER first: any
   other receiver is left alone), each step printed.

None of it stops provisioning: a receiver problem is reported, and the self-test says it again.
:func:`serial_item` is the self-test's "serial port" item.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.gps.serial_ports import RULE_FILE, BootFiles, check_uart, our_ports, udev_rule

Say = Callable[[str], None]
MODEMMANAGER = ("usr/sbin/ModemManager", "usr/bin/ModemManager")


def rule_path(root: Path) -> Path:
    return root / "etc/udev/rules.d" / RULE_FILE


def write_udev_rule(cfg: Any, root: Path, say: Say) -> None:
    """Rewrite the udev rule for this config's ports (reload udev on the live system)."""
    path = rule_path(root)
    try:
        text = udev_rule(our_ports(cfg))
    except ValueError as exc:
        say(f"udev rule not written: {exc}")
        return
    live = root.resolve() == Path("/")
    if live and os.geteuid() != 0:
        say(f"udev rule {path} not rewritten: not running as root")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        say(f"udev rule {path} not written: {exc}")
        return
    say(f"udev rule {path}: ModemManager keeps off {', '.join(our_ports(cfg)) or 'u-blox USB'}")
    if live:
        reload = ["udevadm", "control", "--reload"]
        trigger = ["udevadm", "trigger", "--subsystem-match=tty", "--action=change"]
        for cmd in (reload, trigger):
            try:
                subprocess.run(cmd, capture_output=True, timeout=30, check=False)
            except (OSError, subprocess.TimeoutExpired):
                break


def provision_receiver(cfg: Any, root: Path = Path("/"), *, say: Say = print) -> bool | None:
    """UART check, udev rule, u-blox configuration. Returns whether the receiver was
    configured (None: nothing to configure here)."""
    g = cfg.gps
    if g.source not in ("serial", "gpsd"):
        return None
    uart = check_uart(g.serial_port, BootFiles(root))
    if uart.applies:
        for f in uart.findings:
            say(f"UART {f.severity.upper()}: {f.line()}")
        if uart.ok:
            say(f"UART for {g.serial_port}: {uart.summary()}")
    write_udev_rule(cfg, root, say)
    if not cfg.receiver.configure_at_provision:
        return None
    if g.source == "gpsd":
        say(
            "receiver: gpsd holds it; to configure it: sudo systemctl stop gpsd.socket gpsd; "
            f"sudo edge-agent gps configure --port {g.serial_port}; sudo systemctl start gpsd"
        )
        return None
    port = Path(g.serial_port)
    if root.resolve() != Path("/") and not port.is_absolute():
        return None
    if not port.exists():
        say(f"receiver: {g.serial_port} is not there (plugged in?); configure it later with "
            "sudo edge-agent gps configure")  # fmt: skip
        return None
    return configure_receiver(cfg, say)


def configure_receiver(cfg: Any, say: Say) -> bool:
    from agent.errors import AgentError
    from agent.gps.time_settings import dynamic_model_for
    from agent.gps.ubx_config import Plan, configure_port

    r = cfg.receiver
    plan = Plan(
        rate_hz=r.rate_hz,
        constellations=r.constellations,
        dynamic_model=dynamic_model_for(cfg.device.profile, r.dynamic_model),
        save=r.save,
    )
    try:
        report = configure_port(cfg.gps.serial_port, cfg.gps.baud, plan, timeout=r.ack_timeout_s)
    except AgentError as exc:
        say(f"receiver: {exc}")
        return False
    if not report.is_ublox:
        say(f"receiver on {cfg.gps.serial_port}: no UBX answer (not a u-blox?): left as it is")
        return False
    say(f"receiver on {cfg.gps.serial_port}:")
    for step in report.steps:
        say("  " + step.line())
    if not report.ok:
        say("receiver NOT fully configured: see above; retry with sudo edge-agent gps configure")
    return report.ok


def modemmanager_installed(root: Path) -> bool:
    return any((root / p).exists() for p in MODEMMANAGER)


def serial_item(cfg: Any, root: Path = Path("/")) -> tuple[str, str]:
    """The self-test's "serial port" item: (PASS|FAIL|SKIP, detail)."""
    g = cfg.gps
    if g.source not in ("serial", "gpsd"):
        return "SKIP", f"no serial receiver (gps.source = {g.source})"
    uart = check_uart(g.serial_port, BootFiles(root))
    problems = [f.line() for f in uart.findings if f.severity == "fail"]
    if problems:
        return "FAIL", "; ".join(problems)
    ports = our_ports(cfg)
    rules = rule_path(root)
    if modemmanager_installed(root):
        covered = rules.exists() and all(
            _covers(rules.read_text(errors="replace"), p) for p in ports
        )
        if not covered:
            return "FAIL", (
                f"ModemManager is installed and {rules} does not name {', '.join(ports)}: it "
                "may probe the receiver with AT commands; write the rule with: sudo sh -c "
                f"'edge-agent gps udev-rule > {rules}' && sudo udevadm control --reload"
            )
    detail = uart.summary() if uart.applies else f"{g.serial_port} (USB or another UART)"
    warn = [f.line() for f in uart.findings if f.severity == "warn"]
    if warn:
        detail += "; WARNING " + "; ".join(warn)
    if modemmanager_installed(root):
        detail += "; ModemManager keeps off it (udev rule)"
    return "PASS", detail


def _covers(rule_text: str, port: str) -> bool:
    from agent.gps.serial_ports import udev_match

    try:
        match, _ = udev_match(port)
    except ValueError:
        return False
    return match in rule_text
