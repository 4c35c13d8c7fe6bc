"""Press-to-talk buttons: the serial line protocol's ``PTT DOWN`` / ``PTT UP``, and a GPIO line.

Serial (same framing as agent/capture/triggers.py: ASCII lines, case-insensitive)::

    PTT DOWN     start talking          -> OK PTT DOWN  | ERR <reason, e.g. no microphone>
    PTT UP       stop talking (send)    -> OK PTT UP

:func:`ptt_line` answers one line (None when it is not a PTT line), so the video trigger's
reader can hand PTT lines over when the button box shares its serial line (a two-line hook in
``triggers.handle_line``, see docs/talk.md); :class:`SerialPtt` reads a dedicated line.

GPIO: :class:`GpioPtt` reuses the fleet inputs' binding (PyPI ``gpiod``, libgpiod v2, imported
only when the line is opened; a missing library or line is logged and retried, the agent runs
on).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from agent.errors import AgentError
from agent.lines.serial import LineServer

log = logging.getLogger(__name__)


class Ptt(Protocol):
    def press(self, source: str = ...) -> dict[str, Any]: ...

    def release(self, source: str = ...) -> dict[str, Any]: ...


def ptt_line(line: str, talk: Ptt, source: str = "button") -> str | None:
    """The reply to a ``PTT DOWN|UP`` line; None if the line is not for us."""
    words = line.strip().upper().split()
    if not words or words[0] != "PTT":
        return None
    action = words[1] if len(words) > 1 else ""
    try:
        if action in ("DOWN", "PRESS", "1"):
            talk.press(source)
        elif action in ("UP", "RELEASE", "0"):
            talk.release(source)
        else:
            return "ERR PTT needs DOWN or UP"
    except AgentError as exc:
        return f"ERR {exc}"
    return f"OK PTT {action}"


class SerialPtt(LineServer):
    """Reads PTT lines from a dedicated serial port (or a pyserial URL) in its own thread; a
    vanished port is reported once and reopened with a growing pause on the stop event."""

    def __init__(
        self,
        url: str,
        talk: Ptt,
        stop: threading.Event,
        *,
        baudrate: int = 9600,
        reopen_s: float = 1.0,
        reopen_max_s: float = 10.0,
        port: Any = None,
    ) -> None:
        super().__init__(
            url,
            stop,
            name="talk-ptt-serial",
            baudrate=baudrate,
            reopen_s=reopen_s,
            reopen_max_s=reopen_max_s,
            port=port,
        )
        self._talk = talk

    def start(self) -> threading.Thread:
        self.thread.start()
        return self.thread

    def handle(self, line: str) -> str:
        return ptt_line(line, self._talk) or f"ERR unknown command {line.strip()[:32]!r}"

    def lost(self) -> None:
        self._talk.release("button")  # a cut cable must not leave the microphone open


class GpioPtt:
    """A push button on a GPIO line, through the fleet inputs' libgpiod v2 binding
    (:class:`agent.lines.inputs.GpioInputSource`, kernel debounce, active low with a pull-up)
    and its :class:`InputThread` (debounce, one thread, the stop event). ``source`` replaces the
    GPIO source (tests: ``SimInputSource``)."""

    def __init__(
        self,
        talk: Ptt,
        stop: threading.Event,
        *,
        chip: str = "/dev/gpiochip0",
        line: int = 0,
        debounce_s: float = 0.02,
        source: Any = None,
    ) -> None:
        from agent.lines.inputs import GpioInputSource, InputThread

        self._talk = talk
        src = source or GpioInputSource(chip, {"ptt": line}, debounce_s=debounce_s)
        self.inputs = InputThread(src, stop, debounce_s=debounce_s, on_event=self._on_event)

    def start(self) -> None:
        self.inputs.start()

    def join(self, timeout: float | None = None) -> None:
        self.inputs.join(timeout)

    def _on_event(self, event: Any) -> None:
        if event.name != "ptt":
            return
        try:
            (self._talk.press if event.value else self._talk.release)("button")
        except AgentError as exc:
            log.warning("talk: GPIO press-to-talk: %s", exc)
