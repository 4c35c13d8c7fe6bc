"""What the review page knows about a device's evidence: its segments with their verdicts,
the events it recorded, and the chain gaps with what the device said about them.

Missing sequence numbers between the segments present are gaps; a ``telemetry_evicted`` event
explains the seqs it lists, an ``evidence_refused`` event marks a gap in time (refused
evidence never got a seq). A gap nobody explained says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecoveredView:
    """A recovered part (journaled video or audio sealed after a power cut), opened with the
    platform key: its frames ("chunks"), those that authenticate, those that do not (left out
    of the media) and the bytes the device found torn after the last whole one."""

    media_type: str  # video/mp4 or audio/mp4
    recording: str
    part: int
    chunks: int
    authenticated: int
    failed: tuple[int, ...]
    torn_bytes: int

    @property
    def summary(self) -> str:
        bits = [
            f"recovered part {self.part} of recording {self.recording[:40]}",
            f"{self.authenticated} of {self.chunks} chunks authenticated",
        ]
        if self.failed:
            shown = ", ".join(str(i) for i in self.failed[:20])
            bits.append(
                f"{len(self.failed)} failed ({shown}{' ...' if len(self.failed) > 20 else ''})"
            )
        bits.append(f"{self.torn_bytes} torn bytes not recovered")
        return ", ".join(bits)


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
    recovered: RecoveredView | None = None  # a recovered part, opened (platform key)

    @property
    def verified(self) -> bool:
        return self.state == "verified"

    @property
    def media_type(self) -> str:
        """What a player gets: a recovered part's media type, else the content type."""
        return self.recovered.media_type if self.recovered is not None else self.content_type


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


def chain_gaps(review: DeviceReview) -> dict[str, list[GapView]]:
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
