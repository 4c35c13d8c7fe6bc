"""Pass-through: a camera's own H.264 access units into fragmented MP4, not re-encoded.

:class:`StreamRemuxer` is the twin of :class:`agent.capture.encoder.H264Encoder` for encoded
sources (picamera2's encoder, ``rpicam-vid``, an IP camera): it yields the same
:class:`~agent.capture.encoder.Fragment` s and init segment, so the pre-event ring, segments
and sealing do not know the difference. Only the muxer runs (PyAV's mp4 muxer with the same
``movflags``); the pictures are copied, never decoded.

- The muxer opens at the first IDR access unit, which must carry its SPS and PPS (rpicam's
  ``--inline``, picamera2's ``repeat``; network sources put the demuxer's parameter sets in
  front of each IDR). Its ``avcC`` comes from them (``delay_moov``) and is checked before the
  first fragment leaves. Access units before the first IDR, and after a ``resync`` (the source
  was reopened) until the next IDR, cannot be decoded and are counted, not muxed.
- Fragments start at the stream's own IDRs: the muxer cuts a fragment at every keyframe
  packet, and only IDR access units are flagged as keyframes. One IDR interval of the camera
  is one fragment; with ``keyframe_s`` the sources ask the camera for that interval.
- Timestamps: each access unit's capture time (monotonic) on a 1/fps grid, as for raw frames,
  so a gap in the stream (a lost camera) is a gap in the media timeline.
- If a reopened stream's SPS differs from the one in the init segment, muxing goes on (the
  new parameter sets are in-band in every IDR, which decoders follow) and it is counted and
  reported in the segment's manifest (``parameter_set_changes``).

Thread use: one thread (the recorder's encoder thread) owns a remuxer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from agent.capture.encoder import MOVFLAGS, Fmp4Fragments, Fragment, FrameInfo
from agent.capture.frames import AccessUnit
from agent.capture.h264 import NAL_PPS, NAL_SPS, nal_type, parse_sps, split_nals
from agent.errors import SourceError

if TYPE_CHECKING:
    import av.container

log = logging.getLogger(__name__)


@dataclass
class Pushed:
    """What one access unit did: the fragment it began (its number), fragments completed."""

    began: int | None = None
    fragments: list[Fragment] = field(default_factory=list)


class StreamRemuxer(Fmp4Fragments):
    """Access units in, fragments out. See the module docstring."""

    def __init__(
        self,
        fps: int,
        *,
        width: int = 0,
        height: int = 0,
        encoder: str = "camera",
        watermarked: bool = False,
    ) -> None:
        self.fps = fps
        self.width, self.height = width, height  # from the stream's SPS once it is seen
        self.codec = encoder  # what encoded it (the manifests' "encoder")
        self.watermarked = watermarked
        self.track_id = 1
        self._setup_fragments()
        self._container: av.container.OutputContainer | None = None
        self._stream: Any = None
        self._init_sps = b""
        self._need_idr = True
        self._t0: int | None = None
        self._last_pts = -1
        self._began = 0
        self._closed = False
        self.units_in = 0
        self.skipped = 0  # access units that could not be decoded (before an IDR)
        self.parameter_changes = 0
        self._skipped_reported = 0
        self._resyncs_reported = 0
        self.resyncs = 0

    @property
    def frames_in(self) -> int:
        return self.units_in

    def segment_meta(self) -> dict[str, Any]:
        """For the manifest of the segment just cut: how it was made, and what happened to the
        stream since the previous segment (reopens, undecodable units skipped)."""
        meta: dict[str, Any] = {
            "passthrough": True,
            "watermark": self.watermarked,
            "source_resyncs": self.resyncs - self._resyncs_reported,
            "skipped_units": self.skipped - self._skipped_reported,
        }
        if self.parameter_changes:
            meta["parameter_set_changes"] = self.parameter_changes
        self._resyncs_reported, self._skipped_reported = self.resyncs, self.skipped
        return meta

    def push(self, au: AccessUnit) -> Pushed:
        """Mux one access unit (capture times increasing)."""
        if self._closed:
            raise SourceError("video: remuxer already finished")
        if au.resync and self.units_in:
            self.resyncs += 1
        if au.resync:
            self._need_idr = True
        if self._need_idr and not au.key:
            self.skipped += 1
            return Pushed()
        if au.key:
            params = [n for n in split_nals(au.data) if nal_type(n) in (NAL_SPS, NAL_PPS)]
            sps = next((n for n in params if nal_type(n) == NAL_SPS), b"")
            has_pps = any(nal_type(n) == NAL_PPS for n in params)
            if self._container is None:
                if not sps or not has_pps:
                    self.skipped += 1
                    log.warning("video: IDR %d without its SPS/PPS in-band: skipped", au.index)
                    return Pushed()
                self._open(sps)
            elif sps and sps != self._init_sps:
                self.parameter_changes += 1
                log.warning(
                    "video: the stream's SPS changed (%d times); decoders follow the in-band one",
                    self.parameter_changes,
                )
            self._need_idr = False
        import av

        if self._t0 is None:
            self._t0 = au.mono_ns
        pts = max(self._last_pts + 1, round((au.mono_ns - self._t0) * self.fps / 1e9))
        packet = av.Packet(au.data)
        packet.pts = packet.dts = pts
        packet.duration = 1
        packet.time_base = Fraction(1, self.fps)
        packet.is_keyframe = au.key
        packet.stream = self._stream
        self._pending.append(FrameInfo(au.index, pts, au.mono_ns, au.utc, au.key))
        self._last_pts = pts
        self.units_in += 1
        began = None
        if au.key:
            began = self._began
            self._began += 1
        assert self._container is not None
        try:
            self._container.mux(packet)
        except (av.FFmpegError, ValueError) as exc:
            # Not written: forget it and start over at the next IDR.
            self._pending.pop()
            self.units_in -= 1
            if began is not None:
                self._began -= 1
            self._need_idr = True
            raise SourceError(f"video: cannot mux access unit {au.index}: {exc}") from None
        return Pushed(began, self._collect())

    def finish(self) -> list[Fragment]:
        """Close the muxer: the last fragment comes out."""
        if self._closed:
            return []
        self._closed = True
        if self._container is None:
            return []
        self._container.close()
        out = self._collect()
        if self._pending:
            log.error("video: %d access units did not reach a fragment", len(self._pending))
        return out

    def _open(self, sps_nal: bytes) -> None:
        import av

        sps = parse_sps(sps_nal)
        self.width, self.height = sps.width, sps.height
        self._init_sps = sps_nal
        self._container = av.open(self._sink, "w", format="mp4", options={"movflags": MOVFLAGS})
        stream: Any = self._container.add_mux_stream(
            "h264", rate=self.fps, width=sps.width, height=sps.height
        )
        stream.time_base = Fraction(1, self.fps)
        self._stream = stream
        log.info(
            "video: remuxing %s H.264 %dx%d (profile %d, level %d) without re-encoding",
            self.codec,
            sps.width,
            sps.height,
            sps.profile_idc,
            sps.level_idc,
        )
