"""Malformed and hostile platform frames never stop the terminal: each is dropped or answered
with the standard result (2 message error, 3 not supported), and the session goes on."""

from __future__ import annotations

import random
import socket
import struct
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.gps.settings import StrategySettings
from agent.jt808 import messages as m
from agent.jt808.client import Jt808Client, LinkFailed, Session
from agent.jt808.codec import FrameReader, decode_frame, encode_frame
from agent.jt808.terminal import Jt808Terminal
from agent.labs.jt808_platform import ReferencePlatform
from tests.jt808.conftest import KEY, PHONE, Rig, fix, wait
from tests.jt808.conftest import settings as jt_settings

PLATFORM_IDS = [
    0x8001, 0x8003, 0x8100, 0x8103, 0x8104, 0x8105, 0x8106, 0x8107, 0x8201, 0x8202, 0x8203,
    0x8300, 0x8600, 0x8601, 0x8602, 0x8603, 0x8604, 0x8605, 0x8606, 0x8607, 0x8608, 0x8801,
    0x8900, 0x0200, 0x1234, 0xFFFF,
]  # fmt: skip


def hostile_frames(rnd: random.Random, n: int) -> list[bytes]:
    """Valid headers with random bodies, damaged frames, garbage, foreign phones, packages."""
    out: list[bytes] = []
    for _i in range(n):
        mid = rnd.choice(PLATFORM_IDS)
        body = rnd.randbytes(rnd.choice([0, 1, 2, 5, 9, 30, 200]))
        kind = rnd.randrange(8)
        serial = rnd.randrange(0x10000)
        if kind == 0:  # a damaged frame (a byte flipped: check code or escape breaks)
            raw = bytearray(encode_frame(mid, body, phone=PHONE, serial=serial))
            raw[rnd.randrange(1, len(raw) - 1)] ^= 1 << rnd.randrange(8)
            out.append(bytes(raw))
        elif kind == 1:  # garbage, with flags and escapes in it
            out.append(rnd.randbytes(rnd.randrange(1, 80)) + rnd.choice([b"\x7e", b"\x7d", b""]))
        elif kind == 2:  # for another terminal
            out.append(encode_frame(mid, body, phone="99999999999", serial=serial))
        elif kind == 3:  # encrypted (RSA flag)
            out.append(encode_frame(mid, body, phone=PHONE, serial=serial, encryption=1))
        elif kind == 4:  # a package of a message that will never be complete
            count = rnd.choice([2, 3, 500, 65535])
            out.append(
                encode_frame(
                    mid, body, phone=PHONE, serial=serial, package=(count, rnd.randint(1, count))
                )
            )
        elif kind == 5:  # a 2013 header, as some platforms answer
            out.append(encode_frame(mid, body, phone=PHONE, serial=serial, version=None))
        else:
            out.append(encode_frame(mid, body, phone=PHONE, serial=serial))
    return out


def test_hostile_frames_over_tcp_do_not_stop_the_terminal(
    rig: Rig, platform: ReferencePlatform
) -> None:
    t = rig.terminal(platform.address, heartbeat_s=1.0)
    assert wait(lambda: t.client.stats.authenticated)
    rnd = random.Random(808)
    frames = hostile_frames(rnd, 600)
    for i in range(0, len(frames), 50):
        platform.send_raw(b"".join(frames[i : i + 50]))
    # well-formed frames with bodies that do not parse are answered "message error"
    bad = platform.send(m.P_SET_PARAMS, b"\x05\x00\x00")
    unknown = platform.send(0x8105, b"\x04")  # terminal control: not supported here
    areas = platform.send(0x8600, m.encode_params([]))  # no fleet part on this terminal
    assert wait(lambda: {bad, unknown, areas} <= set(platform.answers))
    results = {
        s: m.decode_general_response(platform.answers[s].body).result for s in (bad, unknown, areas)
    }
    assert results == {bad: m.MESSAGE_ERROR, unknown: m.NOT_SUPPORTED, areas: m.NOT_SUPPORTED}
    # still the same session, still reporting, still answering heartbeats
    assert t.is_alive() and t.client.stats.sessions == 1
    t.on_fix(fix(0))
    assert wait(lambda: len(platform.received) == 1)
    h = t.health()
    assert h["malformed"] > 50 and h["unsupported"] > 10
    assert t.client.stats.foreign > 10
    beats = platform.heartbeats
    assert wait(lambda: platform.heartbeats > beats, 5)


