"""The verifier checks everything docs/format.md says, by value, not only signatures and types.

Each violating file is validly signed by the test device key (see ``forge``): a verifier that
trusts whatever is signed accepts it; ours names the broken rule.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.errors import FormatError, VerificationError
from agent.model import ClockState, format_utc
from agent.storage.records import (
    JOURNAL_CONTENT_TYPE,
    RecordLog,
    decrypt_journal,
    pack_records,
)
from agent.storage.seal import (
    SegmentHeader,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_segment,
)
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import Report, verify_paths
from tests.fixtures.keys import KeySet, make_sealer
from tests.storage.forge import recut, resign, split, to_version_1

CHUNK = 1024
OFFICER = "officer-O4711"


@dataclass(frozen=True)
class Base:
    spool: Path
    data_key: bytes
    videos: list[bytes]  # plaintexts of video#0..2


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, keyset: KeySet) -> Base:
    root = tmp_path_factory.mktemp("strict")
    sealer = make_sealer(keyset, chunk_size=CHUNK)
    sp = Spool(SpoolSettings(dir=root / "spool", reserve_mb=0), sealer)
    videos = [os.urandom(2500) for _ in range(3)]
    for v in videos:
        sp.put_bytes("video", v, content_type="video/mp4", meta={"officer": OFFICER})
    sp.put_bytes(
        "still",
        b"\xff\xd8jpeg",
        content_type="image/jpeg",
        meta={"officer": OFFICER, "position": {"lat": 48.137154, "lon": 11.576124}},
    )
    log = RecordLog(sp, "gps", content_type="application/x-edge-fix", batch_max_records=100)
    for i in range(3):
        log.append(bytes([i]) * 28)
    log.roll()
    sp.put_event("mark", {"note": "suspect left"})
    data_key = sealer.current_key().secret
    sp.close()
    return Base(root / "spool", data_key, videos)


@pytest.fixture
def store(tmp_path: Path, base: Base) -> Path:
    dest = tmp_path / "store"
    shutil.copytree(base.spool, dest, ignore=shutil.ignore_patterns("*.sqlite3*", "journal"))
    return dest


def seg(store: Path, stream: str, seq: int) -> Path:
    return store / "seg" / stream / f"{seq:012d}.seg"


def kinds(report: Report) -> list[tuple[str, str]]:
    return sorted((p.kind, p.where) for p in report.problems)


def test_the_untouched_store_verifies(store: Path, keyset: KeySet) -> None:
    assert verify_paths([store], trusted=keyset.signing_key.public_key()).ok
    full = verify_paths([store], platform_private=keyset.platform_private)
    assert full.ok, full.problems
    assert full.metas["dev-1/video#0"] == {"officer": OFFICER}
    assert full.metas["dev-1/gps#0"] == {"records": 3}


def test_resigning_alone_breaks_nothing(store: Path, keyset: KeySet) -> None:
    """The forging helper itself keeps a file valid: each failure below is its edit's."""
    p = seg(store, "video", 1)
    p.write_bytes(resign(p.read_bytes(), keyset.signing_key))
    assert verify_paths([store], platform_private=keyset.platform_private).ok


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for name in parents:
            m = m[name]
        m[last] = value

    return edit


