"""An encoder whose SPS/PPS come only in-band (h264_v4l2m2m's way) still makes playable video.

libx264 is made to behave like the Pi's hardware encoder: no global header (no extradata when
the muxer starts) and parameter sets repeated before every keyframe. Every sealed segment is
then checked on its own with ffprobe and decoded; the init segment's avcC must hold the
parameter sets. The old muxer flags reproduce the empty avcC (raspberrypi/linux#4995), which
the init check catches; ``auto`` takes the hardware encoder only after a probe encode.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from agent.capture.encoder import (
    MOVFLAGS,
    FragmentSink,
    H264Encoder,
    check_init,
    choose_encoder,
    init_avcc,
    probe_encoder,
)
from agent.capture.h264 import NAL_PPS, NAL_SPS, VCL, nal_type, parse_avcc, split_nals
from agent.capture.recorder import Recorder
from agent.capture.settings import VideoSettings
from agent.capture.sim import SyntheticSource
from agent.model import Alarm

from .conftest import FPS, H, Keys, W, decode_counters, decrypt_all, ffprobe, small_settings
from .streams import mp4_samples, sample_nals

TOTAL = 75


def _inband(s: VideoSettings) -> H264Encoder:
    return H264Encoder(s.width, s.height, s.fps, codec="libx264", inband=True)


def test_inband_encoder_segments_each_play_alone(keys: Keys, tmp_path: Path) -> None:
    spool = keys.spool(tmp_path / "spool")
    stop = threading.Event()
    rec = Recorder(
        small_settings(mode="continuous"),
        SyntheticSource(W, H, FPS, limit=TOTAL),
        spool,
        stop,
        encoder_factory=_inband,
    )
    rec.start_threads()
    assert rec.join(120) and rec.error is None
    video = decrypt_all(spool, keys, "video")
    assert len(video) == 3
    counters: list[int] = []
    for i, seg in enumerate(video):
        assert check_init(seg.data) is None
        _size, sps, pps = parse_avcc(init_avcc(seg.data) or b"")
        assert len(sps) == 1 and len(pps) == 1
        # In-band: each keyframe sample carries the same SPS and PPS as the avcC.
        for sample in mp4_samples(seg.data)[::FPS]:
            nals = sample_nals(sample)
            assert [n for n in nals if nal_type(n) == NAL_SPS] == sps
            assert [n for n in nals if nal_type(n) == NAL_PPS] == pps
        path = tmp_path / f"{i}.mp4"
        path.write_bytes(seg.data)
        p = ffprobe(path)
        assert (p.codec, p.frames) == ("h264", seg.meta["frames"])
        counters += decode_counters(seg.data)
    assert counters == list(range(TOTAL))
    spool.close()


def test_the_old_flags_write_an_empty_avcc_and_the_check_catches_it() -> None:
    import av
    import numpy as np

    for flags, problem in (
        ("frag_keyframe+empty_moov+default_base_moof", "empty avcC"),
        (MOVFLAGS, None),
    ):
        sink = FragmentSink("t")
        with av.open(sink, "w", format="mp4", options={"movflags": flags}) as c:
            st: Any = c.add_stream("libx264", rate=FPS)
            st.width, st.height, st.pix_fmt = W, H, "yuv420p"
            ctx = st.codec_context
            ctx.flags = ctx.flags & ~av.codec.context.Flags.global_header
            ctx.time_base = Fraction(1, FPS)
            ctx.options = {"preset": "ultrafast", "bf": "0", "x264-params": "repeat-headers=1"}
            for i in range(5):
                vf = av.VideoFrame.from_ndarray(np.full((H, W, 3), i * 40, np.uint8), "bgr24")
                vf.pts = i
                for p in st.encode(vf):
                    c.mux(p)
            for p in st.encode(None):
                c.mux(p)
        assert sink.init is not None
        got = check_init(sink.init)
        assert (got is None) if problem is None else (problem in (got or "")), got


class _SeparateHeaders(H264Encoder):
    """libx264 in-band, with each keyframe's SPS/PPS delivered as a packet of their own before
    it, as h264_v4l2m2m does (V4L2 header mode "separate")."""

    def _mux_video(self, packet: Any) -> None:
        import av

        data = bytes(packet)
        nals = split_nals(data)
        if self.inband and packet.is_keyframe and any(nal_type(n) == NAL_SPS for n in nals):
            params = b"".join(b"\x00\x00\x00\x01" + n for n in nals if nal_type(n) not in VCL)
            first = av.Packet(params)
            first.pts = first.dts = packet.pts
            first.time_base, first.stream = packet.time_base, self._stream
            super()._mux_video(first)
            rest = av.Packet(b"".join(b"\x00\x00\x00\x01" + n for n in nals if nal_type(n) in VCL))
            rest.pts, rest.dts, rest.duration = packet.pts, packet.dts, packet.duration
            rest.time_base, rest.stream, rest.is_keyframe = packet.time_base, self._stream, True
            packet = rest
        super()._mux_video(packet)


def test_parameter_sets_in_a_packet_of_their_own_are_held_for_the_picture() -> None:
    import io

    import av

    enc = _SeparateHeaders(W, H, FPS, codec="libx264", inband=True)
    src = SyntheticSource(W, H, FPS)
    frags = []
    for i in range(2 * FPS):
        frame = src.read()
        assert frame is not None
        frags += enc.encode(frame, i, i % FPS == 0)
    frags += enc.finish()
    assert enc.init is not None and check_init(enc.init) is None
    assert [f.frames for f in frags] == [FPS, FPS]
    for f in frags:
        with av.open(io.BytesIO(enc.init + f.data), "r") as c:
            assert len(list(c.decode(video=0))) == FPS


def test_probe_encode_passes_a_working_encoder_and_names_what_fails() -> None:
    assert probe_encoder("libx264", W, H, FPS, inband=True) is None
    assert probe_encoder("libx264", W, H, FPS) is None
    problem = probe_encoder("h264_v4l2m2m", W, H, FPS)
    assert problem is not None and "h264_v4l2m2m does not open" in problem


def test_auto_alarms_when_the_hardware_encoder_is_there_but_fails(
    keys: Keys, tmp_path: Path
) -> None:
    device = tmp_path / "video11"
    device.touch()  # a board with the VideoCore encoder's device node
    choice = choose_encoder("auto", W, H, FPS, device=device)
    assert choice.codec == "libx264" and choice.fallback
    assert "h264_v4l2m2m" in choice.reason
    quiet = choose_encoder("auto", W, H, FPS, device=tmp_path / "absent")
    assert quiet.codec == "libx264" and not quiet.fallback
    alarms: list[Alarm] = []
    spool = keys.spool(tmp_path / "spool")
    rec = Recorder(
        small_settings(mode="continuous"),
        SyntheticSource(W, H, FPS, limit=FPS),
        spool,
        threading.Event(),
        alarm=alarms.append,
        encoder_factory=lambda s: H264Encoder(
            s.width, s.height, s.fps, codec="auto", hardware_device=device
        ),
    )
    rec.start_threads()
    assert rec.join(60) and rec.error is None
    assert [a.kind for a in alarms] == ["video_encoder_fallback"]
    assert "h264_v4l2m2m does not open" in alarms[0].message
    assert rec.stats.encoder == "libx264"
    assert len(decrypt_all(spool, keys, "video")) == 1
    spool.close()


@pytest.mark.parametrize("codec", ["libx264"])
def test_configured_encoder_is_not_probed(codec: str) -> None:
    choice = choose_encoder(codec, W, H, FPS)
    assert (choice.codec, choice.reason, choice.fallback) == (codec, "configured", False)
