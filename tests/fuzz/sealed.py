"""A few real sealed segments and their key record, made once per session for the fuzzers."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import FormatError, VerificationError
from agent.storage.seal import (
    decrypt_segment,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_decrypt_segment,
    verify_segment,
)
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet, make_sealer


@dataclass(frozen=True, repr=False)
class Sealed:
    segments: dict[str, bytes]  # name -> sealed file bytes
    key_record: bytes
    trusted: Ed25519PublicKey
    platform: X25519PrivateKey
    spool_dir: Path


def make_sealed(directory: Path, keyset: KeySet) -> Sealed:
    sealer = make_sealer(keyset, "fuzz-dev", "boot-f", chunk_size=1024)
    sp = Spool(SpoolSettings(dir=directory / "spool", reserve_mb=0), sealer)
    try:
        segs = {
            "small": sp.put_bytes("video", os.urandom(2500)).path.read_bytes(),  # 3 chunks
            "empty": sp.put_bytes("still", b"").path.read_bytes(),
            "event": sp.put_event("mark", {"note": "fuzz"}).path.read_bytes(),
        }
    finally:
        sp.close()
    keys = sorted((directory / "spool" / "keys").glob("*.key"))
    assert len(keys) == 1
    return Sealed(
        segs,
        keys[0].read_bytes(),
        keyset.signing_key.public_key(),
        keyset.platform_private,
        directory / "spool",
    )


def _two_reads(data: bytes, sealed: Sealed) -> None:
    """The keyless check, then decryption: the body read twice."""
    f = io.BytesIO(data)
    info = read_segment_info(f)
    verify_segment(f, info, sealed.trusted)
    rec = parse_key_record(sealed.key_record, sealed.trusted)
    if info.key_id != rec.key_id:
        raise VerificationError("segment names another key")
    out = bytearray()
    data_key = rec.unwrap(sealed.platform)
    decrypt_segment(f, info, data_key, out.extend)
    open_meta(info, data_key)


def _one_read(data: bytes, sealed: Sealed) -> None:
    """The platform's way: signature, then body hash and decryption in one read."""
    f = io.BytesIO(data)
    info = read_segment_info(f)
    rec = parse_key_record(sealed.key_record, sealed.trusted)
    if info.key_id != rec.key_id:
        raise VerificationError("segment names another key")
    data_key = rec.unwrap(sealed.platform)
    out = bytearray()
    verify_decrypt_segment(f, info, data_key, out.extend, sealed.trusted)
    open_meta(info, data_key)


def check_all(data: bytes, sealed: Sealed) -> None:
    """Everything a verifier does with a segment file, both ways (two reads of the body, and
    one); raises only FormatError or VerificationError for a bad one, and only when both ways
    refuse it (a file one accepts and the other refuses is an AssertionError)."""
    errors: list[Exception | None] = []
    for read in (_two_reads, _one_read):
        try:
            read(data, sealed)
        except ALLOWED as exc:
            errors.append(exc)
        else:
            errors.append(None)
    if (errors[0] is None) != (errors[1] is None):
        raise AssertionError(f"one read and two reads disagree: {errors}")
    if errors[0] is not None:
        raise errors[0]


ALLOWED = (FormatError, VerificationError)