def _upper(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        m[name] = m[name].upper()

    return edit


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        del m[name]

    return edit


def _append(name: str, suffix: str) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        m[name] = m[name] + suffix

    return edit


MANIFEST_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "extra field": _set("note", "hello"),
    "missing field": _drop("sealed_utc"),
    "clock source sundial": _set("clock.source", "sundial"),
    "clock with an extra key": _set("clock.drift", 0.1),
    "clock offset not a number": _set("clock.offset_s", "small"),
    "start_utc yesterday": _set("start_utc", "yesterday"),
    "start_utc not a real date": _set("start_utc", "2026-02-30T10:00:00.000Z"),
    "end_utc without milliseconds": _set("end_utc", "2026-09-21T14:13:20Z"),
    "sealed_utc with an offset": _set("sealed_utc", "2026-09-21T14:13:20.000+00:00"),
    "start_utc with a final newline": _append("start_utc", "\n"),
    "start_utc in non-ASCII digits": _set(
        "start_utc", "\uff12\uff10\uff12\uff16-09-21T14:13:20.000Z"
    ),
    "content type with a final newline": _append("content_type", "\n"),
    "sealed meta with a final newline": _append("sealed_meta", "\n"),
    "upper-case plain_sha256": _upper("plain_sha256"),
    "upper-case body_sha256": _upper("body_sha256"),
    "upper-case salt": _upper("salt"),
    "upper-case prev": _upper("prev"),
    "upper-case device_pub": _upper("device_pub"),
    "upper-case key_id": _upper("key_id"),
    "device an absolute path": _set("device", "/tmp/evil"),
    "device dot-dot": _set("device", ".."),
    "device reserved": _set("device", "ingest"),
    "stream with a slash": _set("stream", "../video"),
    "boot with a slash": _set("boot", "a/b"),
    "seq negative": _set("seq", -1),
    "seq of 13 digits": _set("seq", 10**12),
    "seq a float": _set("seq", 1.0),
    "prev null after seq 0": _set("prev", None),
    "content type upper-case": _set("content_type", "Video/MP4"),
    "content type with parameters": _set("content_type", "video/mp4; codecs=avc1"),
    "unknown cipher": _set("cipher", "aes-128-gcm"),
    "chunk_size below the minimum": _set("chunk_size", 16),
    "chunks not what plain_len makes": _set("chunks", 2),
    "plain_len not what the body holds": _set("plain_len", 2499),
    "monotonic end before start": _set("end_mono_ns", 0),
    "monotonic start negative": _set("start_mono_ns", -5),
    "batch not 16 bytes of hex": _set("batch", "abc"),
    "evicted on a video segment": _set("evicted", {"stream": "gps", "seqs": [1]}),
    "sealed meta empty": _set("sealed_meta", ""),
    "meta in clear in a version 2 manifest": _set("meta", {"officer": OFFICER}),
    "kind not segment": _set("kind", "key"),
    "v 1 in a version 2 file": _set("v", 1),
    "signer not the device key's fingerprint": _set("signer", "00" * 8),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_a_signed_manifest_that_breaks_a_rule_is_refused(
    store: Path, keyset: KeySet, case: str
) -> None:
    p = seg(store, "video", 1)
    forged = resign(p.read_bytes(), keyset.signing_key, MANIFEST_EDITS[case])
    with pytest.raises(FormatError):
        read_segment_info(io.BytesIO(forged))
    p.write_bytes(forged)
    report = verify_paths([store])
    assert ("bad_format", str(p)) in kinds(report) or ("truncated", str(p)) in kinds(report), (
        report.problems
    )


EVENT_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "evicted names an evidence stream": _set("evicted", {"stream": "video", "seqs": [1]}),
    "evicted seqs out of order": _set("evicted", {"stream": "gps", "seqs": [3, 2]}),
    "evicted seqs empty": _set("evicted", {"stream": "gps", "seqs": []}),
    "evicted with an extra key": _set("evicted", {"stream": "gps", "seqs": [1], "why": "x"}),
}


@pytest.mark.parametrize("case", sorted(EVENT_EDITS))
def test_a_malformed_eviction_record_is_refused(store: Path, keyset: KeySet, case: str) -> None:
    p = seg(store, "event", 0)
    p.write_bytes(resign(p.read_bytes(), keyset.signing_key, EVENT_EDITS[case]))
    assert ("bad_format", str(p)) in kinds(verify_paths([store]))


def test_a_non_canonical_manifest_is_refused(store: Path, keyset: KeySet) -> None:
    p = seg(store, "video", 0)
    _v, _b, m = split(p.read_bytes())
    spaced = b"{" + b", ".join(f'"{k}": '.encode() + _json(m[k]) for k in sorted(m)) + b"}"
    p.write_bytes(resign(p.read_bytes(), keyset.signing_key, manifest_bytes=spaced))
    report = verify_paths([store])
    assert ("bad_format", str(p)) in kinds(report)
    assert "canonical" in str(report.problems)


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def test_chunks_not_cut_at_chunk_size_are_refused_without_the_key(
    store: Path, keyset: KeySet, base: Base
) -> None:
    """The same plaintext in 1000/1000/500-byte chunks: lengths and hashes all match, the AEAD
    tags authenticate, but the format says chunks are cut at chunk_size."""
    p = seg(store, "video", 2)
    p.write_bytes(
        recut(p.read_bytes(), keyset.signing_key, base.data_key, base.videos[2], [1000, 1000, 500])
    )
    keyless = verify_paths([store])
    assert ("body_altered", str(p)) in kinds(keyless), keyless.problems
    assert "cut at chunk_size" in str(keyless.problems)
    assert not verify_paths([store], platform_private=keyset.platform_private).ok


