"""An IP camera's H.264 stream (RTSP, MPEG-TS over TCP or UDP, HTTP...), passed through.

:class:`NetStreamSource` opens the URL with PyAV's demuxer (FFmpeg's protocols: ``rtsp://``
over TCP, ``tcp://host:port`` and ``udp://@:port`` carrying MPEG-TS, ``http(s)://``, ``srt://``)
and yields each H.264 packet as an :class:`~agent.capture.frames.AccessUnit`, not decoded:

- packets come Annex-B (MPEG-TS, RTSP) or length-prefixed (FLV/RTMP); both become Annex-B;
- an IDR without in-band SPS/PPS (RTSP cameras often send them only in the SDP) gets the
  latest parameter sets seen (in-band, or the demuxer's extradata) put in front of it, so the
  remuxer can always build its init segment from the first IDR;
- capture times follow the stream's own timestamps, anchored to the agent's clocks at the
  first packet and re-anchored when they drift more than ``REANCHOR_S`` from arrival (a camera
  clock step, a timestamp wrap);
- every access unit is checked (:class:`agent.capture.h264.StreamChecker`: garbage and
  B-frames are refused); a stream that ends, stalls for ``stall_s`` (FFmpeg's read timeout)
  or fails is a :class:`~agent.errors.SourceError`: the capture loop reports it once and
  reconnects with backoff.

It is live: the stream runs in real time whether or not it is read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from agent import wallclock
from agent.capture.frames import AccessUnit, LiveEncoded
from agent.capture.h264 import (
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    StreamChecker,
    avcc_nals,
    extradata_nals,
    join_nals,
    nal_type,
    parse_avcc,
    split_nals,
)
from agent.errors import SourceError

log = logging.getLogger(__name__)

SCHEMES = ("rtsp://", "rtsps://", "tcp://", "udp://", "http://", "https://", "srt://", "rtmp://")
REANCHOR_S = 2.0


def check_stream_url(url: str) -> str | None:
    """Why ``url`` cannot be a pass-through stream, or None."""
    if not url:
        return 'must be set for source = "encoded" (e.g. rtsp://camera/stream)'
    if not url.startswith(SCHEMES):
        return f"must start with one of {', '.join(SCHEMES)}, got {url.split(':', 1)[0]!r}"
    return None


def _options(url: str) -> dict[str, str]:
    if url.startswith(("rtsp://", "rtsps://")):
        return {"rtsp_transport": "tcp"}
    if url.startswith("udp://"):
        return {"overrun_nonfatal": "1", "fifo_size": "1000000"}
    return {}


def _redact(url: str) -> str:
    """The URL without a password (``rtsp://user:secret@cam`` -> ``rtsp://user:***@cam``)."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.partition("@")
    if at and ":" in auth:
        return f"{scheme}{sep}{auth.split(':', 1)[0]}:***@{host}"
    return url


class NetStreamSource(LiveEncoded):
    """A network H.264 stream through PyAV's demuxer. See the module docstring."""

    def __init__(self, url: str, fps: float, *, stall_s: float = 5.0, open_s: float = 10.0) -> None:
        problem = check_stream_url(url)
        if problem:
            raise SourceError(f"video.stream_url: {problem}")
        self.url = url
        self._fps = float(fps)
        self.stall_s = stall_s
        self.open_s = open_s
        self._container: Any = None
        self._packets: Iterator[Any] | None = None
        self._checker = StreamChecker()
        self._params: list[bytes] = []
        self._length_size = 0  # 0: Annex-B packets
        self._time_base = 0.0
        self._anchor: tuple[float, int, float] | None = None  # (stream s, mono ns, utc)
        self._index = 0
        self._resync = True
        self._seen_idr = False

    @property
    def name(self) -> str:
        return f"stream:{_redact(self.url)}"

    @property
    def encoder(self) -> str:
        return "camera (pass-through)"

    def open(self) -> None:
        import av

        self.close()
        try:
            container: Any = av.open(
                self.url, "r", options=_options(self.url), timeout=(self.open_s, self.stall_s)
            )
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"{self.name}: cannot open: {exc}") from None
        try:
            video = next(iter(container.streams.video), None)
            if video is None:
                raise SourceError(f"{self.name}: no video stream")
            codec = video.codec_context.name
            if codec != "h264":
                raise SourceError(f"{self.name}: {codec} video; only H.264 is passed through")
            extradata = bytes(video.codec_context.extradata or b"")
            self._length_size = parse_avcc(extradata)[0] if extradata[:1] == b"\x01" else 0
            self._params = extradata_nals(extradata)
            self._time_base = float(video.time_base) if video.time_base else 0.0
        except SourceError:
            container.close()
            raise
        self._container = container
        self._packets = container.demux(video)
        self._checker = StreamChecker()
        self._anchor = None
        self._resync = True
        self._seen_idr = False
        log.info("video: opened %s (H.264, %s)", self.name, container.format.name)

    def read(self) -> AccessUnit | None:
        import av

        packets = self._packets
        if packets is None:
            raise SourceError(f"{self.name}: not open")
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                raise SourceError(f"{self.name}: stream ended") from None
            except (av.FFmpegError, OSError, ValueError) as exc:
                raise SourceError(f"{self.name}: {exc}") from None
            if packet.size == 0:
                continue
            unit = self._unit(packet)
            if unit is not None:
                return unit

    def _unit(self, packet: Any) -> AccessUnit | None:
        data = bytes(packet)
        if self._length_size and not data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            nals = avcc_nals(data, self._length_size)
        else:
            nals = split_nals(data)
        kinds = {nal_type(n) for n in nals}
        if NAL_SPS in kinds and NAL_PPS in kinds:
            self._params = [n for n in nals if nal_type(n) in (NAL_SPS, NAL_PPS)]
        elif NAL_IDR in kinds:
            nals = self._params + [n for n in nals if nal_type(n) not in (NAL_SPS, NAL_PPS)]
        if not self._seen_idr and NAL_IDR not in kinds:
            # The stream was joined mid-GOP: nothing decodes before the first IDR, and the
            # slices may name parameter sets not seen yet.
            return None
        unit = self._checker.check(nals)
        self._seen_idr = True
        mono, utc = self._when(packet)
        au = AccessUnit(join_nals(list(unit.nals)), unit.key, self._index, mono, utc, self._resync)
        self._index += 1
        self._resync = False
        return au

    def _when(self, packet: Any) -> tuple[int, float]:
        now_mono, now_utc = time.monotonic_ns(), wallclock.now()
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or not self._time_base:
            return now_mono, now_utc
        t = ts * self._time_base
        a = self._anchor
        if a is not None:
            mono = a[1] + round((t - a[0]) * 1e9)
            if abs(mono - now_mono) <= REANCHOR_S * 1e9:
                return mono, a[2] + (t - a[0])
            log.info("video: %s timestamps drifted; re-anchored to arrival", self.name)
        self._anchor = (t, now_mono, now_utc)
        return now_mono, now_utc

    def close(self) -> None:
        container, self._container = self._container, None
        self._packets = None
        if container is not None:
            try:
                container.close()
            except Exception as exc:  # a broken connection may fail even here
                log.debug("video: closing %s: %s", self.name, exc)
