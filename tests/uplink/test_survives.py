"""Issue 21: the uplink's long-lived loops survive any exception (agent/loops/guard.py).

Against the real broker: a forwarding round whose spool raises (a bug, not a storage error)
and a command loop whose inbox raises leave their threads alive; each outage raises one
``thread_failing`` alarm and one ``thread_recovered`` once a round goes through, and what
waited (the spool's segments, the queued command) is delivered afterwards.
"""

from __future__ import annotations

import errno
import json
import queue
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from agent.loops.guard import FAILING_ALARM, RECOVERED_ALARM
from agent.model import Alarm
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool, SpoolItem
from agent.uplink import protocol as proto
from agent.uplink.control import (
    CommandChannel,
    SeenIds,
    init_command_keys,
    load_command_private,
    sign_command,
)
from agent.uplink.mqtt import Inbound, MqttLink
from agent.uplink.service import Uplink, link_config
from tests.fixtures.pki import OPERATOR
from tests.uplink.harness import (
    all_delivered,
    ingest_config,
    make_device,
    make_platform,
    running_ingest,
    unique_id,
)


class FaultySpool(Spool):
    """The real spool, whose index read raises a bug's exception the first ``faults`` times."""

    faults = 3

    def next_ready(self, priority: Sequence[str] = (), limit: int = 1) -> list[SpoolItem]:
        if self.faults > 0:
            self.faults -= 1
            raise ZeroDivisionError("injected: a bug in the index read")
        return super().next_ready(priority, limit)


class FaultyInbox(queue.Queue[Inbound]):
    """The command route's queue, whose ``get`` raises EIO the first ``faults`` times."""

    def __init__(self, real: queue.Queue[Inbound], faults: int) -> None:
        super().__init__()
        self.real = real
        self.faults = faults

    def get(self, block: bool = True, timeout: float | None = None) -> Inbound:
        if self.faults > 0:
            self.faults -= 1
            raise OSError(errno.EIO, "injected: the inbox failed")
        return self.real.get(block, timeout)


def _kinds(alarms: list[Alarm], thread: str) -> list[str]:
    return [a.kind for a in alarms if a.details.get("thread") == thread]


def test_a_failing_forwarding_round_keeps_the_thread_and_delivers_later(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    spool = FaultySpool(SpoolSettings(dir=dev.spool_dir), dev.sealer())
    dev.fill(spool, video_mib=1, videos=1, gps=5)
    alarms: list[Alarm] = []
    stop = threading.Event()
    up = Uplink(
        dev.uplink,
        device_id=dev.id,
        boot_id="boot1",
        spool=spool,
        stop=stop,
        alarm=alarms.append,
    )
    store_dir = tmp_path / "store"
    try:
        with running_ingest(store_dir, pki, broker_alive.port, platform):
            up.start()
            wait_for(lambda: spool.faults == 0, 30, "the injected failures")
            assert up.is_alive()
            wait_for(lambda: not spool.items(), 60, "the spool to drain")
            assert up.is_alive()
    finally:
        stop.set()
        up.join()
    assert all_delivered(store_dir, dev)
    spool.close()
    assert _kinds(alarms, "uplink-forwarder") == [FAILING_ALARM, RECOVERED_ALARM]
    failing = next(a for a in alarms if a.kind == FAILING_ALARM)
    assert "ZeroDivisionError" in failing.message


def test_a_failing_command_loop_keeps_the_thread_and_answers_later(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    keyfile = init_command_keys(tmp_path / "cmdkeys")
    platform = make_platform(tmp_path / "platform")
    dev = make_device(tmp_path / "dev", unique_id(tmp_path), pki, platform, broker_alive.port)
    topics = proto.Topics(dev.id)
    stop = threading.Event()
    link = MqttLink(link_config(dev.uplink, dev.id), stop)
    inbox = FaultyInbox(link.route(topics.command), faults=2)
    channel = CommandChannel(
        dev.id,
        load_command_private(keyfile).public_key(),
        SeenIds(tmp_path / "seen.json"),
    )
    alarms: list[Alarm] = []
    thread = threading.Thread(
        target=channel.serve, args=(link, inbox, stop, alarms.append), name="uplink-commands"
    )
    ops = MqttLink(
        replace(ingest_config(pki, broker_alive.port, OPERATOR), session_expiry_s=0), stop
    )
    answers = ops.route(topics.command_result)
    link.start()
    ops.start()
    thread.start()
    try:
        wait_for(lambda: inbox.faults == 0, 20, "the injected failures")
        assert thread.is_alive()
        wait_for(lambda: link.subscribed and ops.subscribed, 30, "the subscriptions")
        ping = sign_command(load_command_private(keyfile), dev.id, "ping")
        ops.publish(topics.command, ping)
        msg = answers.get(timeout=30)
        ops.ack(msg)
        answer = json.loads(msg.payload)
        assert answer["id"] == json.loads(ping)["id"] and answer["ok"] is True
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
        link.join()
        ops.join()
    assert not thread.is_alive()
    assert _kinds(alarms, "uplink-commands") == [FAILING_ALARM, RECOVERED_ALARM]
