"""What the per-frame savings of the video path must not change: the bar code's exact pixels,
the encoder's pictures (one I420 conversion wrapped, not copied), and the recorder's switch
that stops NumPy's huge-page advice for its big frame buffers."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.capture.encoder import H264Encoder
from agent.capture.frames import COUNTER_BITS, Frame, counter_cell, draw_counter, read_counter
from agent.capture.recorder import Recorder
from agent.capture.sim import SyntheticSource
from tests.capture.conftest import Keys, decode_frames, make_overlay, small_settings


def _reference_counter(image: Any, value: int) -> None:
    """The bar code as docs describe it, one cell at a time."""
    cell = counter_cell(image.shape[1])
    for i in range(COUNTER_BITS):
        bit = (value >> (COUNTER_BITS - 1 - i)) & 1
        image[0:cell, i * cell : (i + 1) * cell, :] = 255 * bit


def test_bar_code_pixels_match_the_cell_by_cell_drawing() -> None:
    rng = np.random.default_rng(7)
    for width in (200, 320, 1280, 1920):
        for value in (0, 1, 0x8000_0001, 12345, 2**32 - 1, 2**32 + 5, -1):
            got = rng.integers(0, 256, (64, width, 3), dtype=np.uint8)
            want = got.copy()
            draw_counter(got, value)
            _reference_counter(want, value % 2**COUNTER_BITS)
            assert np.array_equal(got, want), (width, value)
            assert read_counter(got) == value % 2**COUNTER_BITS


def _huge_page_advice() -> bool:
    return bool(np._core.multiarray._get_madvise_hugepage())  # type: ignore[attr-defined]


def test_a_raw_source_recorder_stops_numpys_huge_page_advice(keys: Keys, tmp_path: Path) -> None:
    np._core.multiarray._set_madvise_hugepage(True)  # type: ignore[attr-defined]
    assert _huge_page_advice()
    spool = keys.spool(tmp_path / "spool")
    try:
        rec = Recorder(
            small_settings(mode="continuous"),
            SyntheticSource(320, 240, 15, limit=20),
            spool,
            threading.Event(),
            overlay=make_overlay(),
        )
        rec.start_threads()
        assert rec.join(60) and rec.error is None
        assert rec.stats.encoded == 20
    finally:
        spool.close()
    assert not _huge_page_advice()


def test_encoded_pictures_are_the_frames_given() -> None:
    """The I420 conversion is wrapped in the frame without a copy: every decoded picture is
    the frame that went in (its counter), whatever happens to the arrays afterwards."""
    w, h, fps = 320, 240, 15
    enc = H264Encoder(w, h, fps, codec="libx264", bitrate_kbps=2000, preset="ultrafast")
    frags = []
    ramp = np.arange(w)[None, :] + np.arange(h)[:, None]
    for i in range(2 * fps):
        img = np.repeat(((ramp + 4 * i) % 256).astype(np.uint8)[:, :, None], 3, axis=2)
        draw_counter(img, 1000 + i)
        frags += enc.encode(Frame(img, i, i * 10**9 // fps, 0.0), i, i % fps == 0)
        img[:] = 0  # the source reuses or scribbles on its buffer: the encoded picture stays
    frags += enc.finish()
    assert enc.init is not None
    frames = decode_frames(enc.init + b"".join(f.data for f in frags))
    assert [read_counter(f) for f in frames] == [1000 + i for i in range(2 * fps)]
    # Not black: the picture is the ramp that was given, not the zeroed buffer.
    assert all(float(f[h // 2 :].mean()) > 40 for f in frames)
