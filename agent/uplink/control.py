"""The downlink command channel: commands signed by the platform, answered by the device.

A command (JSON on ``devices/{d}/down/cmd``)::

    {"v": 1, "id": "<16-64 chars>", "device": "<device id>", "cmd": "ping", "args": {},
     "issued": <unix s>, "expires": <unix s>, "sig": "<hex Ed25519 signature>"}

The signature covers ``"edge-agent command v1\\0"`` + the canonical JSON of every other field.
The device checks, in order: the form, the addressee, the signature (the platform's command
key, Ed25519, pinned in ``uplink.command_key``), the validity window (``issued`` not in the
future and ``expires`` not past, with ``command_skew_s`` of tolerance; a lifetime of at most
``command_max_ttl_s``) and that the id was never seen (ids are remembered on disk until they
expire, so a replay is refused even after a reboot). The id is recorded before the handler
runs: a command runs at most once. Every command gets an answer on ``devices/{d}/up/cmd``::

    {"v": 1, "id": ..., "cmd": ..., "ok": true, "result": {...}}
    {"v": 1, "id": ..., "cmd": ..., "ok": false, "reason": "expired 12 s ago"}

Later issues add commands with :meth:`CommandChannel.register`.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import wallclock
from agent.contain import Failures
from agent.errors import AgentError, CommandError, FormatError, KeyFileError
from agent.loops.guard import Guard
from agent.model import Alarm
from agent.storage.durable import write_atomic
from agent.storage.keys import pem_private_key, pem_public_key, write_private, write_public
from agent.uplink import protocol as proto
from agent.uplink.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)

CONTEXT = b"edge-agent command v1\x00"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}\Z")
COMMAND_KEY = "command.key"
COMMAND_PUB = "command.pub"
ACK_KEY = "ack.key"
ACK_PUB = "ack.pub"
MAX_COMMAND = 64 * 1024
MAX_TIME = 10**11  # unix seconds (year 5138): a bound on input, not a policy

Handler = Callable[[dict[str, Any]], dict[str, Any]]


# --------------------------------------------------------------------------- keys


def init_signing_keys(directory: Path, stem: str, force: bool = False) -> Path:
    """An Ed25519 key pair of the platform: ``<stem>.key`` (0600) and ``<stem>.pub``."""
    from cryptography.hazmat.primitives import serialization

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private(directory / f"{stem}.key", pem, force)
    write_public(directory / f"{stem}.pub", pub)
    return directory / f"{stem}.key"


def init_command_keys(directory: Path, force: bool = False) -> Path:
    """The platform's Ed25519 command-signing key pair (``command.key`` 0600, ``command.pub``)."""
    return init_signing_keys(directory, "command", force)


def init_ack_keys(directory: Path, force: bool = False) -> Path:
    """The platform's Ed25519 acknowledgement-signing key pair (``ack.key``, ``ack.pub``)."""
    return init_signing_keys(directory, "ack", force)


def load_signing_private(path: Path, what: str) -> Ed25519PrivateKey:
    try:
        key = pem_private_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc}") from None
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 {what}")
    return key


def load_signing_public(path: Path, what: str) -> Ed25519PublicKey:
    try:
        key = pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc}") from None
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected the platform's Ed25519 {what}")
    return key


def load_command_private(path: Path) -> Ed25519PrivateKey:
    return load_signing_private(path, "command key")


def load_command_public(path: Path) -> Ed25519PublicKey:
    return load_signing_public(path, "command key")


def load_ack_private(path: Path) -> Ed25519PrivateKey:
    return load_signing_private(path, "ack key")


def load_ack_public(path: Path) -> Ed25519PublicKey:
    return load_signing_public(path, "ack key")


