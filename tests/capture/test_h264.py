"""H.264 Annex-B parsing and checks against streams libx264 (through ffmpeg and PyAV) wrote."""

from __future__ import annotations

import io
import random
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from agent.capture.h264 import (
    NAL_AUD,
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    AnnexBReader,
    StreamChecker,
    avcc_record,
    check_avcc,
    join_nals,
    nal_type,
    parse_avcc,
    parse_sps,
    split_nals,
)
from agent.errors import SourceError

from .conftest import FPS, H, W
from .streams import h264_args, source_args, write_stream


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("h264") / "s.h264"
    return write_stream(path, W, H, FPS, gop=10, frames=40).read_bytes()


def _encode(width: int, height: int, **opts: str) -> bytes:
    """A few frames of raw H.264 from libx264 (through PyAV) with ``opts``."""
    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, "w", format="h264") as c:
        st: Any = c.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.codec_context.time_base = Fraction(1, FPS)
        st.codec_context.options = {"preset": "ultrafast", **opts}
        for i in range(8):
            img = np.full((height, width, 3), (i * 29) % 256, np.uint8)
            img[: height // 2, : width // 3] = 255 - (i * 7) % 256
            vf = av.VideoFrame.from_ndarray(img, format="bgr24")
            vf.pts = i
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    return out.getvalue()


def _units(data: bytes, step: int) -> list[list[bytes]]:
    r = AnnexBReader()
    out = []
    for i in range(0, len(data), step):
        out += [n for n, _ in r.feed(data[i : i + step])]
    return out + [n for n, _ in r.flush()]


def test_access_units_are_found_whatever_the_read_sizes(stream: bytes) -> None:
    whole = _units(stream, len(stream))
    assert len(whole) == 40
    for step in (1, 3, 188, 4096):
        assert _units(stream, step) == whole
    random.seed(7)
    r = AnnexBReader()
    pieces, pos = [], 0
    while pos < len(stream):
        n = random.randint(1, 9000)
        pieces += [u for u, _ in r.feed(stream[pos : pos + n])]
        pos += n
    assert pieces + [u for u, _ in r.flush()] == whole
    checker = StreamChecker()
    units = [checker.check(u) for u in whole]
    assert [i for i, u in enumerate(units) if u.key] == [0, 10, 20, 30]
    for u in units:
        assert nal_type(u.nals[0]) == NAL_AUD
        assert (u.sps is not None) == u.key and (u.pps is not None) == u.key
    assert b"".join(u.annexb() for u in units).replace(b"\x00\x00\x00\x01", b"") == (
        stream.replace(b"\x00\x00\x00\x01", b"").replace(b"\x00\x00\x01", b"")
    )


def test_each_unit_is_stamped_with_the_read_that_began_it(stream: bytes) -> None:
    for data in (stream, _encode(W, H, g="4", bf="0")):  # with AUDs, and one NAL per unit
        units = _units(data, len(data))
        r = AnnexBReader()
        got = []
        for k, u in enumerate(units):
            got += r.feed(join_nals(u), k)
        got += r.flush()
        assert [s for _, s in got] == list(range(len(units)))
        assert [n for n, _ in got] == units


def test_stream_without_aud_is_cut_at_first_slices_of_pictures() -> None:
    data = _encode(W, H, g="4", bf="0", sc_threshold="0")
    units = _units(data, 1000)
    assert len(units) == 8
    assert all(any(nal_type(n) in (1, 5) for n in u) for u in units)
    assert sum(any(nal_type(n) == NAL_IDR for n in u) for u in units) == 2
    # Several slices of one picture stay one access unit (first_mb_in_slice > 0).
    slices = [sum(nal_type(n) in (1, 5) for n in u) for u in units]
    assert sum(slices) >= len(units)


@pytest.mark.parametrize(
    ("width", "height", "opts"),
    [
        (320, 240, {}),  # high profile (8x8 transform) with no cropping
        (1280, 720, {"profile": "main"}),
        (1920, 1080, {"profile": "high"}),  # 1088 coded, cropped to 1080
        (642, 362, {"profile": "baseline"}),  # odd macroblock crop on both axes
    ],
)
def test_sps_gives_the_picture_size(width: int, height: int, opts: dict[str, str]) -> None:
    nals = split_nals(_encode(width, height, **opts))
    sps = parse_sps(next(n for n in nals if nal_type(n) == NAL_SPS))
    assert (sps.width, sps.height) == (width, height)
    assert sps.frame_mbs_only


def test_scaling_matrices_in_the_sps_are_skipped() -> None:
    nals = split_nals(_encode(352, 288, profile="high", **{"x264-params": "cqm=jvt"}))
    sps = parse_sps(next(n for n in nals if nal_type(n) == NAL_SPS))
    assert (sps.width, sps.height, sps.profile_idc) == (352, 288, 100)


def _idr_unit(stream: bytes) -> list[bytes]:
    return _units(stream, len(stream))[0]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda u: [*u[:-1], bytes([u[-1][0] | 0x80]) + u[-1][1:]], "forbidden bit"),
        (lambda u: [*u, b"\x1e\x12\x34"], "unspecified type 30"),
        (lambda u: [*u, b"\x00\x12\x34"], "unspecified type 0"),
        (lambda u: [bytes([n[0] & 0x9F]) + n[1:] if nal_type(n) == NAL_SPS else n for n in u],
         "nal_ref_idc 0"),
        (lambda u: [n for n in u if nal_type(n) == NAL_AUD], "without a picture"),
        (lambda u: [n for n in u if nal_type(n) != NAL_PPS], "names PPS 0, never seen"),
        (lambda u: [*u[:1], b"\x67" + bytes(3), *u[1:]], "SPS"),
    ],
)  # fmt: skip
def test_checker_refuses_garbage(stream: bytes, mutate: Any, error: str) -> None:
    with pytest.raises(SourceError, match=error):
        StreamChecker().check(mutate(_idr_unit(stream)))