def test_body_hash_is_checked_with_the_platform_key_too(store: Path, keyset: KeySet) -> None:
    """A manifest whose body_sha256 is wrong (signed so): decryption alone would pass it."""
    p = seg(store, "video", 2)
    p.write_bytes(resign(p.read_bytes(), keyset.signing_key, _set("body_sha256", "ab" * 32)))
    report = verify_paths([store], platform_private=keyset.platform_private)
    assert ("body_altered", str(p)) in kinds(report), report.problems


def _seal_gps(
    keyset: KeySet, tmp: Path, records: list[bytes], meta: dict[str, Any], ctype: str
) -> Path:
    sp = Spool(SpoolSettings(dir=tmp, reserve_mb=0), make_sealer(keyset, chunk_size=CHUNK))
    try:
        sp.put(
            SegmentHeader("gps", ctype, 1.7e9, 1.7e9 + 60, 0, 60 * 10**9, ClockState(), meta),
            [pack_records(records)],
            batch_id="ab" * 16,
        )
    finally:
        sp.close()
    return tmp


def test_meta_records_must_count_the_records(tmp_path: Path, keyset: KeySet) -> None:
    d = _seal_gps(
        keyset, tmp_path / "sp", [b"x" * 28] * 3, {"records": 5}, "application/x-edge-fix"
    )
    assert verify_paths([d]).ok  # the count is sealed: only the platform key can check it
    report = verify_paths([d], platform_private=keyset.platform_private)
    assert kinds(report) == [("bad_content", "dev-1/gps#0")]
    assert "3 records, meta.records says 5" in str(report.problems)


def test_a_record_batch_with_a_torn_record_is_refused(tmp_path: Path, keyset: KeySet) -> None:
    sp = Spool(SpoolSettings(dir=tmp_path / "sp", reserve_mb=0), make_sealer(keyset))
    try:
        sp.put(
            SegmentHeader(
                "gps", "application/x-edge-fix", 1.7e9, 1.7e9, 0, 0, ClockState(), {"records": 1}
            ),
            [struct.pack(">H", 28) + b"x" * 20],
        )
    finally:
        sp.close()
    report = verify_paths([tmp_path / "sp"], platform_private=keyset.platform_private)
    assert kinds(report) == [("bad_content", "dev-1/gps#0")]


def test_an_event_body_must_agree_with_its_meta(tmp_path: Path, keyset: KeySet) -> None:
    sp = Spool(SpoolSettings(dir=tmp_path / "sp", reserve_mb=0), make_sealer(keyset))
    try:
        sp.put_bytes(
            "event", b'{"type":"mark"}', content_type="application/json", meta={"type": "trigger"}
        )
        sp.put_bytes("event", b"not json", content_type="application/json", meta={"type": "x"})
    finally:
        sp.close()
    report = verify_paths([tmp_path / "sp"], platform_private=keyset.platform_private)
    assert kinds(report) == [("bad_content", "dev-1/event#0"), ("bad_content", "dev-1/event#1")]


def _evicting_spool(tmp_path: Path, keyset: KeySet) -> Spool:
    """gps#0 delivered to ``platform/``, gps#1 and #2 overwritten (said by two events)."""
    settings = SpoolSettings(dir=tmp_path / "sp", reserve_mb=0, telemetry_quota_mb=1)
    sp = Spool(settings, make_sealer(keyset))
    platform = tmp_path / "platform"
    platform.mkdir()
    first = sp.put_bytes("gps", b"fix")
    shutil.copy(first.path, platform / first.path.name)
    assert sp.ack("gps", 0, first.manifest_hash)
    for _ in range(5):
        sp.put_bytes("gps", os.urandom(300_000))
    assert [i.seq for i in sp.items("gps")] == [3, 4, 5]
    shutil.copytree(settings.dir / "keys", platform / "keys")
    return sp


def test_evicted_telemetry_is_explained_and_the_event_says_the_same(
    tmp_path: Path, keyset: KeySet
) -> None:
    sp = _evicting_spool(tmp_path, keyset)
    try:
        inputs = [tmp_path / "platform", tmp_path / "sp"]
        assert verify_paths(inputs).ok
        full = verify_paths(inputs, platform_private=keyset.platform_private)
        assert full.ok, full.problems
        assert [full.metas[f"dev-1/event#{i}"] for i in (0, 1)] == [
            {"type": "telemetry_evicted"}
        ] * 2
    finally:
        sp.close()


