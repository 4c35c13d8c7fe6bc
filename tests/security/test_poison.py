"""One device's poison stalls nobody (issue 15, findings 1, 9 and 12), on real parts: mosquitto
with the shipped configuration and ACL, the ingest worker, a device's uplink.

- 1a: chunks whose ``seq`` is a 301-digit integer (and other malformed chunks), more of them
  than the ingest's MQTT receive maximum (64): each is acknowledged to the broker, so another
  device's segment still arrives, and a restarted worker is not handed them again;
- 1b: a key record whose manifest is 50,000-deep JSON does not end the ``ingest`` thread;
- 1c: a *retained* deep-JSON ``live/status`` does not end ``ingest-live``, at any start;
- 9: a chunk announcing a 1 TiB segment is refused at once, nothing is written for it;
- 12: ``talk listen`` survives a deep-JSON chunk header and ``issued = 1e300``.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.talk import wire
from agent.talk.platform import Listener
from agent.uplink import protocol as proto
from agent.uplink.control import load_ack_public
from agent.uplink.mqtt import MqttLink
from agent.uplink.service import link_config
from tests.security import hostile
from tests.uplink.harness import (
    Device,
    assert_delivered,
    ingest_config,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    unique_id,
)

POISON_CHUNKS = 100  # more than the ingest's receive maximum (64)


def _link(device: Device, stop: threading.Event) -> MqttLink:
    return MqttLink(link_config(device.uplink, device.id), stop)


def _publish_all(link: MqttLink, messages: list[tuple[str, bytes, bool]]) -> None:
    for topic, payload, retain in messages:
        assert link.publish(topic, payload, qos=1, retain=retain) is not None
    wait_for(lambda: link.outstanding() == 0, 30, "the broker's PUBACKs for the poison")
    refused = link.failures()
    assert not refused, f"the ACL refused poison on the device's own topics: {refused}"


def test_poison_from_one_device_stops_nobody(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    base = unique_id(tmp_path)
    good = make_device(tmp_path / "good", base[:20] + "-ok", pki, platform, broker_alive.port)
    evil = make_device(tmp_path / "evil", base[:20] + "-bad", pki, platform, broker_alive.port)
    spool = good.open_spool()
    for i in range(3):
        good.put(spool, "gps", f"fix {i} ".encode() * 50)
    good.put(spool, "still", hashlib.sha256(b"still").digest() * 20_000)  # several chunks
    t = proto.Topics(evil.id)
    poison: list[tuple[str, bytes, bool]] = [
        (t.segment("gps"), hostile.huge_seq_chunk(i), False) for i in range(POISON_CHUNKS)
    ]
    poison += [(t.segment("gps"), p, False) for p in hostile.chunk_payloads()]
    poison += [(t.key, p, False) for p in hostile.key_payloads()]
    poison += [(t.live("status"), p, False) for p in hostile.json_payloads()]
    poison += [(t.heads, p, False) for p in hostile.json_payloads()]
    poison += [(t.command_result, p, False) for p in hostile.json_payloads()]
    # Finding 1c: retained, so every ingest worker gets it again at every start.
    deep = hostile.deep_json(hostile.DEEP_SMALL)  # within the 64 KiB a live payload may have
    poison += [(t.live("status"), deep, True), (t.state, deep, True)]
    stop = threading.Event()
    link = _link(evil, stop)
    link.start()
    store_dir = tmp_path / "store"
    try:
        wait_for(lambda: link.connected, 20, "the attacker's connection")
        with running_ingest(store_dir, pki, broker_alive.port, platform) as ingest:
            wait_for(lambda: ingest.link.connected, 20, "the ingest's connection")
            _publish_all(link, poison)
            with running_uplink(good, spool):
                wait_for(lambda: not spool.items(), 60, "the good device's segments")
            wait_for(lambda: ingest.malformed >= POISON_CHUNKS, 60, "the poison to be handled")
            assert ingest.dead() == [], f"threads died: {ingest.dead()}"
        assert_delivered(store_dir, good)
        # Every poison message was acknowledged to the broker: a new worker on the same
        # session is not handed them again (only the retained ones, on its fresh
        # subscriptions, which it records or drops, and lives).
        with running_ingest(store_dir, pki, broker_alive.port, platform) as again:
            wait_for(lambda: again.live.dropped >= 2, 30, "the retained poison, once more")
            threading.Event().wait(2.0)
            assert again.malformed == 0, "unacknowledged poison was delivered again"
            assert again.dead() == [], f"threads died: {again.dead()}"
    finally:
        for topic in (t.live("status"), t.state):
            link.publish(topic, b"", qos=1, retain=True)  # clear the retained poison
        wait_for(lambda: link.outstanding() == 0, 10, "clearing the retained poison")
        stop.set()
        link.join()
        spool.close()


def test_a_1_tib_announcement_is_refused_up_front(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    evil = make_device(tmp_path / "evil", unique_id(tmp_path), pki, platform, broker_alive.port)
    t = proto.Topics(evil.id)
    stop = threading.Event()
    link = _link(evil, stop)
    acks = link.route(t.ack)
    link.start()
    store_dir = tmp_path / "store"
    header = proto.ChunkHeader("video", 0, "boot1", hostile.H, 1 << 40, 0)
    try:
        with running_ingest(store_dir, pki, broker_alive.port, platform):
            # Subscribed, not just connected: an answer published before the broker has the
            # acknowledgement route reaches no one (the CONNACK comes a round trip earlier).
            wait_for(lambda: link.subscribed, 20, "the device's acknowledgement route")
            link.publish(t.segment("video"), proto.encode_chunk(header, b"x" * 4096), qos=1)
            msg = acks.get(timeout=30)
            link.ack(msg)
            batch = proto.parse_acks(msg.payload, evil.id, load_ack_public(platform.ack_pub))
        assert batch.signed
        (reject,) = batch.acks
        assert isinstance(reject, proto.Reject) and "quota" in reject.reason, reject
        assert not (store_dir / evil.id / "partial").exists(), "bytes of it were kept"
    finally:
        stop.set()
        link.join()


def test_talk_listen_survives_deep_json_and_absurd_times(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    """Finding 12: the control room's listener, on the real broker. The device's registered key
    lets it check the signed validity window, so the absurd times are refused, not played."""
    from agent.storage.keys import load_signing_key

    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    stop = threading.Event()
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    # The talk ACL (deploy/mosquitto/edge-agent.acl): devices write devices/<id>/talk/out.
    listen_link = MqttLink(ingest_config(pki, broker_alive.port, INGEST_IDENTITY), stop)
    listener = Listener(
        listen_link,
        stop,
        out_dir=tmp_path / "heard",
        device_keys=platform.devices,
        on_event=events.put,
    )
    key = load_signing_key(dev.dir / "keys" / "device.key")
    body = b"OggS" + b"\x00" * 200
    topic = wire.out_topic(dev.id)

    def message(issued: float) -> list[bytes]:
        mid = wire.new_id()
        parts = wire.split(body, 64)
        msg = wire.describe(mid, body, len(parts), sender=wire.device_address(dev.id),
                            to=wire.PLATFORM, duration_s=1.0)  # fmt: skip
        msg["issued"] = issued
        chunks = [wire.Chunk(mid, i, False, p) for i, p in enumerate(parts[:-1])]
        chunks.append(wire.last_chunk(key, mid, len(parts) - 1, parts[-1], msg))
        return [c.encode() for c in chunks]

    deep_head = b"EAT1" + len(hostile.deep_json(1000)).to_bytes(2, "big") + hostile.deep_json(1000)
    device = _link(dev, stop)
    thread = threading.Thread(target=listener.run, name="talk-listen")
    try:
        listen_link.start()
        device.start()
        thread.start()
        wait_for(lambda: listen_link.subscribed and device.connected, 20, "connections")
        for payload in [deep_head, *message(1e300), *message(wire.MAX_TIME * 10.0)]:
            device.publish(topic, payload, qos=1)
        for payload in message(time.time()):
            device.publish(topic, payload, qos=1)
        seen = [events.get(timeout=30) for _ in range(3)]
        assert thread.is_alive(), "talk listen died"
        assert [e["event"] for e in seen] == ["rejected", "rejected", "message"], seen
        assert all("validity window" in e["reason"] for e in seen[:2]), seen
        assert seen[2]["verified"] is True and Path(seen[2]["path"]).read_bytes() == body
    finally:
        stop.set()
        thread.join(10)
        listen_link.join()
        device.join()
    assert not thread.is_alive()


def test_store_refuses_a_device_id_that_is_not_one(tmp_path: Path) -> None:
    """Finding 5: a certificate for '..' made the ingest write into the store's parent."""
    from agent.ingest.store import Store

    store = Store(tmp_path / "store", trust_on_first_use=True)
    h = proto.ChunkHeader("gps", 0, "b", hostile.H, 10, 0)
    for device in ("..", ".", "", "a/b", "ingest", "c\u00e4m", "x" * 65):
        for call in (
            lambda d=device: store.put_chunk(d, h, b"x" * 10),
            lambda d=device: store.put_key(d, b"x"),
            lambda d=device: store.seg_path(d, "gps", 0),
        ):
            try:
                call()
            except AgentError:
                continue
            raise AssertionError(f"device id {device!r} was accepted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".tmp"]


def test_talk_listen_writes_nowhere_for_a_device_id_that_is_not_one(tmp_path: Path) -> None:
    """Finding 5 in talk: a certificate for '..' publishing on devices/../talk/out."""
    from agent.uplink.mqtt import Inbound, LinkConfig

    stop = threading.Event()
    events: list[dict[str, Any]] = []
    link = MqttLink(LinkConfig("127.0.0.1", 1, "listen", tls=False), stop)
    out = tmp_path / "heard" / "inner"
    listener = Listener(link, stop, out_dir=out, on_event=events.append)
    body = b"OggS" + b"\x00" * 40
    for device in ("..", ".", "ingest"):
        mid = wire.new_id()
        msg = wire.describe(mid, body, 1, sender=f"device:{device}", to=wire.PLATFORM,
                            duration_s=1.0)  # fmt: skip
        chunk = wire.Chunk(mid, 0, True, body, msg, "00" * 64)
        listener.handle(Inbound(f"devices/{device}/talk/out", chunk.encode(), 1, 1, 0))
    assert events == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == [], "something was written"
