"""The wire protocol: topics, chunks and acks round-trip; anything malformed is a FormatError."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import FormatError, UplinkError
from agent.labs.broker import Pki
from agent.uplink import protocol as proto
from agent.uplink.forwarder import TokenBucket
from agent.uplink.mqtt import LinkConfig, MqttLink, check_certificate, explain_connack

H = "ab" * 32


def test_topics_are_under_the_device() -> None:
    t = proto.Topics("cam-1")
    for topic in (t.state, t.live("fix"), t.key, t.segment("video"), t.ack, t.command):
        assert topic.startswith("devices/cam-1/")
        parsed = proto.parse_topic(topic)
        assert parsed.device_id == "cam-1"
    assert proto.parse_topic(t.segment("gps")).arg == "gps"
    with pytest.raises(FormatError):
        proto.Topics("cam/1")
    with pytest.raises(FormatError):
        proto.parse_topic("devices/cam-1/up/seg/../x")


def test_chunk_round_trip() -> None:
    h = proto.ChunkHeader("video", 7, "boot1", H, 1000, 100)
    header, data = proto.decode_chunk(proto.encode_chunk(h, b"x" * 50))
    assert header == h and bytes(data) == b"x" * 50


@given(
    st.integers(0, proto.MAX_SEGMENT_SIZE - 2),
    st.sampled_from(["video", "gps", "a-b_c", "x" * 32]),
    st.integers(0, 10**12 - 1),
)
def test_chunk_heads_are_the_bytes_encode_chunk_writes(offset: int, stream: str, seq: int) -> None:
    """The forwarder frames a segment's chunks from one encoding of its header."""
    size = proto.MAX_SEGMENT_SIZE
    heads = proto.ChunkHeads(proto.ChunkHeader(stream, seq, "boot-1", H, size, 0))
    at = proto.ChunkHeader(stream, seq, "boot-1", H, size, offset)
    assert heads.at(offset) + b"xyz" == proto.encode_chunk(at, b"xyz")
    assert proto.decode_chunk(heads.at(offset) + b"x")[0] == at


def test_a_chunk_read_behind_its_header_is_the_encoded_chunk(tmp_path: Path) -> None:
    from agent.storage.spool import SpoolItem
    from agent.uplink.uploads import Upload

    body = bytes(range(256)) * 40
    path = tmp_path / "000000000001.seg"
    path.write_bytes(body)
    item = SpoolItem(1, "video", 1, "k", len(body), H, 0, path, 0.0)
    with path.open("rb") as f:
        u = Upload(item, "boot-1", len(body), f, 0, 0, 0.0)
        for off, n in ((0, 4096), (4096, 5000), (len(body) - 7, 7)):
            h = proto.ChunkHeader("video", 1, "boot-1", H, len(body), off)
            assert u.chunk(off, n) == proto.encode_chunk(h, body[off : off + n])
        assert u.chunk(len(body) - 7, 8) is None  # shorter than indexed
    small = Upload(item, "boot-1", len(body), None, 0, 0, 0.0, data=body)
    h = proto.ChunkHeader("video", 1, "boot-1", H, len(body), 100)
    assert small.chunk(100, 50) == proto.encode_chunk(h, body[100:150])
    assert small.chunk(len(body) - 7, 8) is None


