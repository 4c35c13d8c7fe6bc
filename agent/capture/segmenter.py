"""Rolling encoded fragments into segments of ``segment_s`` seconds, cut at keyframes.

A segment is the encoder's init boxes (``ftyp``+``moov``) followed by whole fragments: a
playable MP4 by itself whose timestamps continue the previous segment's. Since every fragment
goes to exactly one segment, consecutive segments neither lose nor repeat a frame.

Thread use: owned by the recorder's encoder thread; not locked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.capture.encoder import Fragment


@dataclass
class Segment:
    init: bytes
    fragments: list[Fragment] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(f.frames for f in self.fragments)

    @property
    def duration_s(self) -> float:
        return sum(f.duration_s for f in self.fragments)

    @property
    def size(self) -> int:
        return len(self.init) + sum(len(f.data) for f in self.fragments)

    @property
    def first(self) -> Fragment:
        return self.fragments[0]

    @property
    def last(self) -> Fragment:
        return self.fragments[-1]

    def pieces(self) -> Iterator[bytes]:
        """The MP4 bytes, piece by piece (what the sealer consumes)."""
        yield self.init
        for f in self.fragments:
            yield f.data


class Segmenter:
    def __init__(self, segment_s: float) -> None:
        self.segment_s = segment_s
        self._current: Segment | None = None

    @property
    def current(self) -> Segment | None:
        return self._current

    def add(self, init: bytes, frag: Fragment) -> Segment | None:
        """Append a fragment; return the segment it completed, if any."""
        if self._current is None:
            self._current = Segment(init)
        self._current.fragments.append(frag)
        # Cut once the segment is long enough (half a frame of slack for rounding).
        if self._current.duration_s >= self.segment_s - 0.5 / frag.fps:
            done, self._current = self._current, None
            return done
        return None

    def flush(self) -> Segment | None:
        """The partial segment (recording stopped or the agent is shutting down)."""
        done, self._current = self._current, None
        return done if done is not None and done.fragments else None
