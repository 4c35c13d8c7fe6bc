"""``edge-agent ingest``: subscribe, reassemble, verify, store, and only then acknowledge.

One MQTT 5 shared subscription (``$share/<group>/devices/+/up/#``) lets several workers split
the devices' traffic on one broker or a cluster; they may share one store (see
:mod:`agent.ingest.store`). The device id is taken from the topic, which the broker's ACL
(``pattern readwrite devices/%u/#`` with ``use_identity_as_username``) ties to the device's
certificate; the store then requires the manifest and key record to name the same device.

Each message is acknowledged to the broker (PUBACK, manual) only after the store has written
what it carried and the platform's acknowledgements have been published; a crash in between
makes the broker deliver it again, and the store recognises the duplicate.
"""

from __future__ import annotations

import logging
import queue
import threading

from agent.errors import AgentError, FormatError
from agent.ingest.livestate import LiveRecorder
from agent.ingest.store import Store
from agent.uplink import protocol as proto
from agent.uplink.mqtt import Inbound, LinkConfig, MqttLink

log = logging.getLogger(__name__)

BATCH = 128  # messages stored per group commit (one syncfs) before their acknowledgements


class Ingest:
    """One ingest worker: an MQTT link and a thread feeding the store."""

    def __init__(
        self, store: Store, cfg: LinkConfig, stop: threading.Event, *, group: str = "ingest"
    ) -> None:
        self.store = store
        self.stop = stop
        self.link = MqttLink(cfg, stop)
        self.inbox = self.link.route(f"$share/{group}/{proto.UP_FILTER}", qos=1)
        self.live = LiveRecorder(store.root, self.link, stop)
        self.malformed = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.link.start()
        self.live.start()
        self._thread = threading.Thread(target=self.run, name="ingest")
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self.link.join(timeout)
        self.live.join(timeout)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                first = self.inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self._handle_batch(batch)

    def _handle_batch(self, batch: list[Inbound]) -> None:
        """Store a batch, make it durable together, and only then acknowledge it."""
        done: list[tuple[Inbound, list[tuple[str, proto.Ack]]]] = []
        try:
            with self.store.batch():
                for msg in batch:
                    try:
                        done.append((msg, self.handle(msg)))
                    except AgentError as exc:
                        log.error("ingest: %s: %s", msg.topic, exc)
                        # not acknowledged: the broker or the device will send it again
                    except OSError as exc:
                        log.error("ingest: store error on %s: %s", msg.topic, exc)
        except OSError as exc:
            log.error("ingest: cannot make the batch durable: %s", exc)
            return  # nothing acknowledged: it will all come again
        for msg, acks in done:
            for topic, ack in acks:
                if self.link.publish(topic, proto.encode_ack(ack), qos=1) is None:
                    log.debug("ingest: not connected; the device will ask again")
            self.link.ack(msg)

    def handle(self, msg: Inbound) -> list[tuple[str, proto.Ack]]:
        """Store one message; returns the (topic, ack) pairs to publish once it is durable."""
        try:
            topic = proto.parse_topic(msg.topic)
        except FormatError as exc:
            self.malformed += 1
            log.warning("ingest: ignoring %s", exc)
            return []
        acks: list[proto.Ack] = []
        if topic.kind == "seg":
            try:
                header, data = proto.decode_chunk(msg.payload)
            except FormatError as exc:
                self.malformed += 1
                log.warning("ingest: dropping a chunk from %s: %s", topic.device_id, exc)
                return []
            if header.stream != topic.arg:
                self.malformed += 1
                log.warning(
                    "ingest: chunk from %s on stream topic %s names stream %s; dropped",
                    topic.device_id,
                    topic.arg,
                    header.stream,
                )
                return []
            acks = self.store.put_chunk(topic.device_id, header, data)
        elif topic.kind == "key":
            ack = self.store.put_key(topic.device_id, msg.payload)
            acks = [ack] if ack is not None else []
        elif topic.kind == "cmd-result":
            log.info("ingest: %s answered a command: %s", topic.device_id, msg.payload[:500])
            return []
        else:
            return []
        out = proto.Topics(topic.device_id).ack
        return [(out, ack) for ack in acks]
