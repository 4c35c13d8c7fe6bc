"""PTT lines: a dedicated serial line (pyserial loop://) and the line handler."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from agent.errors import CommandError
from agent.labs.waiting import wait_for
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


@contextlib.contextmanager
def _served(t: FakeTalk, first: bytes) -> Iterator[tuple[Any, SerialPtt]]:
    """A PTT line on a pyserial loop port with ``first`` waiting in it; stopped at the end."""
    import serial

    port = serial.serial_for_url("loop://", timeout=0.2)
    stop = threading.Event()
    reader = SerialPtt("loop://", t, stop, port=port)
    port.write(first)
    reader.start()
    try:
        yield port, reader
    finally:
        stop.set()
        reader.thread.join(5)
    assert not reader.thread.is_alive()


def test_serial_ptt_over_a_loop_port() -> None:
    t = FakeTalk()
    with _served(t, b"PTT DOWN\n"):
        wait_for(lambda: bool(t.calls), 20, "the press")
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


class BuggyTalk(FakeTalk):
    """Its first press fails with a bug (not a refusal)."""

    def press(self, source: str = "device") -> dict[str, Any]:
        if not self.refuse:
            self.refuse = "done"
            raise ZeroDivisionError("a bug in talk")
        self.calls.append(f"press:{source}")
        return {}


def test_a_request_that_raises_costs_that_line_not_the_thread() -> None:
    t = BuggyTalk()
    with _served(t, b"PTT DOWN\n") as (port, reader):
        wait_for(lambda: bool(t.refuse), 20, "the first press (the bug)")
        assert t.refuse == "done" and reader.thread.is_alive()
        port.write(b"PTT DOWN\n")
        wait_for(lambda: bool(t.calls), 20, "the second press")
        assert t.calls[:1] == ["press:button"] and reader.thread.is_alive()
