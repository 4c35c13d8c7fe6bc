"""Signed stream heads: what a device has sealed, so the platform can tell a segment deleted
on the way (its last one, too) from one not yet sent.

The hash chain shows a missing segment *between* two stored ones; only the device can say
how far a stream goes. So the device publishes, retained, on ``devices/{d}/heads``::

    {"v": 1, "device": "<id>", "boot": "<boot id>", "at": <unix s>,
     "streams": {"<stream>": {"seq": <last sealed seq>, "hash": "<its manifest hash>",
                              "pending": <segments of the stream not yet acknowledged>}, ...},
     "signer": "<fingerprint of the device key>", "sig": "<hex Ed25519>"}

``sig`` is made with the device's sealing key (the one that signs its segments) over
``"edge-agent heads v1\\0"`` + canonical JSON of every other field, so neither the broker nor
another client can lower or raise a head. A replayed older message only names older heads:
the platform keeps the highest ``seq`` it was shown per stream, never lowers it.

The platform (:class:`agent.ingest.heads.HeadsBook`) records them and reports a stream whose
head is beyond what it stores once delivery has settled: the device says nothing of that
stream is pending any more (everything was acknowledged, or evicted), or the head has been
known for ``settle_s`` without arriving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import boundedjson, ids
from agent.errors import FormatError, VerificationError
from agent.storage.keys import fingerprint, raw_public

CONTEXT = b"edge-agent heads v1\x00"
MAX_STREAMS = 64
MAX_BYTES = 32 * 1024
MAX_PENDING = 10**9
MAX_TIME = 10**11  # unix seconds (year 5138): bounds a clock, not a policy


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    pending: int


@dataclass(frozen=True)
class Heads:
    device: str
    boot: str
    at: int
    streams: dict[str, Head]
    signer: str


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_heads(
    key: Ed25519PrivateKey,
    device: str,
    boot: str,
    at: float,
    chains: dict[str, tuple[int, str | None]],
    pending: dict[str, int],
) -> bytes:
    """The signed heads message. ``chains`` is Spool.chain_state() (next seq, last hash)."""
    streams: dict[str, Any] = {}
    for stream, (next_seq, last_hash) in sorted(chains.items()):
        if next_seq <= 0 or last_hash is None:
            continue
        streams[stream] = {
            "seq": next_seq - 1,
            "hash": last_hash,
            "pending": max(0, int(pending.get(stream, 0))),
        }
    body: dict[str, Any] = {
        "v": 1,
        "device": device,
        "boot": boot,
        "at": int(at),
        "streams": streams,
        "signer": fingerprint(raw_public(key.public_key())),
    }
    body["sig"] = key.sign(CONTEXT + _canonical(body)).hex()
    return _canonical(body)


def _int(obj: dict[str, Any], name: str, top: int, what: str) -> int:
    value = obj.get(name)
    if type(value) is not int or not 0 <= value < top:
        raise FormatError(f"{what}: {name!r} must be an integer 0 <= n < {top}")
    return value


def parse_heads(payload: bytes, device: str, trusted: Ed25519PublicKey | None) -> Heads:
    """Check a heads message from ``device``; ``trusted`` is its registered or pinned key.

    Raises FormatError (malformed) or VerificationError (unsigned, another device's, or not
    signed by ``trusted``). Without ``trusted`` nothing can be believed: VerificationError.
    """
    what = f"heads of {device}"
    obj = boundedjson.loads(payload, what, max_bytes=MAX_BYTES, max_depth=4)
    if obj.get("v") != 1:
        raise FormatError(f"{what}: version {str(obj.get('v'))[:20]} is not supported")
    unknown = set(obj) - {"v", "device", "boot", "at", "streams", "signer", "sig"}
    if unknown:
        raise FormatError(f"{what}: unknown fields {', '.join(sorted(unknown))[:100]}")
    named = ids.check_device_id(obj.get("device"), f"{what}: device")
    boot = ids.check_boot_id(obj.get("boot"), f"{what}: boot")
    at = _int(obj, "at", MAX_TIME, what)
    signer, sig = obj.get("signer"), obj.get("sig")
    if not isinstance(signer, str) or not isinstance(sig, str):
        raise VerificationError(f"{what}: unsigned")
    raw = obj.get("streams")
    if not isinstance(raw, dict) or len(raw) > MAX_STREAMS:
        raise FormatError(f"{what}: 'streams' must be an object of at most {MAX_STREAMS}")
    streams: dict[str, Head] = {}
    for stream, head in raw.items():
        ids.check_stream(stream, f"{what}: stream")
        if not isinstance(head, dict) or set(head) != {"seq", "hash", "pending"}:
            raise FormatError(f"{what}: {stream}: must be {{seq, hash, pending}}")
        streams[stream] = Head(
            ids.check_seq(head["seq"], f"{what}: {stream} seq"),
            ids.check_hash(head["hash"], f"{what}: {stream} hash"),
            _int(head, "pending", MAX_PENDING, what),
        )
    if trusted is None:
        raise VerificationError(f"{what}: no registered or pinned key to check it against")
    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        trusted.verify(bytes.fromhex(sig), CONTEXT + _canonical(body))
    except (InvalidSignature, ValueError):
        raise VerificationError(f"{what}: bad signature (not the device's key)") from None
    if named != device:
        raise VerificationError(f"{what}: names device {named!r}")
    return Heads(named, boot, at, streams, signer)
