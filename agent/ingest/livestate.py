"""What the devices say on their state and live topics, kept in the store for the review page.

The ingest worker's segment subscription (``$share/<group>/devices/+/up/#``) does not carry a
device's retained birth / last will (``devices/<id>/state``) nor its heartbeats, alarms and
fixes (``devices/<id>/live/{status,alarm,fix}``). :class:`LiveRecorder` subscribes to both on
the worker's own MQTT link, *without* a shared subscription (a broker sends retained messages
to plain subscriptions only), and writes::

    <store>/<device>/live/state.json     the latest birth or last will
    <store>/<device>/live/status.json    the latest heartbeat (Agent.status())
    <store>/<device>/live/fix.json       the latest live fix (gpsd-style TPV, decoded from the
                                         binary form of protocol 3, agent.uplink.protocol;
                                         "form": "binary" or "json", as it came), rewritten
                                         at most every 0.25 s (the newest fix in between)
    <store>/<device>/live/alarms.jsonl   alarms, newest last (the file keeps the last 1,000)

each as ``{"received": <unix s>, "topic": ..., "payload": {...}}``. These are facts about the
device, not evidence: files are replaced by rename without fsync, and several workers sharing
one store write the same facts (an alarm already among the last lines is not appended again).

It also takes each device's signed stream heads (``devices/<id>/heads``, retained) and hands
them to the :class:`agent.ingest.heads.HeadsBook`, which checks them against the device's key.

Containment (agent.contain): a payload is read within bounds (64 KiB, JSON depth 16), the
device id of the topic must be valid (agent.ids); whatever one message does, it is logged,
acknowledged to the broker (a retained poison message is acknowledged at every start, and
never stops the thread), and the next one is handled.

Wiring: build it on the worker's link before the link starts, then start it::

    self.live = LiveRecorder(store.root, self.link, stop)   # in Ingest.__init__
    self.live.start()                                       # in Ingest.start
    self.live.join(timeout)                                 # in Ingest.join
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import boundedjson, ids
from agent.contain import Failures
from agent.errors import AgentError, FormatError
from agent.ingest.store import private_dirs
from agent.loops.guard import Guard
from agent.uplink import protocol as proto
from agent.uplink.mqtt import Inbound, MqttLink

if TYPE_CHECKING:
    from agent.ingest.heads import HeadsBook

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024
MAX_ALARM_LINES = 1000
DEDUPE_LINES = 50
# fix.json is rewritten at most this often per device; the newest fix in between is held.
FIX_WRITE_EVERY_S = 0.25


class LiveRecorder:
    """Records state and live messages under the store (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        link: MqttLink,
        stop: threading.Event,
        *,
        heads: HeadsBook | None = None,
    ) -> None:
        self.root = root
        self.stop = stop
        self.link = link
        self.heads = heads
        self.state_inbox = link.route(proto.STATE_FILTER, qos=1)
        self.live_inbox = link.route(proto.LIVE_FILTER, qos=1)
        self.heads_inbox = link.route(proto.HEADS_FILTER, qos=1) if heads is not None else None
        self.recorded = 0
        self.dropped = 0
        self.failures = Failures("ingest-live", log)
        self._fixes = LatestWriter(FIX_WRITE_EVERY_S)
        self._thread: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self) -> None:
        self._thread = threading.Thread(
            target=Guard("ingest-live", self.stop, log).run, args=(self.step,), name="ingest-live"
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._fixes.flush(float("inf"))

    def step(self) -> None:
        """Handle at most one waiting message of each kind (waits a little when none)."""
        handled = False
        for inbox in (self.state_inbox, self.live_inbox, self.heads_inbox):
            if inbox is None:
                continue
            try:
                msg = inbox.get_nowait()
            except queue.Empty:
                continue
            handled = True
            self.handle(msg)
        due = self._fixes.flush(time.monotonic())
        if not handled:
            self.stop.wait(min(0.2, due))

    def handle(self, msg: Inbound) -> None:
        """Record one message, whatever it holds, and acknowledge it to the broker."""
        try:
            if msg.topic.endswith("/heads"):
                self.record_heads(msg.topic, msg.payload)
            else:
                self.record(msg.topic, msg.payload, msg.retain)
        except OSError as exc:
            self.dropped += 1
            log.error("ingest: cannot record %s: %s", msg.topic[:200], exc)
        except Exception as exc:
            self.dropped += 1
            self.failures(f"recording {msg.topic[:200]}", exc)
        finally:
            self.link.ack(msg)

    def record_heads(self, topic: str, payload: bytes) -> bool:
        parsed = proto.parse_topic(topic)
        if parsed.kind != "heads" or self.heads is None or not payload:
            return False
        try:
            self.heads.record(parsed.device_id, payload)
        except AgentError as exc:
            self.dropped += 1
            log.warning("ingest: refused the heads of %s: %s", parsed.device_id, exc)
            return False
        return True

    def record(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Write what ``payload`` says about its device; False when it was not recorded."""
        try:
            parsed = proto.parse_topic(topic)
        except FormatError as exc:
            self.dropped += 1
            log.warning("ingest: ignoring %s", exc)
            return False
        if parsed.kind not in ("state", "live"):
            self.dropped += 1
            return False
        if not payload:
            return False  # a cleared retained message
        if len(payload) > MAX_PAYLOAD:
            self.dropped += 1
            log.warning(
                "ingest: %s sent %d bytes on %s; dropped", parsed.device_id, len(payload), topic
            )
            return False
        try:
            if parsed.arg == "fix":  # binary (protocol 3) or JSON, as the JSON object
                obj = proto.decode_live_fix(payload)
            else:
                obj = proto.loads_object(payload, topic)
        except FormatError as exc:
            self.dropped += 1
            log.warning("ingest: %s", exc)
            return False
        entry: dict[str, Any] = {
            "received": round(time.time(), 3),
            "topic": topic,
            "retained": retain,
            "payload": obj,
        }
        if parsed.kind == "live" and parsed.arg == "fix":
            entry["form"] = "json" if payload[:1] == b"{" else "binary"
        d = ids.contained(self.root, parsed.device_id, "live")
        private_dirs(self.root, d)
        if parsed.kind == "state":
            _replace(d / "state.json", entry)
        elif parsed.arg == "alarm":
            _append_alarm(d / "alarms.jsonl", entry)
        elif parsed.arg == "fix":
            self._fixes.put(d / "fix.json", entry, time.monotonic())
        else:
            _replace(d / f"{parsed.arg}.json", entry)
        self.recorded += 1
        return True


class LatestWriter:
    """Writes the latest entry of a file at most every ``every_s`` (a device reporting a fix
    many times a second costs the store a few files a second, not one per fix): the first of
    a quiet file at once, the rest held as the newest one until its time comes (``flush``).
    A held entry is written even if no newer one comes; only superseded ones are skipped."""

    def __init__(self, every_s: float, max_files: int = 100_000) -> None:
        self.every_s = every_s
        self.max_files = max_files
        self._written: dict[Path, float] = {}  # file -> when last written (monotonic)
        self._held: dict[Path, dict[str, Any]] = {}

    def put(self, path: Path, entry: dict[str, Any], now: float) -> None:
        if path not in self._held and now - self._written.get(path, -1e18) >= self.every_s:
            self._write(path, entry, now)
        else:
            self._held[path] = entry

    def flush(self, now: float) -> float:
        """Write the held entries whose time has come; the seconds until the next one is due."""
        wait = self.every_s
        for path, entry in list(self._held.items()):
            left = self._written.get(path, -1e18) + self.every_s - now
            if left <= 0:
                del self._held[path]
                try:
                    self._write(path, entry, now)
                except OSError as exc:
                    log.error("ingest: cannot record %s: %s", path, exc)
            else:
                wait = min(wait, left)
        return max(wait, 0.0)

    def _write(self, path: Path, entry: dict[str, Any], now: float) -> None:
        if len(self._written) >= self.max_files:
            self._written = {p: t for p, t in self._written.items() if now - t < self.every_s}
        self._written[path] = now
        _replace(path, entry)


def _write_private(path: Path, data: bytes, flags: int = os.O_TRUNC) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _replace(path: Path, entry: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        _write_private(tmp, json.dumps(entry, sort_keys=True).encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _append_alarm(path: Path, entry: dict[str, Any]) -> None:
    payload = json.dumps(entry["payload"], sort_keys=True)
    lines: list[bytes] = []
    if path.exists():
        lines = path.read_bytes().splitlines()
        for line in lines[-DEDUPE_LINES:]:
            try:
                old = boundedjson.loads(line, "alarm line", max_bytes=2 * MAX_PAYLOAD)
            except AgentError:
                continue
            if isinstance(old, dict) and json.dumps(old.get("payload"), sort_keys=True) == payload:
                return  # another worker (or a redelivery) recorded it already
    line = json.dumps(entry, sort_keys=True).encode()
    if len(lines) >= MAX_ALARM_LINES:
        keep = [*lines[-(MAX_ALARM_LINES // 2) :], line]
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        try:
            _write_private(tmp, b"\n".join(keep) + b"\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    _write_private(path, line + b"\n", os.O_APPEND)
