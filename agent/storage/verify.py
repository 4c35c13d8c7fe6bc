"""Verification of a set of sealed segments and key records, by someone who does not trust
the device: every manifest field by value, signatures, frames and body hashes, key records,
chain continuity, and (with the platform key) decryption, the sealed meta and the content.

The inputs are untrusted (a seized SD card, a store copied from elsewhere): manifests are read
with bounds (:mod:`agent.boundedjson`), and every file ``--decrypt-to`` writes is named from
checked identifiers and must resolve under its directory (:func:`agent.ids.contained`).

Problems are named by stream and sequence number: ``bad_format``, ``truncated``,
``bad_signature``, ``body_altered``, ``decrypt_failed``, ``bad_content``, ``key_missing``,
``bad_key_record``, ``gap``, ``fork``, ``duplicate``, ``chain_break``, ``misplaced``,
``reordered``, ``unreadable``, ``output_refused`` (a ``--decrypt-to`` path that would
leave its directory) and ``recovered_failed`` (frames of a recovered part that do not
authenticate under its inner key: the rest is written and played). Every one is a failure.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import FormatError, VerificationError
from agent.ids import contained
from agent.storage.content import ContentCheck, check_meta
from agent.storage.manifest import MAX_MANIFEST, canonical_json
from agent.storage.records import JOURNAL_CONTENT_TYPE
from agent.storage.recovered import INNER_CONTENT_TYPES, RECOVERED_CONTENT_TYPE
from agent.storage.seal import (
    KEY_MAGIC,
    PREFIX_LEN,
    SEG_MAGIC,
    TRAILER_FIXED,
    DecryptFailed,
    KeyRecord,
    SegmentInfo,
    check_signature,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_body,
    verify_decrypt_body,
)

log = logging.getLogger(__name__)

SEQ_NAME = re.compile(r"^([0-9]+)\.seg\Z")
MAX_KEY_RECORD = PREFIX_LEN + MAX_MANIFEST + TRAILER_FIXED
EXTENSIONS = {
    "video/mp4": ".mp4",
    "audio/mp4": ".m4a",
    "audio/ogg": ".ogg",
    "image/jpeg": ".jpg",
    "application/json": ".json",
    "application/x-ndjson": ".jsonl",
}


@dataclass(frozen=True)
class Problem:
    kind: str
    where: str  # device/stream#seq, or a path
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass
class StreamSummary:
    device: str
    stream: str
    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    bytes: int = 0
    decrypted: int = 0


@dataclass
class Report:
    segments: list[tuple[Path, SegmentInfo]] = field(default_factory=list)
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    streams: dict[tuple[str, str], StreamSummary] = field(default_factory=dict)
    decrypted: list[Path] = field(default_factory=list)
    # label -> meta, for every segment whose meta could be read (with the platform key).
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Files to check, each once (a file named twice, or inside a directory also named, is one
    input, not a duplicate)."""
    seen: set[Path] = set()
    for p in paths:
        subs = (
            sorted(s for s in p.rglob("*") if s.suffix in (".seg", ".key")) if p.is_dir() else [p]
        )
        for sub in subs:
            if (sub.is_file() and not sub.is_symlink()) or sub == p:
                real = sub.resolve()
                if real not in seen:
                    seen.add(real)
                    yield sub


def _kind_of(path: Path) -> str:
    try:
        with path.open("rb") as f:
            magic = f.read(6)
    except OSError:
        return "unreadable"
    if magic == SEG_MAGIC:
        return "segment"
    if magic == KEY_MAGIC:
        return "key"
    return "unknown"


def verify_paths(
    paths: Iterable[Path],
    *,
    trusted: Ed25519PublicKey | None = None,
    platform_private: X25519PrivateKey | None = None,
    decrypt_to: Path | None = None,
    partial: bool = False,
) -> Report:
    """Check every segment and key record under ``paths`` and the chains they form.

    ``partial``: the inputs are a part of each stream whose earlier segments are elsewhere (a
    device's spool after the platform took the first ones): a chain may then begin after seq 0
    (said in a note). Otherwise a stream that does not begin at seq 0 has a gap.
    """
    report = Report()
    seg_paths: list[Path] = []
    key_bytes: dict[str, bytes] = {}
    for path in _walk(paths):
        kind = _kind_of(path)
        if kind == "key":
            _read_key(path, report, trusted, key_bytes)
        elif kind == "segment":
            seg_paths.append(path)
        elif kind == "unreadable":
            report.problems.append(Problem("unreadable", str(path), "cannot open"))
        else:
            report.problems.append(
                Problem("bad_format", str(path), "not an edge-agent segment or key record")
            )
    data_keys: dict[str, bytes | None] = {}
    for path in seg_paths:
        _check_segment(path, report, trusted, platform_private, data_keys, decrypt_to)
    _check_chains(report, partial)
    return report


