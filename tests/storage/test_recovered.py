"""A recovered part opened by the platform (agent.storage.recovered): a chunk that fails
authentication costs its own fragment only; what is written stays a playable MP4."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.capture.settings import VideoSettings
from agent.capture.sim import SyntheticSource
from agent.errors import FormatError
from agent.storage.recovered import RecoveredReader, open_recovered
from agent.storage.seal import aead_for, chunk_nonce, parse_key_record, segment_key
from agent.storage.segjournal import JOURNAL_CHUNK, SegmentJournal
from tests.fixtures.keys import KeySet
from tests.storage.helpers import decrypt_stream
from tests.storage.test_segjournal import FPS, H, Run, W, _spool, decode_counters

STRIDE = 4 + JOURNAL_CHUNK + 16
# One-second fragments: each spans several 4 KiB chunks.
SETTINGS = VideoSettings(
    width=W, height=H, fps=FPS, mode="continuous", segment_s=60, prebuffer_s=0, keyframe_s=1.0
)


def _recovered_part(tmp_path: Path, keyset: KeySet) -> tuple[bytes, dict[str, object], bytes]:
    """A part cut after several fragments, recovered: (its plaintext, meta, inner key)."""
    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool, settings=SETTINGS)
    run.feed(SyntheticSource(W, H, FPS, limit=100), 65)
    spool.close()  # the cut: the part stays open in the journal
    spool = _spool(tmp_path / "spool", keyset, boot="boot-b")
    try:
        assert SegmentJournal(spool).recover("video") is not None
        [s] = [s for s in decrypt_stream(spool, keyset.platform_private, "video")]
        kid = str(s.meta["inner_key_id"])
        inner = parse_key_record(spool.key_record(kid)).unwrap(keyset.platform_private)
    finally:
        spool.close()
    return s.data, s.meta, inner


def _chunk_starts(plain: bytes, meta: dict[str, object], inner: bytes) -> list[bytes]:
    """The first box type of each chunk's plaintext (a fragment starts with moof or ftyp)."""
    aead = aead_for(
        str(meta["inner_cipher"]), segment_key(inner, bytes.fromhex(str(meta["inner_salt"])))
    )
    out = []
    for i in range((len(plain) - 8) // STRIDE):
        ct = plain[8 + i * STRIDE + 4 : 8 + (i + 1) * STRIDE]
        out.append(aead.decrypt(chunk_nonce(i, False), ct, None)[4:8])
    return out


def test_a_failed_chunk_costs_its_fragment_only(tmp_path: Path, keyset: KeySet) -> None:
    plain, meta, inner = _recovered_part(tmp_path, keyset)
    whole = open_recovered(plain, meta, inner)
    assert not whole.failed
    counters = decode_counters(whole.media)
    starts = _chunk_starts(plain, meta, inner)
    fragments = [i for i, kind in enumerate(starts) if kind in (b"ftyp", b"moof")]
    assert len(fragments) >= 3 and fragments[0] == 0, starts
    # A chunk in the middle of the second fragment fails (a flipped bit on the card).
    first, nxt = fragments[1], fragments[2]
    assert nxt - first >= 3, "the fragment should span several chunks"
    bad = bytearray(plain)
    bad[8 + (first + 1) * STRIDE + 200] ^= 0x01
    rec = open_recovered(bytes(bad), meta, inner)
    assert rec.failed == [first + 1] and rec.authenticated == rec.chunks - 1
    # Every frame but the second fragment's decodes, in order, without a damaged one.
    lost = decode_counters(b"".join(_fragment(whole.media, 1)))
    assert lost and decode_counters(rec.media) == [c for c in counters if c not in lost]


def test_the_first_chunk_failing_leaves_the_fragments_after_it(
    tmp_path: Path, keyset: KeySet
) -> None:
    """Without ftyp/moov nothing plays; still, no byte of what failed is passed on."""
    plain, meta, inner = _recovered_part(tmp_path, keyset)
    bad = bytearray(plain)
    bad[8 + 50] ^= 0x01
    rec = open_recovered(bytes(bad), meta, inner)
    assert rec.failed == [0]
    assert rec.media[4:8] == b"moof"  # the next fragments, whole boxes only


def test_streaming_and_in_memory_agree_and_torn_bytes_are_counted(
    tmp_path: Path, keyset: KeySet
) -> None:
    plain, meta, inner = _recovered_part(tmp_path, keyset)
    out = bytearray()
    reader = RecoveredReader(meta, inner, out.extend)
    for i in range(0, len(plain), 999):  # odd pieces, as a decryption sink hands them over
        reader.feed(plain[i : i + 999])
    reader.finish()
    assert bytes(out) == open_recovered(plain, meta, inner).media
    assert reader.frames == meta["inner_chunks"] and reader.torn_bytes == 0
    torn = RecoveredReader(meta)
    torn.feed(plain + struct.pack(">I", 4000) + b"cut")
    torn.finish()
    assert torn.frames == meta["inner_chunks"] and torn.torn_bytes == 7
    with pytest.raises(FormatError):
        RecoveredReader(meta).feed(b"EAJNL\x00\x00\x02" + plain[8:])


def _fragment(mp4: bytes, n: int) -> list[bytes]:
    """The init boxes and the ``n``-th moof+mdat of a fragmented MP4 (free boxes dropped)."""
    boxes = []
    pos = 0
    while pos + 8 <= len(mp4):
        size, kind = struct.unpack_from(">I4s", mp4, pos)
        boxes.append((kind, mp4[pos : pos + size]))
        pos += size
    init = [b for k, b in boxes if k in (b"ftyp", b"moov")]
    pairs = [(b, boxes[i + 1][1]) for i, (k, b) in enumerate(boxes) if k == b"moof"]
    return [*init, *pairs[n]]
