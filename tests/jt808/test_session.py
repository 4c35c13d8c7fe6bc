"""The terminal against the reference platform over real TCP: registration and authentication,
heartbeat, reports and their answers, parameters, position queries, text messages, SOS,
batches refused, TLS."""

from __future__ import annotations

import json
import os
import ssl
import stat
import struct
import time

import pytest

from agent.gps.settings import StrategySettings
from agent.jt808 import messages as m
from agent.jt808.location import ALARM_SOS
from agent.labs.broker import Pki
from agent.labs.jt808_platform import ReferencePlatform
from agent.model import Alarm, Severity
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet
from tests.fleet.harness import sealed_events
from tests.jt808.conftest import PHONE, Rig, fix, wait


def dword(v: int) -> bytes:
    return struct.pack(">I", v)


def test_registers_once_keeps_the_code_and_authenticates(
    rig: Rig, platform: ReferencePlatform
) -> None:
    t = rig.terminal(platform.address)
    assert wait(lambda: t.client.stats.authenticated)
    (reg,) = platform.registrations
    assert reg == m.Registration(44, 300, "EDGEA", "edge-agent", "TRK0007", 2, "粤B12345")
    (auth,) = platform.authentications
    assert auth.code == platform.code and auth.imei == "860000000000017"
    assert auth.software.startswith("edge-agent")
    # the code is kept durably, readable by the agent only
    path = t.dir / "auth.json"
    assert json.loads(path.read_text())["code"] == platform.code
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert platform.terminals[PHONE.rjust(20, "0")].v2019
    rig.stop(t)
    # a restart authenticates with the kept code, without registering again
    t2 = rig.terminal(platform.address)
    assert wait(lambda: t2.client.stats.authenticated)
    assert len(platform.registrations) == 1 and len(platform.authentications) == 2


def test_a_refused_authentication_registers_again(rig: Rig, platform: ReferencePlatform) -> None:
    t = rig.terminal(platform.address)
    assert wait(lambda: t.client.stats.authenticated)
    rig.stop(t)
    platform.code = "NEW-CODE"  # the platform forgot the terminal (re-provisioned)
    t2 = rig.terminal(platform.address)
    assert wait(lambda: t2.client.stats.authenticated)
    assert [a.code for a in platform.authentications] == [
        "EA-LAB-AUTH-1",
        "EA-LAB-AUTH-1",
        "NEW-CODE",
    ]
    assert len(platform.registrations) == 2


def test_a_refused_registration_is_retried_with_backoff_and_named(
    rig: Rig, platform: ReferencePlatform
) -> None:
    platform.register_result = 4
    t = rig.terminal(platform.address, reconnect_max_s=0.3)
    assert wait(lambda: len(platform.registrations) >= 3)
    assert "terminal not in the database" in t.health()["last_error"]
    assert not t.client.stats.authenticated
    platform.register_result = 0  # the operator adds the terminal
    assert wait(lambda: t.client.stats.authenticated)


def test_heartbeat_when_idle(rig: Rig, platform: ReferencePlatform) -> None:
    t = rig.terminal(platform.address, heartbeat_s=1.0)
    assert wait(lambda: platform.heartbeats >= 2, 6)
    assert t.client.stats.heartbeats >= 2 and t.client.stats.authenticated


def test_reports_live_with_the_agents_state(rig: Rig, platform: ReferencePlatform) -> None:
    from agent.fleet.rules import Inputs

    t = rig.terminal(
        platform.address,
        inputs=lambda: Inputs(ignition=True, brush=True),
        signal=lambda: 23,
    )
    assert wait(lambda: t.client.stats.authenticated)
    for i in range(12):
        t.on_fix(fix(i))
    assert wait(lambda: len(platform.received) == 3)  # first, then every 5 s
    got = platform.locations()
    assert [r.kind for r in got] == ["live"] * 3
    loc = got[1].location
    assert loc.time_bcd == "250605140005"
    assert loc.status & 0b11 == 0b11  # ACC on (ignition), positioned
    assert loc.speed_dkmh == 360 and loc.altitude_m == 15
    assert loc.item(0x31) == b"\x09" and loc.item(0x30) == bytes([23])
    assert loc.item(0xE1) == b"\x01"  # brush on
    assert struct.unpack(">I", got[2].location.item(0x01) or b"")[0] == 1  # 0.1 km driven
    assert wait(lambda: len(t.queue) == 0)  # every report answered and forgotten
    assert t.health()["acked"] == 3


def test_parameters_set_and_queried(rig: Rig, platform: ReferencePlatform) -> None:
    t = rig.terminal(platform.address, strategy=StrategySettings(interval_s=30, distance_m=200))
    assert wait(lambda: t.client.stats.authenticated)
    body = m.encode_params([(0x0029, dword(5)), (0x0013, b"other.example.cn"), (0x0001, dword(90))])
    ans = platform.request(m.P_SET_PARAMS, body)
    r = m.decode_general_response(ans.body)
    assert (r.msg_id, r.result) == (m.P_SET_PARAMS, m.NOT_SUPPORTED)  # 0x0013 is not ours
    assert t.strategy.s.interval_s == 5 and t.heartbeat_s() == 90
    ans = platform.request(m.P_QUERY_PARAMS, b"")
    assert ans.msg_id == m.T_PARAMS
    _serial, items = m.decode_params_answer(ans.body)
    values = dict(items)
    assert values[0x0029] == dword(5) and values[0x0001] == dword(90)
    assert 0x0013 not in values
    some = platform.request(m.P_QUERY_SOME_PARAMS, b"\x02\x00\x00\x00\x29\x00\x00\x00\x13")
    assert m.decode_params_answer(some.body)[1] == [(0x0029, dword(5))]
    # out of range: nothing applied, "failure"
    bad = platform.request(m.P_SET_PARAMS, m.encode_params([(0x0030, dword(200))]))
    assert m.decode_general_response(bad.body).result == m.FAILURE
    # the strategy follows: one report per 5 s
    for i in range(11):
        t.on_fix(fix(i))
    assert wait(lambda: len(platform.received) == 3)