# --------------------------------------------------------------------------- wire form


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_command(
    key: Ed25519PrivateKey,
    device: str,
    cmd: str,
    args: dict[str, Any] | None = None,
    *,
    ttl_s: float = 300,
    now: float | None = None,
    command_id: str | None = None,
) -> bytes:
    """The platform side: a signed command, ready to publish on ``devices/{d}/down/cmd``."""
    issued = time.time() if now is None else now
    body: dict[str, Any] = {
        "v": 1,
        "id": command_id or uuid.uuid4().hex,
        "device": device,
        "cmd": cmd,
        "args": args or {},
        "issued": round(issued, 3),
        "expires": round(issued + ttl_s, 3),
    }
    body["sig"] = key.sign(_signed_bytes(body)).hex()
    return proto.dumps(body)


def _number(obj: dict[str, Any], name: str) -> float:
    """A time in unix seconds: a finite number in [0, MAX_TIME) (checked before any use, so
    ``1`` followed by 400 zeros or ``1e300`` is a FormatError, not an OverflowError)."""
    v = obj.get(name)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise FormatError(f"command: {name!r} must be a number")
    if not 0 <= v < MAX_TIME:
        raise FormatError(f"command: {name!r} is out of range")
    return float(v)


def parse_command(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_COMMAND:
        raise FormatError(f"command: {len(payload)} bytes is too large")
    obj = proto.loads_object(payload, "command", MAX_COMMAND)
    if obj.get("v") != 1:
        raise FormatError(f"command: version {obj.get('v')!r} is not supported")
    for name in ("id", "device", "cmd", "sig"):
        if not isinstance(obj.get(name), str):
            raise FormatError(f"command: {name!r} must be a string")
    if not ID_RE.match(obj["id"]):
        raise FormatError("command: 'id' must be 16-64 of A-Z a-z 0-9 _ -")
    if not NAME_RE.match(obj["cmd"]):
        raise FormatError(f"command: name {obj['cmd'][:40]!r} is malformed")
    if not isinstance(obj.get("args"), dict):
        raise FormatError("command: 'args' must be an object")
    _number(obj, "issued")
    _number(obj, "expires")
    unknown = set(obj) - {"v", "id", "device", "cmd", "args", "issued", "expires", "sig"}
    if unknown:
        raise FormatError(f"command: unknown fields {', '.join(sorted(unknown))}")
    return obj


def _command_id(payload: bytes) -> str | None:
    """The id of a refused command, to answer it by (None when it has no valid one)."""
    try:
        raw = proto.loads_object(payload, "command", MAX_COMMAND)
    except AgentError:
        return None
    cid = raw.get("id")
    return cid if isinstance(cid, str) and ID_RE.match(cid) else None


def _dumps_answer(answer: dict[str, Any]) -> bytes:
    """An answer as JSON; a handler's result that is not JSON becomes a failure."""
    try:
        return proto.dumps(answer)
    except (TypeError, ValueError) as exc:
        return proto.dumps(
            {
                "v": 1,
                "id": answer.get("id"),
                "cmd": answer.get("cmd"),
                "ok": False,
                "reason": f"failed: the result is not JSON ({exc})"[:500],
            }
        )


# --------------------------------------------------------------------------- replay store


class SeenIds:
    """Command ids seen, with their expiry, kept in a small JSON file (survives reboots)."""

    def __init__(self, path: Path, clock: Callable[[], float] = wallclock.now) -> None:
        self.path = path
        self._clock = clock
        self._seen: dict[str, float] = {}
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                self._seen = {
                    str(k): float(v) for k, v in data.items() if isinstance(v, int | float)
                }
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("commands: %s unreadable (%s); starting an empty replay list", path, exc)

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._seen

    def add(self, command_id: str, expires: float, skew: float) -> None:
        now = self._clock()
        self._seen = {k: v for k, v in self._seen.items() if v + skew >= now}
        self._seen[command_id] = expires
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self._seen).encode())


# --------------------------------------------------------------------------- channel


