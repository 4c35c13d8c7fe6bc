"""Pass-through: encoded H.264 remuxed into sealed fMP4 segments without re-encoding.

The streams come from ffmpeg (libx264 made to write what ``rpicam-vid --inline`` writes: an
AUD before each picture, SPS/PPS before every IDR, no B-frames), over a pipe exactly as the
``rpicam`` source reads rpicam-vid, and as MPEG-TS over TCP and UDP as an IP camera sends it.
Each segment is checked alone with ffprobe, its samples are compared byte for byte with the
access units the source read, and the frame counters in the decoded pixels show that no
picture was lost or repeated across segments.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.capture.frames import AccessUnit
from agent.capture.h264 import NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS, nal_type, split_nals
from agent.capture.netstream import NetStreamSource
from agent.capture.recorder import Recorder
from agent.capture.rpicam import PipeSource, rpicam_command
from agent.model import Alarm
from tests.storage.helpers import Sealed

from .conftest import FPS, H, Keys, W, decrypt_all, ffprobe, small_settings
from .streams import (
    decode_all_counters,
    free_port,
    h264_args,
    mp4_samples,
    rpicam_like,
    sample_nals,
    source_args,
    stop_after,
    write_stream,
)

GOP = FPS  # an IDR a second, as keyframe_s = 1 asks of the camera


def _record(
    keys: Keys, tmp: Path, make_source: Any, units: int, **settings: Any
) -> tuple[Recorder, list[Sealed], list[Sealed], list[AccessUnit], list[Alarm]]:
    """Record ``make_source(stop)`` continuously until ``units`` access units were captured."""
    spool = keys.spool(tmp / "spool")
    stop = threading.Event()
    source = make_source(stop)
    seen: list[AccessUnit] = []
    alarms: list[Alarm] = []
    count = stop_after(units, stop)

    def on_unit(au: AccessUnit) -> None:
        seen.append(au)
        count(au)

    base: dict[str, Any] = dict(mode="continuous", reopen_s=0.1, reopen_max_s=0.5)
    base.update(settings)
    rec = Recorder(
        small_settings(**base), source, spool, stop, alarm=alarms.append, on_unit=on_unit
    )
    rec.start_threads()
    assert rec.join(120), "recorder threads did not finish"
    assert rec.error is None
    video = decrypt_all(spool, keys, "video")
    events = decrypt_all(spool, keys, "event")
    spool.close()
    return rec, video, events, seen, alarms


def _check_segments(tmp: Path, video: list[Sealed], seen: list[AccessUnit]) -> list[int]:
    """Each segment alone: ffprobe reads H.264 of the right size and count, its samples are the
    source's access units unchanged, it starts at an IDR. Returns the decoded counters."""
    by_index = {au.index: au for au in seen}
    counters: list[int] = []
    for i, seg in enumerate(video):
        path = tmp / f"seg{i}.mp4"
        path.write_bytes(seg.data)
        p = ffprobe(path)
        assert (p.codec, p.width, p.height) == ("h264", W, H)
        assert p.frames == seg.meta["frames"]
        assert seg.meta["passthrough"] is True
        samples = mp4_samples(seg.data)
        assert len(samples) == seg.meta["frames"]
        first = seg.meta["first_frame"]
        assert by_index[first].key, "a segment must start at the stream's own IDR"
        assert nal_type(sample_nals(samples[0])[-1]) == NAL_IDR
        # Not re-encoded: every sample is the source's access unit, NAL unit for NAL unit, in
        # order (units dropped before the remuxer, counted in dropped_frames, are absent).
        units = [au for au in seen if first <= au.index <= seg.meta["last_frame"]]
        assert len(units) - len(samples) == seg.meta["dropped_frames"] + seg.meta["skipped_units"]
        left = iter(split_nals(au.data) for au in units)
        for sample in samples:
            assert sample_nals(sample) in left, "a sample that is not the source's picture"
        counters += decode_all_counters(seg.data)
    return counters


