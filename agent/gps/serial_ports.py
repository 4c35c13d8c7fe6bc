"""Serial ports that stay ours: the udev rule for ModemManager, and the Pi's UART setup.

**ModemManager** probes serial ports with AT commands to find modems, u-blox USB receivers
(``/dev/ttyACM*``) among them, which garbles the receiver's configuration and holds the port
while it probes. udev's ``ID_MM_DEVICE_IGNORE=1`` on a port keeps it away (its documented
"explicit blacklist" filter rule). :func:`udev_rule` writes that for every port the agent's
config names (GNSS receiver, trigger button, push-to-talk line, the fleet I/O module) and for
every u-blox USB device; ``deploy/install.sh`` installs it as
``/etc/udev/rules.d/77-edge-agent-serial.rules`` (before ModemManager's 80-mm-candidate).

**The Pi's UART** (a GNSS HAT on the GPIO header, ``/dev/serial0``) needs, on Raspberry Pi OS
(bookworm: ``/boot/firmware``; before: ``/boot``):

* ``enable_uart=1`` in ``config.txt``;
* no serial console on it: no ``console=serial0,115200`` (or ``ttyAMA0``/``ttyS0``) in
  ``cmdline.txt``, and no ``serial-getty@`` on it;
* on boards whose Bluetooth takes the good UART (PL011) - Pi 3, 4, 400, Zero W, Zero 2 W -
  ``dtoverlay=disable-bt`` (or ``miniuart-bt``), so ``/dev/serial0`` is the PL011 and not the
  mini UART, whose baud rate follows the core clock. (The Pi 5 has a UART of its own for
  Bluetooth.)

:func:`check_uart` reads those files (paths injectable: the tests lay them out) and returns
findings, each with the exact change to make.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RULE_FILE = "77-edge-agent-serial.rules"
UBLOX_VENDOR = "1546"
#: The Pi's UART device names (PL011 and mini UART) and the firmware's aliases for them.
PI_UARTS = re.compile(r"^/dev/(serial[01]|ttyAMA\d+|ttyS0)\Z")
BT_ON_PL011 = ("Pi 3", "Pi 4", "Pi 400", "Compute Module 4", "Zero W", "Zero 2 W")
BT_OVERLAYS = ("disable-bt", "miniuart-bt", "pi3-disable-bt", "pi3-miniuart-bt")


def our_ports(cfg: Any) -> list[str]:
    """The serial devices the config gives the agent (URLs such as socket:// excluded)."""
    ports = []
    if cfg.gps.source in ("serial", "gpsd"):  # under gpsd the receiver is still ours
        ports.append(cfg.gps.serial_port)
    ports += [cfg.video.trigger_port, cfg.talk.ptt_port]
    if cfg.fleet.enabled and cfg.fleet.inputs.source == "serial":
        ports.append(cfg.fleet.inputs.serial_port)
    return [p for p in dict.fromkeys(ports) if p.startswith("/dev/")]


def _quote(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:+@/-]+", value) or ".." in value:
        raise ValueError(f"{value!r}: not a device name udev can match safely")
    return value


def udev_match(port: str, realpath: Any = os.path.realpath) -> tuple[str, str]:
    """(udev match, comment) for one port path under /dev."""
    rel = port.removeprefix("/dev/")
    if rel.startswith(("serial/by-id/", "serial/by-path/")):
        # 60-serial.rules made these links before this rule (77) runs.
        return f'SYMLINK=="{_quote(rel)}"', port
    if rel in ("serial0", "serial1"):
        # The Pi's alias comes from its 99-com.rules, after this rule: match what it names.
        target = Path(realpath(port)).name
        if target != rel and target.startswith(("ttyAMA", "ttyS")):
            return f'KERNEL=="{_quote(target)}"', f"{port} -> /dev/{target}"
        return 'KERNEL=="ttyAMA0|ttyS0"', f"{port} (the PL011 or the mini UART)"
    if "/" not in rel:
        return f'KERNEL=="{_quote(rel)}"', port
    node = Path(realpath(port))
    if node.parent == Path("/dev"):
        return f'KERNEL=="{_quote(node.name)}"', f"{port} -> {node}"
    raise ValueError(f"{port}: use a /dev/ttyX name or a /dev/serial/by-id link")


def udev_rule(ports: Iterable[str], realpath: Any = os.path.realpath) -> str:
    lines = [
        "# Written by edge-agent (deploy/install.sh, `edge-agent gps udev-rule`); rerun to change.",
        "# ModemManager must not probe these serial ports with AT commands: the GNSS receiver,",
        "# trigger and push-to-talk lines belong to edge-agent (ID_MM_DEVICE_IGNORE).",
        'ACTION!="add|change|move|bind", GOTO="edge_agent_serial_end"',
        'SUBSYSTEM!="tty", GOTO="edge_agent_serial_end"',
        "# u-blox GNSS receivers on USB, wherever they enumerate.",
        f'SUBSYSTEMS=="usb", ATTRS{{idVendor}}=="{UBLOX_VENDOR}", ENV{{ID_MM_DEVICE_IGNORE}}="1"',
    ]
    seen = set()
    for port in ports:
        match, comment = udev_match(port, realpath)
        if match in seen:
            continue
        seen.add(match)
        lines += [f"# {comment}", f'{match}, ENV{{ID_MM_DEVICE_IGNORE}}="1"']
    lines.append('LABEL="edge_agent_serial_end"')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the Pi's UART


@dataclass(frozen=True)
class Finding:
    """One problem with what to change (``severity`` fail: the receiver will not work)."""

    severity: str  # "fail" | "warn"
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.problem}: {self.fix}"


