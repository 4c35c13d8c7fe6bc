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
from agent.storage.seal import parse_key_record
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet
from tests.fuzz.common import FOUND, TRIED, keep
from tests.fuzz.sealed import ALLOWED, Sealed, check_all, make_sealed


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
