"""PTT lines: a dedicated serial line (pyserial loop://) and the line handler."""

from __future__ import annotations

import threading
from typing import Any

from agent.errors import CommandError
from agent.lines.ptt import SerialPtt, ptt_line


class FakeTalk:
    def __init__(self, refuse: str = "") -> None:
        self.calls: list[str] = []
        self.refuse = refuse

    def press(self, source: str = "device") -> dict[str, Any]:
        if self.refuse:
            raise CommandError(self.refuse)
        self.calls.append(f"press:{source}")
        return {}

    def release(self, source: str = "device") -> dict[str, Any]:
        self.calls.append(f"release:{source}")
        return {}


def test_ptt_line() -> None:
    t = FakeTalk()
    assert ptt_line("ptt down\r", t) == "OK PTT DOWN"
    assert ptt_line("PTT UP", t) == "OK PTT UP"
    assert ptt_line("REC", t) is None
    assert ptt_line("PTT SIDEWAYS", t) == "ERR PTT needs DOWN or UP"
    assert t.calls == ["press:button", "release:button"]
    assert ptt_line("PTT DOWN", FakeTalk("talk refused: no microphone (x)")) == (
        "ERR talk refused: no microphone (x)"
    )


def test_serial_ptt_over_a_loop_port() -> None:
    import serial

    port = serial.serial_for_url("loop://", timeout=0.2)
    t = FakeTalk()
    stop = threading.Event()
    reader = SerialPtt("loop://", t, stop, port=port)
    port.write(b"PTT DOWN\n")
    reader.start()
    ev = threading.Event()
    for _ in range(100):
        if t.calls:
            break
        ev.wait(0.02)
    stop.set()
    reader.thread.join(5)
    assert t.calls[:1] == ["press:button"]


def test_gpio_ptt_through_the_fleet_inputs_thread() -> None:
    from agent.lines.inputs import Reading, SimInputSource
    from agent.lines.ptt import GpioPtt

    t = FakeTalk()
    stop = threading.Event()
    src = SimInputSource(script=[(0.0, [Reading("ptt", True)]), (0.2, [Reading("ptt", False)])])
    ptt = GpioPtt(t, stop, source=src, debounce_s=0.02)
    ptt.start()
    ev = threading.Event()
    for _ in range(100):
        if len(t.calls) == 2:
            break
        ev.wait(0.02)
    stop.set()
    ptt.join(5)
    assert t.calls == ["press:button", "release:button"]
