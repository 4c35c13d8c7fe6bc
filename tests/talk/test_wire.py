"""The talk protocol without I/O: chunks, reassembly, signatures; the codec; light imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import FormatError, VerificationError
from agent.talk import wire
from agent.talk.codec import decode_to_pcm, encode_pcm, tone


def _message(key: Ed25519PrivateKey, n_bytes: int = 5000) -> tuple[bytes, list[wire.Chunk]]:
    body = bytes(range(256)) * (n_bytes // 256)
    return body, wire.build_message(
        key, body, sender=wire.PLATFORM, to="device:d1", duration_s=1.0, chunk_bytes=1000
    )


def test_chunks_round_trip_and_reassemble_in_any_order_with_duplicates() -> None:
    key = Ed25519PrivateKey.generate()
    body, chunks = _message(key)
    parsed = [wire.parse_chunk(c.encode()) for c in chunks]
    assert parsed == chunks and parsed[-1].last and parsed[-1].msg is not None
    r = wire.Reassembler(1 << 20)
    order = [4, 0, 0, 2, 1]
    assert all(r.add(parsed[i], "t", float(k)) is None for k, i in enumerate(order))
    p = r.partials[chunks[0].id]
    assert p.have() == [0, 1, 2, 4] and p.missing() == [3]
    done = r.add(parsed[3], "t", 9.0)
    assert done is not None and done.body == body
    wire.verify(done, key.public_key(), now=done.msg["issued"])


def test_verify_refuses_tampering_other_keys_and_expiry() -> None:
    key = Ed25519PrivateKey.generate()
    _, chunks = _message(key)
    r = wire.Reassembler(1 << 20)
    bad = [
        chunks[0].__class__(c.id, c.index, c.last, b"x" + c.data[1:], c.msg, c.sig)
        if c.index == 1
        else c
        for c in chunks
    ]
    done = None
    for c in bad:
        done = r.add(c, "t", 0.0)
    assert done is not None
    with pytest.raises(VerificationError, match="SHA-256"):
        wire.verify(done, key.public_key(), now=done.msg["issued"])
    good = wire.Reassembler(1 << 20)
    for c in chunks:
        done = good.add(c, "t", 0.0)
    assert done is not None
    with pytest.raises(VerificationError, match="signature"):
        wire.verify(done, Ed25519PrivateKey.generate().public_key(), now=done.msg["issued"])
    with pytest.raises(VerificationError, match="expired"):
        wire.verify(done, key.public_key(), now=done.msg["expires"] + 1000)


def test_malformed_and_oversized() -> None:
    for junk in (b"", b"EAT1", b"XXXX\x00\x02{}", b"EAT1\x00\x02[]"):
        with pytest.raises(FormatError):
            wire.parse_chunk(junk)
    key = Ed25519PrivateKey.generate()
    _, chunks = _message(key)
    r = wire.Reassembler(1500)
    r.add(chunks[0], "t", 0.0)
    with pytest.raises(FormatError, match="larger"):
        r.add(chunks[1], "t", 0.0)
    with pytest.raises(FormatError):
        wire.parse_resend(b'{"type":"resend","id":"short","chunks":[1]}')
    assert wire.parse_resend(wire.resend_request("a" * 32, [1, 2])) == ("a" * 32, [1, 2])


def test_opus_ogg_round_trip_keeps_the_tone_and_length() -> None:
    import numpy as np

    pcm = tone(600, 1000, 48000, amplitude=0.5, fade_ms=1)
    ogg = encode_pcm(pcm, 48000)
    assert ogg[:4] == b"OggS"
    out = np.frombuffer(decode_to_pcm(ogg, 48000), "<i2").astype(np.float64)
    assert len(out) == 48000
    spec = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert float(np.argmax(spec) * 48000 / len(out)) == pytest.approx(600, abs=2)
    assert len(ogg) < len(pcm) * 0.05


def test_importing_talk_loads_no_numpy_sounddevice_or_av() -> None:
    code = (
        "import sys, agent.talk.device, agent.talk.cli, agent.talk.platform, "
        "agent.lines.ptt\n"
        "bad = [m for m in ('numpy', 'sounddevice', 'av') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