class CommandChannel:
    """Verifies, runs and answers commands. ``run()`` is the thread body."""

    def __init__(
        self,
        device_id: str,
        key: Ed25519PublicKey,
        seen: SeenIds,
        *,
        max_ttl_s: float = 3600,
        skew_s: float = 300,
        clock: Callable[[], float] = wallclock.now,
    ) -> None:
        self.device_id = device_id
        self.topics = proto.Topics(device_id)
        self._key = key
        self._seen = seen
        self._max_ttl = max_ttl_s
        self._skew = skew_s
        self._clock = clock
        self._handlers: dict[str, Handler] = {}
        self.failures = Failures("commands", log)
        self.register("ping", lambda args: {"pong": True, "time": round(self._clock(), 3)})

    def register(self, name: str, handler: Handler) -> None:
        """Add a command; the handler raises CommandError to refuse with a reason."""
        if not NAME_RE.match(name):
            raise CommandError(f"command name {name!r} is malformed")
        self._handlers[name] = handler

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def handle(self, payload: bytes) -> dict[str, Any]:
        """The answer to one command payload. Never raises: a refusal (FormatError,
        CommandError), a handler's failure (EvidenceRefused, AgentError, TOMLDecodeError...)
        or anything else becomes ``{"ok": false, "reason": ...}``."""
        cid: str | None = None
        name: str | None = None
        try:
            cmd = parse_command(payload)
            cid, name = cmd["id"], cmd["cmd"]
            result = self._run(cmd)
        except Exception as exc:
            if cid is None:
                cid = _command_id(payload)
            if isinstance(exc, FormatError | CommandError):
                reason = str(exc)
                log.warning("commands: refused %s (%s): %s", name or "?", cid or "no id", exc)
            elif isinstance(exc, AgentError):
                reason = f"failed: {exc}"
                log.warning("commands: %s (%s) failed: %s", name or "?", cid or "no id", exc)
            else:
                reason = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
                self.failures(f"command {name or '?'} ({cid or 'no id'})", exc)
            return {"v": 1, "id": cid, "cmd": name, "ok": False, "reason": reason[:500]}
        return {"v": 1, "id": cid, "cmd": name, "ok": True, "result": result}

    def _run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["device"] != self.device_id:
            raise CommandError(f"addressed to {cmd['device']!r}, not to {self.device_id!r}")
        body = {k: v for k, v in cmd.items() if k != "sig"}
        try:
            self._key.verify(bytes.fromhex(cmd["sig"]), _signed_bytes(body))
        except (InvalidSignature, ValueError):
            raise CommandError("bad signature (not signed by the platform's command key)") from None
        now = self._clock()
        issued, expires = float(cmd["issued"]), float(cmd["expires"])
        if expires + self._skew < now:
            raise CommandError(f"expired {now - expires:.0f} s ago")
        if issued - self._skew > now:
            raise CommandError(f"issued {issued - now:.0f} s in the future (check clocks)")
        if expires - issued > self._max_ttl or expires < issued:
            raise CommandError(f"lifetime {expires - issued:.0f} s exceeds {self._max_ttl:.0f} s")
        if cmd["id"] in self._seen:
            raise CommandError(f"replayed: id {cmd['id']} was already received")
        self._seen.add(cmd["id"], expires, self._skew)
        handler = self._handlers.get(cmd["cmd"])
        if handler is None:
            raise CommandError(f"unknown command {cmd['cmd']!r} (known: {', '.join(self.names)})")
        return handler(cmd["args"])

    def serve(
        self,
        link: MqttLink,
        inbox: queue.Queue[Inbound],
        stop: threading.Event,
        alarm: Callable[[Alarm], None] | None = None,
    ) -> None:
        """Thread body: answer each command, then acknowledge it to the broker (whatever
        happened: a poison command is acknowledged, never redelivered forever). A failure
        outside any one command (publishing the answer, acknowledging) is reported once per
        outage and backed off; the thread goes on (agent/loops/guard.py)."""

        def step() -> None:
            try:
                msg = inbox.get(timeout=0.5)
            except queue.Empty:
                return
            try:
                answer = self.handle(msg.payload)
                link.publish(self.topics.command_result, _dumps_answer(answer), qos=1)
            finally:
                link.ack(msg)

        Guard("uplink-commands", stop, log, alarm=alarm).run(step)
