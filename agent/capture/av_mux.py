"""Audio inside video segments: an Opus track beside H.264, time-aligned on one clock.

:class:`AvEncoder` is an :class:`agent.capture.encoder.H264Encoder` with a second stream (the
video encoder's documented ``add_stream``/``mux``). It is a drop-in for the video pipeline
(:class:`agent.capture.recorder.VideoPipeline` takes its encoder as an argument), so segments,
the pre-event ring and sealing are unchanged: fragments are still cut at video keyframes and
each holds the audio of the same span.

Clock: video pts are ``(frame.mono_ns - t0) * fps`` where ``t0`` is the monotonic time of the
frame at pts 0. Audio blocks carry the monotonic time of their first sample (the same clock,
see :mod:`agent.capture.audio`), so a block's place on the video timeline is
``(block.mono_ns - t0) * rate`` samples. The Opus track is one contiguous run of samples from
there: a block that lands more than half an Opus frame (10 ms) away from where the run has got
to is re-synchronised (silence inserted, or its head dropped), which bounds the misalignment to
10 ms (under one frame at up to 100 fps), also against sound-card clock drift.

Audio arrives later than frames (blocks, queues): before each frame is encoded, the blocks that
have arrived are encoded; the mp4 muxer interleaves the two tracks by time. If the microphone
is missing or late by more than ``LAG_S``, silence is put in so the audio track never holds
video fragments back by more than that (the microphone's state is reported separately); blocks
that come later than the silence that replaced them are dropped and counted (``late_samples``).
The audio track starts at sample ``pad`` (the Opus encoder delay, 6.5 ms), so no packet has a
negative timestamp (which would make the muxer shift the video track), and it starts there
even if the first block comes later: a fragmented MP4 with an empty ``moov`` has no edit list
to say that a track starts late, so the muxer would silently pull the audio early; the wait is
silence instead.

Thread use: :meth:`AvEncoder.push_audio` may be called from any thread (it only puts into a
bounded queue, dropping and counting when full); everything else runs on the video encoder
thread.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

from agent.capture.audio import SAMPLE_BYTES, AudioBlock
from agent.capture.encoder import Fragment, H264Encoder
from agent.capture.frames import Frame
from agent.capture.opus import OpusStream
from agent.errors import SourceError

log = logging.getLogger(__name__)

LAG_S = 0.5  # audio may trail the newest frame by this much before silence fills in


class AvEncoder(H264Encoder):
    """H.264 frames and Opus audio in the same fragmented MP4. See the module docstring."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        *,
        rate: int = 48000,
        audio_bitrate_kbps: int = 24,
        queue_blocks: int = 250,
        **video: Any,
    ) -> None:
        super().__init__(width, height, fps, **video)
        self._opus = OpusStream(self.add_stream, rate, bitrate_kbps=audio_bitrate_kbps)
        self.rate = rate
        self.frame_size = self._opus.frame_size
        self._blocks: queue.Queue[AudioBlock] = queue.Queue(maxsize=queue_blocks)
        self._t0: int | None = None  # monotonic ns of video pts 0
        self._last_frame_ns = 0
        self._pad: int | None = None
        self._pos: int | None = None  # timeline sample where the audio run has got to
        self.dropped_blocks = 0  # writer: push_audio's caller
        self.filled_samples = 0
        self.trimmed_samples = 0
        self.late_samples = 0
        self.audio_samples = 0

    # ------------------------------------------------------------------ any thread

    def segment_meta(self) -> dict[str, Any]:
        return {
            "audio": {
                "codec": "opus",
                "rate": self.rate,
                "filled_samples": self.filled_samples,
                "late_samples": self.late_samples,
                "dropped_blocks": self.dropped_blocks,
            }
        }

    def push_audio(self, block: AudioBlock) -> None:
        """Queue a (muted where muted) block for the next frame; full queue: drop and count."""
        if block.rate != self.rate:
            raise SourceError(f"audio block at {block.rate} Hz, the track is {self.rate} Hz")
        try:
            self._blocks.put_nowait(block)
        except queue.Full:
            self.dropped_blocks += 1

    # ------------------------------------------------------------------ encoder thread

    def encode(self, frame: Frame, pts: int, key: bool) -> list[Fragment]:
        if self._t0 is None:
            self._t0 = frame.mono_ns - round(pts * 1e9 / self.fps)
        self._last_frame_ns = frame.mono_ns
        out = self._pump(frame.mono_ns)
        out += super().encode(frame, pts, key)
        return out

    def finish(self) -> list[Fragment]:
        out: list[Fragment] = []
        if self._t0 is not None and self.frames_in:
            # The audio that has arrived, then silence to the end of the last frame (blocks
            # still in flight at shutdown are not waited for).
            out += self._pump(self._last_frame_ns + round(1e9 / self.fps + LAG_S * 1e9))
            out += self._mux_audio(self._opus.flush())
        return out + super().finish()

    def _pump(self, frame_ns: int | None) -> list[Fragment]:
        out: list[Fragment] = []
        while True:
            try:
                block = self._blocks.get_nowait()
            except queue.Empty:
                break
            out += self._place(block)
        if frame_ns is not None and self._t0 is not None:
            due = round((frame_ns - self._t0 - LAG_S * 1e9) * self.rate / 1e9)
            start = self._start_pos()
            if self._pos is None and due > start:
                self._pos = start
            if self._pos is not None and due > self._pos:
                self.filled_samples += due - self._pos
                out += self._append(b"\0" * ((due - self._pos) * SAMPLE_BYTES))
        return out

    def _start_pos(self) -> int:
        if self._pad is None:
            self._pad = self._probe_pad()
        return self._pad

    def _probe_pad(self) -> int:
        """The encoder delay, in samples (libopus: 312 at 48 kHz)."""
        return round(312 * self.rate / 48000)

    def _place(self, block: AudioBlock) -> list[Fragment]:
        assert self._t0 is not None
        pcm = block.pcm
        at = round((block.mono_ns - self._t0) * self.rate / 1e9)
        start = self._start_pos()
        if self._pos is None:
            # The track always starts at ``start``: a fragmented MP4 without an edit list
            # cannot say that a track starts later, so the wait is silence.
            self._pos = start
        head = max(start, self._pos) - at  # samples of this block before where we are
        half = self.frame_size // 2
        out: list[Fragment] = []
        if head > half or at < start:
            cut = min(block.samples, max(head, start - at))
            if at + block.samples <= self._pos:
                self.late_samples += block.samples
                return out
            self.trimmed_samples += cut
            pcm = pcm[cut * SAMPLE_BYTES :]
        elif head < -half:
            self.filled_samples += -head
            out += self._append(b"\0" * (-head * SAMPLE_BYTES))
        out += self._append(pcm)
        return out

    def _append(self, pcm: bytes) -> list[Fragment]:
        assert self._pos is not None
        if not self._opus.buffered and not self.audio_samples:
            self._opus.pts = self._pos  # the run's first frame starts where the run starts
        self._pos += len(pcm) // SAMPLE_BYTES
        self.audio_samples += len(pcm) // SAMPLE_BYTES
        return self._mux_audio(self._opus.encode(pcm))

    def _mux_audio(self, packets: list[Any]) -> list[Fragment]:
        out: list[Fragment] = []
        for packet in packets:
            out += self.mux(packet)
        return out
