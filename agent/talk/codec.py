"""Ogg Opus with PyAV, incrementally: PCM in, Ogg pages out as they are made; decoding; tones.

:class:`OggOpusWriter` keeps one libopus encoder (:class:`agent.capture.opus.OpusStream`, the
setup every Opus writer here shares) and one Ogg muxer writing to memory; the bytes
the muxer has written since the last :meth:`take` are the next chunk's payload, so the chunks of
a message, concatenated, are exactly the finished ``.ogg`` file (the same bytes are sealed and
saved). ``page_duration`` is 100 ms, so a page (and so a chunk) leaves at most ~100 ms after the
audio it carries was encoded; :meth:`finish` flushes the rest.

PyAV is imported inside the functions: importing this module loads nothing heavy.
"""

from __future__ import annotations

import array
import contextlib
import io
import math
import sys
from pathlib import Path
from typing import Any

from agent.capture.encoder import MemorySink
from agent.capture.opus import OpusStream
from agent.errors import SourceError

SAMPLE_BYTES = 2
PAGE_US = 100_000


class OggOpusWriter:
    """s16le mono PCM in; :meth:`take` returns the Ogg bytes made since the last call."""

    def __init__(self, rate: int, bitrate_kbps: int = 24, application: str = "voip") -> None:
        import av

        self.rate = rate
        self._sink = MemorySink()
        self._container: Any = av.open(
            self._sink, "w", format="ogg", options={"page_duration": str(PAGE_US)}
        )
        try:
            self._opus = OpusStream(
                self._container.add_stream,
                rate,
                bitrate_kbps=bitrate_kbps,
                application=application,
                vbr="constrained",
                what="talk",
            )
        except SourceError:
            self._container.close()
            raise
        self.frame_size = self._opus.frame_size
        self.samples = 0  # samples fed
        self._closed = False

    @property
    def duration_s(self) -> float:
        return self.samples / self.rate

    def write(self, pcm: bytes) -> None:
        if self._closed:
            raise SourceError("talk: encoder already finished")
        self.samples += len(pcm) // SAMPLE_BYTES
        self._mux(self._opus.encode(pcm))

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self._container.mux(packet)

    def take(self) -> bytes:
        return self._sink.take()

    def finish(self) -> bytes:
        """Encode what is buffered (padded to a whole frame), close the file; the last bytes."""
        if not self._closed:
            self._mux(self._opus.flush())
            self._container.close()
            self._closed = True
        return self.take()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):  # abandoning a half-written file
                self._container.close()


def encode_pcm(pcm: bytes, rate: int, bitrate_kbps: int = 24) -> bytes:
    """A whole Ogg Opus file from s16le mono PCM."""
    w = OggOpusWriter(rate, bitrate_kbps)
    w.write(pcm)
    return w.take() + w.finish()


def decode_to_pcm(source: bytes | Path, rate: int) -> bytes:
    """Any file FFmpeg reads (WAV, Ogg, MP3, ...) as s16le mono PCM at ``rate``."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = bytearray()
    arg: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        container: Any = av.open(arg)
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"talk: cannot read audio {_name(source)}: {exc}") from None
    with container as c:
        if not c.streams.audio:
            raise SourceError(f"talk: {_name(source)} has no audio")
        stream = c.streams.audio[0]
        try:
            for frame in c.decode(stream):
                for f in resampler.resample(frame):
                    out += _plane(f)
            for f in resampler.resample(None):
                out += _plane(f)
        except av.FFmpegError as exc:
            raise SourceError(f"talk: cannot decode {_name(source)}: {exc}") from None
    return bytes(out)


def _plane(frame: Any) -> bytes:
    return bytes(frame.planes[0])[: frame.samples * SAMPLE_BYTES]


def _name(source: bytes | Path) -> str:
    return f"({len(source)} bytes)" if isinstance(source, bytes) else str(source)


def tone(hz: float, ms: int, rate: int, amplitude: float = 0.3, fade_ms: float = 5.0) -> bytes:
    """A sine tone as s16le mono PCM, with short fades (no clicks)."""
    n = rate * ms // 1000
    fade = max(1, int(rate * fade_ms / 1000))
    a = array.array("h", bytes(2 * n))
    for i in range(n):
        g = min(1.0, i / fade, (n - 1 - i) / fade)
        a[i] = int(32767 * amplitude * g * math.sin(2 * math.pi * hz * i / rate))
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def silence(ms: int, rate: int) -> bytes:
    return bytes(SAMPLE_BYTES * (rate * ms // 1000))
