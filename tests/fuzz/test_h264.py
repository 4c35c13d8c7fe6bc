"""A camera's byte stream (rpicam-vid's pipe, an IP camera) is outside input: whatever arrives,
the H.264 reader, its checks and the remuxer raise only SourceError, so the capture loop can
report it and reopen; nothing else escapes and nothing hangs."""

from __future__ import annotations

import contextlib
import subprocess
from functools import cache
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.capture.frames import AccessUnit
from agent.capture.h264 import (
    AnnexBReader,
    StreamChecker,
    avcc_nals,
    check_avcc,
    extradata_nals,
    parse_avcc,
    parse_sps,
)
from agent.capture.remux import StreamRemuxer
from agent.capture.sim import counter_lavfi
from agent.errors import SourceError
from tests.fuzz.common import TRIED


@cache
def real_stream() -> bytes:
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", counter_lavfi(160, 120, 10), "-frames:v", "12", "-c:v", "libx264",
         "-preset", "ultrafast", "-bf", "0", "-g", "4", "-x264-params", "repeat-headers=1:aud=1",
         "-f", "h264", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip


def run_stream(data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in pieces through reader, checker and remuxer, as a pipe source does."""
    reader, checker, remux = AnnexBReader(max_au_bytes=1 << 16), StreamChecker(), StreamRemuxer(10)
    pos, k = 0, 0
    pieces = [*cuts, len(data)]
    units: list[Any] = []
    try:
        for cut in pieces:
            units += reader.feed(data[pos : max(pos, cut)])
            pos = max(pos, cut)
        units += reader.flush()
    except SourceError:
        pass
    for nals, _stamp in units:
        try:
            unit = checker.check(nals)
            remux.push(AccessUnit(unit.annexb(), unit.key, k, k * 100_000_000, 0.0))
        except SourceError:
            continue
        k += 1
    with contextlib.suppress(SourceError):
        remux.finish()


@given(st.binary(max_size=4000), st.lists(st.integers(0, 4000), max_size=8))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    TRIED["h264"] += 1
    run_stream(data, sorted(cuts))


@given(st.data())
def test_mutated_camera_stream(data: Any) -> None:
    TRIED["h264"] += 1
    stream = bytearray(real_stream())
    for _ in range(data.draw(st.integers(1, 12))):
        at = data.draw(st.integers(0, len(stream) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "startcode"]))
        if op == "flip":
            stream[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del stream[at : at + data.draw(st.integers(1, 200))]
        else:
            stream[at:at] = b"\x00\x00\x01" + data.draw(st.binary(min_size=1, max_size=8))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    run_stream(bytes(stream), cuts)


@given(st.binary(max_size=300), st.integers(1, 4))
def test_records_from_a_demuxer(blob: bytes, length_size: int) -> None:
    TRIED["h264"] += 1
    for fn in (lambda: avcc_nals(blob, length_size), lambda: parse_avcc(blob),
               lambda: extradata_nals(blob), lambda: parse_sps(b"\x67" + blob)):  # fmt: skip
        with contextlib.suppress(SourceError):
            fn()
    assert check_avcc(blob) is None or isinstance(check_avcc(blob), str)
