"""Remote settings (``settings.get``/``settings.set``) and ``time.sync``, through the device's
real control socket where a channel is involved; the spool and GPS service are the real ones."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.remote import load_with_overrides, merge_overrides
from agent.errors import CommandError
from agent.gps.clock import ClockMonitor
from agent.gps.service import GpsService
from agent.gps.time_sync import TimeSync
from agent.labs.nmea import truck_log
from agent.model import Fix, FixMode
from agent.runtime.local_control import LocalControl, send
from agent.runtime.routing import RemoteCommands
from agent.storage.from_config import build_spool
from agent.storage.seal import decrypt_segment, parse_key_record, read_segment_info
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet


@dataclass
class Device:
    config: Path
    overrides: Path
    spool: Spool
    gps: GpsService
    clock: ClockMonitor
    commands: RemoteCommands
    socket: Path


@pytest.fixture
def device(tmp_path: Path, keyset: KeySet) -> Iterator[Device]:
    (tmp_path / "drive.nmea").write_bytes(truck_log(5))
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[device]
id = "cam-rs"
profile = "dashcam"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp_path / "state" / "spool"}"
reserve_mb = 0
[gps]
source = "replay"
replay_file = "{tmp_path / "drive.nmea"}"
[video]
enabled = true
mode = "continuous"
"""
    )
    cfg = load_config(config)
    stop = threading.Event()
    clock = ClockMonitor()
    spool = build_spool(cfg, clock=clock.state)
    gps = GpsService(cfg.gps, spool, stop, clock=clock)  # built, not started
    commands = RemoteCommands(config_path=config, config=cfg, spool=spool, clock=clock, gps=gps)
    local = LocalControl(tmp_path / "control.sock", stop)
    for name, handler in commands.handlers("device").items():
        local.register(name, handler)
    local.start()
    yield Device(config, tmp_path / "state" / "overrides.toml", spool, gps, clock, commands,
                 tmp_path / "control.sock")  # fmt: skip
    stop.set()
    local.join(5)
    spool.close()


def test_set_get_live_and_on_restart(device: Device) -> None:
    change = {"gps.strategy.interval_s": 10, "video.segment_s": 20, "video.bitrate_kbps": 2000}
    res = send(device.socket, "settings.set", change)
    assert res["applied_live"] == ["gps.strategy.interval_s"]
    assert res["on_restart"] == ["video.bitrate_kbps", "video.segment_s"]
    assert res["changed"]["video.segment_s"] == {"from": 30, "to": 20}
    # The running GPS strategy took the new interval at once (its state kept).
    assert device.gps.strategy.s.interval_s == 10.0
    got = send(device.socket, "settings.get", {"keys": ["video", "gps.strategy.interval_s"]})
    assert got["settings"]["video.segment_s"] == 20
    assert got["settings"]["video.bitrate_kbps"] == 2000
    assert got["settings"]["gps.strategy.interval_s"] == 10.0
    assert got["pending_restart"] == ["video.bitrate_kbps", "video.segment_s"]
    assert got["overrides"] == {
        "gps.strategy.interval_s": 10, "video.bitrate_kbps": 2000, "video.segment_s": 20,
    }  # fmt: skip


def test_invalid_values_refused_naming_the_field(device: Device) -> None:
    with pytest.raises(CommandError, match=r"video\.bitrate_kbps: must be 100\.\.100000, got 5"):
        send(device.socket, "settings.set", {"video.bitrate_kbps": 5})
    with pytest.raises(CommandError, match=r"video\.segment_s: must be an integer, got a string"):
        send(device.socket, "settings.set", {"video.segment_s": "20"})
    with pytest.raises(CommandError, match=r"gps\.strategy\.bogus: unknown setting"):
        send(device.socket, "settings.set", {"gps.strategy.bogus": 1})
    with pytest.raises(CommandError, match=r"uplink\.host: not settable remotely"):
        send(device.socket, "settings.set", {"uplink.host": "evil.example"})
    with pytest.raises(CommandError, match=r"video\.mode: not settable remotely"):
        send(device.socket, "settings.set", {"video.mode": "event"})
    # Nothing was persisted or changed by the refusals.
    assert not device.overrides.exists()
    assert device.spool.items("event") == []


def test_persisted_across_a_reload_and_recorded(device: Device, keyset: KeySet) -> None:
    send(device.socket, "settings.set", {"video.segment_s": 20, "gps.strategy.interval_s": 10})
    assert device.overrides.exists()
    cfg = load_with_overrides(device.config)  # what the next start reads
    assert cfg.video.segment_s == 20 and cfg.gps.strategy.interval_s == 10.0
    assert cfg.video.bitrate_kbps == 4000  # untouched keys keep the config's values
    # A fresh set of handlers (the next start) sees the overrides as the current values.
    # The next start's handlers (wired as the agent does: the running config, no file name)
    # see the overrides as the current values.
    again = RemoteCommands(config=cfg, spool=device.spool, clock=device.clock).handlers()
    got = again["settings.get"]({"keys": ["video.segment_s"]})
    assert got["settings"] == {"video.segment_s": 20} and got["pending_restart"] == []

    # Each change is a sealed event record saying what changed, from what, by whom.
    [item] = device.spool.items("event")
    keys = {
        p.stem: parse_key_record(p.read_bytes())
        for p in (item.path.parents[2] / "keys").glob("*.key")
    }
    with item.path.open("rb") as f:
        info = read_segment_info(f)
        out = bytearray()
        decrypt_segment(f, info, keys[info.key_id].unwrap(keyset.platform_private), out.extend)
    body = json.loads(out)
    assert body["type"] == "settings_changed" and body["origin"] == "device"
    assert body["changes"]["video.segment_s"] == {"from": 30, "to": 20}
    assert body["applied_live"] == ["gps.strategy.interval_s"]
    assert body["on_restart"] == ["video.segment_s"]


