"""What the platform and another device do during a chaos run.

- :class:`Monitor`: the platform's view (its own certificate): live fixes (when each arrived and
  how old it was), alarms, acknowledgements, command answers, push-to-talk receipts;
- :class:`Operator`: signed commands (ping, record.mark, settings.set, record.stop and
  record.start), sent while faults are in effect and resent until answered, as a platform
  must (a broker that loses its store loses what it queued);
- :class:`Talker`: push-to-talk messages from the control room, resent until reported;
- :class:`HostileDevice`: a second device on the same broker sending malformed and oversized
  messages throughout (tests/security/hostile.py).

The formats of the wire are read in one place each (:func:`live_fix_time`, :func:`seg_acks`),
so a change of the uplink protocol changes one function here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import AgentError
from agent.talk import wire
from agent.uplink import compact
from agent.uplink import protocol as proto
from agent.uplink.control import sign_command
from tests.security import hostile

# --------------------------------------------------------------------------- wire formats


def live_fix_time(payload: bytes) -> float | None:
    """The GNSS time (unix s) of a ``live/fix`` message: gpsd-style TPV JSON, or the compact
    binary fix (agent.gps.wire); None when it carries none."""
    if payload[:1] == b"{":
        try:
            obj = json.loads(payload)
            t = obj.get("time")
            if isinstance(t, str):
                return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
            return float(t) if isinstance(t, int | float) else None
        except (ValueError, AttributeError):
            return None
    try:
        from agent.gps.wire import decode_fix

        return float(decode_fix(payload).time)
    except (AgentError, ValueError, ImportError):
        return None


def seg_acks(payload: bytes, device: str) -> list[tuple[str, str, int]]:
    """The acknowledgements in one ``down/ack`` message: (kind, stream, seq) with kind
    ``stored``, ``duplicate``, ``retry`` or ``reject`` (segments only), in either form
    (protocol 4's compact acknowledgements too: read, not checked, by this observer)."""
    if compact.is_compact_ack(payload):
        try:
            short = compact.parse_acks(payload, device, None, lambda stream, seq: "0" * 64)
        except AgentError:
            return []
        kinds = {compact.STORED: "stored", compact.DUPLICATE: "duplicate"}
        return [(kinds[a.kind], a.stream, a.seq) for a in short if a.kind in kinds]
    try:
        batch = proto.parse_acks(payload, device, None)
    except AgentError:
        return []
    out = []
    for a in batch.acks:
        if isinstance(a, proto.SegmentAck):
            out.append((a.result, a.stream, a.seq))
        elif isinstance(a, proto.Retry | proto.Reject) and a.what == "seg":
            out.append(("retry" if isinstance(a, proto.Retry) else "reject", a.stream, a.seq))
    return out


# --------------------------------------------------------------------------- the platform's view


@dataclass
class LiveFix:
    mono: float  # arrival, time.monotonic()
    wall: float  # arrival, time.time()
    fix_time: float | None  # the fix's own (GNSS) time

    @property
    def age_s(self) -> float | None:
        return None if self.fix_time is None else self.wall - self.fix_time


class Monitor:
    """A platform-side client of the broker (its own certificate, the ingest's rights)."""

    def __init__(
        self, device: str, client_id: str, port: int, ca: Path, cert: Path, key: Path
    ) -> None:
        self.device = device
        self.fixes: list[LiveFix] = []
        self.acks: Counter[str] = Counter()
        self.stored: dict[tuple[str, int], float] = {}  # (stream, seq) -> first stored ack
        self.alarms: Counter[str] = Counter()
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.receipts: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        c.reconnect_delay_set(0.05, 0.5)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c
        c.connect_async("127.0.0.1", port, keepalive=5)
        c.loop_start()

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        d = f"devices/{self.device}"
        client.subscribe(
            [
                (f"{d}/live/fix", 0),
                (f"{d}/live/alarm", 1),
                (f"{d}/down/ack", 0),
                (f"{d}/up/cmd", 1),
                (wire.receipt_topic(self.device), 1),
            ]
        )

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        mono, wall = time.monotonic(), time.time()
        topic, payload = msg.topic, bytes(msg.payload)
        with self._lock:
            if topic.endswith("/live/fix"):
                self.fixes.append(LiveFix(mono, wall, live_fix_time(payload)))
            elif topic.endswith("/live/alarm"):
                with contextlib.suppress(ValueError, AttributeError):
                    self.alarms[str(json.loads(payload).get("kind"))] += 1
            elif topic.endswith("/down/ack"):
                for kind, stream, seq in seg_acks(payload, self.device):
                    self.acks[kind] += 1
                    if kind in ("stored", "duplicate"):
                        self.stored.setdefault((stream, seq), wall)
            elif topic.endswith("/up/cmd"):
                with contextlib.suppress(ValueError, AttributeError):
                    ans = json.loads(payload)
                    got = self.answers.setdefault(str(ans.get("id")), [])
                    # The same answer again is MQTT's at-least-once delivery (after a broker
                    # restart or a reconnection), not a second run: a second run answers anew
                    # (ping: its time) or shows twice in the evidence (_check_commands).
                    if all({k: v for k, v in a.items() if k != "at"} != ans for a in got):
                        got.append({**ans, "at": wall})
            elif topic.endswith("/talk/receipt"):
                with contextlib.suppress(AgentError):
                    r = wire.parse_json(payload, "receipt")
                    r["at"] = wall
                    self.receipts.put(r)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos)

    def first_fix_after(self, t: float) -> float | None:
        with self._lock:
            later = [f.mono for f in self.fixes if f.mono >= t]
        return min(later) if later else None

    def fixes_between(self, t0: float, t1: float) -> list[LiveFix]:
        with self._lock:
            return [f for f in self.fixes if t0 <= f.mono <= t1]

    def stored_after(self, wall: float) -> float | None:
        with self._lock:
            later = [t for t in self.stored.values() if t >= wall]
        return min(later) if later else None

    def answers_of(self, cid: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.answers.get(cid, []))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- commands


