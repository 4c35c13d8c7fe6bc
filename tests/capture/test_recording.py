"""A body-camera recording end to end: synthetic camera -> watermark -> H.264 -> seal -> spool.

Decrypted through the seal API and the ``edge-agent verify --decrypt-to`` CLI, checked with
ffprobe and by reading each frame's counter back from the decoded pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.capture.frames import read_counter
from agent.cli import main as cli_main
from agent.model import format_utc

from .conftest import (
    FIX,
    FPS,
    MARK_AT,
    START_AT,
    STOP_AT,
    TOTAL,
    EventRun,
    H,
    Keys,
    W,
    decode_counters,
    decode_frames,
    ffprobe,
    make_overlay,
)

PREBUFFER_S = 2
KEY_FRAMES = 15  # keyframe_s 1.0 at 15 fps


def _write(run: EventRun, name: str, data: bytes) -> Path:
    path = run.dir / name
    path.write_bytes(data)
    return path


def test_each_segment_is_playable_h264_on_its_own(event_run: EventRun) -> None:
    assert len(event_run.video) >= 2
    for seg in event_run.video:
        assert seg.manifest["content_type"] == "video/mp4"
        p = ffprobe(_write(event_run, f"seg{seg.seq}.mp4", seg.data))
        assert (p.codec, p.width, p.height) == ("h264", W, H)
        assert p.frames == seg.meta["frames"] > 0
        assert p.duration(FPS) == pytest.approx(seg.meta["frames"] / FPS, abs=1e-3)
        assert p.keyframes >= 1
        # Segments are cut at keyframes, 2 s each except the last of the recording.
        if not seg.meta["final"]:
            assert p.frames == 2 * FPS
    assert [s.meta["final"] for s in event_run.video][-1] is True


def test_consecutive_segments_neither_lose_nor_repeat_a_frame(event_run: EventRun) -> None:
    counters: list[int] = []
    prev_end: float | None = None
    for seg in event_run.video:
        got = decode_counters(seg.data)
        assert got == list(range(seg.meta["first_frame"], seg.meta["last_frame"] + 1))
        counters += got
        p = ffprobe(_write(event_run, f"cont{seg.seq}.mp4", seg.data))
        if prev_end is not None:  # timestamps continue across segments
            assert p.first_pts == pytest.approx(prev_end, abs=1e-3)
        prev_end = p.last_pts + 1 / FPS
    assert counters == list(range(counters[0], counters[-1] + 1))
    assert event_run.recorder.stats.dropped == 0


def test_recording_starts_at_the_first_keyframe_at_least_prebuffer_back(
    event_run: EventRun,
) -> None:
    first = decode_counters(event_run.video[0].data)[0]
    # Keyframes fall every 15 frames; the newest one at least 2 s (30 frames) before REC.
    assert first == START_AT - PREBUFFER_S * FPS == 30
    assert first % KEY_FRAMES == 0
    assert event_run.video[0].meta["pre_event_s"] == pytest.approx((START_AT - first) / FPS)
    # STOP ends the recording with the fragment that holds the STOP moment.
    last = decode_counters(event_run.video[-1].data)[-1]
    assert last == (STOP_AT // KEY_FRAMES + 1) * KEY_FRAMES - 1 == 134
    assert last < TOTAL - 1


def test_segment_manifest_carries_capture_time_and_recording(event_run: EventRun) -> None:
    seg = event_run.video[0]
    first = seg.meta["first_frame"]
    assert seg.manifest["start_utc"] == format_utc(event_run.source.utc_of(first))
    assert seg.meta["device"] == "cam-7"
    assert seg.meta["codec"] == "h264" and seg.meta["encoder"] in ("libx264", "h264_v4l2m2m")
    assert len({s.meta["recording"] for s in event_run.video}) == 1
    assert [s.meta["part"] for s in event_run.video] == list(range(len(event_run.video)))


def test_watermark_is_burned_into_every_frame(event_run: EventRun) -> None:
    overlay = make_overlay()
    src = event_run.source
    for seg in event_run.video:
        for image in decode_frames(seg.data)[:: FPS // 2]:
            index = read_counter(image)
            utc = src.utc_of(index)
            lines = overlay.lines(utc, FIX)
            assert lines[0] == format_utc(utc)[:10] + " " + format_utc(utc)[11:19] + " UTC"
            assert "N31.23040 E121.47370" in lines
            patch = overlay.patch(lines, H)
            y, x = overlay.origin(image.shape, patch.shape)
            region = image[y : y + patch.shape[0], x : x + patch.shape[1]].astype(float)
            bare = src.render(index, utc)[y : y + patch.shape[0], x : x + patch.shape[1]]
            wrong = overlay.patch(overlay.lines(utc + 3600, None), H)
            err_right = abs(region - patch).mean()
            err_bare = abs(region - bare).mean()
            h = min(wrong.shape[0], patch.shape[0])
            w = min(wrong.shape[1], patch.shape[1])
            err_wrong = abs(region[:h, :w] - wrong[:h, :w]).mean()
            assert err_right < 12, f"frame {index}: watermark region differs ({err_right:.1f})"
            assert err_bare > 4 * err_right
            assert err_wrong > 1.5 * err_right


def test_no_plaintext_video_anywhere_under_the_spool(event_run: EventRun) -> None:
    init = event_run.video[0].data
    markers = [init[4:12], b"moof\x00\x00\x00\x10mfhd", b"mdat"]
    assert init[4:8] == b"ftyp"
    for seg in event_run.video:  # the markers do find plaintext
        assert all(m in seg.data for m in markers)
    files = [p for p in event_run.spool_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".seg" for p in files)
    for path in files:
        data = path.read_bytes()
        for m in markers[:2]:
            assert m not in data, f"plaintext MP4 marker {m!r} in {path}"
    assert not list((event_run.spool_dir / "tmp").iterdir())


def test_start_stop_and_mark_are_event_records(event_run: EventRun) -> None:
    records = [e.record for e in event_run.events]
    kinds = [r["type"] for r in records]
    assert kinds == ["record_start", "mark", "record_stop"]
    start, mark, stop = records
    rec_id = event_run.video[0].meta["recording"]
    assert start["recording"] == mark["recording"] == stop["recording"] == rec_id
    assert start["trigger"] == "button" and start["prebuffer_s"] == PREBUFFER_S
    assert start["at_utc"] == format_utc(event_run.source.utc_of(START_AT))
    assert mark["note"] == "suspect left"
    assert mark["at_utc"] == format_utc(event_run.source.utc_of(MARK_AT))
    assert stop["frames"] == sum(s.meta["frames"] for s in event_run.video)
    marked = [s for s in event_run.video if "marks" in s.meta]
    assert [m["note"] for s in marked for m in s.meta["marks"]] == ["suspect left"]


def test_verify_cli_decrypts_playable_segments(
    event_run: EventRun, keys: Keys, tmp_path: Path
) -> None:
    out = tmp_path / "plain"
    code = cli_main(
        [
            "verify",
            str(event_run.spool_dir),
            "--platform-key",
            str(keys.platform_key_path),
            "--decrypt-to",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    files = sorted((out / "cam-7" / "video").glob("*.mp4"))
    assert len(files) == len(event_run.video)
    for path, seg in zip(files, event_run.video, strict=True):
        assert path.read_bytes() == seg.data
        assert json.loads(path.with_suffix(".meta.json").read_text()) == seg.meta
        assert ffprobe(path).frames == seg.meta["frames"]