def _read_key(
    path: Path, report: Report, trusted: Ed25519PublicKey | None, seen: dict[str, bytes]
) -> None:
    try:
        if path.stat().st_size > MAX_KEY_RECORD:
            raise FormatError(f"key record: larger than {MAX_KEY_RECORD} bytes")
        data = path.read_bytes()
        rec = parse_key_record(data, trusted)
    except (FormatError, VerificationError, OSError) as exc:
        report.problems.append(Problem("bad_key_record", str(path), str(exc)))
        return
    if rec.key_id in seen:
        # A copy of the same record (the platform's and the device's) is one key; two
        # different records claiming one id are not.
        if seen[rec.key_id] != data:
            report.problems.append(
                Problem(
                    "bad_key_record", f"key {rec.key_id}", f"two key records claim this id: {path}"
                )
            )
        return
    seen[rec.key_id] = data
    report.keys[rec.key_id] = rec


@dataclass(frozen=True)
class _Opening:
    """What decrypting a segment needs, found before its body is read."""

    key: bytes
    meta: dict[str, Any]
    check: ContentCheck


def _check_segment(
    path: Path,
    report: Report,
    trusted: Ed25519PublicKey | None,
    platform_private: X25519PrivateKey | None,
    cache: dict[str, bytes | None],
    decrypt_to: Path | None,
) -> None:
    """One segment: its trailer and signature, then its body in one read: hashed and, with
    the platform key and its key record, decrypted with its content checked as it goes by.

    A body that is not the signed one is only that (``body_altered`` or ``truncated``): the
    segment takes no further part. Problems with what a signed body holds (``decrypt_failed``,
    ``bad_content``, ...) are reported once the body is known to be the signed one.
    """
    later: list[Problem] = []
    opening: _Opening | None = None
    meta: dict[str, Any] | None = None
    try:
        with path.open("rb") as f:
            info = read_segment_info(f)
            check_signature(info, trusted)
            key_problem = _key_problem(info, report)
            if platform_private is not None and key_problem is None:
                meta, opening = _prepare(info, report, platform_private, cache, later)
            if opening is None:
                verify_body(f, info)
            else:
                _open(f, info, opening, report, later, decrypt_to)
    except FormatError as exc:
        kind = "truncated" if "truncated" in str(exc) else "bad_format"
        report.problems.append(Problem(kind, str(path), str(exc)))
        return
    except VerificationError as exc:
        msg = str(exc)
        kind = (
            "bad_signature"
            if "signature" in msg or "signed by" in msg
            else "truncated"
            if "truncated" in msg
            else "body_altered"
        )
        report.problems.append(Problem(kind, str(path), msg))
        return
    except OSError as exc:
        report.problems.append(Problem("unreadable", str(path), str(exc)))
        return
    m = SEQ_NAME.match(path.name)
    if m and int(m.group(1)) != info.seq:
        report.problems.append(
            Problem(
                "misplaced",
                info.label,
                f"stored as {path.name} but its signed manifest says seq {info.seq}",
            )
        )
    elif m and path.parent.parent.name == "seg" and path.parent.name != info.stream:
        report.problems.append(
            Problem(
                "misplaced",
                info.label,
                f"stored under {path.parent.name}/ but its signed manifest says {info.stream}",
            )
        )
    report.segments.append((path, info))
    if key_problem is not None:
        report.problems.append(key_problem)
    if meta is not None:
        report.metas[info.label] = meta
    report.problems += later


def _key_problem(info: SegmentInfo, report: Report) -> Problem | None:
    """The segment's key record is among the inputs, from the same device, key and boot."""
    rec = report.keys.get(info.key_id)
    if rec is None:
        return Problem(
            "key_missing", info.label, f"key record {info.key_id} is not among the inputs"
        )
    m = rec.manifest
    if (m["device"], m["device_pub"], m["boot"]) != (
        info.device,
        info.manifest["device_pub"],
        info.manifest["boot"],
    ):
        return Problem(
            "bad_key_record",
            info.label,
            f"key {info.key_id} was made by another device, device key or boot",
        )
    return None


def _data_key(
    key_id: str, report: Report, platform_private: X25519PrivateKey, cache: dict[str, bytes | None]
) -> bytes | None:
    """The unwrapped data key of ``key_id`` (None when its record is missing or fails)."""
    if key_id not in cache:
        rec = report.keys.get(key_id)
        try:
            cache[key_id] = rec.unwrap(platform_private) if rec is not None else None
        except VerificationError as exc:
            report.problems.append(Problem("decrypt_failed", f"key {key_id}", str(exc)))
            cache[key_id] = None
    return cache[key_id]