COMMAND_TTL_S = 20.0
RESEND_S = 5.0
GIVE_UP_S = 180.0


@dataclass
class SentCommand:
    id: str
    cmd: str
    args: dict[str, Any]
    payload: bytes
    first_at: float  # time.time()
    during: str  # the fault in effect when it was first sent ("" none)
    sends: int = 1
    last_at: float = 0.0


class Operator:
    """The platform's operator: a signed command every few seconds, more while faults are in
    effect (:meth:`nudge`); each resent every RESEND_S until answered (the device refuses a
    second run of one id, so resending is safe: that is what ids are for)."""

    def __init__(
        self,
        monitor: Monitor,
        key: Ed25519PrivateKey,
        device: str,
        seed: int,
        stop: threading.Event,
    ) -> None:
        self.monitor, self._key, self.device = monitor, key, device
        self.rng = random.Random(seed * 7919 + 1)
        self.stop = stop
        self.sent: dict[str, SentCommand] = {}
        self.during = ""  # set by the fault loop
        self.quiet = False  # no new commands (the run is ending)
        # Held while a record.stop / record.start pair is in flight (a power cut waits for it).
        self.record_lock = threading.Lock()
        self._nudge = threading.Event()
        self._settings = itertools.count(1)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        """Send a command now (a fault has just begun)."""
        self._nudge.set()

    def _run(self) -> None:
        while not self.stop.is_set():
            self._nudge.wait(self.rng.uniform(2.0, 4.0))
            self._nudge.clear()
            if self.stop.is_set() or self.quiet:
                return
            self._send_new()
            self.resend_unanswered()

    def _send_new(self) -> None:
        r = self.rng.random()
        if r < 0.3:
            self.send("ping", {})
        elif r < 0.65:
            self.send("record.mark", {"note": f"chaos mark {self.rng.getrandbits(48):012x}"})
        elif r < 0.9:
            # A unique value each time: the settings_changed event names it, so a second run
            # of the same command would show as a second event with the same value.
            n = next(self._settings)
            self.send("settings.set", {"health.heartbeat_s": round(5.0 + n / 1000, 3)})
        else:
            with self.record_lock:
                stop = self.send("record.stop", {})
                self.wait_answered([stop.id], 10)
                start = self.send("record.start", {})
                self.wait_answered([start.id], 10)

    def send(self, cmd: str, args: dict[str, Any]) -> SentCommand:
        now = time.time()
        payload = sign_command(self._key, self.device, cmd, args, ttl_s=COMMAND_TTL_S, now=now)
        cid = json.loads(payload)["id"]
        sc = SentCommand(cid, cmd, args, payload, now, self.during, last_at=now)
        with self._lock:
            self.sent[cid] = sc
        self.monitor.publish(f"devices/{self.device}/down/cmd", payload)
        return sc

    def resend_unanswered(self, force: bool = False) -> None:
        now = time.time()
        with self._lock:
            todo = [
                s
                for s in self.sent.values()
                if not self.monitor.answers_of(s.id)
                and (force or now - s.last_at >= RESEND_S)
                and now - s.first_at < GIVE_UP_S
            ]
        for s in todo:
            s.sends += 1
            s.last_at = now
            self.monitor.publish(f"devices/{self.device}/down/cmd", s.payload)

    def unanswered(self) -> list[SentCommand]:
        with self._lock:
            return [s for s in self.sent.values() if not self.monitor.answers_of(s.id)]

    def wait_answered(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.monitor.answers_of(i) for i in ids):
                return True
            if self.stop.wait(0.1):
                return False
        return False

    def finish(self, timeout: float) -> None:
        """Every fault repaired: no new commands; resend what is unanswered until answered or
        ``timeout``."""
        self.quiet = True
        self._nudge.set()
        self._thread.join(30)
        deadline = time.monotonic() + timeout
        while self.unanswered() and time.monotonic() < deadline:
            self.resend_unanswered(force=True)
            if self.stop.wait(2.0):
                return

    def close(self) -> None:
        self._nudge.set()


