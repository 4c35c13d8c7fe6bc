"""The live lane: the latest fix, alarms (newest first) and the latest status. Checked before
every backfill chunk, so a live message waits at most for the chunks already in the socket
(the broker window), never for the backlog. Reports come from any thread.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from agent.model import Alarm, Fix
from agent.uplink import protocol as proto
from agent.uplink.mqtt import MqttLink
from agent.uplink.settings import UplinkSettings
from agent.uplink.uploads import ForwarderStats

MAX_ALARMS = 256


class LiveLane:
    """The live lane's reports and sending (a part of the Forwarder)."""

    link: MqttLink
    topics: proto.Topics
    settings: UplinkSettings
    stats: ForwarderStats
    wake: threading.Event
    _live_lock: threading.Lock
    # guarded by _live_lock:
    _fix: bytes | None
    _status: bytes | None
    _alarms: deque[bytes]

    def report_fix(self, fix: Fix, extra: dict[str, Any] | None = None) -> None:
        """The newest position for the live lane; ``extra`` adds fields (vehicle inputs).

        Binary (protocol 3, docs/protocol.md) unless ``uplink.live_fix = "json"`` or the
        binary form cannot carry it."""
        payload = None
        if self.settings.live_fix == "binary":
            payload = proto.encode_live_fix(fix, extra)
        if payload is None:
            payload = proto.live_fix_json(fix, extra)
        with self._live_lock:
            self._fix = payload
        self.wake.set()

    def report_alarm(self, alarm: Alarm) -> None:
        with self._live_lock:
            self._alarms.append(proto.dumps(alarm.to_json()))
        self.wake.set()

    def report_status(self, status: dict[str, Any]) -> None:
        payload = proto.dumps(status)
        with self._live_lock:
            self._status = payload
        self.wake.set()

    def live_pending(self) -> int:
        with self._live_lock:
            return len(self._alarms) + (self._fix is not None) + (self._status is not None)

    def _send_live(self) -> None:
        with self._live_lock:
            alarms = list(reversed(self._alarms))
            self._alarms.clear()
            fix, self._fix = self._fix, None
            status, self._status = self._status, None
        items: list[tuple[str, bytes]] = [(self.topics.live("alarm"), a) for a in alarms]
        if fix is not None:
            items.append((self.topics.live("fix"), fix))
        if status is not None:
            items.append((self.topics.live("status"), status))
        unsent: list[tuple[str, bytes]] = []
        for topic, payload in items:
            if self.link.publish(topic, payload, qos=1) is None:
                unsent.append((topic, payload))
            else:
                self.stats.live_sent += 1
        if unsent:
            with self._live_lock:
                for topic, payload in unsent:
                    if topic.endswith("/alarm"):
                        self._alarms.appendleft(payload)
                    elif topic.endswith("/fix") and self._fix is None:
                        self._fix = payload
                    elif topic.endswith("/status") and self._status is None:
                        self._status = payload
