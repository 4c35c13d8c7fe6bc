"""Opus (PyAV's libopus) muxed into fragmented MP4 in memory: the audio-only segment format.

The shape is the video encoder's (:mod:`agent.capture.encoder`): one long-lived encoder and
muxer write ``ftyp``+``moov`` once, then a ``moof``+``mdat`` fragment per ``fragment_s`` of
audio (``movflags=empty_moov+default_base_moof``, ``frag_duration``). A segment is the init
boxes plus a run of whole fragments, so it plays on its own, its timestamps continue those of
the segment before it, and the pre-event ring is a ring of encoded fragments. Every Opus packet
is a sync sample, so fragments can be cut anywhere; ``fragment_s`` is the granularity of
segments and of the pre-event buffer. Content type ``audio/mp4`` (``.m4a``).

Why fragmented MP4 and not Ogg: the same container, parser and reasoning as the video stream,
and the same track can later sit beside H.264 in a video segment. ffprobe, ffmpeg, browsers and
PyAV read it.

Encoder delay: libopus emits its first packet ``pad`` samples early (312 at 48 kHz, 104 at
16 kHz) and the init's ``dOps`` box tells decoders to skip that many samples at the start of a
file. That is right for the stream's first segment; a later segment would then lose ``pad``
real samples at its start. :meth:`OpusEncoder.segment_init` gives segments that do not start
the stream an init whose ``PreSkip`` is 0, so each segment decodes to exactly its duration.

Timeline: sample ``s`` fed to the encoder (counting from 0) is presented at decode time ``s``;
a packet with pts ``p`` (the first is ``-pad``) decodes to ``[p, p + duration)``, the part before
0 being priming that ``PreSkip`` removes. So a fragment of packets ``p0 .. pN`` presents samples
``[max(p0, 0), pN + dur)``; the flush packet (``pad`` long) ends the timeline exactly at the last
sample fed, though a decoder may return it as a whole 20 ms frame. Each fragment carries the
monotonic and UTC times of its first and last sample, interpolated from the block stamps.

Thread use: one thread (the recorder's encoder thread) owns an encoder.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from agent.capture.encoder import FragmentSink, moof_samples
from agent.capture.opus import OpusStream
from agent.errors import SourceError

log = logging.getLogger(__name__)

MOVFLAGS = "empty_moov+default_base_moof"
CONTENT_TYPE = "audio/mp4"
SAMPLE_BYTES = 2
# Box path from moov to the Opus sample entry's dOps box (stsd and the entry have fixed fields).
_SKIP = {b"stsd": 16, b"Opus": 36}
_PATH = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"Opus", b"dOps")


@dataclass(frozen=True, slots=True)
class AudioFragment:
    """One ``moof``+``mdat`` pair: ``fragment_s`` of Opus packets."""

    data: bytes
    seq: int  # fragments this encoder produced before this one
    packets: int
    start: int  # first sample presented, on the encoder's timeline (1/rate units)
    end: int  # exclusive
    rate: int
    start_mono_ns: int
    end_mono_ns: int
    start_utc: float
    end_utc: float

    @property
    def samples(self) -> int:
        return self.end - self.start

    @property
    def start_s(self) -> float:
        return self.start / self.rate

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / self.rate


def _box_offset(
    data: bytes, path: tuple[bytes, ...], pos: int = 0, end: int | None = None
) -> int | None:
    """Offset of the first box at ``path`` (a top-level box first) in ``data``, or None.

    Every sibling of a kind is searched (an MP4 with video and audio has two ``trak`` boxes).
    """
    end = len(data) if end is None else end
    kind, rest = path[0], path[1:]
    while pos + 8 <= end:
        size, sub = struct.unpack_from(">I4s", data, pos)
        if size < 8 or pos + size > end:
            return None
        if sub == kind:
            if not rest:
                return pos
            found = _box_offset(data, rest, pos + _SKIP.get(kind, 8), pos + size)
            if found is not None:
                return found
        pos += size
    return None


def zero_preskip(init: bytes) -> bytes:
    """``init`` with the Opus ``PreSkip`` set to 0 (for segments that do not start a stream)."""
    at = _box_offset(init, _PATH)
    if at is None:
        raise SourceError("audio: the muxer's init has no Opus dOps box")
    # dOps: size(4) type(4) version(1) channels(1) PreSkip(2, big-endian) ...
    return init[: at + 10] + b"\0\0" + init[at + 12 :]


def preskip_of(init: bytes) -> int:
    at = _box_offset(init, _PATH)
    if at is None:
        raise SourceError("audio: the muxer's init has no Opus dOps box")
    return int(struct.unpack_from(">H", init, at + 10)[0])


class OpusEncoder:
    """PCM (s16le mono) in, fragments out. See the module docstring."""

    def __init__(
        self,
        rate: int,
        *,
        bitrate_kbps: int = 24,
        fragment_s: float = 1.0,
        application: str = "audio",
    ) -> None:
        import av

        self.rate = rate
        self.bitrate_kbps = bitrate_kbps
        self._sink = FragmentSink("audio")
        self._container: Any = av.open(
            self._sink,
            "w",
            format="mp4",
            options={"movflags": MOVFLAGS, "frag_duration": str(round(fragment_s * 1e6))},
        )
        try:
            self._opus = OpusStream(
                self._container.add_stream, rate, bitrate_kbps=bitrate_kbps, application=application
            )
        except SourceError:
            self._container.close()
            raise
        self.frame_size = self._opus.frame_size
        self.track_id = 1
        self.samples_in = 0  # samples fed (timeline position of the next sample)
        self._marks: deque[tuple[int, int, float]] = deque()  # (sample, mono_ns, utc)
        self._pending: deque[tuple[int, int]] = deque()  # (pts, duration) of muxed packets
        self.pad: int | None = None
        self._fragments = 0
        self._init_mid: bytes | None = None
        self._closed = False
        self.bytes_out = 0

    # ------------------------------------------------------------------ input

    def encode(self, pcm: bytes, mono_ns: int, utc: float) -> list[AudioFragment]:
        """Append samples whose first was captured at ``mono_ns``/``utc``; returns fragments."""
        if self._closed:
            raise SourceError("audio: encoder already finished")
        if len(pcm) % SAMPLE_BYTES:
            raise SourceError(f"audio: {len(pcm)} bytes is not whole 16-bit samples")
        if not pcm:
            return []
        self._marks.append((self.samples_in, mono_ns, utc))
        self.samples_in += len(pcm) // SAMPLE_BYTES
        return self._mux(self._opus.encode(pcm))

    def _mux(self, packets: list[Any]) -> list[AudioFragment]:
        for packet in packets:
            pts, dur = int(packet.pts), int(packet.duration)
            if self.pad is None:
                self.pad = -pts if pts < 0 else 0
            self._pending.append((pts, dur))
            self._container.mux(packet)
        return self._collect()

    def finish(self) -> list[AudioFragment]:
        """Encode what is buffered (padded with silence to a whole frame), close the muxer."""
        if self._closed:
            return []
        out = self._mux(self._opus.flush())
        self._closed = True
        self._container.close()
        out += self._collect()
        if self._pending:
            log.error("audio: %d encoded packets did not reach a fragment", len(self._pending))
        return out

    # ------------------------------------------------------------------ output

    def segment_init(self, first_seq: int) -> bytes:
        """The init boxes for a segment whose first fragment is ``first_seq``."""
        if self.init is None:
            raise SourceError("audio: no init boxes yet (no fragment was produced)")
        if first_seq == 0:
            return self.init
        if self._init_mid is None:
            self._init_mid = zero_preskip(self.init)
        return self._init_mid

    @property
    def init(self) -> bytes | None:
        """The init boxes (ftyp + moov), once the muxer has written them."""
        return self._sink.init

    def _collect(self) -> list[AudioFragment]:
        return [self._fragment(moof, mdat) for moof, mdat in self._sink.fragments()]

    def _fragment(self, moof: bytes, mdat: bytes) -> AudioFragment:
        n = moof_samples(moof, self.track_id)
        if n <= 0 or n > len(self._pending):
            raise SourceError(
                f"audio fragment {self._fragments} holds {n} packets, {len(self._pending)} pending"
            )
        packets = [self._pending.popleft() for _ in range(n)]
        start = max(0, packets[0][0])
        end = min(self.samples_in, packets[-1][0] + packets[-1][1])
        end = max(end, start)
        start_mono, start_utc = self._time_at(start)
        end_mono, end_utc = self._time_at(end)
        self._prune(end)
        frag = AudioFragment(
            data=moof + mdat,
            seq=self._fragments,
            packets=n,
            start=start,
            end=end,
            rate=self.rate,
            start_mono_ns=start_mono,
            end_mono_ns=end_mono,
            start_utc=start_utc,
            end_utc=end_utc,
        )
        self._fragments += 1
        self.bytes_out += len(frag.data)
        return frag

    def _time_at(self, sample: int) -> tuple[int, float]:
        """Monotonic ns and UTC of timeline ``sample``, from the latest mark at or before it."""
        best: tuple[int, int, float] | None = None
        for mark in self._marks:
            if mark[0] > sample:
                break
            best = mark
        if best is None:
            if not self._marks:
                return 0, 0.0
            best = self._marks[0]
        s0, mono, utc = best
        dt = (sample - s0) / self.rate
        return mono + round(dt * 1e9), utc + dt

    def _prune(self, sample: int) -> None:
        """Drop marks no later fragment needs (keep the last one at or before ``sample``)."""
        marks = self._marks
        while len(marks) >= 2 and marks[1][0] <= sample:
            marks.popleft()
