"""``edge-agent gps configure`` against a simulated u-blox receiver on a pseudo-terminal.

The simulator answers with real UBX frames built by pyubx2 and reads ours with pyubx2's own
reader; NMEA sentences and noise (false sync bytes, broken frames) surround every answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.gps.ubx_config import (
    FrameReader,
    Outcome,
    Plan,
    ReceiverVersion,
    configure_port,
)

from .ublox_sim import NMEA, NOISE, SimReceiver, mon_ver

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., SimReceiver]]:
    made: list[SimReceiver] = []

    def make(**kw: object) -> SimReceiver:
        sim = SimReceiver(tmp_path / f"ttyUBX{len(made)}", **kw)  # type: ignore[arg-type]
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()


def outcomes(report: object) -> list[str]:
    return [s.outcome for s in report.steps]  # type: ignore[attr-defined]


def test_frame_reader_finds_frames_among_nmea_and_noise() -> None:
    frame = mon_ver(8).serialize()
    reader = FrameReader()
    data = NMEA + NOISE + frame[:5] + frame[5:] + NOISE + frame + b"\xb5"
    got = []
    for i in range(0, len(data), 7):  # arriving in small pieces
        got += list(reader.feed(data[i : i + 7]))
    assert got == [frame, frame]
    assert reader.skipped >= len(NMEA) + 2 * len(NOISE)


def test_version_generations() -> None:
    v8 = ReceiverVersion("EXT CORE 3.01", "00080000", ("PROTVER=18.00", "MOD=NEO-M8N"))
    v9 = ReceiverVersion("EXT CORE 1.00", "00190000", ("PROTVER=27.31",))
    old = ReceiverVersion("7.03 (45969)", "00040007", ())
    m10 = ReceiverVersion("EXT CORE 6.00", "000A0000", ("PROTVER=34.10",))
    assert (v8.generation, v8.uses_valset) == (8, False)
    assert (v9.generation, v9.uses_valset) == (9, True)
    assert (old.generation, old.uses_valset) == (6, False)
    assert (m10.generation, m10.uses_valset) == (9, True)
    assert "NEO-M8N" in v8.describe()


def test_generation_8_every_step_acknowledged_and_saved(
    receiver: Callable[..., SimReceiver],
) -> None:
    sim = receiver(generation=8)
    plan = Plan(rate_hz=5, constellations=("gps", "galileo", "beidou"), dynamic_model="automotive")
    report = configure_port(str(sim.link), 9600, plan, timeout=3)
    assert report.ok, [s.line() for s in report.steps]
    assert report.version is not None and report.version.generation == 8
    assert [s.name.split(" (")[1] for s in report.steps] == [
        "MON-VER)", "CFG-RATE)", "CFG-GNSS)", "CFG-NAV5)", "CFG-CFG)"
    ]  # fmt: skip
    # The receiver holds what was asked: 200 ms, automotive (4), GPS+GAL+BDS, GLONASS off.
    assert (sim.meas_ms, sim.dyn_model) == (200, 4)
    assert {g for g, on in sim.enabled.items() if on} == {0, 2, 3}
    assert sim.saved == ["flash"]


def test_generation_9_valset_into_ram_bbr_and_flash(receiver: Callable[..., SimReceiver]) -> None:
    sim = receiver(generation=9)
    plan = Plan(rate_hz=1, constellations=("gps", "galileo", "beidou", "qzss"),
                dynamic_model="pedestrian")  # fmt: skip
    report = configure_port(str(sim.link), 9600, plan, timeout=3)
    assert report.ok, [s.line() for s in report.steps]
    assert sim.received.count("CFG-VALSET") == 3 and "CFG-CFG" not in sim.received
    assert (sim.meas_ms, sim.dyn_model) == (1000, 3)
    assert {g for g, on in sim.enabled.items() if on} == {0, 2, 3, 5}
    assert sim.saved == ["flash"] * 3
    assert "RAM, BBR, flash" in report.steps[1].detail


def test_generation_9_without_flash_falls_back_to_bbr(
    receiver: Callable[..., SimReceiver],
) -> None:
    sim = receiver(generation=9, no_flash=True)
    report = configure_port(str(sim.link), 9600, Plan(), timeout=3)
    assert report.ok
    assert all("refused the flash layer" in s.detail for s in report.steps[1:])
    assert sim.saved == ["bbr"] * 3


def test_a_nak_is_reported_as_refused_and_the_rest_goes_on(
    receiver: Callable[..., SimReceiver],
) -> None:
    sim = receiver(generation=8, nak={"CFG-GNSS"})
    report = configure_port(str(sim.link), 9600, Plan(dynamic_model="pedestrian"), timeout=3)
    assert not report.ok
    assert outcomes(report) == [Outcome.ACKNOWLEDGED, Outcome.ACKNOWLEDGED, Outcome.REFUSED,
                                Outcome.ACKNOWLEDGED, Outcome.ACKNOWLEDGED]  # fmt: skip
    assert "cannot track" in report.steps[2].detail
    assert sim.dyn_model == 3


def test_a_silent_port_is_no_ublox(receiver: Callable[..., SimReceiver]) -> None:
    sim = receiver(silent=True)
    report = configure_port(str(sim.link), 9600, Plan(), timeout=0.5)
    assert not report.is_ublox and not report.ok
    assert outcomes(report) == [Outcome.TIMEOUT]
    assert "not a u-blox receiver" in report.steps[0].detail
    assert sim.received == ["MON-VER", "MON-VER"]  # asked twice, then nothing else sent


def test_cli_configure_json(receiver: Callable[..., SimReceiver], tmp_path: Path) -> None:
    sim = receiver(generation=9)
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "gps", "configure", "--port", str(sim.link),
         "--profile", "bodycam", "--rate", "2", "--json", "--config", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    out = json.loads(res.stdout)
    assert out["ok"] is True and out["receiver"]["generation"] == 9
    assert out["plan"] == {"rate_hz": 2.0, "constellations": ["gps", "galileo", "beidou"],
                           "dynamic_model": "pedestrian", "save": True}  # fmt: skip
    assert (sim.meas_ms, sim.dyn_model) == (500, 3)
    silent = receiver(silent=True)
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "gps", "configure", "--port", str(silent.link),
         "--timeout", "0.3", "--config", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 1
    assert "not a u-blox receiver" in res.stdout


def test_a_receiver_unplugged_midway_is_a_source_error(
    receiver: Callable[..., SimReceiver],
) -> None:
    from agent.errors import SourceError
    from agent.gps.ubx_config import configure, open_port

    sim = receiver(silent=True)
    stream = open_port(str(sim.link), 9600)
    try:
        sim.stop.set()
        os.close(sim.master)  # the other end goes away, as a USB receiver pulled out
        sim.master = os.open(os.devnull, os.O_RDONLY)  # (so that close() has a file to close)
        with pytest.raises(SourceError, match="port failed"):
            configure(stream, Plan(), port=str(sim.link), timeout=2)
    finally:
        stream.close()