# --------------------------------------------------------------------------- push-to-talk


TALK_TTL_S = 120.0
TALK_RESEND_S = 15.0
FINAL = ("played", "rejected", "not_played")


@dataclass
class SentTalk:
    id: str
    chunks: list[bytes]
    first_at: float
    during: str
    sends: int = 1
    last_at: float = 0.0
    receipts: list[dict[str, Any]] = field(default_factory=list)

    def statuses(self) -> list[str]:
        return [str(r.get("status")) for r in self.receipts]

    def reported(self) -> bool:
        """Delivered, or a final word (played, rejected, not played, incomplete for good)."""
        st = self.statuses()
        return (
            "delivered" in st
            or any(s in FINAL for s in st)
            or any(r.get("status") == "incomplete" and r.get("final") for r in self.receipts)
        )


class Talker:
    """The control room: a push-to-talk message to the device every few seconds (and one at
    each network flap), the gaps the device reports resent, the whole message resent when
    nothing at all came back."""

    def __init__(
        self,
        monitor: Monitor,
        key: Ed25519PrivateKey,
        device: str,
        body: bytes,
        duration_s: float,
        seed: int,
        stop: threading.Event,
    ) -> None:
        self.monitor, self._key, self.device = monitor, key, device
        self.body, self.duration_s = body, duration_s
        self.rng = random.Random(seed * 7919 + 2)
        self.stop = stop
        self.sent: dict[str, SentTalk] = {}
        self.during = ""
        self.quiet = False
        self._nudge = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="talker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        self._nudge.set()

    def _run(self) -> None:
        next_at = time.monotonic() + self.rng.uniform(3, 6)
        while not self.stop.is_set() and not self.quiet:
            self._receipts()
            now = time.monotonic()
            if self._nudge.is_set() or now >= next_at:
                self._nudge.clear()
                self.send()
                next_at = now + self.rng.uniform(6, 10)
            self._resend_silent()
            self._nudge.wait(0.2)

    def send(self) -> SentTalk:
        chunks = wire.build_message(
            self._key,
            self.body,
            sender=wire.PLATFORM,
            to=wire.device_address(self.device),
            duration_s=self.duration_s,
            chunk_bytes=1024,
            ttl_s=TALK_TTL_S,
        )
        now = time.time()
        st = SentTalk(chunks[0].id, [c.encode() for c in chunks], now, self.during, last_at=now)
        with self._lock:
            self.sent[st.id] = st
        for payload in st.chunks:
            self.monitor.publish(wire.in_topic(self.device), payload)
        return st

    def _receipts(self) -> None:
        while True:
            try:
                r = self.monitor.receipts.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                st = self.sent.get(str(r.get("id")))
            if st is None:
                continue
            st.receipts.append(r)
            if r.get("status") == "incomplete" and not r.get("final"):
                have = {int(i) for i in r.get("have") or [] if isinstance(i, int)}
                for i, payload in enumerate(st.chunks):
                    if i not in have:
                        self.monitor.publish(wire.in_topic(self.device), payload)

    def _resend_silent(self, force: bool = False) -> None:
        now = time.time()
        with self._lock:
            todo = [
                s
                for s in self.sent.values()
                if not s.reported()
                and (force or now - s.last_at >= TALK_RESEND_S)
                and now - s.first_at < TALK_TTL_S
            ]
        for s in todo:
            s.sends += 1
            s.last_at = now
            for payload in s.chunks:
                self.monitor.publish(wire.in_topic(self.device), payload)

    def unreported(self) -> list[SentTalk]:
        self._receipts()
        with self._lock:
            return [s for s in self.sent.values() if not s.reported()]

    def finish(self, timeout: float) -> None:
        """No new messages; resend the unreported until reported or ``timeout``."""
        self.quiet = True
        self._nudge.set()
        self._thread.join(30)
        deadline = time.monotonic() + timeout
        while self.unreported() and time.monotonic() < deadline:
            self._resend_silent(force=True)
            if self.stop.wait(3.0):
                return
        # Receipts of messages still playing.
        self.stop.wait(3.0)
        self._receipts()

    def close(self) -> None:
        self._nudge.set()