def test_position_query(rig: Rig, platform: ReferencePlatform) -> None:
    t = rig.terminal(platform.address)
    assert wait(lambda: t.client.stats.authenticated)
    empty = platform.request(m.P_LOCATION_QUERY, b"")
    _, loc = m.decode_location_answer(empty.body)
    assert loc.status & 0b10 == 0  # no position yet
    t.on_fix(fix(3))
    ans = platform.request(m.P_LOCATION_QUERY, b"")
    assert ans.msg_id == m.T_LOCATION_ANSWER
    _serial, loc = m.decode_location_answer(ans.body)
    assert loc.time_bcd == "250605140003" and loc.status & 0b10


def test_text_message_is_an_event_record(
    rig: Rig, platform: ReferencePlatform, spool: Spool, keyset: KeySet
) -> None:
    t = rig.terminal(platform.address, spool=spool)
    assert wait(lambda: t.client.stats.authenticated)
    body = m.encode_text(m.TextMessage(0b1101, 1, "请返回车场 / back to the depot"))
    ans = platform.request(m.P_TEXT, body)
    assert m.decode_general_response(ans.body).result == m.OK
    (rec,) = sealed_events(spool, keyset.platform_private, prefix="jt808_")
    assert rec["type"] == "jt808_text" and rec["text"] == "请返回车场 / back to the depot"
    assert rec["emergency"] is True and rec["flags"] == 0b1101


def test_sos_is_reported_at_once_and_cleared_by_the_answer(
    rig: Rig, platform: ReferencePlatform
) -> None:
    t = rig.terminal(platform.address)
    assert wait(lambda: t.client.stats.authenticated)
    t.on_fix(fix(0))
    assert wait(lambda: len(platform.received) == 1)
    t.on_alarm(Alarm("sos", "SOS button pressed", Severity.CRITICAL, time=time.time()))
    assert wait(lambda: len(platform.received) == 2)  # without waiting for a fix
    sos = platform.locations()[1].location
    assert sos.alarm & ALARM_SOS and sos.time_bcd == "250605140000"
    assert wait(lambda: t.alarms.sos is False)  # the answer cleared it
    for i in range(1, 7):
        t.on_fix(fix(i))
    assert wait(lambda: len(platform.received) == 3)
    assert platform.locations()[2].location.alarm & ALARM_SOS == 0


def test_sos_held_until_confirmed_when_not_answered_and_0x8203_clears_it(
    rig: Rig, platform: ReferencePlatform
) -> None:
    t = rig.terminal(platform.address, response_timeout_s=30)
    assert wait(lambda: t.client.stats.authenticated)
    # the platform does not answer reports carrying SOS (its operator has not seen it yet)
    platform.drop_answer = lambda f: (
        f.msg_id == m.T_LOCATION and bool(m.decode_location(f.body).alarm & ALARM_SOS)
    )
    t.on_fix(fix(0))
    t.on_alarm(Alarm("sos", "SOS", Severity.CRITICAL))
    for i in range(1, 11):
        t.on_fix(fix(i))
    assert wait(lambda: len(platform.received) >= 3)
    assert all(r.location.alarm & ALARM_SOS for r in platform.locations()[1:])
    ans = platform.request(m.P_ALARM_CONFIRM, struct.pack(">HI", 0, ALARM_SOS))
    assert m.decode_general_response(ans.body).result == m.OK
    assert not t.alarms.sos


def test_a_platform_without_batches_gets_the_backlog_one_by_one(
    rig: Rig, platform: ReferencePlatform
) -> None:
    platform.batch_result = m.NOT_SUPPORTED
    t = rig.terminal(platform.address, start=False)
    for i in range(0, 40, 5):
        t.on_fix(fix(i))  # stored before any connection: backlog
    assert len(t.queue) == 8
    t.start()
    assert wait(lambda: len(platform.received) == 8)
    got = platform.locations()
    assert [r.kind for r in got] == ["live"] * 8  # as 0x0200, oldest first
    assert [r.location.time_bcd for r in got] == sorted(r.location.time_bcd for r in got)
    assert wait(lambda: len(t.queue) == 0)


def test_tls(rig: Rig, pki: Pki) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    with ReferencePlatform(tls=ctx) as plat:
        t = rig.terminal(f"localhost:{plat.port}", tls=True, ca=pki.ca)
        assert wait(lambda: t.client.stats.authenticated)
        t.on_fix(fix(0))
        assert wait(lambda: len(plat.received) == 1)
        # a terminal that does not trust that CA never talks to it
        other = rig.terminal(f"localhost:{plat.port}", name="u", tls=True)
        assert wait(lambda: "CERTIFICATE_VERIFY_FAILED" in other.health()["last_error"])
        assert len(plat.registrations) == 1


@pytest.mark.parametrize("protocol", ["2013"])
def test_2013_platforms(rig: Rig, platform: ReferencePlatform, protocol: str) -> None:
    t = rig.terminal(platform.address, protocol=protocol, phone="13800000001", terminal_id="TRK07")
    assert wait(lambda: t.client.stats.authenticated)
    assert not platform.terminals["013800000001"].v2019
    t.on_fix(fix(0))
    assert wait(lambda: len(platform.received) == 1)
    assert platform.registrations[0].terminal_id == "TRK07"
