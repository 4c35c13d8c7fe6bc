"""Acknowledgements are signed (issue 15, finding 6): a fake ack deletes nothing.

On the real broker: a client that may publish on ``devices/<id>/down/ack`` (a platform
identity, or any client under a misconfigured ACL) sends the device acknowledgements for
segments it holds: unsigned (protocol v1 and v2), signed by another key, and signed by the
platform's ack key but for another device. The device deletes nothing and counts each one.
Then the real ingest, with the platform's ack key, stores the segments and the device's spool
empties: the control that the same segments are deletable by a genuine acknowledgement.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.uplink import protocol as proto
from agent.uplink.control import load_ack_private
from agent.uplink.mqtt import MqttLink
from tests.fixtures.pki import OPERATOR
from tests.uplink.harness import (
    assert_delivered,
    ingest_config,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    unique_id,
)


def test_forged_acknowledgements_delete_nothing(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = dev.open_spool()
    for i in range(4):
        dev.put(spool, "gps", f"fix {i} ".encode() * 40)
    items = spool.items()
    acks: list[proto.Ack] = [
        proto.SegmentAck(i.stream, i.seq, i.manifest_hash, "stored") for i in items
    ]
    acks.append(proto.KeyAck(items[0].key_id))
    genuine = load_ack_private(platform.ack_key)
    forged = [
        *(proto.encode_ack(a) for a in acks),  # protocol v1, unsigned
        *proto.encode_acks(dev.id, acks, None),  # v2 without a signature
        *proto.encode_acks(dev.id, acks, Ed25519PrivateKey.generate()),  # another key
        *proto.encode_acks("cam-other", acks, genuine),  # the platform's, for another device
    ]
    # The right signature over other content: a signed batch with one seq changed.
    tampered = proto.encode_acks(dev.id, acks[:1], genuine)[0].replace(
        f'"seq":{items[0].seq}'.encode(), f'"seq":{items[1].seq}'.encode()
    )
    forged.append(tampered)
    stop = threading.Event()
    attacker = MqttLink(ingest_config(pki, broker_alive.port, OPERATOR), stop)
    try:
        with running_uplink(dev, spool) as up:
            attacker.start()
            wait_for(lambda: attacker.connected and up.link.connected, 20, "connections")
            for payload in forged:
                attacker.publish(proto.Topics(dev.id).ack, payload, qos=1)
            fwd = up.forwarder
            wait_for(lambda: fwd.stats.forged_acks >= len(forged), 30, "the forged acks")
            assert up.forwarder.acks_signed
            assert fwd.stats.segments_acked == 0 and fwd.stats.keys_acked == 0
            assert len(spool.items()) == len(items), "a forged acknowledgement deleted evidence"
            assert not spool.key_acked(items[0].key_id)
        # The control: the real ingest's signed acknowledgements do delete them.
        store_dir = tmp_path / "store"
        with (
            running_ingest(store_dir, pki, broker_alive.port, platform),
            running_uplink(dev, spool),
        ):
            wait_for(lambda: not spool.items(), 60, "the genuine acknowledgements")
        assert_delivered(store_dir, dev)
    finally:
        stop.set()
        attacker.join()
        spool.close()
