"""Battery critical, end to end in the agent: a body camera recording on a synthetic camera,
its battery a power_supply tree laid out as the kernel does. The charge falls: ``power_low``,
then ``power_critical`` confirmed over readings in a row; the recording ends (stop trigger
``power_critical``) and is sealed, a ``power_critical`` event record is sealed, the agent
stops and seals everything, and only then is the power-off asked for (through the hook that
records it here; the real logind call runs on the rig: tests/hardware)."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.config import parse_config
from agent.labs.power import lay_out_power_supply, set_attr
from agent.labs.waiting import wait_for
from agent.model import Alarm
from agent.runtime.app import Agent
from agent.storage.from_config import build_spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet
from tests.storage.helpers import decrypt_stream


def test_critical_battery_seals_the_recording_then_powers_off(
    tmp_path: Path, keyset: KeySet
) -> None:
    cls = lay_out_power_supply(tmp_path / "sys", {
        "ac": {"type": "Mains", "online": 0},
        "battery": {"type": "Battery", "status": "Discharging", "capacity": 60,
                    "voltage_now": 3_800_000},
    })  # fmt: skip
    spool = tmp_path / "spool"
    cfg = parse_config(f"""
[device]
id = "cam-power"
profile = "bodycam"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{spool}"
reserve_mb = 0
[video]
enabled = true
source = "synthetic"
width = 320
height = 240
fps = 10
segment_s = 2
prebuffer_s = 2
[power]
source = "sysfs"
poll_s = 0.5
low_pct = 20
critical_pct = 5
critical_readings = 3
throttled = "off"
[power.sysfs]
root = "{cls}"
[health]
status_file = "{tmp_path / "run" / "status.json"}"
control_socket = "{tmp_path / "run" / "control.sock"}"
""")
    requests: list[str] = []
    order: list[str] = []

    def power_off(reason: str) -> bool:
        # by now the agent has stopped every part and closed its spool
        order.append("power_off")
        requests.append(reason)
        return True

    agent = Agent(cfg, power_off=power_off)
    alarms: list[Alarm] = []
    agent.alarms.add_sink(alarms.append)
    spool_close = agent.spool.close

    def close() -> None:
        order.append("spool_closed")
        spool_close()

    agent.spool.close = close  # type: ignore[method-assign]
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(agent.run(install_signals=False)))
    runner.start()
    try:
        wait_for(lambda: agent.power is not None and agent.power.state == "ok", 60, "a reading")
        assert agent.status()["battery_pct"] == 60.0
        assert agent.video is not None
        agent.video.start("device")
        wait_for(lambda: agent.video is not None and agent.video.recorder.stats.segments >= 1,
                 60, "a sealed video segment")  # fmt: skip
        set_attr(tmp_path / "sys", "battery", "capacity", 15)
        wait_for(lambda: any(a.kind == "power_low" for a in alarms), 60, "the low alarm")
        assert not requests and agent.video.recorder.stats.recording
        set_attr(tmp_path / "sys", "battery", "capacity", 4)
        runner.join(90)
        assert not runner.is_alive(), "the agent did not stop on a critical battery"
    finally:
        agent.stop.set()
        runner.join(30)
    assert result == [0]
    assert [a.kind for a in alarms].count("power_critical") == 1
    assert requests == ["battery critical: 4 % on battery"]
    assert order == ["spool_closed", "power_off"]
    assert agent.critical is not None and agent.critical.accepted is True
    # Everything is sealed and verifies; the recording ended for the power, and says so.
    report = verify_paths([spool])
    assert report.ok, report.problems
    reopened = build_spool(cfg)
    try:
        events = [s.record for s in decrypt_stream(reopened, keyset.platform_private, "event")]
        videos = decrypt_stream(reopened, keyset.platform_private, "video")
    finally:
        reopened.close()
    kinds = [e["type"] for e in events]
    crit = [e for e in events if e["type"] == "power_critical"]
    assert len(crit) == 1 and crit[0]["reading"]["charge_pct"] == 4.0
    assert crit[0]["action"] == "power_off"
    stops = [e for e in events if e["type"] == "record_stop"]
    assert stops and stops[-1]["trigger"] == "power_critical", kinds
    assert kinds.index("power_critical") < kinds.index("record_stop")
    assert videos and all(v.data[4:8] in (b"ftyp", b"moof", b"styp") for v in videos)


def test_a_critical_battery_on_mains_does_nothing(tmp_path: Path, keyset: KeySet) -> None:
    cls = lay_out_power_supply(tmp_path / "sys", {
        "ac": {"type": "Mains", "online": 1},
        "battery": {"type": "Battery", "status": "Charging", "capacity": 2},
    })  # fmt: skip
    cfg = parse_config(f"""
[device]
id = "trk-power"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{tmp_path / "spool"}"
reserve_mb = 0
[power]
source = "sysfs"
throttled = "off"
[power.sysfs]
root = "{cls}"
""")
    requests: list[str] = []
    agent = Agent(cfg, power_off=lambda why: bool(requests.append(why)) or True)
    assert agent.power is not None
    try:
        for _ in range(5):
            agent.power.poll_once()
        assert agent.power.state == "ok" and not agent.stop.is_set()
        st = agent.status()
        assert st["power"]["charging"] is True and st["battery_pct"] == 2.0
    finally:
        agent.shutdown()
    assert requests == []
