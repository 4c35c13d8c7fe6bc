"""Running the test drives through the fleet part, and reading back what it sealed.

For the end-to-end test (MQTT delivery with the link down for the middle third)::

    from tests.fleet.harness import drive_into_spool, sealed_events
    records = drive_into_spool(spool, tmp_path / "fleet", "work_day", alarm=forwarder.report_alarm)
    # records: the sealed fleet_* event records, decrypted, in spool order (seq), e.g.
    # {"type": "fleet_area_enter", "subject": "market", "time": "2025-06-05T06:00:44.000Z", ...}
    expected = load_drive("work_day").events     # kind, subject, time (the capture time), fix

``sealed_events(spool, platform_private)`` reads (verifies and decrypts) every record of the
``event`` stream still in the spool, the way the platform does.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.fleet.rules import FleetEvent, Inputs
from agent.fleet.service import FleetService
from agent.fleet.settings import FleetSettings
from agent.gps.nmea import NmeaReader
from agent.model import Alarm, Fix
from agent.storage.seal import decrypt_segment, parse_key_record, read_segment_info, verify_segment
from agent.storage.spool import Spool
from tests.fleet.drives import DATA, SETTINGS


@dataclass
class LoadedDrive:
    name: str
    fixes: list[Fix]
    plan: dict[str, Any]
    inputs: list[tuple[float, dict[str, bool]]]
    events: list[dict[str, Any]]

    def inputs_at(self, t: float) -> Inputs:
        cur: dict[str, bool] = {}
        for since, state in self.inputs:
            if since <= t:
                cur = state
        return Inputs(
            ignition=cur.get("ignition"),
            brush=cur.get("brush", False),
            pump=cur.get("pump", False),
            lift=cur.get("lift", False),
        )


def replay(nmea: bytes) -> list[Fix]:
    """The fixes a receiver sending ``nmea`` gives (the same reader as the serial source)."""
    reader = NmeaReader("replay")
    return reader.feed(nmea) + reader.flush()


def load_drive(name: str, data: Path = DATA) -> LoadedDrive:
    return LoadedDrive(
        name,
        replay((data / f"{name}.nmea").read_bytes()),
        json.loads((data / f"{name}.plan.json").read_text()),
        [(float(t), st) for t, st in json.loads((data / f"{name}.inputs.json").read_text())],
        json.loads((data / f"{name}.events.json").read_text()),
    )


def fleet_settings(state_dir: Path, **over: Any) -> FleetSettings:
    return FleetSettings(enabled=True, state_dir=state_dir, **{**SETTINGS, **over})


def make_service(
    spool: Spool,
    state_dir: Path,
    plan: dict[str, Any] | None = None,
    *,
    alarm: Callable[[Alarm], None] | None = None,
    **settings: Any,
) -> FleetService:
    svc = FleetService(
        fleet_settings(state_dir, **settings),
        spool,
        threading.Event(),
        alarm=alarm or (lambda a: None),
    )
    if plan is not None:
        svc.cmd_set_areas(plan)
    return svc


def run_drive(
    svc: FleetService, drive: LoadedDrive, on_fix: Callable[[int, Fix], None] | None = None
) -> list[tuple[int, FleetEvent]]:
    """Every fix through ``svc.on_fix`` with the drive's inputs; (fix index, event) pairs."""
    out: list[tuple[int, FleetEvent]] = []
    for i, fix in enumerate(drive.fixes):
        if on_fix is not None:
            on_fix(i, fix)
        out.extend((i, ev) for ev in svc.on_fix(fix, drive.inputs_at(fix.time)))
    return out


def sealed_events(
    spool: Spool, platform_private: X25519PrivateKey, prefix: str = "fleet_"
) -> list[dict[str, Any]]:
    """Every event record in the spool (verified, decrypted), in sequence order."""
    out: list[dict[str, Any]] = []
    for item in spool.items("event"):
        with spool.open_segment(item) as f:
            info = read_segment_info(f)
            verify_segment(f, info)
            rec = parse_key_record(spool.key_record(info.key_id))
            buf = io.BytesIO()
            decrypt_segment(f, info, rec.unwrap(platform_private), buf.write)
        body = json.loads(buf.getvalue())
        if str(body.get("type", "")).startswith(prefix):
            out.append({"seq": item.seq, **body})
    return out


def drive_into_spool(
    spool: Spool,
    state_dir: Path,
    name: str,
    *,
    alarm: Callable[[Alarm], None] | None = None,
    platform_private: X25519PrivateKey | None = None,
    on_fix: Callable[[int, Fix], None] | None = None,
) -> list[dict[str, Any]] | list[tuple[int, FleetEvent]]:
    """Run drive ``name`` through a FleetService on ``spool`` (plan installed by its command).

    With ``platform_private``: the sealed fleet event records read back from the spool;
    without: the (fix index, event) pairs (the records are in the spool either way).
    """
    drive = load_drive(name)
    svc = make_service(spool, state_dir, drive.plan, alarm=alarm)
    pairs = run_drive(svc, drive, on_fix)
    if platform_private is None:
        return pairs
    return sealed_events(spool, platform_private)


def summary(events: Sequence[FleetEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.subject) for e in events]