def talk_body() -> tuple[bytes, float]:
    """One second of a 660 Hz tone as Ogg Opus (what a control room says)."""
    from agent.talk.codec import encode_pcm, tone

    rate = 48000
    return encode_pcm(tone(660, 1000, rate), rate), 1.0


# --------------------------------------------------------------------------- a hostile device


OVERSIZED = 3 * 1024 * 1024 // 2  # beyond the broker's max_packet_size (1 MiB)


class HostileDevice:
    """Another device on the same broker (its own certificate) sending malformed messages on
    every topic it may write, and now and then one larger than the broker takes (which ends
    its connection: it connects again)."""

    def __init__(
        self,
        device: str,
        port: int,
        ca: Path,
        cert: Path,
        key: Path,
        stop: threading.Event,
        every_s: float = 0.4,
    ) -> None:
        self.device, self.port = device, port
        self.stop = stop
        self.every_s = every_s
        self.sent: Counter[str] = Counter()
        self.connects = 0
        d = f"devices/{device}"
        json_topics = [f"{d}/live/status", f"{d}/heads", f"{d}/up/cmd", f"{d}/state",
                       f"{d}/talk/receipt", f"{d}/live/alarm", f"{d}/live/fix"]  # fmt: skip
        self.messages: list[tuple[str, str, bytes]] = []
        self.messages += [("chunk", f"{d}/up/seg/gps", p) for p in hostile.chunk_payloads()]
        self.messages += [("key", f"{d}/up/key", p) for p in hostile.key_payloads()]
        for t in json_topics:
            self.messages += [("json", t, p) for p in hostile.json_payloads()]
        self.messages += [("talk", f"{d}/talk/out", b"EAT1\x00\x10" + hostile.deep_json(8))]
        random.Random(66).shuffle(self.messages)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        c.reconnect_delay_set(0.1, 1.0)
        c.on_connect = self._on_connect
        self.client = c
        self._thread = threading.Thread(target=self._run, name="hostile", daemon=True)

    def _on_connect(self, *_a: Any) -> None:
        self.connects += 1

    def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        self._thread.start()

    def _run(self) -> None:
        deep = hostile.deep_json(hostile.DEEP_SMALL)
        self.client.publish(f"devices/{self.device}/live/status", deep, qos=1, retain=True)
        for i in itertools.count():
            if self.stop.wait(self.every_s):
                return
            if i % 50 == 49:
                kind, topic = "oversized", f"devices/{self.device}/up/seg/video"
                payload = b"EAC1" + b"\x00" * OVERSIZED
            else:
                kind, topic, payload = self.messages[i % len(self.messages)]
            # The oversized one at QoS 0: at QoS 1 the client would send it again at every
            # reconnection, a reconnection storm instead of a mix of poisons.
            self.client.publish(topic, payload, qos=0 if kind == "oversized" else 1)
            self.sent[kind] += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            info = self.client.publish(
                f"devices/{self.device}/live/status", b"", qos=1, retain=True
            )
            info.wait_for_publish(3)
        self.client.loop_stop()
        self.client.disconnect()
