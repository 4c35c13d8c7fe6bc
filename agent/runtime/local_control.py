"""The device-local control socket: ``edge-agent record start|stop|mark``, ``still``, ``status``.

A Unix stream socket (mode 0660: root and the agent's group), one JSON request per line::

    {"command": "video.start", "args": {}}   ->   {"ok": true, "result": {...}}
                                             ->   {"ok": false, "error": "why"}

The same handlers serve the platform's signed command channel; here the trust comes from the
socket's file permissions instead of a signature.

Containment (agent.contain): a request is read within bounds (64 KiB, JSON depth 16), every
failure of a handler (EvidenceRefused, AgentError, TOMLDecodeError, anything) is answered
``{"ok": false, "error": ...}``, and the thread's loop outlives anything one connection does.
:meth:`LocalControl.is_alive` lets the health loop watch it (a dead socket thread withholds
the systemd watchdog).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import boundedjson
from agent.contain import Failures, run_forever
from agent.errors import AgentError, CommandError, FormatError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024
ACCEPT_POLL_S = 0.5


class LocalControl:
    """Serves handlers on a Unix socket in its own thread until ``stop`` is set."""

    def __init__(self, path: Path, stop: threading.Event) -> None:
        self.path = path
        self.stop = stop
        self._handlers: dict[str, Handler] = {}
        self._sock: socket.socket | None = None
        self.failures = Failures("local control", log)
        self._thread = threading.Thread(target=self._serve, name="local-control")

    def register(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        sock.listen(4)
        sock.settimeout(ACCEPT_POLL_S)
        self._sock = sock
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def threads(self) -> list[threading.Thread]:
        """The socket thread, once started (a socket that could not be bound has none)."""
        return [self._thread] if self._thread.ident is not None else []

    def is_alive(self) -> bool:
        """False once a started socket thread has ended before ``stop`` (the health loop asks)."""
        return self._thread.ident is None or self._thread.is_alive() or self.stop.is_set()

    def handle(self, request: bytes) -> dict[str, Any]:
        """One request line to one reply (never raises)."""
        try:
            msg = boundedjson.loads(request, "request", max_bytes=MAX_REQUEST, want=None)
        except FormatError as exc:
            return {"ok": False, "error": f"request is not acceptable JSON: {exc}"}
        if not isinstance(msg, dict) or not isinstance(msg.get("command"), str):
            return {"ok": False, "error": 'request needs {"command": NAME, "args": {...}}'}
        args = msg.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be an object"}
        name = msg["command"]
        handler = self._handlers.get(name)
        if handler is None:
            known = ", ".join(self.names()) or "none"
            return {"ok": False, "error": f"unknown command {name[:64]!r} (known: {known})"}
        try:
            return {"ok": True, "result": handler(args)}
        except AgentError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # TOMLDecodeError, a bug: answered, never the thread
            self.failures(f"command {name!r}", exc)
            return {"ok": False, "error": f"failed: {type(exc).__name__}: {str(exc)[:200]}"}

    def _serve(self) -> None:
        assert self._sock is not None
        try:
            run_forever("local control", self._serve_one, self.stop, log)
        finally:
            self._sock.close()
            self.path.unlink(missing_ok=True)

    def _serve_one(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except TimeoutError:
            return
        with conn:
            conn.settimeout(5)
            try:
                try:
                    reply = self.handle(_read_line(conn))
                except CommandError as exc:  # too long: say so, read no further
                    log.warning("local control: %s", exc)
                    reply = {"ok": False, "error": str(exc)}
                conn.sendall(_dumps_reply(reply) + b"\n")
            except OSError as exc:
                log.warning("local control: %s", exc)


def _dumps_reply(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply).encode()
    except (TypeError, ValueError) as exc:
        return json.dumps({"ok": False, "error": f"the result is not JSON: {exc}"}).encode()


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        part = conn.recv(4096)
        if not part:
            break
        buf += part
        if len(buf) > MAX_REQUEST:
            raise CommandError("request too long")
    return buf.split(b"\n", 1)[0]


def send(path: Path, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask the running agent; returns the result or raises CommandError with its reason."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
            reply = json.loads(_read_line(sock) or b"{}")
    except FileNotFoundError:
        raise CommandError(f"{path}: no control socket: is the agent running?") from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}") from None
    if not isinstance(reply, dict):
        raise CommandError(f"{path}: the agent's reply is not a JSON object")
    if not reply.get("ok"):
        raise CommandError(str(reply.get("error", "no reply")))
    result = reply.get("result", {})
    return result if isinstance(result, dict) else {"result": result}
