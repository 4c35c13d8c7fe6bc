"""A device's GPS track for the review page: the fixes of its verified GPS segments.

Three content types carry fixes: ``application/x-edge-fix`` (u16-length-prefixed 28-byte wire
fixes), ``application/x-edge-fix-delta`` (the same fixes delta-coded, agent.gps.fixdelta) and
``application/x-edge-journal``, a record journal recovered after a power cut
(:mod:`agent.storage.records`), whose frames are under the data key its own header names and
under the cipher they were written with, which need not be the recovered segment's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag

from agent.errors import AgentError, FormatError, VerificationError
from agent.gps.fixdelta import CONTENT_TYPE as FIX_DELTA_CONTENT_TYPE
from agent.gps.fixdelta import batch_records
from agent.gps.wire import SIZE as FIX_SIZE
from agent.gps.wire import decode_fix
from agent.model import Fix
from agent.storage.records import JOURNAL_CONTENT_TYPE, parse_journal
from agent.storage.seal import CIPHERS, aead_for, chunk_nonce, segment_key
from agent.web.evidence import SegmentView
from agent.web.httpbase import WebError
from agent.web.storeview import StoreView

FIX_CONTENT_TYPE = "application/x-edge-fix"


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


def read_track(view: StoreView, device: str, start: float | None, end: float | None) -> Track:
    """Fixes with a position from the verified GPS segments overlapping [start, end]."""
    review = view.review(device)
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
            records = _records(view, device, s)
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


def _records(view: StoreView, device: str, s: SegmentView) -> list[bytes]:
    data = view.plaintext(device, "gps", s.seq)
    if s.content_type == JOURNAL_CONTENT_TYPE:
        if view.platform_key is None:
            raise WebError(404, "a recovered journal needs the platform key")
        return journal_records(view, device, data)
    if s.content_type not in (FIX_CONTENT_TYPE, FIX_DELTA_CONTENT_TYPE):
        raise WebError(415, f"content type {s.content_type!r} is not GPS fixes")
    return batch_records(s.content_type, data)


def journal_records(view: StoreView, device: str, data: bytes) -> list[bytes]:
    """The records of a recovered journal: the data key its header names, the cipher its
    frames were written with (:func:`journal_cipher`)."""
    header, frames = parse_journal(data)
    key = segment_key(view.data_key(device, header.key_id), header.salt)
    aead = aead_for(journal_cipher(header, frames, key), key)
    try:
        return [aead.decrypt(chunk_nonce(i, False), ct, None) for i, ct in enumerate(frames)]
    except InvalidTag:
        raise VerificationError("a journal frame fails authentication") from None


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
