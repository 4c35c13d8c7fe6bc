"""Forged segments for the verifier's tests: validly signed by the test device key, but with
content that breaks docs/format.md. A verifier that only checks signatures accepts them all."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.storage.manifest import canonical_json
from agent.storage.seal import (
    KEY_CONTEXT,
    PREFIX_LEN,
    TRAILER_FIXED,
    aead_for,
    chunk_nonce,
    segment_context,
    segment_key,
)


def split(blob: bytes) -> tuple[int, bytes, dict[str, Any]]:
    """(version, body, manifest) of a sealed segment or key record."""
    (version,) = struct.unpack(">H", blob[6:8])
    (mlen,) = struct.unpack(">I", blob[-4:])
    man_at = len(blob) - TRAILER_FIXED - mlen
    manifest = json.loads(blob[man_at : man_at + mlen])
    return version, blob[PREFIX_LEN:man_at], manifest


def assemble(
    magic: bytes, version: int, body: bytes, manifest_bytes: bytes, context: bytes, key: Any
) -> bytes:
    sig = key.sign(context + manifest_bytes)
    return (
        magic
        + struct.pack(">H", version)
        + body
        + manifest_bytes
        + sig
        + struct.pack(">I", len(manifest_bytes))
    )


def resign(
    blob: bytes,
    signing_key: Ed25519PrivateKey,
    edit: Callable[[dict[str, Any]], object] | None = None,
    *,
    body: bytes | None = None,
    version: int | None = None,
    manifest_bytes: bytes | None = None,
) -> bytes:
    """``blob`` with its manifest edited (and/or its body replaced), signed again."""
    old_version, old_body, manifest = split(blob)
    if edit is not None:
        edit(manifest)
    v = old_version if version is None else version
    mbytes = canonical_json(manifest) if manifest_bytes is None else manifest_bytes
    if blob[:6] == b"EAKEY\x00":
        return assemble(blob[:6], v, b"", mbytes, KEY_CONTEXT, signing_key)
    return assemble(
        blob[:6],
        v,
        old_body if body is None else body,
        mbytes,
        segment_context(v),
        signing_key,
    )


def recut(
    blob: bytes,
    signing_key: Ed25519PrivateKey,
    data_key: bytes,
    plaintext: bytes,
    sizes: list[int],
) -> bytes:
    """The same plaintext, encrypted in chunks of ``sizes`` (not cut at ``chunk_size``), with a
    body hash and lengths that match: only the frame lengths break the format."""
    assert sum(sizes) == len(plaintext)
    _v, _body, m = split(blob)
    aead = aead_for(m["cipher"], segment_key(data_key, bytes.fromhex(m["salt"])))
    body = bytearray()
    pos = 0
    for i, n in enumerate(sizes):
        ct = aead.encrypt(chunk_nonce(i, i == len(sizes) - 1), plaintext[pos : pos + n], None)
        body += struct.pack(">I", len(ct)) + ct
        pos += n

    def edit(man: dict[str, Any]) -> None:
        man["chunks"] = len(sizes)
        man["body_len"] = len(body)
        man["body_sha256"] = hashlib.sha256(body).hexdigest()

    return resign(blob, signing_key, edit, body=bytes(body))


def to_version_1(
    blob: bytes, signing_key: Ed25519PrivateKey, meta: dict[str, Any], prev: str | None
) -> bytes:
    """A version 2 segment rewritten as format version 1 wrote it: ``meta`` in clear in the
    manifest (with the batch id in it), no batch/evicted/sealed_meta fields, v1 context;
    ``prev`` the hash of the rewritten previous manifest."""
    _v, body, m = split(blob)
    m["prev"] = prev
    meta = dict(meta)
    if m["batch"] is not None:
        meta["batch_id"] = m["batch"]
    if m["evicted"] is not None:
        meta.update(m["evicted"])
    for name in ("batch", "evicted", "sealed_meta"):
        del m[name]
    m["v"] = 1
    m["meta"] = meta
    return assemble(blob[:6], 1, body, canonical_json(m), segment_context(1), signing_key)