def test_bad_overrides_file_is_ignored_at_start(device: Device) -> None:
    device.overrides.parent.mkdir(parents=True, exist_ok=True)
    device.overrides.write_text("[video]\nsegment_s = 9999\n")
    cfg = load_with_overrides(device.config)
    assert cfg.video.segment_s == 30  # the config, not a device that cannot start


def test_merge_overrides() -> None:
    base = '[device]\nid = "x"\n[gps.strategy]\ninterval_s = 30.0\ndistance_m = 200.0\n'
    merged = merge_overrides(base, {"gps.strategy.interval_s": 10, "video": {"segment_s": 20}})
    assert merged == {
        "device": {"id": "x"},
        "gps": {"strategy": {"interval_s": 10, "distance_m": 200.0}},
        "video": {"segment_s": 20},
    }
    assert merge_overrides(merged, {})["gps"] is not merged["gps"]  # a copy


def test_time_sync_reports_and_refuses_to_step(device: Device) -> None:
    now = [1_780_000_000.0]
    clock = ClockMonitor(now=lambda: now[0])
    sync = TimeSync(clock, spool=device.spool, ntp_synchronised=lambda: None)
    report = sync({})
    assert report["source"] == "none" and report["offset_s"] is None
    with pytest.raises(CommandError, match="no GNSS time"):
        sync({"apply": True})
    clock.observe(Fix(time=now[0] + 1.5, mode=FixMode.FIX_3D, lat=52.0, lon=5.0))
    report = sync({})
    assert report["source"] == "gnss" and report["offset_s"] == 1.5
    with pytest.raises(CommandError, match=r"may not set the system clock .*ProtectClock"):
        sync({"apply": True})
    # Where the process may step the clock (not under the unit) but NTP keeps it: refused too.
    ntp = TimeSync(clock, may_step_clock=True, ntp_synchronised=lambda: True)
    with pytest.raises(CommandError, match="kept by NTP"):
        ntp({"apply": True})
    # Allowed: the clock is stepped to GNSS time (recorded; the OS call is captured here).
    stepped: list[float] = []
    ok = TimeSync(clock, spool=device.spool, may_step_clock=True,
                  ntp_synchronised=lambda: False, step=stepped.append)  # fmt: skip
    assert ok({"apply": True})["stepped"] is True
    assert stepped == [pytest.approx(now[0] + 1.5)]
    assert len(device.spool.items("event")) == 1
    # Through the channel, the report.
    assert send(device.socket, "time.sync")["source"] in ("none", "gnss")


def test_platform_signed_commands(device: Device, tmp_path: Path) -> None:
    """The same handlers on the uplink's signed command channel: answered, refusals with the
    loader's reason, and what the channel itself refuses (unsigned, replayed)."""
    from agent.uplink.control import (
        CommandChannel,
        SeenIds,
        init_command_keys,
        load_command_private,
        load_command_public,
    )
    from agent.uplink.control import sign_command as sign

    key_path = init_command_keys(tmp_path / "cmdkeys")
    key = load_command_private(key_path)
    channel = CommandChannel(
        "cam-rs",
        load_command_public(key_path.with_name("command.pub")),
        SeenIds(tmp_path / "seen.json"),
    )
    for name, handler in device.commands.handlers("platform").items():
        channel.register(name, handler)

    ok = channel.handle(sign(key, "cam-rs", "settings.set", {"audio.bitrate_kbps": 32}))
    assert ok["ok"] is True, ok
    assert ok["result"]["on_restart"] == ["audio.bitrate_kbps"]
    assert ok["result"]["recorded"] is True
    bad = channel.handle(sign(key, "cam-rs", "settings.set", {"gps.strategy.interval_s": 0.1}))
    assert bad == {**bad, "ok": False,
                   "reason": "gps.strategy.interval_s: must be 1..86400, got 0.1"}  # fmt: skip
    payload = sign(key, "cam-rs", "settings.get", {"keys": ["audio.bitrate_kbps"]})
    got = channel.handle(payload)
    assert got["result"]["settings"] == {"audio.bitrate_kbps": 32}
    assert "replayed" in channel.handle(payload)["reason"]
    forged = sign(load_command_private(init_command_keys(tmp_path / "other")), "cam-rs",
                  "settings.set", {"audio.bitrate_kbps": 6})  # fmt: skip
    assert "bad signature" in channel.handle(forged)["reason"]
    assert load_with_overrides(device.config).audio.bitrate_kbps == 32
    report = channel.handle(sign(key, "cam-rs", "time.sync", {}))
    assert report["ok"] is True and "offset_s" in report["result"]
