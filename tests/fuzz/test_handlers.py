"""Hostile input into every handler of outside messages, in their real threads (issue 15).

The handlers run as in production, each in its own thread reading its own queue: the ingest
worker (chunks, key records, command answers), its live-state recorder (state, live, heads),
``talk listen``, the device's command channel, the device's acknowledgement handling (the
forwarder's thread) and the local control socket. Hypothesis writes JSON documents the way an
attacker would: nested up to thousands of levels, integers of hundreds of digits, ``1e309``,
``NaN``, control characters, invalid UTF-8, the real field names with wrong values. After each
input a sentinel message only a live thread can handle must come through.

Property: **0 thread deaths** (every thread alive, no exception reached ``threading``'s hook),
and the sentinel after the poison is handled.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.gps.wire import encode_fix
from agent.ingest.receiver import Ingest
from agent.ingest.store import Store
from agent.labs.broker import free_port
from agent.labs.waiting import wait_for
from agent.model import Fix, FixMode
from agent.runtime.local_control import LocalControl, send
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool
from agent.talk import wire
from agent.talk.platform import Listener
from agent.uplink import protocol as proto
from agent.uplink.control import CommandChannel, SeenIds, sign_command
from agent.uplink.forwarder import Forwarder
from agent.uplink.mqtt import Inbound, LinkConfig, MqttLink
from agent.uplink.settings import UplinkSettings
from tests.fixtures.keys import KeySet
from tests.fuzz.common import TRIED, keep
from tests.security import hostile

# A thread that dies raises PytestUnhandledThreadExceptionWarning: that fails the test too.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

DEVICE = "cam-fuzz"
H = "ab" * 32
FIELDS = [
    "type", "stream", "seq", "hash", "size", "offset", "boot", "v", "id", "device", "cmd",
    "args", "issued", "expires", "sig", "acks", "streams", "pending", "command", "state",
    "count", "msg", "i", "last", "n", "sha256", "from", "to", "next", "got", "result",
    "key_id", "what", "reason", "after_s", "at", "signer", "payload",
]  # fmt: skip


# --------------------------------------------------------------------------- hostile JSON


def _scalar() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(-(10**30), 10**30).map(lambda i: str(i).encode()),
        st.integers(19, 700).map(lambda n: b"9" * n),  # beyond any integer we take
        st.sampled_from(
            [
                b"1e300",
                b"-1e300",
                b"1e309",
                b"NaN",
                b"Infinity",
                b"-Infinity",
                b"1e-400",
                b"0.5",
                b"-0",
                b"true",
                b"false",
                b"null",
                b'"\\u0000\\u001b[2J\\u202e"',
                b'"\xff\xfe"',
                b'"' + b"a" * 5000 + b'"',
                b'"devices/+/#"',
                b'"../../etc"',
            ]
        ),
        st.text(max_size=30).map(lambda t: json.dumps(t).encode()),
    )


def _containers(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    lists = st.lists(inner, max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]")
    objects = st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6).map(
        lambda d: b"{" + b",".join(json.dumps(k).encode() + b":" + v for k, v in d.items()) + b"}"
    )
    return st.one_of(lists, objects)


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    doc = draw(st.recursive(_scalar(), _containers, max_leaves=12))
    depth = draw(st.sampled_from([0, 0, 0, 20, 900, 1100, 5000, 60000]))
    if depth:
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"x":', b"}")]))
        doc = opener * depth + doc + closer * depth
    if draw(st.booleans()):
        doc = draw(st.sampled_from([b"", b"\xff", b"\x00", b" garbage", b"}"])) + doc
    return doc


# --------------------------------------------------------------------------- the handlers


@dataclass
class Handlers:
    """Every handler of outside input, each in its own real thread."""

    ingest: Ingest
    listener: Listener
    commands: CommandChannel
    command_inbox: Any
    forwarder: Forwarder
    local: LocalControl
    command_key: Ed25519PrivateKey
    ack_key: Ed25519PrivateKey
    threads: list[threading.Thread]
    deaths: list[str] = field(default_factory=list)
    sentinels: list[str] = field(default_factory=list)
    n: int = 0

    def alive(self) -> list[str]:
        return [t.name for t in self.threads if not t.is_alive()]


def _inbound(topic: str, payload: bytes) -> Inbound:
    return Inbound(topic, payload, 1, 1, -1)


def _link(stop: threading.Event) -> MqttLink:
    # A link that never connects (nothing listens there): publishes return None, acks are
    # no-ops; the handlers' queues are fed directly.
    return MqttLink(
        LinkConfig("127.0.0.1", free_port(), "fuzz", tls=False, backoff_min_s=5.0), stop
    )


@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory, keyset: KeySet) -> Iterator[Handlers]:
    root = tmp_path_factory.mktemp("handlers")
    stop = threading.Event()
    deaths: list[str] = []
    old_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        deaths.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}")
        old_hook(args)

    threading.excepthook = hook
    ack_key = Ed25519PrivateKey.generate()
    command_key = Ed25519PrivateKey.generate()
    # The platform: an ingest worker (its own thread and its live-state thread).
    ingest = Ingest(Store(root / "store", trust_on_first_use=True), _link(stop).cfg, stop)
    # The control room's listener.
    listener = Listener(_link(stop), stop, out_dir=root / "talk")
    # The device: its command channel, its forwarder (acknowledgements), its control socket.
    seen = SeenIds(root / "seen.json")
    commands = CommandChannel(DEVICE, command_key.public_key(), seen)
    command_link = _link(stop)
    command_inbox = command_link.route(proto.Topics(DEVICE).command)
    sentinels: list[str] = []
    commands.register("sentinel", lambda args: sentinels.append(str(args.get("n"))) or {})
    sealer = Sealer(
        device_id=DEVICE,
        boot_id="boot-f",
        signing_key=keyset.signing_key,
        platform_public=keyset.platform_public,
        settings=SealSettings(),
    )
    spool = Spool(SpoolSettings(dir=root / "spool", reserve_mb=0), sealer)
    forwarder = Forwarder(
        spool, _link(stop), DEVICE, UplinkSettings(), stop, ack_key=ack_key.public_key()
    )
    local = LocalControl(root / "control.sock", stop)
    local.register("ping", lambda args: {"pong": True})
    ingest.start()
    listener_thread = threading.Thread(target=listener.run, name="talk-listen")
    commands_thread = threading.Thread(
        target=commands.serve, args=(command_link, command_inbox, stop), name="commands"
    )
    listener_thread.start()
    commands_thread.start()
    forwarder.start()
    local.start()
    threads = [
        t
        for t in (
            ingest._thread,
            ingest.live.thread,
            listener_thread,
            commands_thread,
            forwarder._thread,
            local._thread,
        )
        if t is not None
    ]
    h = Handlers(ingest, listener, commands, command_inbox, forwarder, local, command_key,
                 ack_key, threads, deaths, sentinels)  # fmt: skip
    try:
        yield h
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        ingest.join(10)
        spool.close()
        threading.excepthook = old_hook


def _feed(h: Handlers, doc: bytes) -> None:
    """``doc`` into every handler, as every kind of message it takes; then the sentinels."""
    h.n += 1
    n = h.n
    t = proto.Topics(DEVICE)
    header = doc if len(doc) <= proto.MAX_CHUNK_HEADER else doc[: proto.MAX_CHUNK_HEADER]
    for topic, payload in (
        (t.segment("gps"), hostile.chunk(header)),
        (t.key, hostile.key_record(doc)),
        (t.command_result, doc),
    ):
        h.ingest.inbox.put(_inbound(topic, payload))
    for inbox, topic in (
        (h.ingest.live.state_inbox, t.state),
        (h.ingest.live.live_inbox, t.live("status")),
        (h.ingest.live.heads_inbox, t.heads),
    ):
        assert inbox is not None
        inbox.put(_inbound(topic, doc))
    talk = wire.out_topic(DEVICE)
    h.listener.inbox.put(_inbound(talk, b"EAT1" + len(header).to_bytes(2, "big") + header))
    body = b"OggS" + os.urandom(8)
    mid = f"fuzz{n:012d}"
    last = (
        b'{"v":1,"id":"' + mid.encode() + b'","i":0,"last":true,"sig":"00","msg":{"v":1,"id":"'
        + mid.encode() + b'","from":"device:' + DEVICE.encode() + b'","n":1,"size":12,'
        + b'"sha256":"' + hashlib.sha256(body).hexdigest().encode()
        + b'","issued":' + (doc if len(doc) < 3000 else b"1") + b',"duration_s":' + b"1" + b"}}"
    )  # fmt: skip
    if len(last) <= wire.MAX_HEADER:
        h.listener.inbox.put(_inbound(talk, b"EAT1" + len(last).to_bytes(2, "big") + last + body))
    h.command_inbox.put(_inbound(t.command, doc))
    h.forwarder.acks.put(_inbound(t.ack, doc))
    v2 = b'{"v":2,"device":"' + DEVICE.encode() + b'","acks":[' + doc + b'],"sig":"00"}'
    h.forwarder.acks.put(_inbound(t.ack, v2))
    line = doc.replace(b"\n", b" ")
    if len(line) < 60_000:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(h.local.path))
            s.sendall(line + b"\n")
            s.makefile("rb").readline()

    # Sentinels: each needs its thread alive and past the poison.
    snt = f"snt-{n}"
    good = proto.ChunkHeader("gps", n, "b", H, 1000, 500)
    h.ingest.inbox.put(_inbound(proto.Topics(snt).segment("gps"), proto.encode_chunk(good, b"x")))
    h.ingest.live.live_inbox.put(_inbound(proto.Topics(snt).live("status"), b'{"n":1}'))
    h.listener.inbox.put(_inbound(talk, wire.Chunk(f"sentinel{n:08d}", 0, False, b"x").encode()))
    h.command_inbox.put(_inbound(t.command, sign_command(h.command_key, DEVICE, "sentinel",
                                                         {"n": n})))  # fmt: skip
    kid = f"{n:016x}"
    keyack = proto.encode_acks(DEVICE, [proto.KeyAck(kid)], h.ack_key)[0]
    h.forwarder.acks.put(_inbound(t.ack, keyack))
    store = h.ingest.store.root
    for cond, thread in (
        (lambda: (store / snt / "partial").is_dir(), "ingest"),
        (lambda: (store / snt / "live" / "status.json").exists(), "ingest-live"),
        (lambda: f"sentinel{n:08d}" in h.listener.chunk_times, "talk listen"),
        (lambda: str(n) in h.sentinels, "commands"),
        (lambda: kid in h.forwarder._keys_acked, "forwarder"),
    ):
        wait_for(cond, 10, f"the sentinel after the poison at {thread}")
    assert send(h.local.path, "ping") == {"pong": True}


@settings(max_examples=60)
@given(hostile_json())
def test_no_handler_thread_dies(handlers: Handlers, doc: bytes) -> None:
    TRIED["handlers"] += 1
    try:
        _feed(handlers, doc)
        assert handlers.alive() == [] and handlers.deaths == [], (
            handlers.alive(),
            handlers.deaths,
        )
    except AssertionError:
        keep("handlers", doc)
        raise


@pytest.mark.parametrize(
    "doc", [*hostile.json_payloads(), hostile.deep_object("streams"), hostile.deep_object("acks")]
)
def test_the_known_poison(handlers: Handlers, doc: bytes) -> None:
    _feed(handlers, doc)
    assert handlers.alive() == [] and handlers.deaths == []


def test_the_handlers_saw_what_they_were_sent(handlers: Handlers) -> None:
    """The control: the poison reached the handlers (they refused it), it was not lost."""
    _feed(handlers, hostile.deep_json())
    assert handlers.ingest.malformed > 0
    assert handlers.ingest.live.dropped > 0
    assert handlers.forwarder.stats.bad_acks + handlers.forwarder.stats.forged_acks > 0
    assert handlers.ingest.store.stats.rejected > 0  # the key records


def test_corpus_replays(handlers: Handlers) -> None:
    base = Path(__file__).resolve().parent / "corpus" / "handlers"
    for path in sorted(base.glob("*")) if base.exists() else []:
        _feed(handlers, path.read_bytes())
    assert handlers.alive() == []


# --------------------------------------------------------------------------- binary (protocol 3)

WIRE_FIX = encode_fix(Fix(time=1_750_000_000.0, mode=FixMode.FIX_3D, lat=22.5, lon=113.9))


@st.composite
def hostile_binary(draw: st.DrawFn) -> bytes:
    """Bytes that look like protocol 3's binary payloads, almost."""
    blob = draw(st.binary(max_size=300))
    head = draw(
        st.sampled_from(
            [b"", b"EAB1", b"EAB1\x00\x02", b"EAB1\xff\xff", WIRE_FIX, WIRE_FIX[:27], b"\x3f"]
        )
    )
    return head + blob