def test_checker_refuses_b_frames_and_oversized_units(stream: bytes) -> None:
    units = _units(_encode(W, H, bf="2", g="8", **{"b-adapt": "0"}), 10_000)
    checker = StreamChecker()
    with pytest.raises(SourceError, match="B slices"):
        for u in units:
            checker.check(u)
    small = StreamChecker(max_au_bytes=100)
    with pytest.raises(SourceError, match="access unit of"):
        small.check(_idr_unit(stream))


def test_reader_bounds_a_unit_that_never_ends() -> None:
    r = AnnexBReader(max_au_bytes=10_000)
    r.feed(b"\x00\x00\x00\x01\x09\x10\x00\x00\x01\x65\x88")
    with pytest.raises(SourceError, match="without a complete access unit"):
        for _ in range(10):
            r.feed(bytes(range(1, 256)) * 8)
    junk = AnnexBReader()
    assert junk.feed(b"\x11" * 5000) == [] and junk.skipped == 4998


def test_avcc_record_round_trip(stream: bytes) -> None:
    nals = _idr_unit(stream)
    sps = next(n for n in nals if nal_type(n) == NAL_SPS)
    pps = next(n for n in nals if nal_type(n) == NAL_PPS)
    rec = avcc_record(sps, pps)
    assert parse_avcc(rec) == (4, [sps], [pps])
    assert check_avcc(rec) is None
    assert check_avcc(b"") is not None
    assert "0 SPS" in (check_avcc(bytes([1, 66, 0, 30, 0xFF, 0xE0, 0])) or "")
    assert check_avcc(rec[:-3]) is not None


def test_ffmpeg_reads_what_the_reader_rejoins(stream: bytes, tmp_path: Path) -> None:
    rejoined = b"".join(join_nals(u) for u in _units(stream, 777))
    path = tmp_path / "r.h264"
    path.write_bytes(rejoined)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "40"


def test_h264_args_make_what_rpicam_writes() -> None:
    args = h264_args(FPS, 10)
    assert "repeat-headers=1:aud=1" in args and "-bf" in args
    assert source_args(W, H, FPS)[0].endswith("ffmpeg")
