"""The pre-event buffer: a ring of ENCODED fragments, so 30 s of 1080p is tens of MB.

The ring keeps the newest fragments and just enough older ones that, whenever a recording is
asked to start, it can begin at the first fragment (video: keyframe) at least ``prebuffer_s``
before the trigger. Fragments already recorded are never offered again, so a recording started
right after another one stopped continues it without repeating a frame. Video and audio use
the same ring (:class:`agent.capture.recording.RecordingPipeline`).

Thread use: owned by the recorder's encoder thread; not locked.
"""

from __future__ import annotations

from collections import deque
from typing import Generic

from agent.capture.segmenter import F


class FragmentRing(Generic[F]):
    def __init__(self, prebuffer_s: float) -> None:
        self.prebuffer_ns = round(prebuffer_s * 1e9)
        self._ring: deque[F] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def span_s(self) -> float:
        if not self._ring:
            return 0.0
        return (self._ring[-1].end_mono_ns - self._ring[0].start_mono_ns) / 1e9

    def push(self, frag: F) -> None:
        self._ring.append(frag)
        self._bytes += len(frag.data)
        # A trigger comes no earlier than the newest fragment's end, so a fragment is needed
        # only while the next one starts later than (newest end - prebuffer).
        horizon = frag.end_mono_ns - self.prebuffer_ns
        while len(self._ring) >= 2 and self._ring[1].start_mono_ns <= horizon:
            self._bytes -= len(self._ring.popleft().data)

    def clear(self) -> None:
        self._ring.clear()
        self._bytes = 0

    def fragments(self, after_seq: int = -1) -> list[F]:
        """The buffered fragments numbered above ``after_seq``, oldest first."""
        return [f for f in self._ring if f.seq > after_seq]

    def choose_start(
        self, trigger_mono_ns: int, pending: list[tuple[int, int]], after_seq: int = -1
    ) -> int:
        """The fragment number a recording triggered at ``trigger_mono_ns`` starts with.

        ``pending`` lists ``(seq, start_mono_ns)`` of fragments begun in the encoder but not out
        yet. The answer is the newest fragment that starts at least ``prebuffer_s`` before the
        trigger or, when the buffer holds less than that, the oldest one available.
        """
        target = trigger_mono_ns - self.prebuffer_ns
        known = [(f.seq, f.start_mono_ns) for f in self._ring if f.seq > after_seq]
        known += [(s, m) for s, m in pending if s > after_seq]
        if not known:
            return after_seq + 1
        known.sort()
        early = [s for s, m in known if m <= target]
        return early[-1] if early else known[0][0]