def _prepare(
    info: SegmentInfo,
    report: Report,
    platform_private: X25519PrivateKey,
    cache: dict[str, bytes | None],
    later: list[Problem],
) -> tuple[dict[str, Any] | None, _Opening | None]:
    """The meta of a segment, and what decrypting it needs: data key, meta and content check
    (None, with the problem in ``later``, when one of them fails: its body is then only
    hashed)."""
    key = _data_key(info.key_id, report, platform_private, cache)
    if key is None:
        later.append(Problem("decrypt_failed", info.label, f"key {info.key_id} does not unwrap"))
        return None, None
    try:
        meta = open_meta(info, key)
    except VerificationError as exc:
        later.append(Problem("decrypt_failed", info.label, str(exc)))
        return None, None
    except FormatError as exc:
        later.append(Problem("bad_content", info.label, str(exc)))
        return None, None
    inner: bytes | None = None
    try:
        check_meta(info, meta)
        if info.content_type in (JOURNAL_CONTENT_TYPE, RECOVERED_CONTENT_TYPE):
            inner_id = str(meta["inner_key_id"])
            if inner_id not in report.keys:
                later.append(
                    Problem(
                        "key_missing",
                        info.label,
                        f"key record {inner_id} of the recovered content is not among the inputs",
                    )
                )
            else:
                inner = _data_key(inner_id, report, platform_private, cache)
    except FormatError as exc:
        later.append(Problem("bad_content", info.label, str(exc)))
        return meta, None
    return meta, _Opening(key, meta, ContentCheck(info, meta, inner))


def _open(
    f: BinaryIO,
    info: SegmentInfo,
    opening: _Opening,
    report: Report,
    later: list[Problem],
    decrypt_to: Path | None,
) -> None:
    """Decrypt the body (one read, :func:`verify_decrypt_body`) and check its content.

    A body that is not the signed one raises VerificationError for the caller; anything else
    goes into ``later``.
    """
    try:
        if decrypt_to is None:
            verify_decrypt_body(f, info, opening.key, opening.check)
            opening.check.finish()
        else:
            _decrypt_to(f, info, opening, decrypt_to, report)
    except DecryptFailed as exc:
        later.append(Problem("decrypt_failed", info.label, str(exc)))
        return
    except FormatError as exc:
        later.append(Problem("bad_content", info.label, str(exc)))
        return
    except _OutputRefused as exc:
        verify_body(f, info)  # refused before the body was read
        later.append(Problem("output_refused", info.label, str(exc)))
        return
    except OSError as exc:
        # Writing the plaintext out failed, or reading the segment did: the body is judged
        # on its own then (a segment that cannot be read is the caller's "unreadable").
        verify_body(f, info)
        later.append(Problem("unreadable", info.label, str(exc)))
        return
    summary = report.streams.setdefault(
        (info.device, info.stream), StreamSummary(info.device, info.stream)
    )
    summary.decrypted += 1
    _recovered_problem(info, opening.check, report)


def _recovered_problem(info: SegmentInfo, check: ContentCheck, report: Report) -> None:
    """A recovered part's frames that fail authentication under its inner key: reported (the
    media that does authenticate is what ``--decrypt-to`` writes)."""
    failed = check.recovered_failed
    if failed:
        shown = ", ".join(str(i) for i in failed[:20]) + (" ..." if len(failed) > 20 else "")
        report.problems.append(
            Problem(
                "recovered_failed",
                info.label,
                f"{len(failed)} of {check.recovered.frames if check.recovered else '?'} "
                f"recovered chunks fail authentication under the inner key ({shown}); "
                "left out, the media resumes at the next fragment",
            )
        )


def _recovered_media(check: ContentCheck) -> bool:
    """A recovered part whose inner key is at hand is written as its media (else as it is)."""
    return check.recovered is not None and check.recovered.data_key is not None


def _output_name(info: SegmentInfo, meta: dict[str, Any], media: bool) -> str:
    """The file name of a decrypted segment: a recovered part's media by its inner type."""
    if media:
        return f"{info.seq:012d}{INNER_CONTENT_TYPES[meta['inner_content_type']]}"
    return f"{info.seq:012d}{EXTENSIONS.get(info.content_type, '.bin')}"


class _OutputRefused(Exception):
    """A ``--decrypt-to`` path would resolve outside its directory (a symlink in it)."""


def _contained(root: Path, *parts: str) -> Path:
    try:
        return contained(root, *parts)
    except FormatError as exc:
        raise _OutputRefused(str(exc)) from None