def test_an_eviction_record_whose_body_disagrees_is_refused(tmp_path: Path, keyset: KeySet) -> None:
    sp = _evicting_spool(tmp_path, keyset)
    try:
        ev = seg(tmp_path / "sp", "event", 1)
        ev.write_bytes(resign(ev.read_bytes(), keyset.signing_key, _set("evicted.seqs", [1, 2])))
        inputs = [tmp_path / "platform", tmp_path / "sp"]
        assert verify_paths(inputs).ok  # keyless: the manifest is a valid (signed) claim
        report = verify_paths(inputs, platform_private=keyset.platform_private)
        assert ("bad_content", "dev-1/event#1") in kinds(report)
    finally:
        sp.close()


def test_a_deleted_explaining_event_is_an_unexplained_gap(tmp_path: Path, keyset: KeySet) -> None:
    """The last event (explaining gps#2) deleted: the event chain still looks whole, but gps#2
    is then missing with nothing to explain it."""
    sp = _evicting_spool(tmp_path, keyset)
    try:
        seg(tmp_path / "sp", "event", 1).unlink()
        report = verify_paths([tmp_path / "platform", tmp_path / "sp"])
        assert kinds(report) == [("gap", "dev-1/gps#2")]
    finally:
        sp.close()


def test_a_deleted_first_segment_is_a_gap(store: Path) -> None:
    seg(store, "video", 0).unlink()
    report = verify_paths([store])
    assert kinds(report) == [("gap", "dev-1/video#0")]
    assert "missing seq 0" in str(report.problems)
    partial = verify_paths([store], partial=True)
    assert partial.ok and any("begins at seq 1" in n for n in partial.notes)


def test_a_first_segment_evicted_and_explained_is_not_a_gap(tmp_path: Path, keyset: KeySet) -> None:
    sp = _evicting_spool(tmp_path, keyset)
    try:
        # Without the platform's copy of gps#0, seq 0 is a gap; with it (above) it is not.
        report = verify_paths([tmp_path / "sp"])
        assert kinds(report) == [("gap", "dev-1/gps#0")]
    finally:
        sp.close()


def test_a_deleted_key_record_fails_without_the_platform_key(store: Path) -> None:
    for key in (store / "keys").glob("*.key"):
        key.unlink()
    report = verify_paths([store])
    assert report.problems and {p.kind for p in report.problems} == {"key_missing"}


def test_a_key_record_of_another_boot_is_refused(store: Path, keyset: KeySet) -> None:
    (key,) = (store / "keys").glob("*.key")
    key.write_bytes(resign(key.read_bytes(), keyset.signing_key, _set("boot", "boot-z")))
    report = verify_paths([store])
    assert {p.kind for p in report.problems} == {"bad_key_record"}


def test_two_different_key_records_for_one_id_are_refused(
    store: Path, keyset: KeySet, tmp_path: Path
) -> None:
    (key,) = (store / "keys").glob("*.key")
    other = tmp_path / "other.key"
    other.write_bytes(
        resign(
            key.read_bytes(), keyset.signing_key, _set("created_utc", "2020-01-01T00:00:00.000Z")
        )
    )
    report = verify_paths([store, other])
    assert ("bad_key_record", f"key {key.stem}") in kinds(report)