def test_rpicam_pipe_is_recorded_without_reencoding(keys: Keys, tmp_path: Path) -> None:
    cmd = rpicam_like(W, H, FPS, gop=GOP)
    rec, video, events, seen, alarms = _record(
        keys,
        tmp_path,
        lambda stop: PipeSource(
            cmd, FPS, name="rpicam", encoder="rpicam-vid (ffmpeg twin)", stop=stop
        ),
        4 * FPS + 5,
    )
    # What arrived on the pipe is what rpicam-vid writes: AUD first, SPS+PPS before each IDR.
    for au in seen:
        kinds = [nal_type(n) for n in split_nals(au.data)]
        assert kinds[0] == NAL_AUD
        if au.key:
            assert NAL_SPS in kinds and NAL_PPS in kinds
    assert [au.index for au in seen if au.key] == list(range(0, len(seen), GOP))
    counters = _check_segments(tmp_path, video, seen)
    # Every picture from the first IDR on, once, in order, across all segments.
    assert counters == list(range(len(seen)))
    assert [s.meta["frames"] for s in video][:2] == [2 * FPS, 2 * FPS]
    assert video[-1].meta["final"] is True
    assert {s.meta["recording"] for s in video} == {video[0].meta["recording"]}
    assert {s.meta["encoder"] for s in video} == {"rpicam-vid (ffmpeg twin)"}
    assert all(s.meta["watermark"] is False for s in video)
    assert rec.stats.encoder == "rpicam-vid (ffmpeg twin)"
    assert rec.stats.dropped == 0 and not alarms
    assert [e.record["type"] for e in events] == ["record_start", "record_stop"]
    # Timestamps continue across segments (each is a piece of one timeline).
    starts = [s.meta["media_start_s"] for s in video]
    durations = [s.meta["duration_s"] for s in video]
    for k in range(1, len(video)):
        assert starts[k] == pytest.approx(starts[k - 1] + durations[k - 1], abs=1.5 / FPS)


def test_rpicam_command_line() -> None:
    s = small_settings(bitrate_kbps=2500, keyframe_s=2.0, camera=1)
    cmd = rpicam_command(s, low_latency=True)
    assert cmd[0] == "rpicam-vid"
    for flag, value in (
        ("--codec", "h264"), ("--width", str(W)), ("--height", str(H)),
        ("--framerate", str(FPS)), ("--bitrate", "2500000"), ("--intra", str(2 * FPS)),
        ("--camera", "1"), ("--output", "-"), ("--timeout", "0"),
    ):  # fmt: skip
        assert cmd[cmd.index(flag) + 1] == value
    assert {"--inline", "--flush", "--nopreview", "--low-latency"} <= set(cmd)
    assert "--low-latency" not in rpicam_command(s, low_latency=False)
    assert rpicam_command(small_settings(rpicam_command=("ffmpeg", "-i", "x"))) == [
        "ffmpeg",
        "-i",
        "x",
    ]


def test_mpegts_over_tcp_is_recorded_without_reencoding(keys: Keys, tmp_path: Path) -> None:
    port = free_port()
    sender = subprocess.Popen(
        [*source_args(W, H, FPS), *h264_args(FPS, GOP), "-f", "mpegts",
         f"tcp://127.0.0.1:{port}?listen=1"],
        start_new_session=True,
    )  # fmt: skip
    try:
        rec, video, _events, seen, alarms = _record(
            keys,
            tmp_path,
            lambda _stop: NetStreamSource(f"tcp://127.0.0.1:{port}", FPS, stall_s=5.0),
            3 * FPS + 3,
        )
    finally:
        sender.kill()
        sender.wait()
    counters = _check_segments(tmp_path, video, seen)
    assert counters and counters == list(range(counters[0], counters[0] + len(counters)))
    assert counters[0] % GOP == 0  # the recording starts at an IDR of the stream
    assert rec.stats.dropped == 0
    # Connecting before ffmpeg listened is a loss the loop reported once and recovered from.
    assert [a.kind for a in alarms] in ([], ["camera_lost"])