def _decrypt_to(
    f: BinaryIO, info: SegmentInfo, opening: _Opening, root: Path, report: Report
) -> None:
    """Write the plaintext and its meta under ``root/<device>/<stream>/`` (files 0600,
    directories 0700: this is decrypted evidence). The names come from a manifest the checks
    above accepted, and each path must still resolve under ``root`` (no symlink out)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _contained(root, info.device).mkdir(mode=0o700, exist_ok=True)
    _contained(root, info.device, info.stream).mkdir(mode=0o700, exist_ok=True)
    check = opening.check
    media = _recovered_media(check)
    name = _output_name(info, opening.meta, media)
    out_path = _contained(root, info.device, info.stream, name)

    def write(final: Path, fill: Callable[[Callable[[bytes], object]], None]) -> None:
        tmp = _contained(root, info.device, info.stream, f".{final.name}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out.write)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def plaintext(emit: Callable[[bytes], object]) -> None:
        def sink(data: bytes) -> None:
            check(data)
            emit(data)

        if media and check.recovered is not None:  # the media that authenticates
            check.recovered.emit = emit
            verify_decrypt_body(f, info, opening.key, check)
        else:
            verify_decrypt_body(f, info, opening.key, sink)
        check.finish()  # before the file takes its name

    def meta_json(emit: Callable[[bytes], object]) -> None:
        emit(canonical_json(opening.meta) + b"\n")

    write(out_path, plaintext)
    write(_contained(root, info.device, info.stream, f"{info.seq:012d}.meta.json"), meta_json)
    report.decrypted.append(out_path)


# --------------------------------------------------------------------------- chains


def _explained_gaps(report: Report) -> dict[tuple[str, str], list[int]]:
    """Sequence numbers the device itself recorded as gone (evicted telemetry), sorted."""
    out: dict[tuple[str, str], set[int]] = {}
    for _path, info in report.segments:
        evicted = info.evicted
        if evicted is not None:
            stream, seqs = evicted
            out.setdefault((info.device, stream), set()).update(seqs)
    return {k: sorted(v) for k, v in out.items()}


def _unexplained(lo: int, hi: int, gone: list[int]) -> list[tuple[int, int]]:
    """Runs of seqs in [lo, hi) not in ``gone`` (sorted), without listing every seq."""
    runs: list[tuple[int, int]] = []
    start = lo
    for s in gone[bisect.bisect_left(gone, lo) : bisect.bisect_left(gone, hi)]:
        if s > start:
            runs.append((start, s - 1))
        start = s + 1
    if start < hi:
        runs.append((start, hi - 1))
    return runs


def _ranges(runs: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in runs)


def _check_chains(report: Report, partial: bool) -> None:
    by_stream: dict[tuple[str, str], list[SegmentInfo]] = {}
    for _path, info in report.segments:
        by_stream.setdefault((info.device, info.stream), []).append(info)
    explained = _explained_gaps(report)
    for (device, stream), infos in sorted(by_stream.items()):
        infos.sort(key=lambda i: (i.seq, i.manifest_hash))
        summary = report.streams.setdefault((device, stream), StreamSummary(device, stream))
        summary.count = len(infos)
        summary.first_seq = infos[0].seq
        summary.last_seq = infos[-1].seq
        summary.bytes = sum(i.size for i in infos)
        gone = explained.get((device, stream), [])
        first = infos[0]
        head = _unexplained(0, first.seq, gone)
        if head and partial:
            report.notes.append(
                f"{device}/{stream}: chain begins at seq {first.seq} "
                "(--partial: earlier segments are elsewhere)"
            )
        elif head:
            report.problems.append(
                Problem(
                    "gap",
                    f"{device}/{stream}#{head[0][0]}",
                    f"missing seq {_ranges(head)} (the stream begins at seq 0; its first "
                    "segments are not among the inputs)",
                )
            )
        prev: SegmentInfo | None = None
        for info in infos:
            if prev is not None:
                if info.seq == prev.seq:
                    same = info.manifest_hash == prev.manifest_hash
                    report.problems.append(
                        Problem(
                            "duplicate" if same else "fork",
                            info.label,
                            "the same segment appears twice"
                            if same
                            else "two different segments claim this seq",
                        )
                    )
                    continue
                missing = _unexplained(prev.seq + 1, info.seq, gone)
                if missing:
                    report.problems.append(
                        Problem(
                            "gap",
                            f"{device}/{stream}#{missing[0][0]}",
                            f"missing seq {_ranges(missing)}",
                        )
                    )
                elif info.seq == prev.seq + 1 and info.manifest["prev"] != prev.manifest_hash:
                    report.problems.append(
                        Problem(
                            "chain_break",
                            info.label,
                            f"does not follow seq {prev.seq} (its prev hash names another "
                            "segment: substituted or edited)",
                        )
                    )
                if (
                    info.manifest["boot"] == prev.manifest["boot"]
                    and info.manifest["start_mono_ns"] < prev.manifest["start_mono_ns"]
                ):
                    report.problems.append(
                        Problem("reordered", info.label, f"recorded before seq {prev.seq}")
                    )
            prev = info
