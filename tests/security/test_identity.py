"""Device identity (issue 15, findings 4 and 5), on real parts: mosquitto with the shipped
configuration and ACL, the ingest with registered device keys, devices.

The attack as reported: a certificate whose CN contains '/' (``cam-d/up``) published into
cam-d's tree, pinned an attacker's key for cam-d (trust on first use), and a forged event was
shown as verified; the real cam-d was then refused. Now:

- the ACL names each device topic, so ``cam-d/up`` cannot publish cam-d's uploads (reason 135);
- the one pattern wildcard (the stream of ``up/seg/+``) cannot be made to name another suffix
  (``<cam-d>/up/seg`` + ``state``): the platform refuses those stream names, nothing is stored;
- the ingest takes device keys from its register (``--devices``): a device without one, even
  with a valid certificate, delivers nothing, and cam-d, registered, delivers everything.
"""

from __future__ import annotations

import threading
from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.uplink import protocol as proto
from agent.uplink.mqtt import LinkConfig, MqttLink
from agent.uplink.service import link_config
from tests.security import hostile
from tests.uplink.harness import (
    assert_delivered,
    make_device,
    make_platform,
    running_ingest,
    running_uplink,
    stored,
    unique_id,
)


def _as(pki: Pki, port: int, cn: str, name: str, stop: threading.Event) -> MqttLink:
    if not pki.client(name).cert.exists():
        pki.issue(cn, name=name)
    c = pki.client(name)
    return MqttLink(LinkConfig("127.0.0.1", port, cn, pki.ca, c.cert, c.key), stop)


def test_a_forged_identity_cannot_deliver_as_another_device(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    base = unique_id(tmp_path)[:20]
    real = make_device(tmp_path / "real", base + "-d", pki, platform, broker_alive.port)
    spool = real.open_spool()
    real.put(spool, "event", b'{"type":"genuine"}')
    # A device with a valid certificate but no registered key.
    rogue = make_device(tmp_path / "rogue", base + "-r", pki, platform, broker_alive.port)
    (platform.devices / f"{rogue.id}.pub").unlink()  # never registered with the platform
    rogue_spool = rogue.open_spool()
    rogue.put(rogue_spool, "event", b'{"type":"forged"}')
    t = proto.Topics(real.id)
    stop = threading.Event()
    slash_up = _as(pki, broker_alive.port, f"{real.id}/up", "slash-up", stop)
    slash_seg = _as(pki, broker_alive.port, f"{real.id}/up/seg", "slash-seg", stop)
    store = tmp_path / "store"
    forged = proto.encode_chunk(proto.ChunkHeader("event", 0, "b", hostile.H, 20, 0), b"x" * 20)
    try:
        with running_ingest(store, pki, broker_alive.port, platform) as ingest:
            for link in (slash_up, slash_seg):
                link.start()
            wait_for(lambda: slash_up.connected and slash_seg.connected, 20, "the forgers")
            # `<real>/up` owns no topic of `real`: refused by the broker.
            slash_up.publish(t.segment("event"), forged, qos=1)
            slash_up.publish(t.key, hostile.key_record(b"{}"), qos=1)
            wait_for(lambda: slash_up.outstanding() == 0, 10, "PUBACKs")
            refused = slash_up.failures()
            assert len(refused) == 2 and all("authori" in r.lower() for r in refused.values())
            # `<real>/up/seg` + `state` / `heads`: let through by the broker (those are its own
            # topics, devices/<real>/up/seg/state), refused by the platform.
            before = ingest.malformed
            for topic in (f"devices/{real.id}/up/seg/state", f"devices/{real.id}/up/seg/heads"):
                slash_seg.publish(topic, forged, qos=1)
            wait_for(lambda: ingest.malformed >= before + 2, 20, "the platform's refusal")
            # The unregistered device is refused; the registered one delivers.
            with running_uplink(real, spool), running_uplink(rogue, rogue_spool):
                wait_for(lambda: not spool.items(), 60, f"{real.id}'s delivery")
                wait_for(lambda: ingest.store.stats.rejected >= 1, 30, "the rogue's refusal")
            assert ingest.dead() == []
        assert len(rogue_spool.items()) == 1, "the refused evidence left the rogue's spool"
    finally:
        stop.set()
        for link in (slash_up, slash_seg):
            link.join()
        rogue_spool.close()
        spool.close()
    assert_delivered(store, real)
    assert stored(store, rogue.id) == {}
    assert not (store / rogue.id / "device.pub").exists(), "a key was pinned on first use"


def test_slash_cn_link_config_is_refused_on_the_device_side(tmp_path: Path, pki: Pki) -> None:
    """The agent never makes topics for an id the platform would refuse."""
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "d", "cam-ok", pki, platform, 1)
    cfg = link_config(dev.uplink, "cam-ok")
    assert cfg.client_id == "cam-ok"
    for bad in ("cam-ok/up", "..", "ingest", "+"):
        try:
            proto.Topics(bad)
        except Exception as exc:
            assert "device id" in str(exc)
            continue
        raise AssertionError(f"{bad!r} made topics")
