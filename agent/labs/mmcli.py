"""A simulated twin of ModemManager's ``mmcli`` (for the tests and ``make demo``).

:func:`write_fake_mmcli` writes an executable ``mmcli`` that runs this module; it answers
``-J -m any``, ``-J -m any --signal-get``, ``-m any --signal-setup=N`` and ``-J -b PATH`` with
JSON shaped as mmcli prints it (every value a string, ``"--"`` where unknown, nested by the
dotted keys of mmcli's field table), and the error lines and exit codes of a missing modem or
ModemManager. What it reports comes from a JSON scenario file the test rewrites at will::

    {"modem": "present" | "absent" | "no-modemmanager" | "garbage" | "hang",
     "state": "connected", "registration": "home", "operator": "CMCC",
     "operator_code": "46000", "access_tech": ["lte"], "signal_quality": 67,
     "signal_rate": 0, "lte": {"rssi": -65.0, "rsrp": -95.0, "rsrq": -11.0, "snr": 12.5},
     "bytes_rx": 123456, "bytes_tx": 654321}

Each call is appended to ``<scenario>.calls`` (one line of arguments), so a test can see what
the agent asked.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

MODEM_PATH = "/org/freedesktop/ModemManager1/Modem/0"
BEARER_PATH = "/org/freedesktop/ModemManager1/Bearer/0"

DEFAULT_SCENARIO: dict[str, Any] = {
    "modem": "present",
    "state": "connected",
    "registration": "home",
    "operator": "CMCC",
    "operator_code": "46000",
    "access_tech": ["lte"],
    "signal_quality": 67,
    "signal_rate": 0,
    "lte": {"rssi": -65.0, "rsrp": -95.0, "rsrq": -11.0, "snr": 12.5},
    "bytes_rx": 1234567,
    "bytes_tx": 7654321,
}


def nest(fields: dict[str, Any]) -> dict[str, Any]:
    """mmcli's dotted keys as its JSON nests them."""
    out: dict[str, Any] = {}
    for key, value in sorted(fields.items()):
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _s(v: Any) -> str:
    return "--" if v is None else str(v)


def modem_doc(sc: dict[str, Any]) -> dict[str, Any]:
    connected = sc.get("state") == "connected"
    return nest({
        "modem.dbus-path": MODEM_PATH,
        "modem.generic.device-identifier": "5a7b0c2f1e4d3c2b1a09f8e7d6c5b4a392817060",
        "modem.generic.manufacturer": "Quectel",
        "modem.generic.model": "EC25",
        "modem.generic.revision": "EC25EFAR06A06M4G",
        "modem.generic.hardware-revision": "10000",
        "modem.generic.carrier-configuration": "ROW_Generic_3GPP",
        "modem.generic.carrier-configuration-revision": "0A010809",
        "modem.generic.supported-capabilities": ["gsm-umts, lte"],
        "modem.generic.current-capabilities": ["gsm-umts, lte"],
        "modem.generic.equipment-identifier": "867962040000000",
        "modem.generic.device": "/sys/devices/platform/scb/fd500000.pcie/usb1/1-1/1-1.3",
        "modem.generic.physdev": "/sys/devices/platform/scb/fd500000.pcie/usb1/1-1/1-1.3",
        "modem.generic.drivers": ["option", "qmi_wwan"],
        "modem.generic.plugin": "quectel",
        "modem.generic.primary-port": "cdc-wdm0",
        "modem.generic.ports": ["cdc-wdm0 (qmi)", "ttyUSB0 (qcdm)", "ttyUSB2 (at)",
                                "wwan0 (net)"],
        "modem.generic.ignored-ports": [],
        "modem.generic.own-numbers": [],
        "modem.generic.unlock-required": "sim-pin2",
        "modem.generic.unlock-retries": ["sim-pin (3)", "sim-puk (10)"],
        "modem.generic.state": _s(sc.get("state")),
        "modem.generic.state-failed-reason": _s(sc.get("failed_reason")),
        "modem.generic.power-state": "on",
        "modem.generic.access-technologies": sc.get("access_tech") or ["unknown"],
        "modem.generic.signal-quality.value": _s(sc.get("signal_quality", 0)),
        "modem.generic.signal-quality.recent": "yes",
        "modem.generic.supported-modes": ["allowed: 2g, 3g, 4g; preferred: 4g"],
        "modem.generic.current-modes": "allowed: 2g, 3g, 4g; preferred: 4g",
        "modem.generic.supported-bands": ["egsm", "dcs", "utran-1", "eutran-1", "eutran-3"],
        "modem.generic.current-bands": ["egsm", "dcs", "utran-1", "eutran-1", "eutran-3"],
        "modem.generic.supported-ip-families": ["ipv4", "ipv6", "ipv4v6"],
        "modem.generic.sim": "/org/freedesktop/ModemManager1/SIM/0",
        "modem.generic.primary-sim-slot": "--",
        "modem.generic.sim-slots": [],
        "modem.generic.bearers": [BEARER_PATH] if connected else [],
        "modem.3gpp.imei": "867962040000000",
        "modem.3gpp.enabled-locks": ["fixed-dialing"],
        "modem.3gpp.operator-code": _s(sc.get("operator_code")),
        "modem.3gpp.operator-name": _s(sc.get("operator")),
        "modem.3gpp.registration-state": _s(sc.get("registration")),
        "modem.3gpp.packet-service-state": "attached" if connected else "detached",
        "modem.3gpp.pco": "--",
        "modem.3gpp.eps.ue-mode-operation": "csps-2",
        "modem.3gpp.eps.initial-bearer.dbus-path": "--",
        "modem.3gpp.eps.initial-bearer.settings.apn": "--",
        "modem.3gpp.eps.initial-bearer.settings.ip-type": "--",
        "modem.3gpp.eps.initial-bearer.settings.user": "--",
        "modem.3gpp.eps.initial-bearer.settings.password": "--",
        "modem.cdma.activation-state": "--",
        "modem.cdma.cdma1x-registration-state": "--",
        "modem.cdma.esn": "--",
        "modem.cdma.evdo-registration-state": "--",
        "modem.cdma.meid": "--",
        "modem.cdma.nid": "--",
        "modem.cdma.sid": "--",
    })  # fmt: skip


