"""The device-local control socket: ``edge-agent record start|stop|mark``, ``still``, ``status``.

A Unix stream socket (mode 0660: root and the agent's group), one JSON request per line::

    {"command": "video.start", "args": {}}   ->   {"ok": true, "result": {...}}
                                             ->   {"ok": false, "error": "why"}

The same handlers serve the platform's signed command channel; here the trust comes from the
socket's file permissions instead of a signature.
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

from agent.errors import AgentError, CommandError

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

    def handle(self, request: bytes) -> dict[str, Any]:
        """One request line to one reply (never raises)."""
        try:
            msg = json.loads(request)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(msg, dict) or not isinstance(msg.get("command"), str):
            return {"ok": False, "error": 'request needs {"command": NAME, "args": {...}}'}
        args = msg.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be an object"}
        handler = self._handlers.get(msg["command"])
        if handler is None:
            known = ", ".join(self.names()) or "none"
            return {"ok": False, "error": f"unknown command {msg['command']!r} (known: {known})"}
        try:
            return {"ok": True, "result": handler(args)}
        except AgentError as exc:
            return {"ok": False, "error": str(exc)}

    def _serve(self) -> None:
        assert self._sock is not None
        try:
            while not self.stop.is_set():
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5)
                    try:
                        request = _read_line(conn)
                        reply = self.handle(request)
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                    except (OSError, CommandError) as exc:
                        log.warning("local control: %s", exc)
        finally:
            self._sock.close()
            self.path.unlink(missing_ok=True)


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
    if not reply.get("ok"):
        raise CommandError(str(reply.get("error", "no reply")))
    result = reply.get("result", {})
    return result if isinstance(result, dict) else {"result": result}
