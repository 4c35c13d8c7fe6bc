"""A read-only view of the ingest store (see :mod:`agent.ingest.store`) for the review page.

Nothing here takes a path from a request: callers pass a device id, a stream name and a
sequence number, each checked against a strict pattern, and every path is built from them
under the store's root (and must still lie under it once symlinks are resolved).

Verification is :func:`agent.storage.verify.verify_paths` over the device's sealed segments and
key records, with its key pinned to the store's ``device.pub``; the result is kept until a
file of the device changes. Plaintext (``plain/``) is only ever served after its SHA-256
matched the signed manifest's ``plain_sha256``; where the store has none and the page holds
the platform key, the segment is decrypted on demand (verified as it is decrypted).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import AgentError, FormatError, VerificationError
from agent.gps.wire import SIZE as FIX_SIZE
from agent.gps.wire import decode_fix
from agent.model import Fix
from agent.storage.keys import load_verify_key
from agent.storage.records import JOURNAL_CONTENT_TYPE, decrypt_journal, unpack_records
from agent.storage.seal import (
    SegmentInfo,
    decrypt_segment,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_segment,
)
from agent.storage.verify import verify_paths
from agent.web.httpbase import WebError

log = logging.getLogger(__name__)

# Stricter than the protocol's: an id may not start with a dot (no "." or "..").
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
STREAM_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SEQ_RE = re.compile(r"^\d{1,12}$")
SEG_NAME_RE = re.compile(r"^(\d{12})\.seg$")
FIX_CONTENT_TYPE = "application/x-edge-fix"
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
        "bad_content",
    }
)
PLAIN_CACHE_BYTES = 64 * 1024 * 1024
MAX_ALARMS = 50


def parse_utc(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def fmt_utc(t: float | None) -> str:
    if t is None:
        return "-"
    ms = round(t * 1000)
    d = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return d.strftime("%Y-%m-%d %H:%M:%S") + f".{ms % 1000:03d}Z"


def check_device(device: str) -> str:
    if not DEVICE_ID_RE.match(device):
        raise WebError(404, "no such device")
    return device


def check_stream(stream: str) -> str:
    if not STREAM_RE.match(stream):
        raise WebError(404, "no such stream")
    return stream


def check_seq(seq: str) -> int:
    if not SEQ_RE.match(seq):
        raise WebError(404, "no such segment")
    return int(seq)


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
            if d.get(k):
                bits.append(f"{k}: {str(d[k])[:120]}")
        if isinstance(d.get("seqs"), list):
            bits.append(f"seqs {len(d['seqs'])}")
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
class LiveMessage:
    received: float
    payload: dict[str, Any]


@dataclass
class LiveView:
    state: LiveMessage | None = None
    status: LiveMessage | None = None
    fix: LiveMessage | None = None
    alarms: list[LiveMessage] = field(default_factory=list)

    @property
    def online(self) -> bool | None:
        if self.state is None:
            return None
        return self.state.payload.get("state") == "online"

    @property
    def last_seen(self) -> float | None:
        times = [m.received for m in (self.state, self.status, self.fix) if m is not None]
        times += [a.received for a in self.alarms]
        return max(times) if times else None

    @property
    def backlog(self) -> dict[str, Any]:
        for m in (self.status, self.state):
            if m is not None and isinstance(m.payload.get("backlog"), dict):
                return dict(m.payload["backlog"])
        return {}


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

    def _under_root(self, path: Path) -> Path:
        real = path.resolve()
        if real != self.root and not real.is_relative_to(self.root):
            raise WebError(404, "not in the store")
        return real

    def device_dir(self, device: str) -> Path:
        d = self._under_root(self.root / check_device(device))
        if not d.is_dir():
            raise WebError(404, "no such device")
        return d

    def devices(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if not (DEVICE_ID_RE.match(p.name) and p.is_dir() and not p.is_symlink()):
                continue
            if (p / "seg").is_dir() or (p / "live").is_dir() or (p / "device.pub").exists():
                out.append(p.name)
        return out

    def _trusted(self, device: str) -> Ed25519PublicKey | None:
        for path in (
            self.devices_dir / f"{device}.pub" if self.devices_dir else None,
            self.device_dir(device) / "device.pub",
        ):
            if path is not None and path.exists():
                return load_verify_key(path)
        return None

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

    def _build_review(self, device: str, d: Path) -> DeviceReview:
        trusted = self._trusted(device)
        review = DeviceReview(device, pinned=trusted is not None)
        seg_root = d / "seg"
        files: dict[Path, tuple[str, int]] = {}  # path -> (stream dir, seq from its name)
        if seg_root.is_dir():
            for sdir in sorted(seg_root.iterdir()):
                if not (sdir.is_dir() and STREAM_RE.match(sdir.name)):
                    continue
                for f in sorted(sdir.iterdir()):
                    m = SEG_NAME_RE.match(f.name)
                    if m and f.is_file():
                        files[f] = (sdir.name, int(m.group(1)))
        paths: list[Path] = list(files)
        if (d / "keys").is_dir():
            paths.append(d / "keys")
        report = verify_paths(paths, trusted=trusted) if paths else None
        infos: dict[Path, SegmentInfo | None] = {}
        for f in files:
            try:
                with f.open("rb") as fh:
                    infos[f] = read_segment_info(fh)
            except (OSError, FormatError):
                infos[f] = None
        # Problems per file: by path for a segment's own failures, by label for chain ones.
        per_file: dict[Path, list[str]] = {f: [] for f in files}
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
        data_keys: dict[str, bytes | None] = {}
        for f, (stream, seq) in files.items():
            info = infos[f]
            problems = list(per_file[f])
            plain = self._plain_path(d, stream, seq)
            has_plain = plain.is_file()
            if info is not None and has_plain and not problems:
                why = _check_plain(plain, info)
                if why:
                    problems.append(f"plain_altered: {why}")
            failed = any(p.split(":", 1)[0] in FAILING for p in problems) or info is None
            if info is None and not problems:
                problems.append("bad_format: unreadable trailer")
            man: dict[str, Any] = info.manifest if info is not None else {}
            view = SegmentView(
                stream=stream,
                seq=seq,
                start=parse_utc(man.get("start_utc")),
                end=parse_utc(man.get("end_utc")),
                content_type=str(man.get("content_type", "")),
                meta=self._meta(device, d, info, data_keys),
                size=f.stat().st_size,
                state="failed" if failed else "verified",
                problems=tuple(problems),
                has_plain=has_plain,
                manifest=dict(man),
            )
            review.streams.setdefault(stream, []).append(view)
        for segs in review.streams.values():
            segs.sort(key=lambda s: s.seq)
        review.events = self._events(device, review)
        review.gaps = _gaps(review)
        return review

    def _meta(
        self, device: str, d: Path, info: SegmentInfo | None, keys: dict[str, bytes | None]
    ) -> dict[str, Any]:
        """A segment's meta: sealed since format version 2 (read with the platform key only),
        in clear in version 1; empty when it cannot be read."""
        if info is None:
            return {}
        key: bytes | None = None
        if info.version >= 2 and self.platform_key is not None:
            if info.key_id not in keys:
                try:
                    keys[info.key_id] = self._data_key(device, d, info.key_id)
                except AgentError:  # incl. WebError: its key record is not in the store
                    keys[info.key_id] = None
            key = keys[info.key_id]
        try:
            return open_meta(info, key)
        except AgentError:
            return {}

    def _events(self, device: str, review: DeviceReview) -> list[EventMark]:
        out: list[EventMark] = []
        for s in review.streams.get("event", []):
            if not s.verified:
                continue
            details: dict[str, Any] = dict(s.meta)
            try:
                body = json.loads(self.plaintext(device, "event", s.seq))
                if isinstance(body, dict):
                    details.update(body)
            except (WebError, ValueError, UnicodeDecodeError):
                pass
            when = parse_utc(details.get("at_utc")) or s.start
            out.append(EventMark(when, str(details.get("type", "event")), s.seq, details))
        return out

    # ------------------------------------------------------------------ plaintext

    def _plain_path(self, d: Path, stream: str, seq: int) -> Path:
        return d / "plain" / stream / f"{seq:012d}.bin"

    def _seg_path(self, d: Path, stream: str, seq: int) -> Path:
        return d / "seg" / stream / f"{seq:012d}.seg"

    def plaintext(self, device: str, stream: str, seq: int) -> bytes:
        """The decrypted bytes of a verified segment; WebError when there are none to give."""
        d = self.device_dir(device)
        check_stream(stream)
        seg = self._under_root(self._seg_path(d, stream, seq))
        if not seg.is_file():
            raise WebError(404, "no such segment")
        st = seg.stat()
        key = (str(seg), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._plain.get((key[0], key[1], key[2]))
            if hit is not None:
                self._plain.move_to_end((key[0], key[1], key[2]))
                return hit
        try:
            with seg.open("rb") as f:
                info = read_segment_info(f)
                if info.stream != stream or info.seq != seq or info.device != device:
                    raise WebError(409, "this segment is stored under another name (misplaced)")
                plain = self._under_root(self._plain_path(d, stream, seq))
                if plain.is_file():
                    data = plain.read_bytes()
                    why = _plain_mismatch(data, info)
                    if why:
                        raise WebError(409, f"the stored plaintext fails its manifest: {why}")
                elif self.platform_key is not None:
                    data = self._decrypt(device, d, f, info)
                else:
                    raise WebError(404, "the store holds no plaintext for this segment")
        except (FormatError, VerificationError) as exc:
            raise WebError(409, f"the segment fails verification: {exc}") from None
        with self._lock:
            self._plain[(key[0], key[1], key[2])] = data
            self._plain_bytes += len(data)
            while self._plain_bytes > PLAIN_CACHE_BYTES and len(self._plain) > 1:
                _, old = self._plain.popitem(last=False)
                self._plain_bytes -= len(old)
        return data

    def _data_key(self, device: str, d: Path, key_id: str) -> bytes:
        assert self.platform_key is not None
        if not re.match(r"^[0-9a-f]{16}$", key_id):
            raise VerificationError(f"malformed key id {key_id[:20]!r}")
        kpath = self._under_root(d / "keys" / f"{key_id}.key")
        if not kpath.is_file():
            raise WebError(404, f"key record {key_id} is not in the store")
        rec = parse_key_record(kpath.read_bytes(), self._trusted(device))
        return rec.unwrap(self.platform_key)

    def _decrypt(self, device: str, d: Path, f: io.BufferedReader, info: SegmentInfo) -> bytes:
        verify_segment(f, info, self._trusted(device))
        out = io.BytesIO()
        decrypt_segment(f, info, self._data_key(device, d, info.key_id), out.write)
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
                track.points.append(TrackPoint(fix.time, fix.lat, fix.lon, fix.speed, s.seq))
        track.points.sort(key=lambda p: p.time)
        return track

    def _records(self, device: str, s: SegmentView) -> list[bytes]:
        data = self.plaintext(device, "gps", s.seq)
        if s.content_type == JOURNAL_CONTENT_TYPE:
            # A journal recovered after a power cut: its frames are under the inner key.
            if self.platform_key is None:
                raise WebError(404, "a recovered journal needs the platform key")
            inner = str(s.meta.get("inner_key_id", ""))
            d = self.device_dir(device)
            key = self._data_key(device, d, inner)
            return decrypt_journal(data, key, str(s.manifest.get("cipher", "aes-256-gcm")))
        if s.content_type != FIX_CONTENT_TYPE:
            raise WebError(415, f"content type {s.content_type!r} is not GPS fixes")
        return unpack_records(data)

    # ------------------------------------------------------------------ live state

    def live(self, device: str) -> LiveView:
        d = self.device_dir(device) / "live"
        view = LiveView()
        view.state = _read_live(d / "state.json")
        view.status = _read_live(d / "status.json")
        view.fix = _read_live(d / "fix.json")
        alarms = d / "alarms.jsonl"
        if alarms.is_file():
            try:
                lines = alarms.read_bytes().splitlines()[-MAX_ALARMS:]
            except OSError:
                lines = []
            for line in reversed(lines):
                msg = _parse_live(line)
                if msg is not None:
                    view.alarms.append(msg)
        return view

    def last_arrival(self, device: str) -> float | None:
        """When the newest sealed segment of the device arrived (its file's time)."""
        base = self.device_dir(device) / "seg"
        newest: float | None = None
        if base.is_dir():
            for sdir in base.iterdir():
                if sdir.is_dir():
                    for f in sdir.iterdir():
                        try:
                            t = f.stat().st_mtime
                        except OSError:
                            continue
                        newest = t if newest is None else max(newest, t)
        return newest


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


def _parse_live(raw: bytes) -> LiveMessage | None:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("payload"), dict):
        return None
    received = obj.get("received")
    if isinstance(received, bool) or not isinstance(received, int | float):
        return None
    return LiveMessage(float(received), obj["payload"])


def _read_live(path: Path) -> LiveMessage | None:
    try:
        return _parse_live(path.read_bytes())
    except OSError:
        return None
