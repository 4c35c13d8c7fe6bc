"""MQTT payloads into the platform's ingest: topics, chunks and acknowledgements from the wire.

``decode_chunk``/``parse_ack``/``parse_topic`` raise only FormatError; ``Store.put_chunk`` with
random and mutated chunks raises at most an AgentError (the receiver refuses those) and never
stores a segment that does not verify; the genuine chunks still store the genuine segment.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import AgentError, FormatError
from agent.ingest.store import Store
from agent.storage.seal import read_segment_info
from agent.storage.verify import verify_paths
from agent.uplink import protocol as proto
from tests.fixtures.keys import KeySet
from tests.fuzz.common import TRIED, keep
from tests.fuzz.sealed import Sealed, make_sealed

DEVICE = "fuzz-dev"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, keyset: KeySet) -> Sealed:
    return make_sealed(tmp_path_factory.mktemp("sealed"), keyset)


def _chunks(data: bytes, stream: str, seq: int, size: int = 700) -> list[bytes]:
    import io

    info = read_segment_info(io.BytesIO(data))
    out = []
    for off in range(0, len(data), size):
        h = proto.ChunkHeader(stream, seq, "boot-f", info.manifest_hash, len(data), off)
        out.append(proto.encode_chunk(h, data[off : off + size]))
    return out


@given(st.binary(max_size=400))
def test_decoders_raise_only_format_error(blob: bytes) -> None:
    TRIED["mqtt-payload"] += 1
    for fn in (proto.decode_chunk, proto.parse_ack):
        try:
            fn(blob)
        except FormatError:
            pass
        except Exception:
            keep("chunk", blob)
            raise
    with contextlib.suppress(FormatError):
        proto.parse_topic(blob.decode("utf-8", "replace"))


@given(
    st.dictionaries(
        st.sampled_from(["type", "stream", "seq", "hash", "result", "next", "got", "what",
                         "reason", "key_id", "size", "offset", "boot"]),
        st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                  st.text(max_size=70), st.lists(st.integers(), max_size=3)),
    )
)  # fmt: skip
def test_json_shaped_acks_and_headers(obj: dict[str, object]) -> None:
    import json

    TRIED["mqtt-payload"] += 1
    raw = json.dumps(obj).encode()
    with contextlib.suppress(FormatError):
        proto.parse_ack(raw)
    head = json.dumps(obj).encode()
    payload = b"EAC1" + len(head).to_bytes(2, "big") + head + b"x" * 10
    try:
        proto.decode_chunk(payload)
    except FormatError:
        pass
    except Exception:
        keep("chunk", payload)
        raise


@given(st.data())
def test_mutated_chunks_never_store_a_corrupt_segment(
    sealed: Sealed, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    TRIED["ingest-chunks"] += 1
    root = tmp_path_factory.mktemp("store")
    store = Store(root, platform_key=sealed.platform)
    store.put_key(DEVICE, sealed.key_record)
    seg = sealed.segments["small"]
    chunks = _chunks(seg, "video", 0)
    sent: list[bytes] = []
    for _ in range(data.draw(st.integers(1, 8))):
        c = bytearray(data.draw(st.sampled_from(chunks)))
        for _ in range(data.draw(st.integers(0, 4))):
            i = data.draw(st.integers(0, len(c) - 1))
            c[i] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            del c[data.draw(st.integers(0, len(c))) :]
        sent.append(bytes(c))
    for payload in sent:
        try:
            header, body = proto.decode_chunk(payload)
        except FormatError:
            continue
        try:
            store.put_chunk(DEVICE, header, body)
        except AgentError:
            pass
        except Exception:
            keep("chunk", payload)
            raise
    stored = list((root / DEVICE / "seg").glob("*/*.seg")) if (root / DEVICE).exists() else []
    for p in stored:
        report = verify_paths([p, root / DEVICE / "keys"], trusted=sealed.trusted)
        if not report.ok or p.read_bytes() != seg:
            for payload in sent:
                keep("chunk", payload)
            raise AssertionError(f"a corrupt segment was stored: {report.problems}")
    # The genuine chunks still deliver the genuine segment, byte for byte. When the store
    # found the reassembled bytes corrupt it discarded them and asked for the segment again
    # from byte 0 (a progress ack), which a device does: one more pass.
    final = root / DEVICE / "seg" / "video" / f"{0:012d}.seg"
    for _ in range(2):
        for payload in chunks:
            header, body = proto.decode_chunk(payload)
            store.put_chunk(DEVICE, header, body)
        if final.exists():
            break
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(seg).digest()


def test_chunk_for_another_devices_segment_is_refused(sealed: Sealed, tmp_path: Path) -> None:
    """The topic's device must match the manifest's: a segment sent as another device is
    refused, not stored."""
    store = Store(tmp_path / "store", platform_key=sealed.platform)
    store.put_key("other-dev", sealed.key_record)
    acks = []
    for payload in _chunks(sealed.segments["small"], "video", 0):
        h, body = proto.decode_chunk(payload)
        acks += store.put_chunk("other-dev", h, body)
    assert any(isinstance(a, proto.Reject) for a in acks), acks
    assert not list((tmp_path / "store").glob("other-dev/seg/*/*.seg"))
