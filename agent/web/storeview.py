"""A read-only view of the ingest store (see :mod:`agent.ingest.store`) for the review page.

Nothing here takes a path from a request: callers pass a device id, a stream name and a
sequence number, each checked by :mod:`agent.ids`, and every path is built from them with
:func:`agent.ids.contained` (under the store's root, symlinks resolved).

Verification is :func:`agent.storage.verify.verify_paths` over the device's sealed segments and
key records, with its key pinned to the store's ``device.pub``; the result is kept until a
file of the device changes. Plaintext (``plain/``) is only ever served after its SHA-256
matched the signed manifest's ``plain_sha256``; where the store has none and the page holds
the platform key, the segment is decrypted on demand (verified as it is decrypted).

**Recovered parts** (video or audio journaled on the device and sealed after a power cut,
agent.storage.recovered): with the platform key each one is opened when the device's review is
built, its media (the frames that authenticate under its inner key) is what the player gets,
and the frames that failed and the torn bytes are shown; without it the page says so.

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
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import boundedjson, ids
from agent.errors import AgentError, FormatError, VerificationError
from agent.storage.keys import load_verify_key
from agent.storage.recovered import (
    RECOVERED_CONTENT_TYPE,
    Recovered,
    check_recovered_meta,
    open_recovered,
)
from agent.storage.seal import (
    SegmentInfo,
    decrypt_segment,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_segment,
)
from agent.storage.verify import verify_paths
from agent.web.evidence import DeviceReview, EventMark, RecoveredView, SegmentView, chain_gaps
from agent.web.fmt import parse_utc
from agent.web.httpbase import WebError
from agent.web.liveview import LiveView, read_live

log = logging.getLogger(__name__)

SEQ_TEXT_RE = re.compile(r"^[0-9]{1,12}\Z")
SEG_NAME_RE = re.compile(r"^([0-9]{12})\.seg\Z")
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
        "bad_content",
    }
)
PLAIN_CACHE_BYTES = 64 * 1024 * 1024
RECOVERED_CACHE_BYTES = 32 * 1024 * 1024  # media of the recovered parts kept opened


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


def _manifest_time(manifest: dict[str, Any], name: str) -> float | None:
    return parse_utc(manifest.get(name))


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
        self._recovered: OrderedDict[tuple[str, int, int], tuple[Recovered, dict[str, Any]]] = (
            OrderedDict()
        )

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
        data_keys: dict[str, bytes | None] = {}
        for f, (stream, seq) in files.items():
            review.streams.setdefault(stream, []).append(
                self._segment_view(device, f, stream, seq, infos[f], per_file[f], data_keys)
            )
        for segs in review.streams.values():
            segs.sort(key=lambda s: s.seq)
        review.events = self._events(device, review)
        review.gaps = chain_gaps(review)
        return review

    def _segment_view(
        self,
        device: str,
        f: Path,
        stream: str,
        seq: int,
        info: SegmentInfo | None,
        found: list[str],
        data_keys: dict[str, bytes | None],
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
        meta = self._meta(device, info, data_keys)
        recovered = None
        if ctype == RECOVERED_CONTENT_TYPE and not failed:
            recovered = self._recovered_view(device, stream, seq, problems)
            failed = any(p.split(":", 1)[0] in FAILING for p in problems)
        return SegmentView(
            stream=stream,
            seq=seq,
            start=_manifest_time(man, "start_utc"),
            end=_manifest_time(man, "end_utc"),
            content_type=ctype[:100] if isinstance(ctype, str) else "",
            meta=meta,
            size=size,
            state="failed" if failed else "verified",
            problems=tuple(problems),
            has_plain=has_plain,
            manifest=dict(man),
            recovered=recovered,
        )

    def _recovered_view(
        self, device: str, stream: str, seq: int, problems: list[str]
    ) -> RecoveredView | None:
        """A verified recovered part, opened; what stands in the way goes to ``problems``
        (a meta that breaks the format fails the segment, ``bad_content``)."""
        if self.platform_key is None:
            problems.append(
                "recovered: its media is under the part's own key; the review page needs the "
                "platform key (--platform-key) to open it"
            )
            return None
        try:
            rec, meta = self.recovered(device, stream, seq)
        except FormatError as exc:
            problems.append(f"bad_content: {exc}")
            return None
        except (WebError, AgentError) as exc:
            problems.append(f"recovered: cannot open it: {exc}")
            return None
        view = _recovered_view_of(rec, meta)
        if rec.failed:
            problems.append(f"recovered_failed: {view.summary}")
        return view

    def _meta(
        self, device: str, info: SegmentInfo | None, keys: dict[str, bytes | None]
    ) -> dict[str, Any]:
        """A segment's meta: sealed since format version 2 (read with the platform key only),
        in clear in version 1; empty when it cannot be read."""
        if info is None:
            return {}
        key: bytes | None = None
        if info.version >= 2 and self.platform_key is not None:
            if info.key_id not in keys:
                try:
                    keys[info.key_id] = self.data_key(device, info.key_id)
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

    def recovered(self, device: str, stream: str, seq: int) -> tuple[Recovered, dict[str, Any]]:
        """A recovered part opened with the platform key: (its media and frames, its meta)."""
        if self.platform_key is None:
            raise WebError(404, "a recovered part needs the platform key")
        seg = self._seg_path(device, stream, seq)
        plain = self.plaintext(device, stream, seq)  # verified against the manifest
        st = seg.stat()
        key = (f"{seg}#recovered", st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._recovered.get(key)
            if hit is not None:
                self._recovered.move_to_end(key)
                return hit
        with seg.open("rb") as f:
            info = read_segment_info(f)
        meta = open_meta(info, self.data_key(device, info.key_id))
        check_recovered_meta(meta, info.label)
        rec = open_recovered(plain, meta, self.data_key(device, str(meta["inner_key_id"])))
        with self._lock:
            self._recovered[key] = (rec, meta)
            while (
                sum(len(r.media) for r, _m in self._recovered.values()) > RECOVERED_CACHE_BYTES
                and len(self._recovered) > 1
            ):
                self._recovered.popitem(last=False)
        return rec, meta

    def media(self, device: str, stream: str, seq: int, content_type: str) -> bytes:
        """What a player gets: a recovered part's media, else the plaintext."""
        if content_type == RECOVERED_CONTENT_TYPE:
            return self.recovered(device, stream, seq)[0].media
        return self.plaintext(device, stream, seq)

    def data_key(self, device: str, key_id: str) -> bytes:
        """The data key ``key_id`` of ``device`` (needs the platform key)."""
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
        decrypt_segment(f, info, self.data_key(device, info.key_id), out.write)
        return out.getvalue()

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


def _recovered_view_of(rec: Recovered, meta: dict[str, Any]) -> RecoveredView:
    return RecoveredView(
        media_type=str(meta["inner_content_type"]),
        recording=str(meta["recording"]),
        part=int(meta["part"]),
        chunks=rec.chunks,
        authenticated=rec.authenticated,
        failed=tuple(rec.failed),
        torn_bytes=int(meta["torn_bytes"]),
    )


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