def signal_doc(sc: dict[str, Any]) -> dict[str, Any]:
    rate = int(sc.get("signal_rate", 0))
    fields: dict[str, Any] = {
        "modem.signal.refresh.rate": str(rate),
        "modem.signal.threshold.rssi": "0",
        "modem.signal.threshold.error-rate": "no",
    }
    for tech, keys in (("cdma1x", ("rssi", "ecio", "error-rate")),
                       ("evdo", ("rssi", "ecio", "sinr", "io", "error-rate")),
                       ("gsm", ("rssi", "error-rate")),
                       ("umts", ("rssi", "rscp", "ecio", "error-rate")),
                       ("lte", ("rssi", "rsrq", "rsrp", "snr", "error-rate")),
                       ("5g", ("rssi", "rsrq", "rsrp", "snr", "error-rate"))):  # fmt: skip
        given = sc.get(tech) or {}
        for k in keys:
            v = given.get(k) if rate > 0 else None
            fields[f"modem.signal.{tech}.{k}"] = "--" if v is None else f"{float(v):.2f}"
    return nest(fields)


def bearer_doc(sc: dict[str, Any]) -> dict[str, Any]:
    return nest({
        "bearer.dbus-path": BEARER_PATH,
        "bearer.type": "default",
        "bearer.status.connected": "yes",
        "bearer.status.suspended": "no",
        "bearer.status.multiplexed": "no",
        "bearer.status.interface": "wwan0",
        "bearer.status.ip-timeout": "20",
        "bearer.properties.apn": "cmnet",
        "bearer.properties.roaming": "allowed",
        "bearer.properties.ip-type": "ipv4",
        "bearer.ipv4-config.method": "static",
        "bearer.ipv4-config.address": "10.64.12.7",
        "bearer.ipv4-config.prefix": "30",
        "bearer.ipv4-config.gateway": "10.64.12.8",
        "bearer.ipv4-config.dns": ["211.136.17.107", "211.136.20.203"],
        "bearer.ipv4-config.mtu": "1500",
        "bearer.stats.start-date": str(int(time.time()) - 3600),
        "bearer.stats.duration": "3600",
        "bearer.stats.bytes-rx": _s(sc.get("bytes_rx")),
        "bearer.stats.bytes-tx": _s(sc.get("bytes_tx")),
        "bearer.stats.attempts": "1",
        "bearer.stats.total-duration": "7200",
        "bearer.stats.total-bytes-rx": _s(sc.get("bytes_rx")),
        "bearer.stats.total-bytes-tx": _s(sc.get("bytes_tx")),
    })  # fmt: skip


def main(argv: list[str]) -> int:
    state = Path(argv[argv.index("--state") + 1])
    args = [a for i, a in enumerate(argv) if a != "--state" and argv[i - 1 : i] != ["--state"]]
    with (state.parent / (state.name + ".calls")).open("a") as f:
        f.write(" ".join(args) + "\n")
    sc = {**DEFAULT_SCENARIO, **json.loads(state.read_text())}
    kind = sc["modem"]
    if kind == "no-modemmanager":
        sys.stderr.write("error: couldn't find the ModemManager process in the bus\n")
        return 1
    if kind == "hang":
        time.sleep(600)
    if "-b" in args:
        if args[args.index("-b") + 1] != BEARER_PATH or kind == "absent":
            sys.stderr.write(
                f"error: couldn't find bearer at '{args[args.index('-b') + 1]}': "
                "'not found in any modem'\n"
            )
            return 1
        doc = bearer_doc(sc)
    elif kind == "absent":
        sys.stderr.write("error: couldn't find modem\n")
        return 1
    elif kind == "garbage":
        sys.stdout.write('{"modem":{"generic":{"state":"connected\\u0000 <script>", "bearers": 7')
        return 0
    elif any(a.startswith("--signal-setup") for a in args):
        rate = next(a for a in args if a.startswith("--signal-setup")).partition("=")[2]
        state.write_text(json.dumps({**json.loads(state.read_text()), "signal_rate": int(rate)}))
        print("successfully setup signal quality information polling")
        return 0
    elif "--signal-get" in args:
        doc = signal_doc(sc)
    else:
        doc = modem_doc(sc)
    print(json.dumps(doc, separators=(",", ":")))
    return 0


def write_fake_mmcli(directory: Path, scenario: dict[str, Any] | None = None) -> Path:
    """An executable ``directory/mmcli`` answering from ``directory/modem.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = directory / "modem.json"
    state.write_text(json.dumps(scenario or {}))
    exe = directory / "mmcli"
    root = Path(__file__).resolve().parents[2]
    exe.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH='{root}'${{PYTHONPATH:+:$PYTHONPATH}} "
        f"exec '{sys.executable}' -m agent.labs.mmcli --state '{state}' \"$@\"\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def set_scenario(exe: Path, **changes: Any) -> None:
    """Change what the fake mmcli next to ``exe`` reports."""
    state = exe.parent / "modem.json"
    doc = json.loads(state.read_text())
    doc.update(changes)
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, state)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
