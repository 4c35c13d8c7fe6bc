"""The control room's side: send a message to a device or a group and follow its receipts;
listen to what devices send, reassemble, verify, save or play.

Both use one :class:`MqttLink` (the platform's certificate identity, e.g. ``ingest``); routes
are added before the link starts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import ids
from agent.contain import Failures
from agent.errors import AgentError, FormatError, UplinkError, VerificationError
from agent.loops.guard import Guard
from agent.talk import wire
from agent.uplink.mqtt import Inbound, MqttLink

log = logging.getLogger(__name__)

FINAL = ("played", "rejected", "not_played")
RESEND_EVERY_S = 0.5


def wait_connected(link: MqttLink, stop: threading.Event, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not link.connected:
        if time.monotonic() > deadline or stop.is_set():
            raise UplinkError(f"could not connect to the broker within {timeout:g} s")
        stop.wait(0.05)


def publish_all(
    link: MqttLink, topic: str, payloads: list[bytes], stop: threading.Event, timeout: float
) -> None:
    """Publish each payload (QoS 1), waiting out short disconnections."""
    deadline = time.monotonic() + timeout
    for p in payloads:
        while link.publish(topic, p, qos=1) is None:
            if time.monotonic() > deadline or stop.is_set():
                raise UplinkError(f"not connected: could not publish to {topic}")
            stop.wait(0.05)


@dataclass
class SendResult:
    id: str
    receipts: list[dict[str, Any]]

    def statuses(self, device: str | None = None) -> list[str]:
        return [r["status"] for r in self.receipts if device is None or r["device"] == device]


def send_message(
    link: MqttLink,
    receipts: queue.Queue[Inbound],
    chunks: list[wire.Chunk],
    topic: str,
    stop: threading.Event,
    *,
    wait_s: float = 60.0,
    device: str | None = None,
    expect: int = 0,
    on_receipt: Callable[[dict[str, Any]], None] = lambda r: None,
) -> SendResult:
    """Publish a signed message; resend what receipts say is missing; return the receipts.

    Returns when the device (``device``) reported a final status, when ``expect`` devices of a
    group did, or after ``wait_s``.
    """
    mid = chunks[0].id
    encoded = [c.encode() for c in chunks]
    publish_all(link, topic, encoded, stop, wait_s)
    result = SendResult(mid, [])
    finished: set[str] = set()
    resent_at: dict[str, float] = {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not stop.is_set():
        try:
            msg = receipts.get(timeout=0.1)
        except queue.Empty:
            continue
        link.ack(msg)
        try:
            r = wire.parse_json(msg.payload, "receipt")
        except FormatError:
            continue
        if r.get("id") != mid:
            continue
        result.receipts.append(r)
        on_receipt(r)
        who, status = str(r.get("device")), r.get("status")
        if status == "incomplete" and not r.get("final"):
            now = time.monotonic()
            if now - resent_at.get(who, -1e9) >= RESEND_EVERY_S:
                resent_at[who] = now
                have = set(r.get("have") or [])
                missing = [e for i, e in enumerate(encoded) if i not in have]
                log.info("talk: %s lacks %d chunks of %s: resending", who, len(missing), mid)
                publish_all(link, topic, missing, stop, wait_s)
        if status in FINAL or (status == "incomplete" and r.get("final")):
            finished.add(who)
            if device is not None and who == device:
                break
            if expect and len(finished) >= expect:
                break
    return result


class Listener:
    """Reassembles what devices send (``devices/+/talk/out``), asks for missing chunks, verifies
    (against ``<device_keys>/<device>.pub`` when there), saves ``.ogg`` files and/or plays them.
    ``on_event`` gets one dict per message: ``{"event": "message"|"incomplete"|"rejected"}``.
    """

    def __init__(
        self,
        link: MqttLink,
        stop: threading.Event,
        *,
        out_dir: Path | None = None,
        device_keys: Path | None = None,
        play: Callable[[bytes], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] = lambda e: None,
        gap_s: float = 1.0,
        resume_s: float = 30.0,
        max_bytes: int = 8 << 20,
    ) -> None:
        self.link = link
        self.stop = stop
        self.out_dir = out_dir
        self.device_keys = device_keys
        self._play = play
        self._on_event = on_event
        self.gap_s = gap_s
        self.resume_s = resume_s
        self.max_bytes = max_bytes
        self.inbox = link.route(wire.OUT_FILTER)
        self._reasm: dict[str, wire.Reassembler] = {}
        self._keys: dict[str, Ed25519PublicKey | None] = {}
        self.failures = Failures("talk listen", log)
        self.chunk_times: dict[str, list[float]] = {}  # id -> monotonic arrival of each chunk

    def run(self) -> None:
        """Thread body. Each message is contained (agent.contain): whatever it does is logged,
        it is acknowledged to the broker, and the next one is handled."""
        Guard("talk listen", self.stop, log).run(self.step)

    def step(self) -> None:
        try:
            msg = self.inbox.get(timeout=0.05)
        except queue.Empty:
            msg = None
        if msg is not None:
            try:
                self.handle(msg)
            except Exception as exc:
                self.failures(f"the message on {msg.topic[:200]}", exc)
            finally:
                self.link.ack(msg)
        self._check_stale(time.monotonic())

    def handle(self, msg: Inbound) -> None:
        now = time.monotonic()
        try:
            device = wire.device_of(msg.topic)
            chunk = wire.parse_chunk(msg.payload)
        except FormatError as exc:
            log.warning("talk listen: bad message on %s: %s", msg.topic, exc)
            return
        self.chunk_times.setdefault(chunk.id, []).append(now)
        reasm = self._reasm.setdefault(device, wire.Reassembler(self.max_bytes))
        if reasm.finished(chunk.id) is not None:
            return
        try:
            done = reasm.add(chunk, msg.topic, now)
        except FormatError as exc:
            reasm.finish(chunk.id, "rejected")
            self._on_event(
                {"event": "rejected", "device": device, "id": chunk.id, "reason": str(exc)}
            )
            return
        if done is not None:
            self._complete(device, reasm, done)

    def _device_key(self, device: str) -> Ed25519PublicKey | None:
        if device not in self._keys:
            key = None
            if self.device_keys is not None:
                path = ids.contained(self.device_keys, f"{device}.pub")
                if path.exists():
                    from agent.storage.keys import load_verify_key

                    key = load_verify_key(path)
            self._keys[device] = key
        return self._keys[device]

    def _complete(self, device: str, reasm: wire.Reassembler, done: wire.Complete) -> None:
        event: dict[str, Any] = {
            "device": device,
            "id": done.id,
            "duration_s": done.msg.get("duration_s"),
            "bytes": len(done.body),
            "chunks": done.msg.get("n"),
        }
        try:
            if done.msg.get("from") != wire.device_address(device):
                raise VerificationError(f"claims to be from {done.msg.get('from')!r}")
            key = self._device_key(device)
            if key is not None:
                wire.verify(done, key, now=time.time())
                event["verified"] = True
            else:
                import hashlib

                if hashlib.sha256(done.body).hexdigest() != done.msg.get("sha256"):
                    raise VerificationError("the bytes do not match the SHA-256")
                event["verified"] = False  # integrity checked, signer not (no pinned key)
        except (VerificationError, AgentError) as exc:
            reasm.finish(done.id, "rejected")
            self._on_event({"event": "rejected", **event, "reason": str(exc)})
            return
        reasm.finish(done.id, "complete")
        if self.out_dir is not None:
            issued = done.msg.get("issued")
            when = float(issued) if wire.valid_time(issued) else time.time()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
            path = ids.contained(self.out_dir, device, f"{stamp}-{done.id}.ogg")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(done.body)
            tmp.replace(path)
            event["path"] = str(path)
        self._on_event({"event": "message", **event})
        if self._play is not None:
            try:
                self._play(done.body)
            except AgentError as exc:
                log.warning("talk listen: cannot play %s: %s", done.id, exc)

    def _check_stale(self, now: float) -> None:
        for device, reasm in self._reasm.items():
            for p in reasm.stale(now, self.gap_s):
                if now - p.progress_at >= self.resume_s:
                    reasm.finish(p.id, "incomplete")
                    self._on_event(
                        {
                            "event": "incomplete",
                            "device": device,
                            "id": p.id,
                            "have": p.have(),
                            "n": p.n,
                        }
                    )
                elif now - p.asked_at >= self.gap_s:
                    p.asked_at = now
                    missing = p.missing() if p.n is not None else []
                    self.link.publish(
                        wire.ctl_topic(device), wire.resend_request(p.id, missing), qos=1
                    )
