"""Rolling encoded fragments into segments of ``segment_s`` seconds, video and audio alike.

A segment is its init boxes (``ftyp``+``moov``) followed by whole fragments: a playable MP4 by
itself whose timestamps continue the previous segment's. Since every fragment goes to exactly
one segment, consecutive segments neither lose nor repeat a frame or a sample. (Video fragments
begin at keyframes; every Opus packet is a sync sample, so audio may be cut at any fragment.)

Thread use: owned by the recorder's encoder thread; not locked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class MediaFragment(Protocol):
    """What rings, segments and recordings use of a fragment (video's
    :class:`agent.capture.encoder.Fragment`, audio's
    :class:`agent.capture.audio_encoder.AudioFragment`)."""

    @property
    def data(self) -> bytes: ...  # one moof + mdat

    @property
    def seq(self) -> int: ...  # fragments its producer made before it

    @property
    def start_mono_ns(self) -> int: ...

    @property
    def end_mono_ns(self) -> int: ...

    @property
    def start_utc(self) -> float: ...

    @property
    def end_utc(self) -> float: ...

    @property
    def duration_s(self) -> float: ...


F = TypeVar("F", bound=MediaFragment)


@dataclass
class Segment(Generic[F]):
    init: bytes
    fragments: list[F] = field(default_factory=list)
    discontinuity: bool = False  # a new media timeline begins with it (audio after a long gap)

    @property
    def duration_s(self) -> float:
        return sum(f.duration_s for f in self.fragments)

    @property
    def size(self) -> int:
        return len(self.init) + sum(len(f.data) for f in self.fragments)

    @property
    def first(self) -> F:
        return self.fragments[0]

    @property
    def last(self) -> F:
        return self.fragments[-1]

    def pieces(self) -> Iterator[bytes]:
        """The MP4 bytes, piece by piece (what the sealer consumes)."""
        yield self.init
        for f in self.fragments:
            yield f.data


class Segmenter(Generic[F]):
    """The segment being filled. ``slack_s``: a segment this much short of ``segment_s`` is
    long enough (rounding: half a video frame, 10 ms of audio)."""

    def __init__(self, segment_s: float, slack_s: float = 0.0) -> None:
        self.segment_s = segment_s
        self.slack_s = slack_s
        self._current: Segment[F] | None = None

    @property
    def current(self) -> Segment[F] | None:
        return self._current

    def add(self, init: bytes, frag: F, *, discontinuity: bool = False) -> bool:
        """Append a fragment (a new segment opens with ``init``); True if it opened one."""
        opens = self._current is None
        if self._current is None:
            self._current = Segment(init, discontinuity=discontinuity)
        self._current.fragments.append(frag)
        return opens

    def full(self) -> bool:
        """Whether the open segment is ``segment_s`` long."""
        cur = self._current
        return cur is not None and cur.duration_s >= self.segment_s - self.slack_s

    def cut(self) -> Segment[F] | None:
        """The open segment (full, or the rest at a stop or a shutdown); None when empty."""
        done, self._current = self._current, None
        return done if done is not None and done.fragments else None
