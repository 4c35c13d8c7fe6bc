"""The link monitor (the fake mmcli, a clock the test moves) and the traffic counters, counted
at a real MQTT link to the lab mosquitto with mutual TLS."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from agent.cellular.monitor import LinkMonitor
from agent.cellular.settings import CellularSettings
from agent.cellular.traffic import TrafficMeter, lane_of
from agent.labs.broker import Mosquitto, Pki
from agent.labs.mmcli import set_scenario, write_fake_mmcli
from agent.model import Alarm
from agent.runtime.status_text import format_status
from agent.uplink import protocol as proto
from agent.uplink.mqtt import LinkConfig, MqttLink


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _monitor(tmp: Path, **kw: object) -> tuple[LinkMonitor, Path, list[Alarm], Clock]:
    exe = write_fake_mmcli(tmp / "mm")
    given: dict[str, object] = {"alarm_after_s": 60.0, "signal_rate_s": 0, **kw}
    s = CellularSettings(source="modemmanager", mmcli=str(exe),
                         traffic_file=tmp / "traffic.json", **given)  # type: ignore[arg-type]  # fmt: skip
    alarms: list[Alarm] = []
    clock = Clock()
    mon = LinkMonitor(s, threading.Event(), alarm=alarms.append,
                      traffic=TrafficMeter(tmp / "traffic.json", 7), clock=clock)  # fmt: skip
    return mon, exe, alarms, clock


def test_unregistered_for_a_while_alarms_once_and_registered_again_clears(tmp_path: Path) -> None:
    mon, exe, alarms, clock = _monitor(tmp_path)
    mon.poll_once()
    h = mon.health()
    assert h["modem"]["link"] == "ok" and h["modem"]["operator"] == "CMCC"
    line = format_status({"updated_utc": 0, "cellular": h}, now=0.0)
    assert "link    LTE home, CMCC, signal 67 %, modem rx 1.2 MB tx 7.7 MB" in line
    set_scenario(exe, state="searching", registration="searching", operator=None)
    mon.poll_once()
    clock.t += 30  # a handover: shorter than alarm_after_s
    mon.poll_once()
    assert alarms == [] and mon.health()["modem"]["link"] == "unregistered"
    clock.t += 31
    mon.poll_once()
    mon.poll_once()
    assert [a.kind for a in alarms] == ["modem_unregistered"]
    assert "UNREGISTERED: LTE searching, 46000, signal 67 %" in format_status(
        {"updated_utc": 0, "cellular": mon.health()}, now=0.0
    )
    set_scenario(exe, state="connected", registration="home", operator="CMCC")
    mon.poll_once()
    assert [a.kind for a in alarms] == ["modem_unregistered", "modem_ok"]


def test_modem_gone_and_garbage_never_kill_the_thread(tmp_path: Path) -> None:
    mon, exe, alarms, _clock = _monitor(tmp_path, poll_s=1.0, alarm_after_s=0.0)
    mon.poll_once()
    set_scenario(exe, modem="absent")
    mon.poll_once()
    assert [a.kind for a in alarms] == ["modem_lost"]
    assert "link    NO MODEM: ModemManager sees no modem" in format_status(
        {"updated_utc": 0, "cellular": mon.health()}, now=0.0
    )
    set_scenario(exe, modem="garbage")
    assert mon.poll_once() == 1.0  # the first failure: retried at the poll interval ...
    assert mon.poll_once() == 2.0  # ... then less often
    assert mon.health()["modem"]["state"] == "error"
    assert "garbage" in mon.health()["modem"]["error"]
    mon.stop.clear()
    mon.start()
    try:
        time.sleep(0.3)
        assert mon.is_alive()
        set_scenario(exe, modem="present")
        deadline = time.monotonic() + 20
        while mon.health()["modem"]["state"] != "connected":
            assert time.monotonic() < deadline and mon.is_alive()
            time.sleep(0.1)
    finally:
        mon.stop.set()
        mon.join(10)
    assert not mon.is_alive()
    assert [a.kind for a in alarms][-1] == "modem_ok"


def test_the_signal_on_the_csq_scale_for_jt808(tmp_path: Path) -> None:
    """+CSQ (3GPP TS 27.007): 0 = -113 dBm or less, 2 dB a step, 31 = -51 dBm or more."""
    mon, exe, _alarms, clock = _monitor(tmp_path, poll_s=10.0)
    assert mon.signal_csq() is None  # nothing read yet
    mon.poll_once()
    assert mon.signal_csq() == 21  # no extended figures: 67 % of 31
    set_scenario(exe, signal_rate=30)  # ModemManager polls the modem: its RSSI is known
    for rssi, want in ((-65.0, 24), (-113.0, 0), (-120.0, 0), (-111.0, 1), (-52.0, 30),
                       (-51.0, 31), (-40.0, 31)):  # fmt: skip
        set_scenario(exe, lte={"rssi": rssi, "rsrp": -95.0})
        mon.poll_once()
        assert mon.signal_csq() == want, rssi
    clock.t += 31  # three polls without a reading: no longer the modem's signal
    assert mon.signal_csq() is None
    mon.poll_once()
    assert mon.signal_csq() == 31
    set_scenario(exe, modem="absent")
    mon.poll_once()
    assert mon.signal_csq() is None


def test_no_modem_configured_says_so(tmp_path: Path) -> None:
    mon = LinkMonitor(CellularSettings(traffic_file=tmp_path / "t.json"), threading.Event(),
                      alarm=print, traffic=TrafficMeter(tmp_path / "t.json", 7))  # fmt: skip
    h = mon.health()
    assert h["modem"]["state"] == "off"
    text = format_status({"updated_utc": 0, "cellular": h}, now=0.0)
    assert "link    no modem monitored ([cellular] source = none)" in text
    assert "sent    today (" in text


def test_lanes_by_topic() -> None:
    t = proto.Topics("cam-1")
    assert lane_of(t.live("fix")) == lane_of(t.state) == "live"
    assert lane_of(t.segment("video")) == lane_of(t.key) == "backfill"
    assert lane_of(t.command_result) == "commands"
    assert lane_of("devices/cam-1/talk/out") == "talk"
    assert lane_of("elsewhere") == lane_of("devices/cam-1/up") == "other"


def test_traffic_per_day_persists_rolls_over_and_forgets_old_days(tmp_path: Path) -> None:
    day = 86400.0
    now = [20000 * day + 3600]
    path = tmp_path / "traffic.json"
    m = TrafficMeter(path, days=3, now=lambda: now[0])
    m.count("devices/d/live/fix", 100)
    m.count("devices/d/up/seg/video", 5000)
    m.save()
    m2 = TrafficMeter(path, days=3, now=lambda: now[0])
    snap = m2.snapshot()
    assert snap["today"]["live"] == 100 + len("devices/d/live/fix")
    assert snap["today"]["backfill"] == 5000 + len("devices/d/up/seg/video")
    assert snap["today"]["total"] == snap["today"]["live"] + snap["today"]["backfill"]
    for _ in range(4):
        now[0] += day
        m2.count("devices/d/state", 10)
    m2.save()
    days = json.loads(path.read_text())["days"]
    assert len(days) == 3 and "2024-10-04" not in days  # the first day is forgotten
    assert m2.snapshot()["today"]["live"] == 10 + len("devices/d/state")


@pytest.mark.parametrize("content", [b"\x00garbage", b'{"days": 5}', b'{"days": {"x": 1}}'])
def test_a_garbage_traffic_file_starts_from_zero(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "traffic.json"
    path.write_bytes(content)
    m = TrafficMeter(path, days=3)
    assert m.snapshot()["today"]["total"] == 0
    m.count("devices/d/live/alarm", 1)
    m.save()
    assert json.loads(path.read_text())["version"] == 1


def test_the_meter_counts_what_the_mqtt_link_hands_to_the_broker(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    ident = "cam-meter"
    c = pki.issue(ident)
    stop = threading.Event()
    link = MqttLink(LinkConfig(host="127.0.0.1", port=broker_alive.port, client_id=ident,
                               ca=pki.ca, cert=c.cert, key=c.key, keepalive_s=5,
                               connect_timeout_s=3.0), stop)  # fmt: skip
    meter = TrafficMeter(tmp_path / "traffic.json", 7)
    link.meter = meter.count
    t = proto.Topics(ident)
    assert link.publish(t.live("fix"), b"x" * 40) is None  # not connected: nothing sent
    assert meter.snapshot()["today"]["total"] == 0
    link.start()
    try:
        deadline = time.monotonic() + 20
        while not link.connected:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert link.publish(t.live("fix"), b"x" * 40) is not None
        assert link.publish(t.segment("video"), b"y" * 5000) is not None
    finally:
        stop.set()
        link.join(10)
    today = meter.snapshot()["today"]
    assert today["live"] == 40 + len(t.live("fix"))
    assert today["backfill"] == 5000 + len(t.segment("video"))