def test_mpegts_over_udp_is_recorded_without_reencoding(keys: Keys, tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    result: dict[str, Any] = {}

    def record() -> None:
        result["out"] = _record(
            keys,
            tmp_path,
            lambda _stop: NetStreamSource(f"udp://127.0.0.1:{port}", FPS, stall_s=5.0),
            3 * FPS + 3,
        )

    t = threading.Thread(target=record)
    t.start()
    sender = subprocess.Popen(
        [*source_args(W, H, FPS), *h264_args(FPS, GOP), "-f", "mpegts",
         f"udp://127.0.0.1:{port}?pkt_size=1316"],
        start_new_session=True,
    )  # fmt: skip
    try:
        t.join(120)
    finally:
        sender.kill()
        sender.wait()
    assert not t.is_alive()
    rec, video, _events, seen, _alarms = result["out"]
    counters = _check_segments(tmp_path, video, seen)
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert rec.stats.dropped == 0


def test_stream_url_is_checked_and_password_kept_out_of_names() -> None:
    from agent.errors import SourceError

    with pytest.raises(SourceError, match="must start with one of"):
        NetStreamSource("file:///etc/passwd", FPS)
    with pytest.raises(SourceError, match="must be set"):
        NetStreamSource("", FPS)
    src = NetStreamSource("rtsp://admin:hunter2@10.0.0.9/stream1", FPS)
    assert "hunter2" not in src.name and "admin:***@10.0.0.9" in src.name


def test_bad_input_is_reported_reopened_and_the_recording_goes_on(
    keys: Keys, tmp_path: Path
) -> None:
    """Garbage mid-stream, then a stall, then the camera process dying: each is reported once
    (alarm + event), the source is reopened with backoff, and the one recording carries on
    across the gaps, segments playable, pictures in order, none repeated."""
    stream = write_stream(tmp_path / "cam.h264", W, H, FPS, gop=GOP, frames=12 * FPS)
    cmd = [
        sys.executable, str(Path(__file__).with_name("rpicam_twin.py")),
        "--stream", str(stream), "--fps", str(FPS), "--state", str(tmp_path / "twin.json"),
        "--faults", f"garbage:{FPS + 5},stall:{FPS + 3},eof:{FPS + 7},none",
    ]  # fmt: skip
    rec, video, events, seen, alarms = _record(
        keys,
        tmp_path,
        lambda stop: PipeSource(cmd, FPS, name="rpicam", stall_s=1.0, stop=stop),
        6 * FPS,
    )
    lost = [a for a in alarms if a.kind == "camera_lost"]
    reasons = " | ".join(a.message for a in lost)
    assert len(lost) == 3, reasons
    assert "garbage" in lost[0].message
    assert "no data for 1 s" in lost[1].message
    assert "stream ended (exit 0)" in lost[2].message
    kinds = [e.record["type"] for e in events]
    assert kinds.count("camera_lost") == 3 and kinds.count("camera_restored") == 3
    assert kinds[0] == "record_start" and kinds[-1] == "record_stop"
    assert kinds.count("record_start") == 1  # one recording across all three gaps
    assert {s.meta["recording"] for s in video} == {video[0].meta["recording"]}
    counters = _check_segments(tmp_path, video, seen)
    assert counters == sorted(set(counters)), "a picture repeated or out of order"
    # Each outage costs the pictures up to the next IDR the camera sends after it, no more.
    missing = sorted(set(range(counters[0], counters[-1] + 1)) - set(counters))
    assert 0 < len(missing) <= 3 * (GOP + 2), missing
    assert sum(s.meta["source_resyncs"] for s in video) == 3
    assert rec.stats.losses == 3


def test_pipe_that_cannot_start_is_reported_once_and_retried(tmp_path: Path) -> None:
    from agent.capture.camera import CaptureLoop

    stop = threading.Event()
    src = PipeSource([str(tmp_path / "no-such-rpicam-vid")], FPS)
    alarms: list[Alarm] = []
    loop = CaptureLoop[AccessUnit](
        src, lambda au: None, stop, reopen_s=0.05, reopen_max_s=0.1, alarm=alarms.append
    )
    t = threading.Thread(target=loop.run)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while loop.attempts < 3 and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        stop.set()
        t.join(10)
    assert loop.attempts >= 3 and loop.losses == 1
    assert [a.kind for a in alarms] == ["camera_lost"]
    assert "cannot run" in alarms[0].message


def test_stream_that_is_garbage_from_the_start_is_reported_once(tmp_path: Path) -> None:
    """Opens fine, fails at once, every time: one report, the pause doubling, no flapping."""
    from agent.capture.camera import CaptureLoop

    stream = write_stream(tmp_path / "cam.h264", W, H, FPS, gop=GOP, frames=10 * FPS)
    cmd = [
        sys.executable, str(Path(__file__).with_name("rpicam_twin.py")),
        "--stream", str(stream), "--fps", str(FPS), "--state", str(tmp_path / "twin.json"),
        "--faults", ",".join(["garbage:0"] * 50),
    ]  # fmt: skip
    stop = threading.Event()
    events: list[str] = []
    alarms: list[Alarm] = []
    loop = CaptureLoop[AccessUnit](
        PipeSource(cmd, FPS, stall_s=2.0, stop=stop),
        lambda au: None,
        stop,
        reopen_s=0.05,
        reopen_max_s=0.4,
        alarm=alarms.append,
        on_event=lambda kind, details: events.append(kind),
    )
    t = threading.Thread(target=loop.run)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while loop.attempts < 4 and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        stop.set()
        t.join(20)
    assert not t.is_alive()
    assert loop.attempts >= 4 and loop.losses == 1
    assert [a.kind for a in alarms] == ["camera_lost"] and "garbage" in alarms[0].message
    assert events == ["camera_lost"]


def test_event_recording_from_a_pipe_starts_at_an_idr_before_the_trigger(
    keys: Keys, tmp_path: Path
) -> None:
    """Body camera on rpicam-vid: REC at picture 60 with a 2 s pre-event buffer, STOP at 95:
    the recording starts at the stream's newest IDR at least 2 s before the button and ends
    with the fragment holding the stop moment."""
    start_at, stop_at, total = 4 * FPS, 6 * FPS + 5, 8 * FPS
    spool = keys.spool(tmp_path / "spool")
    stop = threading.Event()
    box: dict[str, Recorder] = {}

    def on_unit(au: AccessUnit) -> None:
        if au.index == start_at:
            box["rec"].start("button")
        elif au.index == stop_at:
            box["rec"].stop("button")
        elif au.index >= total:
            stop.set()

    rec = box["rec"] = Recorder(
        small_settings(mode="event", prebuffer_s=2),
        PipeSource(rpicam_like(W, H, FPS, gop=GOP), FPS, stop=stop),
        spool,
        stop,
        on_unit=on_unit,
    )
    rec.start_threads()
    assert rec.join(120) and rec.error is None
    video = decrypt_all(spool, keys, "video")
    events = [e.record for e in decrypt_all(spool, keys, "event")]
    spool.close()
    counters = [c for seg in video for c in decode_all_counters(seg.data)]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert counters[0] % GOP == 0 and start_at - 2 * FPS - GOP <= counters[0] <= start_at - 2 * FPS
    assert stop_at <= counters[-1] < stop_at + GOP
    assert video[0].meta["pre_event_s"] >= 2.0 - 1.5 / FPS
    assert [e["type"] for e in events] == ["record_start", "record_stop"]
    assert video[-1].meta["final"] is True


def test_newest_picture_is_decoded_on_request_and_reused(tmp_path: Path) -> None:
    from agent.capture.frames import read_counter
    from agent.capture.h264 import AnnexBReader, StreamChecker
    from agent.capture.passthrough import LatestPicture

    data = write_stream(tmp_path / "s.h264", W, H, FPS, gop=GOP, frames=2 * FPS).read_bytes()
    reader, checker = AnnexBReader(), StreamChecker()
    units = [checker.check(n) for n, _ in reader.feed(data) + reader.flush()]
    newest = LatestPicture(min_interval_s=3600)
    assert newest.frame() is None  # nothing yet
    newest.add(AccessUnit(units[1].annexb(), False, 1, 1, 0.0))
    assert newest.frame() is None  # no IDR before it: nothing decodable
    for i, u in enumerate(units[: GOP + 7]):
        newest.add(AccessUnit(u.annexb(), u.key, i, i, 0.0))
    first = newest.frame()
    assert first is not None and read_counter(first.image) == GOP + 6 and first.index == GOP + 6
    newest.add(AccessUnit(units[GOP + 7].annexb(), False, GOP + 7, 0, 0.0))
    assert newest.frame() is first and newest.decodes == 1  # reused within min_interval_s
    newest.min_interval_s = 0
    again = newest.frame()
    assert again is not None and read_counter(again.image) == GOP + 7 and newest.decodes == 2
    newest.add(AccessUnit(units[GOP + 8].annexb(), False, GOP + 8, 0, 0.0, resync=True))
    assert newest.frame() is None  # after a resync nothing decodes until the next IDR