@pytest.mark.parametrize(
    ("header", "data", "why"),
    [
        (proto.ChunkHeader("video", 1, "b", H, 100, 90), b"x" * 20, "outside"),
        (proto.ChunkHeader("video", 1, "b", H, 100, 0), b"", "no bytes"),
        (proto.ChunkHeader("video", -1, "b", H, 100, 0), b"x", "negative"),
        (proto.ChunkHeader("Video", 1, "b", H, 100, 0), b"x", "must be 1-32"),
        (proto.ChunkHeader("state", 1, "b", H, 100, 0), b"x", "reserved"),
        (proto.ChunkHeader("video", 1, "b", "zz", 100, 0), b"x", "malformed"),
    ],
)
def test_bad_chunks_are_refused(header: proto.ChunkHeader, data: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        proto.decode_chunk(proto.encode_chunk(header, data))


@given(st.binary(max_size=300))
def test_decode_chunk_only_raises_format_error(payload: bytes) -> None:
    with contextlib.suppress(FormatError):
        proto.decode_chunk(payload)


@given(st.binary(max_size=300))
def test_parse_ack_only_raises_format_error(payload: bytes) -> None:
    with contextlib.suppress(FormatError):
        proto.parse_ack(payload)


@pytest.mark.parametrize(
    "ack",
    [
        proto.SegmentAck("gps", 3, H, "stored"),
        proto.Progress("video", 1, H, 4096),
        proto.Progress("video", 1, H, 4096, got=8192),
        proto.KeyAck("0011223344556677"),
        proto.Reject("seg", "chain broken", "gps", 2, H),
        proto.Reject("key", "wrong platform key", key_id="0011223344556677"),
    ],
)
def test_ack_round_trip(ack: proto.Ack) -> None:
    assert proto.parse_ack(proto.encode_ack(ack)) == ack


def test_chunk_size_follows_the_broker() -> None:
    assert proto.chunk_size_for(None, 128 * 1024) == 128 * 1024
    assert proto.chunk_size_for(64 * 1024, 128 * 1024) == 64 * 1024 - proto.PACKET_OVERHEAD
    with pytest.raises(FormatError):
        proto.chunk_size_for(1500, 128 * 1024)


def test_token_bucket() -> None:
    now = [0.0]
    b = TokenBucket(1000, clock=lambda: now[0])
    assert b.delay(1000) == 0
    assert b.delay(500) == pytest.approx(0.5)
    now[0] += 0.5
    assert b.delay(500) == 0
    assert TokenBucket(0).delay(10**9) == 0


def test_clear_error_messages(tmp_path: Path, pki: Pki) -> None:
    cfg = LinkConfig(host="127.0.0.1", port=1, client_id="cam-a")
    msg = explain_connack(ReasonCode(PacketTypes.CONNACK, "Not authorized"), cfg)
    assert "not authorised" in msg
    old = pki.issue(
        "cam-a",
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
        not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
        name="cam-a-expired",
    )
    with pytest.raises(UplinkError, match="expired on"):
        check_certificate(old.cert)


def test_refused_and_wrong_ca(tmp_path: Path, pki: Pki) -> None:
    import threading

    from agent.labs.broker import free_port, other_ca

    c = pki.client("cam-a")
    stop = threading.Event()
    refused = MqttLink(LinkConfig("127.0.0.1", free_port(), "cam-a", pki.ca, c.cert, c.key), stop)
    with pytest.raises(UplinkError, match="connection refused"):
        refused._connect_once()
    from agent.labs.broker import Mosquitto

    m = Mosquitto(tmp_path / "mq", pki)
    m.start()
    try:
        wrong = MqttLink(
            LinkConfig("127.0.0.1", m.port, "cam-a", other_ca(tmp_path / "o"), c.cert, c.key),
            stop,
        )
        with pytest.raises(UplinkError, match="wrong CA"):
            wrong._connect_once()
        named = MqttLink(
            LinkConfig("127.0.0.1", m.port, "cam-a", pki.ca, c.cert, c.key, server_name="x.y"),
            stop,
        )
        with pytest.raises(UplinkError, match="server name"):
            named._connect_once()
    finally:
        m.kill()


ACKS: list[proto.Ack] = [
    proto.SegmentAck("gps", 3, H, "stored"),
    proto.Progress("video", 1, H, 4096, got=8192),
    proto.KeyAck("0011223344556677"),
    proto.Reject("seg", "chain broken", "gps", 2, H),
    proto.Retry("seg", "disk full", 30, "video", 1, H, 4096),
    proto.Retry("key", "disk full", 5, key_id="0011223344556677"),
]


def test_signed_ack_batches() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.errors import VerificationError

    key = Ed25519PrivateKey.generate()
    (payload,) = proto.encode_acks("cam-1", ACKS, key)
    batch = proto.parse_acks(payload, "cam-1", key.public_key())
    assert batch.acks == ACKS and batch.signed
    # One signature per batch: small (the signature is 128 hex characters once).
    assert len(payload) < 200 * len(ACKS) + 200
    with pytest.raises(VerificationError, match="not for 'cam-2'"):
        proto.parse_acks(payload, "cam-2", key.public_key())
    with pytest.raises(VerificationError, match="bad signature"):
        proto.parse_acks(payload, "cam-1", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(VerificationError, match="unsigned"):
        proto.parse_acks(proto.encode_ack(ACKS[0]), "cam-1", key.public_key())
    (unsigned,) = proto.encode_acks("cam-1", ACKS, None)
    with pytest.raises(VerificationError, match="unsigned"):
        proto.parse_acks(unsigned, "cam-1", key.public_key())
    # Without a key (a laboratory) both forms are taken on trust, and said to be unsigned.
    assert proto.parse_acks(unsigned, "cam-1", None) == proto.AckBatch(ACKS, signed=False)
    assert proto.parse_acks(proto.encode_ack(ACKS[0]), "cam-1", None).acks == ACKS[:1]
    # Large batches are split, each signed.
    many = [proto.KeyAck(f"{i:016x}") for i in range(proto.MAX_ACKS + 5)]
    parts = proto.encode_acks("cam-1", many, key)
    assert len(parts) == 2
    got = [a for p in parts for a in proto.parse_acks(p, "cam-1", key.public_key()).acks]
    assert got == many


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ({"type": "seg", "stream": "gps", "seq": 10**12, "hash": H, "result": "stored"}, "seq"),
        ({"type": "progress", "stream": "gps", "seq": 1, "hash": H, "next": 2**41}, "next"),
        (
            {
                "type": "retry",
                "what": "seg",
                "reason": "x",
                "after_s": 10**6,
                "stream": "gps",
                "seq": 1,
                "hash": H,
                "next": 0,
            },
            "after_s",
        ),
        ({"type": "seg", "stream": "state", "seq": 1, "hash": H, "result": "stored"}, "reserved"),
    ],
)
def test_ack_bounds(obj: dict[str, object], why: str) -> None:
    with pytest.raises(FormatError, match=why):
        proto.ack_from_json(obj)