@dataclass(frozen=True)
class UartReport:
    port: str
    applies: bool  # the port is the Pi's UART and the boot files are there
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(f.severity == "fail" for f in self.findings)

    def summary(self) -> str:
        if not self.applies:
            return "; ".join(self.notes)
        if not self.findings:
            return "; ".join(self.notes)
        return "; ".join(f.line() for f in self.findings)


@dataclass(frozen=True)
class BootFiles:
    """Where Raspberry Pi OS keeps its boot configuration (injectable for tests)."""

    root: Path = Path("/")

    def boot_dir(self) -> Path | None:
        for d in ("boot/firmware", "boot"):  # bookworm, then bullseye and older
            if (self.root / d / "config.txt").is_file():
                return self.root / d
        return None

    def model(self) -> str:
        try:
            raw = (self.root / "proc/device-tree/model").read_bytes()
        except OSError:
            return ""
        return raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()


_SECTION = re.compile(r"^\s*\[([^\]]*)\]\s*\Z")
_MODEL_FILTERS = {
    "pi0": ("Zero",),
    "pi0w": ("Zero W",),
    "pi02": ("Zero 2",),
    "pi1": ("Model A Rev", "Model B Rev", "Model A Plus", "Model B Plus"),
    "pi2": ("Pi 2",),
    "pi3": ("Pi 3",),
    "pi3+": ("Pi 3 Model A Plus", "Pi 3 Model B Plus"),
    "pi4": ("Pi 4", "Pi 400", "Compute Module 4"),
    "pi400": ("Pi 400",),
    "pi5": ("Pi 5", "Pi 500", "Compute Module 5"),
    "cm4": ("Compute Module 4",),
    "cm5": ("Compute Module 5",),
}


def config_lines(boot: Path, model: str, name: str = "config.txt", depth: int = 0) -> list[str]:
    """The config.txt settings that apply on this model: ``[all]`` and the model's sections,
    ``include`` files followed; filters we cannot judge (EDID, HDMI, GPIO) count as applying."""
    try:
        text = (boot / name).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out: list[str] = []
    applies = True
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        sec = _SECTION.match(line)
        if sec:
            applies = _section_applies(sec.group(1).strip().lower(), model)
            continue
        if not applies:
            continue
        if line.startswith("include ") and depth < 4:
            out += config_lines(boot, model, line.split(None, 1)[1].strip(), depth + 1)
        else:
            out.append(line)
    return out


def _section_applies(name: str, model: str) -> bool:
    if name in ("all", "none"):
        return name == "all"
    needles = _MODEL_FILTERS.get(name)
    if needles is None or not model:
        return True
    if name == "pi0":  # every Zero (pi0w and pi02 are narrower)
        return "Zero" in model
    return any(n in model for n in needles)


def _setting(lines: list[str], key: str) -> str | None:
    value = None
    for line in lines:
        k, sep, v = line.partition("=")
        if sep and k.strip() == key:
            value = v.strip()
    return value


def _overlays(lines: list[str]) -> list[str]:
    return [
        line.partition("=")[2].split(",", 1)[0].strip()
        for line in lines
        if line.partition("=")[0].strip() == "dtoverlay"
    ]


