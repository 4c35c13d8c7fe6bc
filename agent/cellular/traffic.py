"""What the agent sent, per lane and per day (UTC): counted where messages leave, at the
uplink's MQTT link (:attr:`agent.uplink.mqtt.MqttLink.meter`), kept across restarts.

A lane is read from the topic: ``live`` (the device's state and ``live/*``: positions,
alarms, heartbeats), ``backfill`` (``up/seg/*`` segments and ``up/key`` key records),
``commands`` (``up/cmd`` answers), ``talk`` (push-to-talk) and ``other``. The figure is the
MQTT application message (topic and payload) handed to the broker connection; TLS, TCP and
MQTT framing and retransmissions add a few percent, which the modem's own counters include.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import boundedjson
from agent.errors import FormatError
from agent.storage.durable import write_atomic

log = logging.getLogger(__name__)

LANES = ("live", "backfill", "commands", "talk", "other")
MAX_FILE = 256 * 1024


def lane_of(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) >= 3 and parts[0] == "devices":
        kind = parts[2]
        if kind in ("live", "state"):
            return "live"
        if kind == "talk":
            return "talk"
        if kind == "up" and len(parts) >= 4:
            if parts[3] in ("seg", "key"):
                return "backfill"
            if parts[3] == "cmd":
                return "commands"
    return "other"


def utc_day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


class TrafficMeter:
    """Thread-safe counters; :meth:`count` is cheap (called for every publish),
    :meth:`save` writes the file (called by the link monitor's thread)."""

    def __init__(self, path: Path, days: int, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self.days = days
        self.now = now
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}  # day -> lane -> bytes
        self._dirty = False
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("traffic: cannot read %s (%s): counting from zero", self.path, exc)
            return
        try:
            doc = boundedjson.loads(raw, str(self.path), max_bytes=MAX_FILE)
            days = doc.get("days")
            if not isinstance(days, dict):
                raise FormatError("no days table")
            for day, lanes in days.items():
                if not isinstance(lanes, dict) or len(day) != 10:
                    raise FormatError(f"day {day!r} is malformed")
                self._counts[day] = {
                    lane: int(v) for lane, v in lanes.items()
                    if lane in LANES and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                }  # fmt: skip
        except FormatError as exc:
            log.warning("traffic: %s is not a traffic file (%s): counting from zero", self.path,
                        exc)  # fmt: skip
            self._counts = {}
        self._trim()

    def _trim(self) -> None:
        for day in sorted(self._counts)[: -self.days]:
            del self._counts[day]

    def count(self, topic: str, nbytes: int) -> None:
        lane = lane_of(topic)
        day = utc_day(self.now())
        with self._lock:
            lanes = self._counts.get(day)
            if lanes is None:
                lanes = self._counts[day] = {}
                self._trim()
            lanes[lane] = lanes.get(lane, 0) + len(topic) + nbytes
            self._dirty = True

    def snapshot(self) -> dict[str, Any]:
        today = utc_day(self.now())
        with self._lock:
            days = {d: dict(v) for d, v in self._counts.items()}

        def with_total(lanes: dict[str, int]) -> dict[str, int]:
            return {**{lane: lanes.get(lane, 0) for lane in LANES}, "total": sum(lanes.values())}

        recent = sorted(days)[-7:]
        return {
            "day": today,
            "today": with_total(days.get(today, {})),
            "days": {d: with_total(days[d]) for d in recent},
        }

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            doc = {"version": 1, "days": self._counts}
            data = json.dumps(doc, sort_keys=True).encode()
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data)
        except OSError as exc:
            with self._lock:
                self._dirty = True
            log.warning("traffic: cannot save %s: %s", self.path, exc)
