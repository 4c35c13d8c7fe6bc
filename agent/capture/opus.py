"""One Opus stream setup: libopus through PyAV, s16le mono PCM in, packets out in whole frames.

Every Opus writer here uses it, each with its own container: the audio stream's fragmented MP4
(:mod:`agent.capture.audio_encoder`), the track beside H.264 in video segments
(:mod:`agent.capture.av_mux`) and push-to-talk's Ogg (:mod:`agent.talk.codec`). The container
muxes the packets; this class owns the encoder: its settings (mono, s16, the bit rate, the
``application``, optionally ``vbr``), the samples waiting for a whole frame (20 ms), each
frame's timestamp on the stream's sample timeline, and the flush at the end (the last frame
padded with silence, then the encoder drained).

PyAV is imported inside the methods: importing this module loads nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

from agent.errors import SourceError

SAMPLE_BYTES = 2


class OpusStream:
    """``add_stream`` is the container's (``container.add_stream``); ``pts`` is the timeline
    sample of the next frame's first sample (a stream may start later than 0)."""

    def __init__(
        self,
        add_stream: Callable[..., Any],
        rate: int,
        *,
        bitrate_kbps: int = 24,
        application: str = "audio",
        vbr: str | None = None,
        what: str = "audio",
        pts: int = 0,
    ) -> None:
        import av

        self.rate = rate
        self.bitrate_kbps = bitrate_kbps
        try:
            stream: Any = add_stream("libopus", rate=rate)
            stream.layout = "mono"
            stream.format = "s16"
            stream.bit_rate = bitrate_kbps * 1000
            ctx = stream.codec_context
            ctx.time_base = Fraction(1, rate)
            ctx.options = {"application": application, **({"vbr": vbr} if vbr else {})}
            ctx.open()
        except (av.FFmpegError, ValueError) as exc:
            raise SourceError(f"{what}: cannot open the Opus encoder: {exc}") from None
        self.stream = stream
        self.frame_size = int(ctx.frame_size) or rate // 50
        self.pts = pts
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Samples waiting for a whole frame."""
        return len(self._buf) // SAMPLE_BYTES

    def encode(self, pcm: bytes) -> list[Any]:
        """Append samples; the packets of the frames now whole."""
        self._buf += pcm
        step = self.frame_size * SAMPLE_BYTES
        out: list[Any] = []
        while len(self._buf) >= step:
            out += self._frame(bytes(self._buf[:step]))
            del self._buf[:step]
        return out

    def flush(self) -> list[Any]:
        """The rest: the last frame padded with silence, then what the encoder holds."""
        out: list[Any] = []
        if self._buf:
            pad = self.frame_size * SAMPLE_BYTES - len(self._buf)
            out += self._frame(bytes(self._buf) + b"\0" * pad)
            self._buf.clear()
        return out + list(self.stream.encode(None))

    def _frame(self, pcm: bytes) -> list[Any]:
        import av

        n = len(pcm) // SAMPLE_BYTES
        frame = av.AudioFrame(format="s16", layout="mono", samples=n)
        frame.planes[0].update(pcm)
        frame.sample_rate = self.rate
        frame.pts = self.pts
        frame.time_base = Fraction(1, self.rate)
        self.pts += n
        return list(self.stream.encode(frame))
