"""Vehicle inputs: debounce, the serial line protocol over a pty, GPIO through a stand-in for
the gpiod v2 module, the simulated source, SOS as an immediate critical alarm."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import SourceError
from agent.fleet.rules import Inputs
from agent.fleet.service import FleetService
from agent.lines.inputs import (
    Debouncer,
    GpioInputSource,
    InputEvent,
    InputThread,
    Reading,
    SerialInputSource,
    SimInputSource,
    load_gpiod,
    parse_line,
)
from agent.model import Alarm, Severity
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet
from tests.fleet.harness import fleet_settings, sealed_events

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- pure parts


def test_debounce_ignores_bounces_and_dates_the_change_at_its_edge() -> None:
    d = Debouncer(debounce_s=0.05)
    d.update(Reading("ignition", False), 0.0)
    assert d.poll(0.01) == []
    assert d.poll(0.06) == [("ignition", False, 0.0)]  # the initial level, once stable
    # a contact bouncing for 30 ms, settling on "on" at t = 1.03
    for k, t in enumerate([1.0, 1.005, 1.01, 1.02, 1.03]):
        d.update(Reading("ignition", k % 2 == 0), t)
        assert d.poll(t) == []
    assert d.poll(1.07) == []  # only 40 ms since the last edge
    assert d.poll(1.081) == [("ignition", True, 1.03)]
    # a glitch shorter than the debounce time changes nothing
    d.update(Reading("ignition", False), 2.0)
    d.update(Reading("ignition", True), 2.02)
    assert d.poll(3.0) == []
    assert d.inputs() == Inputs(ignition=True)


def test_sos_press_is_immediate_and_once_per_refractory_time() -> None:
    d = Debouncer(debounce_s=0.05, sos_refractory_s=2.0)
    d.update(Reading("sos", True, press=True), 10.0)
    assert d.poll(10.0) == [("sos", True, 10.0)]  # no debounce wait
    d.update(Reading("sos", True, press=True), 10.5)  # held / repeated
    d.update(Reading("sos", True, press=True), 11.9)
    assert d.poll(12.0) == []
    d.update(Reading("sos", True, press=True), 14.0)
    assert d.poll(14.0) == [("sos", True, 14.0)]
    # a GPIO SOS line: a level; its activation (after debounce) is one press
    d.update(Reading("sos", True), 20.0)
    assert d.poll(20.06) == [("sos", True, 20.0)]
    d.update(Reading("sos", False), 21.0)
    assert d.poll(21.1) == []


@pytest.mark.parametrize(
    ("line", "readings"),
    [
        (
            "IN ign=1 brush=0 pump=1 lift=0",
            [
                Reading("ignition", True),
                Reading("brush", False),
                Reading("pump", True),
                Reading("lift", False),
            ],
        ),
        ("in ignition=0", [Reading("ignition", False)]),
        ("SOS", [Reading("sos", True, press=True)]),
        ("  # a comment", []),
        ("", []),
        ("IN horn=1", [Reading("?horn", True)]),
        ("IN ign=2", None),
        ("IN ign", None),
        ("OUT led=1", None),
    ],
)
def test_line_protocol(line: str, readings: list[Reading] | None) -> None:
    assert parse_line(line) == readings


# --------------------------------------------------------------------------- serial over a pty


@pytest.fixture
def pty_port() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    os.close(master)
    os.close(slave)


def _events(q: queue.Queue[InputEvent], n: int, timeout: float = 3.0) -> list[InputEvent]:
    out: list[InputEvent] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            out.append(q.get(timeout=0.05))
    return out


def test_serial_protocol_over_a_pty(pty_port: tuple[int, str]) -> None:
    master, path = pty_port
    stop = threading.Event()
    src = SerialInputSource(path, 9600)
    th = InputThread(src, stop, debounce_s=0.05, sos_refractory_s=1.0)
    th.start()
    try:
        # pyserial flushes input at open: the module repeats its state until heard (as real
        # modules do every few seconds)
        got: set[tuple[str, bool]] = set()
        deadline = time.monotonic() + 3
        while len(got) < 4 and time.monotonic() < deadline:
            os.write(master, b"IN ign=1 brush=0 pump=1 lift=0\r\n")
            got |= {(e.name, e.value) for e in _events(th.queue, 4, timeout=0.15)}
        assert got == {("ignition", True), ("brush", False), ("pump", True), ("lift", False)}
        assert th.inputs == Inputs(ignition=True, brush=False, pump=True, lift=False)
        # relay chatter: brush on/off/on/off within a few ms -> no change
        os.write(master, b"IN brush=1\nIN brush=0\nIN brush=1\nIN brush=0\n")
        assert _events(th.queue, 1, timeout=0.3) == []
        # noise and unknown names change nothing
        os.write(master, b"garbage\nIN ign=7\nIN horn=1\n")
        os.write(master, b"IN brush=1\n")
        (ev,) = _events(th.queue, 1)
        assert (ev.kind, ev.name, ev.value) == ("change", "brush", True)
        assert abs(ev.time - time.time()) < 1.0
        # SOS: at once; a repeat within the refractory second is the same press
        t0 = time.monotonic()
        os.write(master, b"SOS\n")
        (sos,) = _events(th.queue, 1)
        assert sos.kind == "sos" and time.monotonic() - t0 < 0.5
        os.write(master, b"SOS\n")
        assert _events(th.queue, 1, timeout=0.3) == []
    finally:
        stop.set()
        th.join(2)
    assert not th.is_alive()
    assert src.stats["bad"] == 2 and src.stats["unknown"] == 1


def test_serial_port_missing_then_present(tmp_path: Path, pty_port: tuple[int, str]) -> None:
    master, path = pty_port
    link = tmp_path / "ttyIO"
    stop = threading.Event()
    src = SerialInputSource(str(link), 9600, reconnect_max_s=0.2)
    th = InputThread(src, stop, debounce_s=0.02)
    th.start()
    try:
        stop.wait(0.3)  # the port is not there yet: the thread keeps retrying
        assert th.is_alive() and th.error is None
        link.symlink_to(path)
        deadline = time.monotonic() + 3
        got: list[InputEvent] = []
        while not got and time.monotonic() < deadline:
            os.write(master, b"IN ign=1\n")
            got = _events(th.queue, 1, timeout=0.2)
        assert got and got[0].name == "ignition"
    finally:
        stop.set()
        th.join(2)


# --------------------------------------------------------------------------- GPIO


def test_gpio_without_the_binding_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # as on a machine without it
    with pytest.raises(SourceError, match=r"pip install 'gpiod>=2.1'"):
        load_gpiod()
    v1 = types.ModuleType("gpiod")  # the Debian python3-libgpiod (v1) has no request_lines
    monkeypatch.setitem(sys.modules, "gpiod", v1)
    with pytest.raises(SourceError, match="v1 binding"):
        load_gpiod()


def test_fleet_imports_neither_gpiod_nor_numpy() -> None:
    code = (
        "import sys, agent.fleet.service, agent.lines.inputs, agent.lines.serial, agent.lines.ptt; "
        "bad = [m for m in ('gpiod', 'numpy', 'cv2') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


class FakeRequest:
    """A gpiod v2 LineRequest stand-in: the test sets line levels and raises edges."""

    def __init__(self, line_mod: Any, offsets: tuple[int, ...]) -> None:
        self.line = line_mod
        self.levels = dict.fromkeys(offsets, False)
        self.edges = threading.Event()
        self.released = False

    def get_values(self, offsets: list[int]) -> list[Any]:
        return [
            self.line.Value.ACTIVE if self.levels[o] else self.line.Value.INACTIVE for o in offsets
        ]

    def wait_edge_events(self, timeout: Any) -> bool:
        return self.edges.wait(timeout.total_seconds())

    def read_edge_events(self) -> list[object]:
        self.edges.clear()
        return [object()]

    def release(self) -> None:
        self.released = True


def fake_gpiod(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, Any]]:
    mod = types.ModuleType("fakegpiod")
    line = types.ModuleType("fakegpiod.line")
    for name, members in {
        "Direction": ("INPUT",),
        "Edge": ("BOTH",),
        "Bias": ("PULL_UP", "PULL_DOWN", "DISABLED", "AS_IS"),
        "Value": ("ACTIVE", "INACTIVE"),
    }.items():
        setattr(line, name, types.SimpleNamespace(**{m: f"{name}.{m}" for m in members}))
    seen: dict[str, Any] = {}

    def request_lines(path: str, consumer: str, config: dict[tuple[int, ...], Any]) -> Any:
        ((offsets, settings),) = config.items()
        seen.update(path=path, consumer=consumer, settings=settings)
        seen["request"] = FakeRequest(line, offsets)
        return seen["request"]

    mod.request_lines = request_lines  # type: ignore[attr-defined]
    mod.LineSettings = lambda **kw: kw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fakegpiod", mod)
    monkeypatch.setitem(sys.modules, "fakegpiod.line", line)
    return mod, seen


def test_gpio_lines_through_the_v2_api(monkeypatch: pytest.MonkeyPatch) -> None:
    mod, seen = fake_gpiod(monkeypatch)
    src = GpioInputSource(
        "/dev/gpiochip0", {"ignition": 17, "brush": 27, "sos": 22}, debounce_s=0.02, gpiod=mod
    )
    stop = threading.Event()
    th = InputThread(src, stop, debounce_s=0.02)
    th.start()
    try:
        initial = {(e.name, e.value) for e in _events(th.queue, 2)}
        assert initial == {("ignition", False), ("brush", False)}
        s = seen["settings"]
        assert s["active_low"] is True and s["bias"] == "Bias.PULL_UP"
        assert s["edge_detection"] == "Edge.BOTH" and s["debounce_period"].total_seconds() == 0.02
        req = seen["request"]
        req.levels[17] = True
        req.edges.set()
        (ev,) = _events(th.queue, 1)
        assert (ev.name, ev.value) == ("ignition", True)
        req.levels[22] = True  # the SOS line goes active: one press
        req.edges.set()
        (sos,) = _events(th.queue, 1)
        assert sos.kind == "sos"
    finally:
        stop.set()
        th.join(2)
    assert seen["request"].released


# --------------------------------------------------------------------------- the service


def test_sos_is_an_immediate_critical_alarm_and_a_record(
    tmp_path: Path, spool: Spool, keyset: KeySet
) -> None:
    alarms: list[Alarm] = []
    sim = SimInputSource([Reading("ignition", True), Reading("brush", True)])
    stop = threading.Event()
    svc = FleetService(
        fleet_settings(tmp_path / "fleet"), spool, stop, alarm=alarms.append, source=sim
    )
    svc.start()
    try:
        deadline = time.monotonic() + 3
        while svc.inputs != Inputs(ignition=True, brush=True) and time.monotonic() < deadline:
            stop.wait(0.01)
        assert svc.live_fields() == {
            "inputs": {"ignition": True, "brush": True, "pump": False, "lift": False},
            "in": [],
        }
        assert not svc.parked
        t0 = time.time()
        sim.press_sos()
        while not alarms and time.monotonic() < deadline:
            stop.wait(0.005)
        (alarm,) = alarms
        assert alarm.kind == "sos" and alarm.severity is Severity.CRITICAL
        assert alarm.time - t0 < 0.5
        sim.set("ignition", False)
        while not svc.parked and time.monotonic() < deadline:
            stop.wait(0.01)
        assert svc.parked
    finally:
        stop.set()
        svc.join(2)
    recs = sealed_events(spool, keyset.platform_private)
    kinds = [r["type"] for r in recs]
    assert kinds.count("fleet_sos") == 1
    assert ("fleet_input", "ignition", False) in [
        (r["type"], r.get("input"), r.get("value")) for r in recs
    ]
