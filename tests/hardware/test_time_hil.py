"""Hardware in the loop: the pulse per second through chrony, and a real u-blox receiver
configured over UBX. Skipped with the reason where the rig does not name the device.

    EDGE_AGENT_HIL_PPS=/dev/pps0        a PPS from the receiver (pps-gpio overlay); the rig is
                                         installed with deploy/install.sh --gpsd --gnss-port ...
                                         (gpsd -n, chrony with its refclock lines), antenna
                                         with sky view
    EDGE_AGENT_HIL_UBLOX=/dev/ttyACM0   a u-blox receiver, nothing else holding it (stop gpsd)
    EDGE_AGENT_HIL_UBLOX_BAUD=9600      its speed (default 9600)
    EDGE_AGENT_HIL_UBLOX_SAVE=1         also save to the receiver's BBR/flash (wears flash:
                                         nightly, not on every commit)
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent.gps.chrony import ChronyMonitor, Health
from agent.gps.time_settings import TimeSettings
from agent.model import ClockSource

from .rig import device_from_env

pytestmark = pytest.mark.hardware


def _assert_seq(pps: str) -> int:
    """The kernel's PPS assert sequence number (/sys/class/pps/ppsN/assert: 'sec.nsec#seq')."""
    raw = (Path("/sys/class/pps") / Path(pps).name / "assert").read_text().strip()
    return int(raw.rpartition("#")[2])


def test_pps_disciplines_the_clock_through_chrony() -> None:
    pps = device_from_env("EDGE_AGENT_HIL_PPS", "PPS source (pps-gpio)")
    first = _assert_seq(pps)
    threading.Event().wait(3.5)
    pulses = _assert_seq(pps) - first
    assert 2 <= pulses <= 5, f"{pps}: {pulses} pulses in 3.5 s (no fix, or miswired?)"
    # The rig's chronyd (installed by install.sh --gpsd) must select the PPS within minutes.
    monitor = ChronyMonitor(TimeSettings(chrony="on"), threading.Event())
    deadline = time.monotonic() + 300
    while True:
        monitor.poll_once()
        st = monitor.state()
        if st is not None and st.source is ClockSource.PPS:
            break
        assert time.monotonic() < deadline, f"chrony never selected PPS: {monitor.to_json()}"
        threading.Event().wait(5)
    assert monitor.health == Health.SYNCED
    assert st.error_s is not None and st.error_s < 0.01, st  # microseconds, not NMEA's 0.1 s


def test_ublox_receiver_is_configured_and_reads_back() -> None:
    from pyubx2 import POLL, UBXMessage

    from agent.gps.ubx_config import Plan, UbxLink, configure, open_port

    port = device_from_env("EDGE_AGENT_HIL_UBLOX", "u-blox receiver")
    baud = int(os.environ.get("EDGE_AGENT_HIL_UBLOX_BAUD", "9600"))
    save = os.environ.get("EDGE_AGENT_HIL_UBLOX_SAVE") == "1"
    stream = open_port(port, baud)
    try:
        plan = Plan(rate_hz=2, constellations=("gps", "galileo", "beidou"),
                    dynamic_model="automotive", save=save)  # fmt: skip
        report = configure(stream, plan, port=port, timeout=3)
        assert report.is_ublox, "no MON-VER answer: wrong port or baud rate?"
        assert report.ok, [s.line() for s in report.steps]
        link = UbxLink(stream)
        assert report.version is not None
        if report.version.uses_valset:
            link.send(UBXMessage.config_poll(0, 0, ["CFG_RATE_MEAS", "CFG_NAVSPG_DYNMODEL"]))
            got = link.wait(lambda m: m.identity == "CFG-VALGET", 3)
            assert got is not None
            assert (got.CFG_RATE_MEAS, got.CFG_NAVSPG_DYNMODEL) == (500, 4)
        else:
            link.send(UBXMessage("CFG", "CFG-RATE", POLL))
            got = link.wait(lambda m: m.identity == "CFG-RATE", 3)
            assert got is not None and got.measRate == 500
        # Leave the rig's receiver at 1 Hz.
        back = configure(stream, Plan(dynamic_model="automotive", save=save), port=port)
        assert back.ok, [s.line() for s in back.steps]
    finally:
        stream.close()