def test_duplicates_are_failures(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.seg"
    shutil.copy(seg(store, "video", 1), copy)
    assert kinds(verify_paths([store, copy])) == [("duplicate", "dev-1/video#1")]
    # The same file named twice is one input, not a duplicate.
    assert verify_paths([store, seg(store, "video", 1)]).ok


def test_a_huge_seq_is_a_gap_named_as_a_range(store: Path, keyset: KeySet) -> None:
    """A stream claiming seq 10^12 - 1 alone: the gap is named, not enumerated seq by seq."""
    p = seg(store, "video", 2)
    forged = resign(p.read_bytes(), keyset.signing_key, _set("seq", 10**12 - 1))
    for v in (0, 1, 2):
        seg(store, "video", v).unlink()
    (store / "late.seg").write_bytes(forged)
    report = verify_paths([store])
    assert kinds(report) == [("gap", "dev-1/video#0")]
    assert "missing seq 0..999999999998" in str(report.problems)


def _deep(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


@pytest.mark.parametrize("depth", [50_000, 40_000, 20])
def test_a_deep_manifest_is_a_format_error(
    tmp_path: Path, store: Path, keyset: KeySet, depth: int
) -> None:
    """50,000 levels exceed the manifest's size bound; 40,000 fit it and are refused by the
    bounded reader (json.loads alone raises RecursionError); 20 by the depth limit."""
    deep = _deep(depth)
    blob = resign(seg(store, "video", 0).read_bytes(), keyset.signing_key, manifest_bytes=deep)
    with pytest.raises(FormatError, match="deep" if depth < 50_000 else "impossible"):
        read_segment_info(io.BytesIO(blob))
    (key,) = (store / "keys").glob("*.key")
    rec = resign(key.read_bytes(), keyset.signing_key, manifest_bytes=deep)
    with pytest.raises(FormatError, match="deep" if depth < 50_000 else "do not match"):
        parse_key_record(rec)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "000000000000.seg").write_bytes(blob)
    (tmp_path / "in" / "k.key").write_bytes(rec)
    report = verify_paths([tmp_path / "in"])
    assert {p.where for p in report.problems} == {
        str(tmp_path / "in" / "000000000000.seg"),
        str(tmp_path / "in" / "k.key"),
    }
    assert {p.kind for p in report.problems} <= {"bad_format", "truncated", "bad_key_record"}


def test_meta_is_not_in_clear_and_opens_with_the_platform_key(store: Path, keyset: KeySet) -> None:
    still = seg(store, "still", 0).read_bytes()
    assert OFFICER.encode() not in still and b"48.137" not in still
    for p in (store / "seg").rglob("*.seg"):
        assert OFFICER.encode() not in p.read_bytes()
    f = io.BytesIO(still)
    info = read_segment_info(f)
    verify_segment(f, info)
    with pytest.raises(VerificationError, match="needs the platform key"):
        open_meta(info, None)
    (key,) = (store / "keys").glob("*.key")
    dk = parse_key_record(key.read_bytes()).unwrap(keyset.platform_private)
    assert open_meta(info, dk) == {
        "officer": OFFICER,
        "position": {"lat": 48.137154, "lon": 11.576124},
    }
    with pytest.raises(VerificationError, match="sealed meta fails"):
        open_meta(info, bytes(32))


def test_format_version_1_segments_still_verify(store: Path, keyset: KeySet) -> None:
    """Segments sealed before meta moved under the encryption (version 1) are read as they
    are: meta in clear, the eviction explanation and the batch id in it."""
    (key,) = (store / "keys").glob("*.key")
    dk = parse_key_record(key.read_bytes()).unwrap(keyset.platform_private)
    for stream in (store / "seg").iterdir():
        prev = None
        for p in sorted(stream.glob("*.seg")):
            blob = p.read_bytes()
            info = read_segment_info(io.BytesIO(blob))
            v1 = to_version_1(blob, keyset.signing_key, open_meta(info, dk), prev)
            p.write_bytes(v1)
            prev = read_segment_info(io.BytesIO(v1)).manifest_hash
    keyless = verify_paths([store], trusted=keyset.signing_key.public_key())
    assert keyless.ok, keyless.problems
    assert {i.version for _p, i in keyless.segments} == {1}
    assert keyless.segments[0][1].manifest["meta"] == {"type": "mark"}
    full = verify_paths([store], platform_private=keyset.platform_private)
    assert full.ok, full.problems
    assert full.metas["dev-1/still#0"]["officer"] == OFFICER


def test_a_journal_is_decrypted_with_the_cipher_its_header_names(
    tmp_path: Path, keyset: KeySet
) -> None:
    """Records journaled under chacha20-poly1305, recovered (after a cut) by a device now
    configured for aes-256-gcm: the platform still reads every record."""
    spool_dir = tmp_path / "sp"
    chacha = Spool(
        SpoolSettings(dir=spool_dir, reserve_mb=0),
        make_sealer(keyset, boot_id="boot-1", cipher="chacha20-poly1305"),
    )
    log = RecordLog(chacha, "gps", content_type="application/x-edge-fix")
    records = [bytes([i]) * 28 for i in range(4)]
    for r in records:
        log.append(r)
    chacha.close()  # a cut: the open batch stays in its journal
    aes = Spool(
        SpoolSettings(dir=spool_dir, reserve_mb=0),
        make_sealer(keyset, boot_id="boot-2", cipher="aes-256-gcm"),
    )
    recovered = RecordLog(aes, "gps", content_type="application/x-edge-fix").recovered
    aes.close()
    assert recovered is not None
    report = verify_paths([spool_dir], platform_private=keyset.platform_private)
    assert report.ok, report.problems
    (path, info) = next(
        (p, i) for p, i in report.segments if i.content_type == JOURNAL_CONTENT_TYPE
    )
    assert info.manifest["cipher"] == "aes-256-gcm"
    meta = report.metas[info.label]
    keys = {k: r.unwrap(keyset.platform_private) for k, r in report.keys.items()}
    out = bytearray()
    from agent.storage.seal import decrypt_segment

    with path.open("rb") as f:
        decrypt_segment(f, info, keys[info.key_id], out.extend)
    # The outer cipher passed as the fallback is not used: the header names chacha20.
    assert decrypt_journal(bytes(out), keys[meta["inner_key_id"]], "aes-256-gcm") == records


def test_a_key_record_with_a_low_order_epk_is_a_failure_not_a_crash(
    store: Path, keyset: KeySet
) -> None:
    (key,) = (store / "keys").glob("*.key")
    key.write_bytes(resign(key.read_bytes(), keyset.signing_key, _set("epk", "00" * 32)))
    report = verify_paths([store], platform_private=keyset.platform_private)
    assert "decrypt_failed" in {p.kind for p in report.problems}
    assert "not a usable public key" in str(report.problems)


def test_an_oversized_key_record_is_not_read(store: Path) -> None:
    """A 4 GiB (sparse) file that starts like a key record is refused by its size."""
    big = store / "keys" / "huge.key"
    with big.open("wb") as f:
        f.write(b"EAKEY\x00\x00\x01")
        f.truncate(1 << 32)
    report = verify_paths([store])
    assert ("bad_key_record", str(big)) in kinds(report)


def test_a_batch_across_a_clock_step_seals_and_verifies(tmp_path: Path, keyset: KeySet) -> None:
    """Wall-clock times that step back (or forward by days) inside a batch: the UTC times say
    so, the monotonic span is the measured one, and the segment verifies."""
    sp = Spool(SpoolSettings(dir=tmp_path / "sp", reserve_mb=0), make_sealer(keyset))
    try:
        log = RecordLog(sp, "gps", content_type="application/x-edge-fix")
        for t in (1.79e9, 1.79e9 - 3600, 1.79e9 + 86400 * 3):
            log.append(bytes(28), t=t)
        r = log.roll()
    finally:
        sp.close()
    assert r is not None
    with r.path.open("rb") as f:
        m = read_segment_info(f).manifest
    assert (m["start_utc"], m["end_utc"]) == (format_utc(1.79e9), format_utc(1.79e9 + 86400 * 3))
    assert 0 <= m["end_mono_ns"] - m["start_mono_ns"] < 60 * 10**9
    report = verify_paths([tmp_path / "sp"], platform_private=keyset.platform_private)
    assert report.ok, report.problems


def test_a_segment_in_another_streams_directory_is_misplaced(store: Path) -> None:
    src = seg(store, "video", 0)
    dest = store / "seg" / "audio" / src.name
    dest.parent.mkdir()
    src.rename(dest)
    assert ("misplaced", "dev-1/video#0") in kinds(verify_paths([store]))


@pytest.mark.parametrize("where", ["first chunk", "last chunk"])
def test_an_altered_body_is_named_so_with_the_platform_key_in_one_read(
    store: Path, keyset: KeySet, where: str
) -> None:
    """With the key the body is hashed and decrypted in one read; a flipped body byte (whose
    chunk also fails authentication) is still "body_altered", exactly as without the key,
    and nothing is reported from decrypting a body that is not the signed one."""
    p = seg(store, "video", 1)
    data = bytearray(p.read_bytes())
    data[8 + 100 if where == "first chunk" else 8 + 2 * (4 + CHUNK + 16) + 100] ^= 0x01
    p.write_bytes(bytes(data))
    keyless = verify_paths([store])
    keyed = verify_paths([store], platform_private=keyset.platform_private)
    assert ("body_altered", str(p)) in kinds(keyed), keyed.problems
    assert not {"decrypt_failed", "bad_content"} & {k for k, _ in kinds(keyed)}, keyed.problems
    assert kinds(keyed) == kinds(keyless)  # the same findings (the gap it leaves included)
    assert "dev-1/video#1" not in keyed.metas