def check_uart(port: str, files: BootFiles | None = None) -> UartReport:
    """The Pi's boot setup for a receiver on ``port``, with the exact changes to make."""
    files = files or BootFiles()
    if not PI_UARTS.match(port):
        return UartReport(port, False, (), (f"{port} is not the Pi's UART: nothing to check",))
    boot = files.boot_dir()
    if boot is None:
        return UartReport(
            port, False, (), ("no /boot/firmware/config.txt or /boot/config.txt: not a Pi?",)
        )
    model = files.model()
    lines = config_lines(boot, model)
    cfg = boot / "config.txt"
    findings: list[Finding] = []
    if _setting(lines, "enable_uart") != "1":
        findings.append(
            Finding("fail", f"the UART is not enabled ({cfg})",
                    f"add the line enable_uart=1 to {cfg} and reboot")
        )  # fmt: skip
    findings += _console_findings(port, boot, files.root)
    overlays = _overlays(lines)
    moved = next((o for o in overlays if o in BT_OVERLAYS), None)
    bt_board = any(b in model for b in BT_ON_PL011) if model else None
    on_serial0 = port in ("/dev/serial0", "/dev/ttyS0")
    if moved is None and on_serial0 and bt_board is not False:
        where = model or "this board (model unknown)"
        findings.append(
            Finding(
                "fail" if bt_board else "warn",
                f"Bluetooth holds the PL011 UART on {where}, so {port} is the mini UART "
                "(its baud rate drifts with the core clock)",
                f"add dtoverlay=disable-bt to {cfg}, run sudo systemctl disable hciuart, "
                "and reboot (or dtoverlay=miniuart-bt to keep Bluetooth on the mini UART)",
            )
        )
    notes = [f"{model or 'model unknown'}; {cfg}"]
    if _setting(lines, "enable_uart") == "1":
        notes.append("enable_uart=1")
    if moved:
        notes.append(f"dtoverlay={moved}")
    pps = pps_overlay(lines)
    if pps:
        notes.append(f"PPS on GPIO {pps}")
    return UartReport(port, True, tuple(findings), tuple(notes))


def _console_findings(port: str, boot: Path, root: Path) -> list[Finding]:
    out = []
    names = {Path(port).name}
    link = root / port.lstrip("/")
    if link.is_symlink():
        names.add(Path(os.path.realpath(link)).name)  # serial0 -> ttyAMA0 or ttyS0
    elif port == "/dev/serial0":
        names |= {"ttyAMA0", "ttyS0"}  # cannot tell which one it names here: either
    serial0 = root / "dev/serial0"
    if serial0.is_symlink():
        if Path(os.path.realpath(serial0)).name in names:
            names.add("serial0")
    elif names & {"ttyAMA0", "ttyS0"}:
        names.add("serial0")
    cmdline = boot / "cmdline.txt"
    try:
        args = cmdline.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        args = []
    for arg in args:
        if arg.startswith("console="):
            dev = arg.removeprefix("console=").split(",", 1)[0]
            if dev in names:
                out.append(
                    Finding(
                        "fail",
                        f"the serial console is on the receiver's UART ({arg} in {cmdline})",
                        f"remove {arg} from {cmdline} (it is one line) and "
                        "reboot, or raspi-config: Interface Options > Serial Port > login "
                        "shell No, hardware Yes",
                    )
                )
    wants = root / "etc/systemd/system/getty.target.wants"
    for name in sorted(names):
        unit = wants / f"serial-getty@{name}.service"
        if unit.exists() or unit.is_symlink():
            out.append(
                Finding(
                    "fail",
                    f"a login prompt (serial-getty@{name}) runs on the receiver's UART",
                    f"sudo systemctl disable --now serial-getty@{name}.service",
                )
            )
    return out


def pps_overlay(lines: list[str]) -> str | None:
    """The GPIO of a ``dtoverlay=pps-gpio[,gpiopin=N]`` line (18 when not given)."""
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() != "dtoverlay":
            continue
        parts = [p.strip() for p in value.split(",")]
        if parts[0] == "pps-gpio":
            pin = next((p.split("=", 1)[1] for p in parts[1:] if p.startswith("gpiopin=")), "18")
            return pin
    return None


def pps_configured(files: BootFiles | None = None) -> str | None:
    """The PPS GPIO when config.txt loads the pps-gpio overlay (then /dev/pps0 exists)."""
    files = files or BootFiles()
    boot = files.boot_dir()
    return None if boot is None else pps_overlay(config_lines(boot, files.model()))
