"""A read-only view of the ingest store (see :mod:`agent.ingest.store`) for the review page.

Nothing here takes a path from a request: callers pass a device id, a stream name and a
sequence number, each checked by :mod:`agent.ids`, and every path is built from them with
:func:`agent.ids.contained` (under the store's root, symlinks resolved).

Verification is :func:`agent.storage.verify.verify_paths` over the device's sealed segments and
key records, with its key pinned to the store's ``device.pub``; the result is kept until a
file of the device changes. Plaintext (``plain/``) is only ever served after its SHA-256
matched the signed manifest's ``plain_sha256``; where the store has none and the page holds
the platform key, the segment is decrypted on demand (verified as it is decrypted).

**Hostile content.** A device can seal anything. Each file is read on its own and what cannot
be read is shown as failed or malformed beside the rest: a segment whose trailer does not
parse (even one that makes a JSON parser recurse) is left out of the chain check and marked
``bad_format``; an event's JSON is read with :func:`agent.boundedjson.loads`; a manifest's
values are taken only with the type and range they should have. No device's files can make
another device's (or its own other) data unreadable.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import boundedjson, ids
from agent.errors import AgentError, FormatError, VerificationError
from agent.gps.wire import SIZE as FIX_SIZE
from agent.gps.wire import decode_fix
from agent.model import Fix
from agent.storage.keys import load_verify_key
from agent.storage.records import JOURNAL_CONTENT_TYPE, parse_journal, unpack_records
from agent.storage.seal import (
    CIPHERS,
    SegmentInfo,
    aead_for,
    chunk_nonce,
    decrypt_segment,
    parse_key_record,
    read_segment_info,
    segment_key,
    verify_segment,
)
from agent.storage.verify import verify_paths
from agent.web.fmt import parse_utc
from agent.web.httpbase import WebError
from agent.web.liveview import LiveView, read_live

log = logging.getLogger(__name__)

SEQ_TEXT_RE = re.compile(r"^\d{1,12}$")
SEG_NAME_RE = re.compile(r"^(\d{12})\.seg$")
FIX_CONTENT_TYPE = "application/x-edge-fix"
MAX_EVENT_JSON = 256 * 1024
MAX_EVENT_DEPTH = 16
# Problems that make a stored segment fail (a gap is shown as a gap, not as a failure).
FAILING = frozenset(
    {
        "bad_format",
        "truncated",
        "bad_signature",
        "body_altered",
        "decrypt_failed",
        "key_missing",
        "bad_key_record",
        "fork",
        "duplicate",
        "chain_break",
        "misplaced",
        "reordered",
        "plain_altered",
        "unreadable",
    }
)
PLAIN_CACHE_BYTES = 64 * 1024 * 1024


def check_device(device: str) -> str:
    """A device id from a request (agent.ids rules), or 404."""
    if ids.device_id_problem(device) is not None:
        raise WebError(404, "no such device")
    return device


def check_stream(stream: str) -> str:
    try:
        return ids.check_stream(stream)
    except FormatError:
        raise WebError(404, "no such stream") from None


def check_seq(seq: str) -> int:
    if not SEQ_TEXT_RE.match(seq):
        raise WebError(404, "no such segment")
    try:
        return ids.check_seq(int(seq))
    except FormatError:
        raise WebError(404, "no such segment") from None


def segment_meta(info: SegmentInfo) -> dict[str, Any]:
    """A sealed segment's ``meta``: the one place the page reads it (it may move under the
    encryption; then only this function changes)."""
    meta = info.manifest.get("meta")
    return dict(meta) if isinstance(meta, dict) else {}


def _manifest_time(manifest: dict[str, Any], name: str) -> float | None:
    return parse_utc(manifest.get(name))


@dataclass(frozen=True)
class SegmentView:
    stream: str
    seq: int
    start: float | None
    end: float | None
    content_type: str
    meta: dict[str, Any]
    size: int
    state: str  # verified | failed
    problems: tuple[str, ...]
    has_plain: bool
    manifest: dict[str, Any]

    @property
    def verified(self) -> bool:
        return self.state == "verified"


@dataclass(frozen=True)
class GapView:
    stream: str
    first: int
    last: int
    start: float | None  # end of the segment before it
    end: float | None  # start of the segment after it
    reason: str  # what the device recorded ("" when it said nothing)


@dataclass(frozen=True)
class EventMark:
    time: float | None
    type: str
    seq: int
    details: dict[str, Any]

    @property
    def summary(self) -> str:
        d = self.details
        bits = [self.type]
        for k in ("note", "stream", "reason", "trigger"):
            if isinstance(d.get(k), str | int | float) and d.get(k):
                bits.append(f"{k}: {str(d[k])[:120]}")
        if isinstance(d.get("seqs"), list):
            bits.append(f"seqs {len(d['seqs'])}")
        if d.get("malformed"):
            bits.append("its record is malformed")
        return "; ".join(bits)


@dataclass
class DeviceReview:
    device: str
    streams: dict[str, list[SegmentView]] = field(default_factory=dict)
    gaps: dict[str, list[GapView]] = field(default_factory=dict)
    events: list[EventMark] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pinned: bool = False

    @property
    def span(self) -> tuple[float | None, float | None]:
        starts = [s.start for segs in self.streams.values() for s in segs if s.start is not None]
        ends = [s.end for segs in self.streams.values() for s in segs if s.end is not None]
        return (min(starts) if starts else None, max(ends) if ends else None)

    def segment(self, stream: str, seq: int) -> SegmentView | None:
        for s in self.streams.get(stream, []):
            if s.seq == seq:
                return s
        return None

    def counts(self) -> dict[str, int]:
        out = {"verified": 0, "failed": 0, "gaps": 0}
        for segs in self.streams.values():
            for s in segs:
                out[s.state] = out.get(s.state, 0) + 1
        out["gaps"] = sum(len(g) for g in self.gaps.values())
        return out


@dataclass(frozen=True)
class TrackPoint:
    time: float
    lat: float
    lon: float
    speed: float | None
    seq: int


@dataclass
class Track:
    points: list[TrackPoint] = field(default_factory=list)
    without_position: int = 0
    skipped_segments: list[str] = field(default_factory=list)


class StoreView:
    """See the module docstring. Thread-safe: one lock guards the caches."""

    def __init__(
        self,
        root: Path,
        *,
        platform_key: X25519PrivateKey | None = None,
        devices_dir: Path | None = None,
    ) -> None:
        self.root = root.resolve()
        self.platform_key = platform_key
        self.devices_dir = devices_dir
        self._lock = threading.Lock()
        self._reviews: dict[str, tuple[tuple[Any, ...], DeviceReview]] = {}
        self._plain: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._plain_bytes = 0

    # ------------------------------------------------------------------ paths

    def _path(self, *parts: str) -> Path:
        """``root/parts`` through :func:`agent.ids.contained` (404 when it would leave)."""
        try:
            return ids.contained(self.root, *parts)
        except FormatError:
            raise WebError(404, "not in the store") from None

    def device_dir(self, device: str) -> Path:
        d = self._path(check_device(device))
        if not d.is_dir():
            raise WebError(404, "no such device")
        return d

    def devices(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if ids.device_id_problem(p.name) is not None or p.is_symlink() or not p.is_dir():
                continue
            if (p / "seg").is_dir() or (p / "live").is_dir() or (p / "device.pub").exists():
                out.append(p.name)
        return out

    def _trusted(self, device: str) -> Ed25519PublicKey | None:
        paths = [self._path(check_device(device), "device.pub")]
        if self.devices_dir is not None:
            try:
                paths.insert(0, ids.contained(self.devices_dir, f"{device}.pub"))
            except FormatError:
                raise WebError(404, "no such device") from None
        for path in paths:
            if path.exists():
                return load_verify_key(path)
        return None

    def _seg_path(self, device: str, stream: str, seq: int) -> Path:
        return self._path(device, "seg", check_stream(stream), f"{ids.check_seq(seq):012d}.seg")

    def _plain_path(self, device: str, stream: str, seq: int) -> Path:
        return self._path(device, "plain", check_stream(stream), f"{ids.check_seq(seq):012d}.bin")

    # ------------------------------------------------------------------ verification

    def _fingerprint(self, d: Path) -> tuple[Any, ...]:
        items: list[Any] = []
        for sub in ("seg", "keys", "plain"):
            base = d / sub
            if not base.is_dir():
                continue
            for p in sorted(base.rglob("*")):
                try:
                    st = p.stat()
                except OSError:
                    continue
                items.append((str(p.relative_to(d)), st.st_size, st.st_mtime_ns))
        pub = d / "device.pub"
        if pub.exists():
            items.append(("device.pub", pub.stat().st_mtime_ns))
        return tuple(items)

    def review(self, device: str) -> DeviceReview:
        d = self.device_dir(device)
        fp = self._fingerprint(d)
        with self._lock:
            cached = self._reviews.get(device)
            if cached is not None and cached[0] == fp:
                return cached[1]
        review = self._build_review(device, d)
        with self._lock:
            self._reviews[device] = (fp, review)
        return review

    def _segment_files(self, d: Path) -> dict[Path, tuple[str, int]]:
        """Every ``seg/<stream>/<seq>.seg`` of a device: path -> (stream, seq from its name)."""
        files: dict[Path, tuple[str, int]] = {}
        seg_root = d / "seg"
        if not seg_root.is_dir():
            return files
        for sdir in sorted(seg_root.iterdir()):
            if not sdir.is_dir() or sdir.is_symlink():
                continue
            try:
                stream = ids.check_stream(sdir.name)
            except FormatError:
                continue
            for f in sorted(sdir.iterdir()):
                m = SEG_NAME_RE.match(f.name)
                if m and f.is_file() and not f.is_symlink():
                    files[f] = (stream, int(m.group(1)))
        return files

    def _build_review(self, device: str, d: Path) -> DeviceReview:
        trusted = self._trusted(device)
        review = DeviceReview(device, pinned=trusted is not None)
        files = self._segment_files(d)
        infos: dict[Path, SegmentInfo | None] = {}
        poisoned: dict[Path, str] = {}  # files no parser may see again, and why
        for f in files:
            infos[f], why = _read_info(f)
            if why:
                poisoned[f] = why
        paths: list[Path] = [f for f in files if f not in poisoned]
        keys = d / "keys"
        if keys.is_dir():
            for k in sorted(keys.iterdir()):
                why = _key_poison(k)
                if why:
                    review.problems.append(f"bad_key_record: {k.name}: {why}")
                elif k.is_file():
                    paths.append(k)
        report = None
        if paths:
            try:
                report = verify_paths(paths, trusted=trusted)
            except Exception as exc:  # never let one device's files fail the page
                log.exception("review: verifying %s failed", device)
                review.problems.append(f"unverifiable: the check failed ({type(exc).__name__})")
                for f in paths:
                    if f in files:
                        poisoned[f] = "unverifiable: the check failed"
        # Problems per file: by path for a segment's own failures, by label for chain ones.
        per_file: dict[Path, list[str]] = {f: [] for f in files}
        for f, why in poisoned.items():
            per_file[f].append(why)
        by_label: dict[str, list[Path]] = {}
        for f, info in infos.items():
            if info is not None:
                by_label.setdefault(info.label, []).append(f)
        if report is not None:
            review.notes.extend(report.notes)
            for p in report.problems:
                if p.kind == "gap":
                    continue  # computed below from the files present
                targets = [f for f in files if str(f) == p.where] or by_label.get(p.where, [])
                if p.kind == "misplaced":
                    targets = [
                        f for f in by_label.get(p.where, []) if files[f][1] != _seq_of(p.where)
                    ]
                if not targets:
                    review.problems.append(f"{p.kind}: {p.detail}")
                for f in targets:
                    per_file[f].append(f"{p.kind}: {p.detail}")
        for f, (stream, seq) in files.items():
            review.streams.setdefault(stream, []).append(
                self._segment_view(device, f, stream, seq, infos[f], per_file[f])
            )
        for segs in review.streams.values():
            segs.sort(key=lambda s: s.seq)
        review.events = self._events(device, review)
        review.gaps = _gaps(review)
        return review

    def _segment_view(
        self,
        device: str,
        f: Path,
        stream: str,
        seq: int,
        info: SegmentInfo | None,
        found: list[str],
    ) -> SegmentView:
        problems = list(found)
        plain = self._plain_path(device, stream, seq)
        has_plain = plain.is_file()
        if info is not None and has_plain and not problems:
            why = _check_plain(plain, info)
            if why:
                problems.append(f"plain_altered: {why}")
        failed = any(p.split(":", 1)[0] in FAILING for p in problems) or info is None
        if info is None and not problems:
            problems.append("bad_format: unreadable trailer")
        man: dict[str, Any] = info.manifest if info is not None else {}
        ctype = man.get("content_type")
        try:
            size = f.stat().st_size
        except OSError:
            size = 0
        return SegmentView(
            stream=stream,
            seq=seq,
            start=_manifest_time(man, "start_utc"),
            end=_manifest_time(man, "end_utc"),
            content_type=ctype[:100] if isinstance(ctype, str) else "",
            meta=segment_meta(info) if info is not None else {},
            size=size,
            state="failed" if failed else "verified",
            problems=tuple(problems),
            has_plain=has_plain,
            manifest=dict(man),
        )

    def _events(self, device: str, review: DeviceReview) -> list[EventMark]:
        out: list[EventMark] = []
        for s in review.streams.get("event", []):
            if not s.verified:
                continue
            details: dict[str, Any] = dict(s.meta)
            try:
                body = boundedjson.loads(
                    self.plaintext(device, "event", s.seq),
                    f"event #{s.seq}",
                    max_bytes=MAX_EVENT_JSON,
                    max_depth=MAX_EVENT_DEPTH,
                )
                details.update(body)
            except FormatError as exc:
                details["malformed"] = str(exc)[:200]
            except WebError:
                pass
            when = parse_utc(details.get("at_utc")) or s.start
            kind = details.get("type", "event")
            kind = kind[:64] if isinstance(kind, str) else "malformed"
            out.append(EventMark(when, kind, s.seq, details))
        return out

    # ------------------------------------------------------------------ plaintext

    def plaintext(self, device: str, stream: str, seq: int) -> bytes:
        """The decrypted bytes of a verified segment; WebError when there are none to give."""
        self.device_dir(device)
        seg = self._seg_path(device, stream, seq)
        if not seg.is_file():
            raise WebError(404, "no such segment")
        st = seg.stat()
        key = (str(seg), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._plain.get(key)
            if hit is not None:
                self._plain.move_to_end(key)
                return hit
        try:
            with seg.open("rb") as f:
                info = read_segment_info(f)
                if info.stream != stream or info.seq != seq or info.device != device:
                    raise WebError(409, "this segment is stored under another name (misplaced)")
                plain = self._plain_path(device, stream, seq)
                if plain.is_file():
                    data = plain.read_bytes()
                    why = _plain_mismatch(data, info)
                    if why:
                        raise WebError(409, f"the stored plaintext fails its manifest: {why}")
                elif self.platform_key is not None:
                    data = self._decrypt(device, f, info)
                else:
                    raise WebError(404, "the store holds no plaintext for this segment")
        except (FormatError, VerificationError) as exc:
            raise WebError(409, f"the segment fails verification: {exc}") from None
        with self._lock:
            self._plain[key] = data
            self._plain_bytes += len(data)
            while self._plain_bytes > PLAIN_CACHE_BYTES and len(self._plain) > 1:
                _, old = self._plain.popitem(last=False)
                self._plain_bytes -= len(old)
        return data

    def _data_key(self, device: str, key_id: str) -> bytes:
        assert self.platform_key is not None
        ids.check_key_id(key_id)
        kpath = self._path(device, "keys", f"{key_id}.key")
        if not kpath.is_file():
            raise WebError(404, f"key record {key_id} is not in the store")
        rec = parse_key_record(kpath.read_bytes(), self._trusted(device))
        if rec.device != device:
            raise VerificationError(f"key record {key_id} belongs to another device")
        return rec.unwrap(self.platform_key)

    def _decrypt(self, device: str, f: io.BufferedReader, info: SegmentInfo) -> bytes:
        verify_segment(f, info, self._trusted(device))
        out = io.BytesIO()
        decrypt_segment(f, info, self._data_key(device, info.key_id), out.write)
        return out.getvalue()

    # ------------------------------------------------------------------ GPS

    def track(self, device: str, start: float | None, end: float | None) -> Track:
        """Fixes with a position from the verified GPS segments overlapping [start, end]."""
        review = self.review(device)
        track = Track()
        for s in review.streams.get("gps", []):
            if start is not None and s.end is not None and s.end < start:
                continue
            if end is not None and s.start is not None and s.start > end:
                continue
            if not s.verified:
                track.skipped_segments.append(f"gps#{s.seq}: failed verification")
                continue
            try:
                records = self._records(device, s)
            except (WebError, AgentError, ValueError) as exc:
                track.skipped_segments.append(f"gps#{s.seq}: {exc}")
                continue
            for rec in records:
                if len(rec) != FIX_SIZE:
                    continue
                try:
                    fix: Fix = decode_fix(rec)
                except FormatError:
                    continue
                if (start is not None and fix.time < start) or (end is not None and fix.time > end):
                    continue
                if fix.lat is None or fix.lon is None:
                    track.without_position += 1
                    continue
                if not (-90.0 <= fix.lat <= 90.0 and -180.0 <= fix.lon <= 180.0):
                    track.without_position += 1  # a signed fix can still be nonsense
                    continue
                track.points.append(TrackPoint(fix.time, fix.lat, fix.lon, fix.speed, s.seq))
        track.points.sort(key=lambda p: p.time)
        return track

    def _records(self, device: str, s: SegmentView) -> list[bytes]:
        data = self.plaintext(device, "gps", s.seq)
        if s.content_type == JOURNAL_CONTENT_TYPE:
            # A journal recovered after a power cut: its frames are under the epoch key and
            # the cipher it was written with, which its own header names (not the segment's).
            if self.platform_key is None:
                raise WebError(404, "a recovered journal needs the platform key")
            return self._journal_records(device, data)
        if s.content_type != FIX_CONTENT_TYPE:
            raise WebError(415, f"content type {s.content_type!r} is not GPS fixes")
        return unpack_records(data)

    def _journal_records(self, device: str, data: bytes) -> list[bytes]:
        header, frames = parse_journal(data)
        key = segment_key(self._data_key(device, header.key_id), header.salt)
        cipher = journal_cipher(header, frames, key)
        aead = aead_for(cipher, key)
        try:
            return [aead.decrypt(chunk_nonce(i, False), ct, None) for i, ct in enumerate(frames)]
        except InvalidTag:
            raise VerificationError("a journal frame fails authentication") from None

    # ------------------------------------------------------------------ live state

    def live(self, device: str) -> LiveView:
        """What the device last said (read defensively: see :mod:`agent.web.liveview`)."""
        self.device_dir(device)
        return read_live(self._path(device, "live"))

    def last_arrival(self, device: str) -> float | None:
        """When the newest sealed segment of the device arrived (its file's time)."""
        newest: float | None = None
        for f in self._segment_files(self.device_dir(device)):
            try:
                t = f.stat().st_mtime
            except OSError:
                continue
            newest = t if newest is None else max(newest, t)
        return newest


def journal_cipher(header: Any, frames: list[bytes], key: bytes) -> str:
    """The cipher a recovered journal was written with.

    A journal is written under the cipher the device was set to when the batch opened; it is
    recovered (sealed as a segment) at the next start, possibly under another setting, so the
    outer segment's ``cipher`` says nothing about the frames. A journal header that names its
    cipher is taken at its word; the version-1 header (``agent.storage.records``) names none,
    so the frames say it: each cipher in turn must authenticate the first frame, and an AEAD
    tag authenticates under one (cipher, key) only.
    """
    named = getattr(header, "cipher", None)
    if isinstance(named, str) and named:
        return named
    if not frames:
        return CIPHERS[0]
    for cipher in CIPHERS:
        try:
            aead_for(cipher, key).decrypt(chunk_nonce(0, False), frames[0], None)
        except InvalidTag:
            continue
        return cipher
    raise VerificationError("the journal's frames fail authentication under every known cipher")


def _read_info(f: Path) -> tuple[SegmentInfo | None, str]:
    """A segment's trailer; ("", reason) when reading it raised more than a format error
    (such a file is kept away from every other parser)."""
    try:
        with f.open("rb") as fh:
            return read_segment_info(fh), ""
    except (OSError, FormatError, VerificationError):
        return None, ""
    except RecursionError:
        return None, "bad_format: the manifest is nested too deep to read"
    except Exception as exc:
        return None, f"bad_format: the trailer cannot be read ({type(exc).__name__})"


def _key_poison(path: Path) -> str:
    """Why a key record must be kept from the verifier (it makes a parser fail), or ""."""
    try:
        if not path.is_file():
            return ""
        parse_key_record(path.read_bytes())
    except (OSError, FormatError, VerificationError):
        return ""
    except RecursionError:
        return "the record is nested too deep to read"
    except Exception as exc:
        return f"the record cannot be read ({type(exc).__name__})"
    return ""


def _seq_of(label: str) -> int:
    try:
        return int(label.rsplit("#", 1)[1])
    except (IndexError, ValueError):
        return -1


def _plain_mismatch(data: bytes, info: SegmentInfo) -> str:
    m = info.manifest
    if len(data) != m.get("plain_len"):
        return f"{len(data)} bytes, the manifest says {m.get('plain_len')}"
    if hashlib.sha256(data).hexdigest() != m.get("plain_sha256"):
        return "its SHA-256 is not the manifest's plain_sha256"
    return ""


def _check_plain(path: Path, info: SegmentInfo) -> str:
    try:
        return _plain_mismatch(path.read_bytes(), info)
    except OSError as exc:
        return f"unreadable: {exc}"


def _gaps(review: DeviceReview) -> dict[str, list[GapView]]:
    """Missing sequence numbers per stream, with what the device said about them."""
    explained: dict[tuple[str, int], str] = {}
    refusals: dict[str, list[EventMark]] = {}
    for e in review.events:
        stream = e.details.get("stream")
        if not isinstance(stream, str):
            continue
        if e.type == "telemetry_evicted" and isinstance(e.details.get("seqs"), list):
            why = str(e.details.get("reason") or "telemetry quota full")
            for s in e.details["seqs"]:
                if isinstance(s, int):
                    explained[(stream, s)] = f"telemetry_evicted (event #{e.seq}): {why}"
        elif e.type == "evidence_refused":
            refusals.setdefault(stream, []).append(e)
    out: dict[str, list[GapView]] = {}
    for stream, segs in review.streams.items():
        prev_end: float | None = None
        expect = 0
        for s in segs:
            if s.seq > expect:
                out.setdefault(stream, []).extend(
                    _split_gap(stream, expect, s.seq - 1, prev_end, s.start, explained)
                )
            expect = s.seq + 1
            prev_end = s.end
        # Evidence the device refused never got a sequence number: a gap in time, not in seq.
        for e in refusals.get(stream, []):
            out.setdefault(stream, []).append(
                GapView(
                    stream,
                    -1,
                    -1,
                    e.time,
                    e.time,
                    f"evidence_refused (event #{e.seq}): {e.details.get('reason', '')}",
                )
            )
    return out


def _split_gap(
    stream: str,
    first: int,
    last: int,
    start: float | None,
    end: float | None,
    explained: dict[tuple[str, int], str],
) -> list[GapView]:
    """One gap per run of missing seqs that share the same explanation (or none)."""
    marks = sorted(
        (s, r) for (st, s), r in explained.items() if st == stream and first <= s <= last
    )
    runs: list[list[Any]] = []  # [first, last, reason]
    pos = first
    for seq, reason in marks:
        if seq > pos:
            runs.append([pos, seq - 1, ""])
        if runs and runs[-1][2] == reason and runs[-1][1] == seq - 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq, reason])
        pos = seq + 1
    if pos <= last:
        runs.append([pos, last, ""])
    return [GapView(stream, int(a), int(b), start, end, str(r)) for a, b, r in runs]
