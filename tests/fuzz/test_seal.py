"""The sealed-segment parser and verifier: never crash on mutated input (only FormatError or
VerificationError), and reject every tampered file. The single-byte property is checked
exhaustively (every byte of every sample, not a random subset); hypothesis adds random
multi-byte edits, truncations, insertions and splices.

The security suite cross-references this file for "tampering anywhere in a segment is detected".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import FormatError, VerificationError
from agent.ids import device_id_problem
from agent.storage.manifest import canonical_json
from agent.storage.seal import parse_key_record
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet
from tests.fuzz.common import FOUND, TRIED, keep
from tests.fuzz.sealed import ALLOWED, Sealed, check_all, make_sealed
from tests.storage.forge import resign, split


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, keyset: KeySet) -> Sealed:
    return make_sealed(tmp_path_factory.mktemp("sealed"), keyset)


def test_samples_verify_untouched(sealed: Sealed) -> None:
    for data in sealed.segments.values():
        check_all(data, sealed)
    assert verify_paths([sealed.spool_dir], trusted=sealed.trusted).ok


@pytest.mark.parametrize("name", ["small", "empty", "event"])
def test_every_single_byte_change_is_rejected(sealed: Sealed, name: str) -> None:
    """Each position, three different replacement values: all must fail verification."""
    data = sealed.segments[name]
    accepted: list[tuple[int, int]] = []
    for i in range(len(data)):
        for delta in (0x01, 0x80, 0xFF):
            TRIED["segment"] += 1
            mutated = bytearray(data)
            mutated[i] ^= delta
            try:
                check_all(bytes(mutated), sealed)
            except ALLOWED:
                continue
            except Exception:
                keep("segment", bytes(mutated))
                raise
            accepted.append((i, delta))
            keep("segment", bytes(mutated))
    assert not accepted, f"{name}: tampered bytes accepted at (offset, xor) {accepted[:20]}"


def test_every_single_byte_change_of_the_key_record_is_rejected(sealed: Sealed) -> None:
    data = sealed.key_record
    accepted = []
    for i in range(len(data)):
        TRIED["key-record"] += 1
        mutated = bytearray(data)
        mutated[i] ^= 0x41
        try:
            rec = parse_key_record(bytes(mutated), sealed.trusted)
            rec.unwrap(sealed.platform)
        except ALLOWED:
            continue
        accepted.append(i)
    if accepted:
        FOUND["key-record"] += len(accepted)
    assert not accepted, f"tampered key record accepted at offsets {accepted[:20]}"


@given(st.data())
def test_random_edits_never_crash_and_are_rejected(sealed: Sealed, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(sealed.segments)))
    buf = bytearray(sealed.segments[name])
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate", "splice"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "set" and buf:
            buf[i] = (buf[i] + data.draw(st.integers(1, 255))) % 256
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del buf[i : i + data.draw(st.integers(1, 64))]
        elif op == "truncate":
            del buf[i:]
        else:  # bytes of another sealed segment spliced in
            other = sealed.segments[data.draw(st.sampled_from(sorted(sealed.segments)))]
            j = data.draw(st.integers(0, len(other) - 1))
            piece = other[j : j + data.draw(st.integers(1, 200))]
            buf[i : i + len(piece)] = piece
    mutated = bytes(buf)
    TRIED["segment"] += 1
    if mutated in sealed.segments.values():
        return  # the edits cancelled out (a splice of identical bytes)
    try:
        check_all(mutated, sealed)
    except ALLOWED:
        return
    except Exception:
        keep("segment", mutated)
        raise
    keep("segment", mutated)
    raise AssertionError(f"a tampered {name} segment verified")


@given(st.binary(max_size=600))
def test_random_bytes_are_not_a_segment(sealed: Sealed, blob: bytes) -> None:
    TRIED["segment"] += 1
    for prefix in (b"", b"EASEG\x00\x00\x01", b"EAKEY\x00\x00\x01"):
        data = prefix + blob
        try:
            check_all(data, sealed)
        except ALLOWED:
            pass
        except Exception:
            keep("segment", data)
            raise
        else:
            keep("segment", data)
            raise AssertionError("random bytes verified as a segment")
        try:
            parse_key_record(data)
        except (FormatError, VerificationError):
            pass
        except Exception:
            keep("key-record", data)
            raise


def test_verify_cli_path_rejects_a_tampered_file(sealed: Sealed, tmp_path: Path) -> None:
    """The same through ``verify_paths`` (what ``edge-agent verify`` runs) on a directory."""
    data = bytearray(sealed.segments["small"])
    data[len(data) // 2] ^= 0x10
    (tmp_path / "000000000000.seg").write_bytes(bytes(data))
    assert not verify_paths([tmp_path], trusted=sealed.trusted).ok


# ----------------------------------------------------------------- every field, by value

_HEX_SIZES = {
    "plain_sha256": 32,
    "body_sha256": 32,
    "prev": 32,
    "salt": 16,
    "device_pub": 32,
    "key_id": 8,
    "signer": 8,
    "batch": 16,
}
_UTC = ("start_utc", "end_utc", "sealed_utc")
_INT_RANGES = {
    "seq": (0, 10**12),
    "start_mono_ns": (0, 1 << 63),
    "end_mono_ns": (0, 1 << 63),
}


def _not(pattern: str) -> st.SearchStrategy[str]:
    import re

    rx = re.compile(pattern)
    return st.text(max_size=80).filter(lambda s: not rx.match(s))


def _invalid_value(field: str) -> st.SearchStrategy[object]:
    """Values of the right JSON type (mostly) but outside the field's documented form."""
    wrong_type = st.one_of(st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
    if field in _HEX_SIZES:
        n = _HEX_SIZES[field]
        return st.one_of(
            _not(rf"^[0-9a-f]{{{2 * n}}}$"),
            st.binary(min_size=n, max_size=n)
            .map(lambda b: b.hex().upper())
            .filter(lambda s: s != s.lower()),
            st.integers(),
        )
    if field in _UTC:
        return st.one_of(
            _not(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"),
            st.sampled_from(["2026-13-01T00:00:00.000Z", "2026-02-29T00:00:00.000Z"]),
            st.floats(allow_nan=False),
        )
    if field in _INT_RANGES:
        lo, hi = _INT_RANGES[field]
        return st.one_of(
            st.integers(max_value=lo - 1),
            st.integers(min_value=hi, max_value=hi * 10),
            st.floats(allow_nan=False),
            st.text(max_size=5),
            st.booleans(),
        )
    if field == "device":
        return st.one_of(
            st.text(max_size=70).filter(lambda s: device_id_problem(s) is not None),
            st.sampled_from(["..", ".", "/etc", "ingest", "a/b", "dev\x00"]),
        )
    if field == "stream":
        return _not(r"^[a-z][a-z0-9_-]{0,31}$")
    if field == "boot":
        return _not(r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,63}$")
    if field == "content_type":
        return st.one_of(
            _not(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$"),
            wrong_type,
        )
    if field == "clock":
        return st.one_of(
            st.fixed_dictionaries(
                {
                    "source": st.text(max_size=10).filter(
                        lambda s: s not in ("gnss", "ntp", "rtc", "none")
                    ),
                    "offset_s": st.none(),
                }
            ),
            st.fixed_dictionaries({"source": st.just("gnss"), "offset_s": st.text(max_size=3)}),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
            wrong_type,
        )
    if field == "cipher":
        return st.text(max_size=20).filter(lambda s: s not in ("aes-256-gcm", "chacha20-poly1305"))
    if field in ("plain_len", "chunk_size", "chunks", "body_len"):
        return st.one_of(
            st.integers(min_value=-5, max_value=10**7), st.floats(), st.text(max_size=3)
        )
    if field == "kind":
        return st.text(max_size=10).filter(lambda s: s != "segment")
    if field == "v":
        return st.one_of(st.integers().filter(lambda v: v != 2), st.text(max_size=2))
    if field == "evicted":
        return st.one_of(
            st.fixed_dictionaries(
                {
                    "stream": st.sampled_from(["gps"]),
                    "seqs": st.lists(st.integers(0, 9), max_size=3),
                }
            ),
            st.text(max_size=5),
            st.integers(),
        )
    if field == "sealed_meta":
        return st.one_of(_not(r"^(?:[0-9a-f]{2}){18,}$"), st.none())
    raise AssertionError(field)


_FIELDS = sorted({*_HEX_SIZES, *_UTC, *_INT_RANGES} | {
    "device", "stream", "boot", "content_type", "clock", "cipher", "plain_len", "chunk_size",
    "chunks", "body_len", "kind", "v", "evicted", "sealed_meta",
})  # fmt: skip


@given(st.data())
def test_a_signed_manifest_with_any_field_out_of_its_form_is_refused(
    sealed: Sealed, keyset: KeySet, data: st.DataObject
) -> None:
    """Property: whatever one field is set to outside its documented form (re-signed with the
    device key, so only the value is wrong), or any unknown field added, the segment fails."""
    name = data.draw(st.sampled_from(["small", "event"]))
    blob = sealed.segments[name]
    _v, _body, manifest = split(blob)
    if data.draw(st.booleans(), label="add an unknown field"):
        extra = data.draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in manifest))
        manifest[extra] = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    else:
        field = data.draw(st.sampled_from(_FIELDS), label="field")
        value = data.draw(_invalid_value(field), label="value")
        if field == "evicted" and name == "event" and _valid_eviction(value):
            return  # a well-formed explanation is a valid value for an event record
        if field in ("plain_len", "chunk_size", "chunks", "body_len") and value == manifest[field]:
            return
        manifest[field] = value
    TRIED["segment-fields"] += 1
    forged = resign(blob, keyset.signing_key, manifest_bytes=canonical_json(manifest))
    try:
        check_all(forged, sealed)
    except ALLOWED:
        return
    keep("segment", forged)
    raise AssertionError(f"a manifest out of the format verified: {manifest}")


def _valid_eviction(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("seqs"), list)
        and len(value["seqs"]) > 0
        and value["seqs"] == sorted(set(value["seqs"]))
    )
