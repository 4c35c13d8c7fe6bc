"""Verification of a set of sealed segments and key records, by someone who does not trust
the device: signatures, hashes, chain continuity, and (with the platform key) decryption.

Problems are named by stream and sequence number: ``bad_format``, ``truncated``,
``bad_signature``, ``body_altered``, ``decrypt_failed``, ``key_missing``, ``gap``, ``fork``,
``duplicate``, ``chain_break``, ``misplaced`` and ``reordered``.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import FormatError, VerificationError
from agent.storage.seal import (
    KEY_MAGIC,
    SEG_MAGIC,
    KeyRecord,
    SegmentInfo,
    decrypt_segment,
    parse_key_record,
    read_segment_info,
    verify_segment,
)

log = logging.getLogger(__name__)

SEQ_NAME = re.compile(r"^(\d+)\.seg$")
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

    @property
    def ok(self) -> bool:
        return not self.problems


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            for sub in sorted(p.rglob("*")):
                if sub.is_file() and sub.suffix in (".seg", ".key"):
                    yield sub
        else:
            yield p


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
) -> Report:
    """Check every segment and key record under ``paths`` and the chains they form."""
    report = Report()
    seg_paths: list[Path] = []
    for path in _walk(paths):
        kind = _kind_of(path)
        if kind == "key":
            try:
                rec = parse_key_record(path.read_bytes(), trusted)
            except (FormatError, VerificationError) as exc:
                report.problems.append(Problem("bad_key_record", str(path), str(exc)))
                continue
            report.keys[rec.key_id] = rec
        elif kind == "segment":
            seg_paths.append(path)
        elif kind == "unreadable":
            report.problems.append(Problem("unreadable", str(path), "cannot open"))
        else:
            report.problems.append(
                Problem("bad_format", str(path), "not an edge-agent segment or key record")
            )
    data_keys: dict[str, bytes] = {}
    for path in seg_paths:
        # With the platform key, decryption (AEAD tags + the signed plaintext hash) proves
        # the body, so the keyless body hash is skipped: one pass over the bytes fewer.
        info = _check_segment(path, report, trusted, body=platform_private is None)
        if info is None:
            continue
        report.segments.append((path, info))
        if platform_private is not None:
            _decrypt(path, info, report, platform_private, data_keys, decrypt_to)
    _check_chains(report)
    return report


def _check_segment(
    path: Path, report: Report, trusted: Ed25519PublicKey | None, *, body: bool = True
) -> SegmentInfo | None:
    try:
        with path.open("rb") as f:
            info = read_segment_info(f)
            verify_segment(f, info, trusted, body=body)
    except FormatError as exc:
        kind = "truncated" if "truncated" in str(exc) else "bad_format"
        report.problems.append(Problem(kind, str(path), str(exc)))
        return None
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
        return None
    m = SEQ_NAME.match(path.name)
    if m and int(m.group(1)) != info.seq:
        report.problems.append(
            Problem(
                "misplaced",
                info.label,
                f"stored as {path.name} but its signed manifest says seq {info.seq}",
            )
        )
    return info


def _decrypt(
    path: Path,
    info: SegmentInfo,
    report: Report,
    platform_private: X25519PrivateKey,
    data_keys: dict[str, bytes],
    decrypt_to: Path | None,
) -> None:
    rec = report.keys.get(info.key_id)
    if rec is None:
        report.problems.append(
            Problem("key_missing", info.label, f"key record {info.key_id} is not among the inputs")
        )
        return
    if rec.device != info.device or rec.manifest["device_pub"] != info.manifest["device_pub"]:
        report.problems.append(
            Problem("bad_key_record", info.label, f"key {info.key_id} belongs to another device")
        )
        return
    try:
        if info.key_id not in data_keys:
            data_keys[info.key_id] = rec.unwrap(platform_private)
        key = data_keys[info.key_id]
    except VerificationError as exc:
        report.problems.append(Problem("decrypt_failed", info.label, str(exc)))
        return
    out_path: Path | None = None
    tmp: Path | None = None
    try:
        with path.open("rb") as f:
            if decrypt_to is None:
                decrypt_segment(f, info, key, lambda b: None)
            else:
                ext = EXTENSIONS.get(info.manifest["content_type"], ".bin")
                out_path = decrypt_to / info.device / info.stream / f"{info.seq:012d}{ext}"
                out_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:6]}.part")
                with tmp.open("wb") as out:
                    decrypt_segment(f, info, key, out.write)
                os.replace(tmp, out_path)
                report.decrypted.append(out_path)
    except VerificationError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        report.problems.append(Problem("decrypt_failed", info.label, str(exc)))
        return
    summary = report.streams.setdefault(
        (info.device, info.stream), StreamSummary(info.device, info.stream)
    )
    summary.decrypted += 1


def _explained_gaps(report: Report) -> dict[tuple[str, str], set[int]]:
    """Sequence numbers the device itself recorded as gone (evicted telemetry)."""
    out: dict[tuple[str, str], set[int]] = {}
    for _path, info in report.segments:
        meta: dict[str, Any] = info.manifest["meta"]
        if info.stream == "event" and meta.get("type") == "telemetry_evicted":
            seqs = meta.get("seqs")
            if isinstance(seqs, list) and isinstance(meta.get("stream"), str):
                out.setdefault((info.device, meta["stream"]), set()).update(
                    s for s in seqs if isinstance(s, int)
                )
    return out


def _check_chains(report: Report) -> None:
    by_stream: dict[tuple[str, str], list[SegmentInfo]] = {}
    for _path, info in report.segments:
        by_stream.setdefault((info.device, info.stream), []).append(info)
    explained = _explained_gaps(report)
    for (device, stream), infos in sorted(by_stream.items()):
        infos.sort(key=lambda i: i.seq)
        summary = report.streams.setdefault((device, stream), StreamSummary(device, stream))
        summary.count = len(infos)
        summary.first_seq = infos[0].seq
        summary.last_seq = infos[-1].seq
        summary.bytes = sum(i.size for i in infos)
        first = infos[0]
        if first.seq > 0:
            report.notes.append(
                f"{device}/{stream}: chain begins at seq {first.seq} "
                "(earlier segments are not among the inputs)"
            )
        elif first.manifest["prev"] is not None:
            report.problems.append(Problem("chain_break", first.label, "seq 0 has a predecessor"))
        gone = explained.get((device, stream), set())
        prev: SegmentInfo | None = None
        for info in infos:
            if prev is not None:
                if info.seq == prev.seq:
                    kind = "duplicate" if info.manifest_hash == prev.manifest_hash else "fork"
                    detail = (
                        "the same segment appears twice"
                        if kind == "duplicate"
                        else "two different segments claim this seq"
                    )
                    report.problems.append(Problem(kind, info.label, detail))
                    continue
                missing = [s for s in range(prev.seq + 1, info.seq) if s not in gone]
                if missing:
                    report.problems.append(
                        Problem(
                            "gap",
                            f"{device}/{stream}#{missing[0]}",
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


def _ranges(seqs: list[int]) -> str:
    parts: list[str] = []
    start = end = seqs[0]
    for s in seqs[1:]:
        if s == end + 1:
            end = s
            continue
        parts.append(f"{start}" if start == end else f"{start}..{end}")
        start = end = s
    parts.append(f"{start}" if start == end else f"{start}..{end}")
    return ", ".join(parts)
