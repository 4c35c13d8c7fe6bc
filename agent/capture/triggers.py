"""Triggers: a button or microcontroller on a serial line, and hooks for other channels.

Serial line protocol (ASCII, one command per line, ``\\n`` or ``\\r\\n``, case-insensitive;
see docs/video.md)::

    REC | START        start recording (with the pre-event buffer)
    STOP               stop recording
    MARK [note]        mark this moment (an event record, and a note in the segment)
    SNAP               take a still
    PING               liveness check

Each command is answered with one line: ``OK <COMMAND>``, ``PONG`` or ``ERR <reason>``.

Other channels use the same :class:`Controls` interface: :func:`command_handlers` gives the
platform command channel a table of handlers to register (``video.start`` ...), and the local
control socket behind ``edge-agent record start|stop|mark`` calls the same methods.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, Unpack

from agent.errors import AgentError
from agent.lines.serial import MAX_LINE, LineOptions, LineServer

log = logging.getLogger(__name__)


class Controls(Protocol):
    """What any trigger may ask of the video side. Every method returns at once (``mark``
    with a future settled once its event record is in the spool: :func:`mark_recorded`)."""

    def start(self, trigger: str = ..., details: dict[str, Any] | None = ...) -> None: ...

    def stop(self, trigger: str = ...) -> None: ...

    def mark(self, trigger: str = ..., note: str = ...) -> Future[None]: ...

    def still(self, trigger: str = ...) -> None: ...


MARK_WAIT_S = 3.0  # how long a mark's answer waits for its event record to be stored


def mark_recorded(stored: Future[None], timeout: float = MARK_WAIT_S) -> str | None:
    """None once a mark's event record is in the spool; else why it is not (yet).

    A mark is answered ok only for what is evidence: an answer that says ``recorded`` before
    the record is stored could be lost by a full disk and a power cut (chaos soak seed 7)."""
    try:
        stored.result(timeout)
    except TimeoutError:
        return f"not stored within {timeout:g} s (the recorder is busy); it may still be"
    except Exception as exc:  # the spool's refusal (disk or quota full) or failure
        return str(exc) or type(exc).__name__
    return None


def handle_line(
    line: str,
    controls: Controls,
    trigger: str = "button",
    ptt: Callable[[str], str | None] | None = None,
) -> str:
    """Run one protocol line; return the reply line (without its newline).

    ``ptt`` handles the push-to-talk lines (``PTT DOWN``/``PTT UP``) of a shared button line.
    """
    text = line.strip()
    if not text:
        return "ERR empty line"
    if ptt is not None and (reply := ptt(text)) is not None:
        return reply
    word, _, rest = text.partition(" ")
    cmd = word.upper()
    try:
        if cmd in ("REC", "START"):
            controls.start(trigger)
        elif cmd == "STOP":
            controls.stop(trigger)
        elif cmd == "MARK":
            why = mark_recorded(controls.mark(trigger, rest.strip()[:MAX_LINE]))
            if why is not None:
                return f"ERR mark not recorded: {why}"[:MAX_LINE]
        elif cmd == "SNAP":
            controls.still(trigger)
        elif cmd == "PING":
            return "PONG"
        else:
            return f"ERR unknown command {word[:32]!r}"
    except AgentError as exc:
        return f"ERR {exc}"
    return f"OK {cmd}"


def command_handlers(
    controls: Controls, trigger: str = "platform"
) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """Handlers for the platform command channel (or, with ``trigger="device"``, the local
    control socket), by command name. Each takes the command's (already verified) arguments
    and returns a small result.
    """

    def start(args: dict[str, Any]) -> dict[str, Any]:
        controls.start(trigger, {"command": args} if args else None)
        return {"ok": True}

    def stop(args: dict[str, Any]) -> dict[str, Any]:
        controls.stop(trigger)
        return {"ok": True}

    def mark(args: dict[str, Any]) -> dict[str, Any]:
        why = mark_recorded(controls.mark(trigger, str(args.get("note", ""))[:MAX_LINE]))
        return {"ok": True, "recorded": why is None} | ({"reason": why} if why else {})

    def still(args: dict[str, Any]) -> dict[str, Any]:
        controls.still(trigger)
        return {"ok": True}

    return {"video.start": start, "video.stop": stop, "video.mark": mark, "video.still": still}


class SerialTrigger(LineServer):
    """Reads the line protocol from a serial port (or a pyserial URL) in its own thread.

    A vanished port is reported once and reopened with a growing pause on the stop event.
    """

    def __init__(
        self, url: str, controls: Controls, stop: threading.Event, **line: Unpack[LineOptions]
    ) -> None:
        super().__init__(url, stop, name="video-trigger", **line)
        self._controls = controls
        # Push-to-talk on the same line (set by the composition root when talk is on).
        self.ptt: Callable[[str], str | None] | None = None

    def handle(self, line: str) -> str:
        return handle_line(line, self._controls, ptt=self.ptt)
