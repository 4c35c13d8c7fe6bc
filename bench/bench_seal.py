"""seal: seal + verify of 1 MiB and 64 MiB segments vs a bare SHA-256 + AEAD loop, for both
ciphers; and the platform's verify alone (body hash always checked, one read) vs decryption
alone and vs a bare loop doing the same work. Chunks of the sealer's default size."""

from __future__ import annotations

import hashlib
import io
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from agent.model import ClockState
from agent.storage.cipherchoice import choose_cipher
from agent.storage.seal import (
    ChainLink,
    SegmentHeader,
    chunk_nonce,
    decrypt_segment,
    parse_key_record,
    read_segment_info,
    segment_key,
    verify_decrypt_segment,
)
from agent.storage.settings import SealSettings
from bench import Reporter
from bench.common import Lab, best_of

CHUNK = SealSettings().chunk_size


def _bare(data: bytes, cipher: str, out: memoryview) -> None:
    """The least the format asks: hash the plaintext, encrypt, hash the ciphertext; then hash
    the ciphertext, decrypt and hash the plaintext. The ciphertext goes into ``out``, memory
    reused from round to round (as ours reuses its output buffer)."""
    key = os.urandom(32)
    aead = AESGCM(key) if cipher == "aes-256-gcm" else ChaCha20Poly1305(key)
    h = hashlib.sha256()
    body = hashlib.sha256()
    view = memoryview(data)
    cts = []
    pos = 0
    for i in range(0, len(data), CHUNK):
        chunk = view[i : i + CHUNK]
        h.update(chunk)
        ct = out[pos : pos + len(chunk) + 16]
        aead.encrypt_into(i.to_bytes(12, "big"), chunk, None, ct)
        body.update(ct)
        cts.append(ct)
        pos += len(ct)
    h2 = hashlib.sha256()
    body2 = hashlib.sha256()
    for i, ct in enumerate(cts):
        body2.update(ct)
        h2.update(aead.decrypt((i * CHUNK).to_bytes(12, "big"), ct, None))
    assert h.digest() == h2.digest() and body.digest() == body2.digest()


def _bare_verify(body: memoryview, cipher: str, key: bytes) -> None:
    """The least a verifier with the key does: hash each stored frame, decrypt it, hash the
    plaintext (frames sliced from memory, no reads, no signature, no manifest)."""
    aead = AESGCM(key) if cipher == "aes-256-gcm" else ChaCha20Poly1305(key)
    h = hashlib.sha256()
    plain = hashlib.sha256()
    pos = 0
    index = 0
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 4], "big")
        frame = body[pos : pos + 4 + n]
        h.update(frame)
        last = pos + 4 + n == len(body)
        plain.update(aead.decrypt(chunk_nonce(index, last), frame[4:], None))
        pos += 4 + n
        index += 1


def _measure(lab: Lab, report: Reporter, cipher: str, mib: int) -> None:
    sealer = lab.sealer(cipher=cipher, chunk_size=CHUNK)
    key = sealer.current_key()
    dk = parse_key_record(key.record).unwrap(lab.platform_private)
    data = os.urandom(mib * 1024 * 1024)
    header = SegmentHeader("video", "video/mp4", 0.0, 1.0, 0, 1, ClockState(), {})

    sealed = io.BytesIO()
    sealer.seal(sealed, header, ChainLink(0, None), [data], key)
    # One output buffer for every round, as the bare loop reuses its memory: the figure is the
    # sealing's, not the page faults of a fresh buffer each time.
    out = io.BytesIO()
    bare_out = memoryview(bytearray(len(data) + 16 * (len(data) // CHUNK + 1)))

    def ours() -> None:
        out.seek(0)
        sealer.seal(out, header, ChainLink(0, None), [data], key)
        out.truncate()
        info = read_segment_info(out)
        # The platform's verify: signature, then body hash, AEAD and plaintext hash in one read.
        verify_decrypt_segment(out, info, dk, lambda _b: None)

    def verify() -> None:
        info = read_segment_info(sealed)
        verify_decrypt_segment(sealed, info, dk, lambda _b: None)

    def decrypt_only() -> None:
        decrypt_segment(sealed, read_segment_info(sealed), dk, lambda _b: None)

    info = read_segment_info(sealed)
    body = memoryview(sealed.getvalue())[8 : 8 + info.manifest["body_len"]]
    seg_key = segment_key(dk, bytes.fromhex(info.manifest["salt"]))

    # Alternated, each the best of a few: the machine is shared.
    repeat = 5 if mib == 1 else 2
    t_ours = t_bare = float("inf")
    for _ in range(2):
        t_bare = min(t_bare, best_of(lambda: _bare(data, cipher, bare_out), repeat))
        t_ours = min(t_ours, best_of(ours, repeat))
    short = "aes" if cipher.startswith("aes") else "chacha"
    report.figure(
        "seal",
        f"seal_verify_{mib}MiB_{short}",
        mib / t_ours,
        "MiB/s",
        ratio=t_bare / t_ours,
        baseline=f"bare SHA-256+{cipher} loop ({mib / t_bare:.0f} MiB/s)",
        target=0.85 if mib > 1 else 0.8,
    )
    if mib > 1:
        t_verify = t_decrypt = t_bare_verify = float("inf")
        for _ in range(2):
            t_verify = min(t_verify, best_of(verify, repeat))
            t_decrypt = min(t_decrypt, best_of(decrypt_only, repeat))
            t_bare_verify = min(
                t_bare_verify, best_of(lambda: _bare_verify(body, cipher, seg_key), repeat)
            )
        # Verify hashes the body with the platform key too: one more SHA-256 pass than
        # decryption alone, in the same read of the body.
        report.figure(
            "seal",
            f"verify_with_key_{mib}MiB_{short}",
            mib / t_verify,
            "MiB/s",
            ratio=t_decrypt / t_verify,
            baseline=f"decryption alone, no body hash ({mib / t_decrypt:.0f} MiB/s)",
            target=0.5,
        )
        report.info(
            "seal",
            f"verify_with_key_{mib}MiB_{short}_vs_bare",
            t_bare_verify / t_verify,
            "of bare",
            f"the same work (SHA-256 of each frame, {cipher}, SHA-256 of the plaintext) in a "
            f"bare loop over frames in memory: {mib / t_bare_verify:.0f} MiB/s",
        )


def run(report: Reporter) -> None:
    lab = Lab()
    try:
        choice = choose_cipher("auto")
        report.info("seal", "cipher_auto", 0, "", f"this machine: {choice}")
        for cipher in ("aes-256-gcm", "chacha20-poly1305"):
            for mib in (1, 64):
                _measure(lab, report, cipher, mib)
    finally:
        lab.close()
