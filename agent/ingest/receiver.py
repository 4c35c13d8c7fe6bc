"""``edge-agent ingest``: subscribe, reassemble, verify, store, and only then acknowledge.

One MQTT 5 shared subscription (``$share/<group>/devices/+/up/#``) lets several workers split
the devices' traffic on one broker or a cluster; they may share one store (see
:mod:`agent.ingest.store`). The device id is taken from the topic, which the broker's ACL
(``pattern write devices/%u/up/...`` with ``use_identity_as_username``) ties to the device's
certificate; it must be a valid id (agent.ids), and the store then requires the manifest and
key record to name the same device and be signed by its registered key.

Acknowledgements: the platform's acknowledgements of one batch are sent to each device as one
message signed with the platform's ack key (Ed25519, ``--ack-key``); a device deletes a
segment only on such a signed acknowledgement naming its exact (device, stream, seq, hash).

Bundles (protocol 3): a message on a stream's topic may carry several whole small segments
(agent.uplink.protocol.decode_bundle); each is stored and acknowledged as if it had come as a
chunk of its own, in the same signed acknowledgement batch.

Containment (agent.contain): every message is handled inside its own ``try``; whatever it
does, it is logged and acknowledged to the broker (PUBACK) at the end of its batch, so one
device's poison never holds one of the 64 slots of the broker's receive maximum, and the next
device's segment is handled next.

What is durable, and what the device is told:

- a message whose contents were stored is acknowledged to the broker only after its batch was
  made durable (one ``syncfs``), and only then are the platform's acknowledgements published;
- a **transient store error** (a full or failing disk: ``OSError``) is retried twice within
  the batch; if it persists the device is answered ``retry`` (``after_s``): it keeps the
  segment or key record and sends it again later, from the last byte the platform confirmed.
  The broker message is acknowledged all the same: nothing is lost, because a device deletes
  nothing without a signed ``seg`` acknowledgement;
- if making the batch durable fails, every acknowledgement of the batch that claimed
  durability (``seg``, ``progress``, ``key``) is replaced by ``retry``;
- a message that is malformed, or that makes the store fail in an unexpected way, is logged
  once per kind with its traceback; a chunk or key record that can still be addressed is
  answered ``retry`` (or ``reject`` by the store when it is refused).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import ids
from agent.contain import Failures, dead
from agent.errors import FormatError
from agent.ingest.compact_in import CompactSegments
from agent.ingest.heads import HeadsBook
from agent.ingest.livestate import LiveRecorder
from agent.ingest.store import Store
from agent.loops.guard import Guard
from agent.uplink import compact
from agent.uplink import protocol as proto
from agent.uplink.mqtt import Inbound, LinkConfig, MqttLink

log = logging.getLogger(__name__)

BATCH = 128  # messages stored per group commit (one syncfs) before their acknowledgements
STORE_ATTEMPTS = 3  # tries of one message when the store's disk fails (OSError)
STORE_RETRY_WAITS_S = (0.05, 0.25)
RETRY_AFTER_S = 30  # what a device is told to wait when the store cannot take its message
SWEEP_EVERY_S = 600.0  # expire idle uploads, look for missing stream heads


def _as_retry(ack: proto.Ack, why: str, after_s: int) -> proto.Ack:
    """The acknowledgement to send instead of ``ack`` when what it claims is not durable."""
    if isinstance(ack, proto.SegmentAck | proto.Progress):
        return proto.Retry("seg", why, after_s, ack.stream, ack.seq, ack.hash, 0)
    if isinstance(ack, proto.KeyAck):
        return proto.Retry("key", why, after_s, key_id=ack.key_id)
    return ack


class Ingest:
    """One ingest worker: an MQTT link and a thread feeding the store."""

    def __init__(
        self,
        store: Store,
        cfg: LinkConfig,
        stop: threading.Event,
        *,
        group: str = "ingest",
        ack_key: Ed25519PrivateKey | None = None,
        retry_after_s: int = RETRY_AFTER_S,
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self.store = store
        self.stop = stop
        self.ack_key = ack_key
        self.retry_after_s = retry_after_s
        self.sweep_every_s = sweep_every_s
        self.link = MqttLink(cfg, stop)
        self.inbox = self.link.route(f"$share/{group}/{proto.UP_FILTER}", qos=1)
        self.heads = HeadsBook(store)
        self.compact = CompactSegments(store)  # protocol 4 (compact_in.py)
        self.live = LiveRecorder(store.root, self.link, stop, heads=self.heads)
        self.failures = Failures("ingest", log)
        self.malformed = 0
        self.retries_sent = 0
        self._swept_at = -1e18
        self._thread: threading.Thread | None = None
        self._link_thread: threading.Thread | None = None
        if ack_key is None:
            log.warning(
                "ingest: no ack key (--ack-key): acknowledgements go out unsigned; devices "
                "provisioned with the platform's ack key ignore them and delete nothing"
            )

    def start(self) -> None:
        self._link_thread = self.link.start()
        self.live.start()
        self._thread = threading.Thread(
            target=Guard("ingest", self.stop, log).run, args=(self.step,), name="ingest"
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self.link.join(timeout)
        self.live.join(timeout)

    def dead(self) -> list[str]:
        """The worker's threads that have ended (while not stopping: a reason to exit)."""
        return dead((self._thread, self._link_thread, self.live.thread))

    # ------------------------------------------------------------------ the loop

    def step(self) -> None:
        """One round: sweep when due, then one batch of messages (waits briefly for one)."""
        now = time.monotonic()
        if now - self._swept_at >= self.sweep_every_s:
            self._swept_at = now
            self.sweep()
        try:
            first = self.inbox.get(timeout=0.5)
        except queue.Empty:
            return
        batch = [first]
        while len(batch) < BATCH:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        self._handle_batch(batch)

    def sweep(self) -> None:
        """Drop idle uploads past their expiry; report stream heads missing from the store."""
        try:
            self.store.expire_partials()
        except Exception as exc:
            self.failures("expiring idle uploads", exc)
        try:
            self.heads.check_all()
        except Exception as exc:
            self.failures("checking stream heads", exc)

    def _handle_batch(self, batch: list[Inbound]) -> None:
        """Store a batch, make it durable together, answer the devices, acknowledge it all."""
        results: list[tuple[str, list[proto.Ack]]] = []
        self.compact.begin_batch()
        try:
            try:
                failing = [False]
                with self.store.batch():
                    for msg in batch:
                        results.append(self._handle_one(msg, failing))
            except OSError as exc:
                log.error("ingest: cannot make a batch of %d durable: %s", len(batch), exc)
                why = f"the platform's store failed: {exc}"[:300]
                results = [
                    (d, [_as_retry(a, why, self.retry_after_s) for a in acks])
                    for d, acks in results
                ]
            self._answer(results)
        except Exception as exc:  # publishing, or a bug above: never the thread
            self.failures(f"a batch of {len(batch)}", exc)
        finally:
            for msg in batch:
                self.link.ack(msg)

    def _answer(self, results: list[tuple[str, list[proto.Ack]]]) -> None:
        by_device: dict[str, list[proto.Ack]] = {}
        for device, acks in results:
            if device and acks:
                by_device.setdefault(device, []).extend(acks)
        for device in self.compact.plain:
            by_device.setdefault(device, [])
        for device, all_acks in by_device.items():
            self.retries_sent += sum(isinstance(a, proto.Retry) for a in all_acks)
            topic = proto.Topics(device).ack
            # protocol 4: a device that sent compact segments is answered compactly
            # (compact_in.py); what the compact form does not carry goes as JSON.
            # QoS 0: a lost one (only when the device's connection drops) is asked again by
            # the device's resend, answered "duplicate"; a PUBACK each would cost 26 bytes.
            short, acks = self.compact.answers(device, all_acks, self.ack_key)
            for payload in short:
                if self.link.publish(topic, payload, qos=0) is None:
                    log.debug("ingest: not connected; %s will ask again", device)
            if not acks:
                continue
            for payload in proto.encode_acks(device, acks, self.ack_key):
                if self.link.publish(topic, payload, qos=1) is None:
                    log.debug("ingest: not connected; %s will ask again", device)

    def _handle_one(self, msg: Inbound, failing: list[bool]) -> tuple[str, list[proto.Ack]]:
        """One message, contained: (device, acknowledgements); never raises."""
        attempts = 1 if failing[0] else STORE_ATTEMPTS
        for attempt in range(attempts):
            try:
                return self.handle(msg)
            except OSError as exc:
                if attempt + 1 < attempts:
                    self.stop.wait(STORE_RETRY_WAITS_S[min(attempt, len(STORE_RETRY_WAITS_S) - 1)])
                    continue
                failing[0] = True
                log.error("ingest: store error on %s: %s", msg.topic[:200], exc)
                return self._retry(msg, f"the platform's store failed: {exc}"[:300])
            except Exception as exc:
                self.failures(f"the message on {msg.topic[:200]}", exc)
                return self._retry(msg, f"the platform could not handle it ({type(exc).__name__})")
        return "", []  # not reached

    def _retry(self, msg: Inbound, why: str) -> tuple[str, list[proto.Ack]]:
        """A ``retry`` answer to whatever ``msg`` was, where it can be addressed."""
        try:
            topic = proto.parse_topic(msg.topic)
            if topic.kind == "seg":
                acks: list[proto.Ack] = []
                for h, _data in self._chunks(topic, msg.payload):
                    nxt = self.store.durable_next(topic.device_id, h)
                    acks.append(
                        proto.Retry("seg", why, self.retry_after_s, h.stream, h.seq, h.hash, nxt)
                    )
                return topic.device_id, acks
            if topic.kind == "key":
                from agent.storage.seal import parse_key_record

                kid = parse_key_record(msg.payload).key_id
                if ids.KEY_ID_RE.match(kid):
                    return topic.device_id, [
                        proto.Retry("key", why, self.retry_after_s, key_id=kid)
                    ]
        except Exception:  # not addressable: the device resends after its ack timeout
            pass
        return "", []

    @staticmethod
    def _chunks(
        topic: proto.ParsedTopic, payload: bytes
    ) -> list[tuple[proto.ChunkHeader, memoryview]]:
        """The chunks of a segment message: one chunk, or a bundle's whole segments (protocol
        3), each of the topic's stream; FormatError (for all of it) otherwise."""
        if proto.is_bundle(payload):
            chunks = proto.decode_bundle(payload)
        else:
            chunks = [proto.decode_chunk(payload)]
        for header, _data in chunks:
            if header.stream != topic.arg:
                raise FormatError(
                    f"{header.label} on the topic of stream {topic.arg} names another stream"
                )
        return chunks

    def handle(self, msg: Inbound) -> tuple[str, list[proto.Ack]]:
        """Store one message: (device, acknowledgements to publish once it is durable).

        Raises OSError for a transient store failure; anything else it raises is a bug the
        caller contains.
        """
        try:
            topic = proto.parse_topic(msg.topic)
        except FormatError as exc:
            self.malformed += 1
            log.warning("ingest: ignoring %s", exc)
            return "", []
        acks: list[proto.Ack] = []
        if topic.kind == "seg" and compact.is_compact(msg.payload):
            try:
                return topic.device_id, self.compact.put(topic.device_id, topic.arg, msg.payload)
            except FormatError as exc:
                self.malformed += 1
                log.warning("ingest: dropping a compact segment from %s: %s", topic.device_id, exc)
                return "", []
        if topic.kind == "seg":
            try:
                chunks = self._chunks(topic, msg.payload)
            except FormatError as exc:
                self.malformed += 1
                log.warning("ingest: dropping a chunk from %s: %s", topic.device_id, exc)
                return "", []
            for header, data in chunks:
                acks += self.store.put_chunk(topic.device_id, header, data)
        elif topic.kind == "key" and compact.is_compact_key(msg.payload):
            try:
                acks = self.compact.put_key(topic.device_id, msg.payload)
            except FormatError as exc:
                self.malformed += 1
                log.warning(
                    "ingest: dropping a compact key record from %s: %s", topic.device_id, exc
                )
                return "", []
        elif topic.kind == "key":
            ack = self.store.put_key(topic.device_id, msg.payload)
            acks = [ack] if ack is not None else []
        elif topic.kind == "cmd-result":
            log.info("ingest: %s answered a command: %r", topic.device_id, msg.payload[:500])
            return "", []
        else:
            return "", []
        return topic.device_id, acks