def test_a_platform_flooding_garbage_without_flags_is_bounded(
    rig: Rig, platform: ReferencePlatform
) -> None:
    t = rig.terminal(platform.address)
    assert wait(lambda: t.client.stats.authenticated)
    platform.send_raw(b"\x7e" + b"\x55" * 200_000)  # one "frame" that never ends
    platform.send_raw(b"\x7e")
    ans = platform.request(m.P_LOCATION_QUERY, b"")
    assert ans.msg_id == m.T_LOCATION_ANSWER
    assert t.client.session is not None and t.client.session.reader.oversized >= 1


def _client_on_a_socketpair(tmp: Path) -> tuple[Jt808Client, Session, socket.socket]:
    term = Jt808Terminal(
        jt_settings(tmp, "127.0.0.1:9"),
        strategy=StrategySettings(),
        stop=threading.Event(),
        queue_key=KEY,
    )
    a, b = socket.socketpair()
    b.setblocking(False)
    return term.client, Session(a, term.settings), b


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mid=st.sampled_from(PLATFORM_IDS) | st.integers(0, 0xFFFF),
    body=st.binary(max_size=300),
    v2019=st.booleans(),
    package=st.none() | st.tuples(st.integers(1, 70000), st.integers(1, 70000)),
)
def test_fuzzed_platform_frames_raise_nothing(
    tmp_path_factory: object, mid: int, body: bytes, v2019: bool, package: tuple[int, int] | None
) -> None:
    tmp = tmp_path_factory.mktemp("fz")  # type: ignore[attr-defined]
    client, sess, peer = _client_on_a_socketpair(tmp)
    try:
        if package is not None and not 1 <= package[1] <= package[0] <= 0xFFFF:
            package = None
        raw = encode_frame(
            mid, body, phone=PHONE, serial=7, version=1 if v2019 else None, package=package
        )
        frame = client._parse(sess, FrameReader().feed(raw)[0])
        if frame is not None:
            client._dispatch(sess, frame)  # never raises
        # whatever it answered is well formed
        try:
            data = peer.recv(65536)
        except BlockingIOError:
            data = b""
        for chunk in FrameReader().feed(data):
            ans = decode_frame(chunk)
            assert ans.msg_id in (m.T_GENERAL_RESPONSE, m.T_PARAMS, m.T_LOCATION_ANSWER)
            if ans.msg_id == m.T_GENERAL_RESPONSE:
                r = m.decode_general_response(ans.body)
                assert r.serial == 7 and r.msg_id == mid
    except LinkFailed:  # only if the socket itself failed: not here
        raise
    finally:
        peer.close()
        sess.sock.close()
        client.t.queue.close()


def test_unsolicited_answers_and_resend_requests_are_ignored(
    rig: Rig, platform: ReferencePlatform
) -> None:
    t = rig.terminal(platform.address)
    assert wait(lambda: t.client.stats.authenticated)
    platform.send(
        m.P_GENERAL_RESPONSE, m.encode_general_response(m.GeneralResponse(999, 0x0200, 0))
    )
    platform.send(m.P_RESEND_REQUEST, m.encode_resend_request(4321, [1, 2, 3]))
    platform.send(m.P_REGISTER_RESPONSE, struct.pack(">HB", 1, 0) + b"X")
    ans = platform.request(m.P_LOCATION_QUERY, b"")
    assert ans.msg_id == m.T_LOCATION_ANSWER
    assert not platform.other  # nothing was answered to the answers
    assert t.client.stats.sessions == 1


def test_our_long_messages_go_in_packages_and_a_lost_one_is_sent_again(tmp_path: Path) -> None:
    """A body over 1023 bytes leaves in packages (a serial each); the platform's 0x8003 for
    package 2 gets exactly that frame again (2019: WORD count of package numbers)."""
    client, sess, peer = _client_on_a_socketpair(tmp_path)
    peer.setblocking(True)
    peer.settimeout(5)
    try:
        body = bytes(range(256)) * 10  # 2560 bytes: 3 packages
        first = client._send(sess, m.T_PARAMS, body)
        data = b""
        while data.count(b"\x7e") < 6:
            data += peer.recv(65536)
        frames = [decode_frame(f) for f in FrameReader().feed(data)]
        assert [f.header.package for f in frames] == [(3, 1), (3, 2), (3, 3)]
        assert [f.serial for f in frames] == [first, first + 1, first + 2]
        assert b"".join(f.body for f in frames) == body
        ask = encode_frame(
            m.P_RESEND_REQUEST, m.encode_resend_request(first, [2]), phone=PHONE, serial=9
        )
        frame = client._parse(sess, FrameReader().feed(ask)[0])
        assert frame is not None
        client._dispatch(sess, frame)
        again = b""
        while again.count(b"\x7e") < 2:
            again += peer.recv(65536)
        (resent,) = [decode_frame(f) for f in FrameReader().feed(again)]
        assert resent == frames[1]
    finally:
        peer.close()
        sess.sock.close()
        client.t.queue.close()