def _bundle_of(members: list[bytes], count: int | None = None) -> bytes:
    n = len(members) if count is None else count
    return b"EAB1" + n.to_bytes(2, "big") + b"".join(len(m).to_bytes(4, "big") + m for m in members)


def _feed_binary(h: Handlers, blob: bytes) -> None:
    """Malformed bundles and compact segments and key records (protocol 4) at the ingest,
    binary live fixes (ingest-live), then the sentinels of both threads."""
    h.n += 1
    n = h.n
    t = proto.Topics(DEVICE)
    head = blob[: proto.MAX_CHUNK_HEADER]
    whole = proto.ChunkHeader("gps", n, "b", H, 16, 0)
    for payload in (
        blob,
        b"EAB1" + blob,
        _bundle_of([hostile.chunk(head), hostile.chunk(head)]),
        _bundle_of([proto.encode_chunk(whole, b"x" * 16), blob]),
        _bundle_of([proto.encode_chunk(whole, b"x" * 16)] * 2, count=1000),
        _bundle_of([proto.encode_chunk(whole, b"y" * 16), proto.encode_chunk(whole, b"z" * 16)]),
        b"EAM1" + blob,
        b"EAM1\x01\x05\x04" + blob,  # based on seq 4: the base is looked up
    ):
        h.ingest.inbox.put(_inbound(t.segment("gps"), payload))
    h.ingest.inbox.put(_inbound(t.key, b"EAK1" + blob))
    for payload in (blob, WIRE_FIX + blob, b"\x3f" + blob, b"{" + blob):
        h.ingest.live.live_inbox.put(_inbound(t.live("fix"), payload))
    snt = f"snb-{n}"
    good = proto.ChunkHeader("gps", n, "b", H, 1000, 500)
    h.ingest.inbox.put(_inbound(proto.Topics(snt).segment("gps"), proto.encode_chunk(good, b"x")))
    h.ingest.live.live_inbox.put(_inbound(proto.Topics(snt).live("fix"), WIRE_FIX))
    store = h.ingest.store.root
    for cond, thread in (
        (lambda: (store / snt / "partial").is_dir(), "ingest"),
        (lambda: (store / snt / "live" / "fix.json").exists(), "ingest-live"),
    ):
        wait_for(cond, 10, f"the sentinel after the binary poison at {thread}")


@settings(max_examples=60)
@given(hostile_binary())
def test_binary_payloads_kill_no_thread(handlers: Handlers, blob: bytes) -> None:
    TRIED["handlers"] += 1
    try:
        _feed_binary(handlers, blob)
        assert handlers.alive() == [] and handlers.deaths == [], (
            handlers.alive(),
            handlers.deaths,
        )
    except AssertionError:
        keep("handlers-binary", blob)
        raise


def test_the_binary_poison_was_refused(handlers: Handlers) -> None:
    """The control: malformed bundles and live fixes reached their handlers and were refused."""
    malformed, dropped = handlers.ingest.malformed, handlers.ingest.live.dropped
    _feed_binary(handlers, b"\xff" * 40)
    assert handlers.ingest.malformed >= malformed + 4
    assert handlers.ingest.live.dropped >= dropped + 3


def test_binary_corpus_replays(handlers: Handlers) -> None:
    base = Path(__file__).resolve().parent / "corpus" / "handlers-binary"
    for path in sorted(base.glob("*")) if base.exists() else []:
        _feed_binary(handlers, path.read_bytes())
    assert handlers.alive() == []
