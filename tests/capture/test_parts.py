"""The parts on their own: ring, segmenter, drops, refusals, triggers, stills, CLI, settings."""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from agent.capture.encoder import Fragment, H264Encoder
from agent.capture.frames import Frame, draw_counter, read_counter
from agent.capture.jobs import EventJob, store
from agent.capture.overlay import Overlay
from agent.capture.prebuffer import FragmentRing
from agent.capture.recorder import Recorder, RecorderStats
from agent.capture.segmenter import Segmenter
from agent.capture.settings import VideoSettings
from agent.capture.sim import SyntheticSource
from agent.capture.stills import Stills
from agent.capture.triggers import SerialTrigger, command_handlers, handle_line
from agent.cli import main as cli_main
from agent.config.fields import load_dataclass
from agent.errors import ConfigError, EvidenceRefused, SourceError
from agent.labs.waiting import wait_for

from .conftest import FIX, FPS, H, Keys, W, decrypt_all, small_settings

S = 1_000_000_000


def frag(seq: int, start_s: float, frames: int = 15, size: int = 100) -> Fragment:
    return Fragment(
        data=b"x" * size,
        seq=seq,
        frames=frames,
        first_index=seq * frames,
        last_index=seq * frames + frames - 1,
        start_pts=seq * frames,
        end_pts=seq * frames + frames,
        fps=FPS,
        start_mono_ns=round(start_s * S),
        end_mono_ns=round((start_s + frames / FPS) * S),
        start_utc=start_s,
        end_utc=start_s + frames / FPS,
    )


def test_counter_bar_code_round_trip() -> None:
    import numpy as np

    for width in (160, 320, 1280, 1920):
        img = np.zeros((48, width, 3), np.uint8)
        for value in (0, 1, 12345, 2**31 + 7, 2**32 - 1):
            draw_counter(img, value)
            assert read_counter(img) == value


def test_ring_keeps_just_enough_for_the_prebuffer() -> None:
    ring: FragmentRing[Fragment] = FragmentRing(prebuffer_s=3)
    for i in range(20):
        ring.push(frag(i, float(i)))
    # Newest ends at 20 s; a trigger comes no earlier, so 17 s back: fragment 17 onwards,
    # which must start at or before 17 s.
    assert [f.seq for f in ring.fragments()] == [17, 18, 19]
    assert ring.bytes == 300
    assert ring.choose_start(20 * S, []) == 17
    assert ring.choose_start(round(20.5 * S), [(20, 20 * S)]) == 17
    assert ring.choose_start(23 * S, [(20, 20 * S), (21, 21 * S)]) == 20
    # Fragments already recorded are not offered again.
    assert ring.choose_start(20 * S, [], after_seq=18) == 19
    assert ring.fragments(after_seq=18)[0].seq == 19
    # Not enough history: the oldest available.
    assert FragmentRing(30).choose_start(5 * S, [(0, 0), (1, S)]) == 0


def test_ring_with_no_prebuffer_keeps_only_the_newest() -> None:
    ring: FragmentRing[Fragment] = FragmentRing(prebuffer_s=0)
    for i in range(5):
        ring.push(frag(i, float(i)))
    assert [f.seq for f in ring.fragments()] == [4]
    assert ring.choose_start(round(5.5 * S), [(5, 5 * S)]) == 5


def test_segmenter_cuts_whole_fragments() -> None:
    seg: Segmenter[Fragment] = Segmenter(segment_s=2, slack_s=0.5 / FPS)
    done = []
    for i in range(5):
        assert seg.add(b"init", frag(i, float(i))) == (i % 2 == 0)  # opened a segment
        if seg.full():
            done.append(seg.cut())
    assert [[f.seq for f in s.fragments] for s in done if s] == [[0, 1], [2, 3]]
    last = seg.cut()
    assert last is not None and [f.seq for f in last.fragments] == [4]
    assert done[0] is not None and b"".join(done[0].pieces()) == b"init" + b"x" * 200
    assert seg.cut() is None


class _LiveSource(SyntheticSource):
    @property
    def live(self) -> bool:
        return True


def test_live_frames_are_dropped_and_counted_never_waited_for(keys: Keys, tmp_path: Path) -> None:
    src = _LiveSource(W, H, FPS)
    rec = Recorder(small_settings(queue_frames=2), src, _NullSpool(), threading.Event())
    for _ in range(5):  # no encoder thread: the queue fills, the capture side never blocks
        frame = src.read()
        assert frame is not None
        rec._deliver(frame)
    assert rec.stats.captured == 5 and rec.stats.dropped == 3


class _NullSpool:
    def __init__(self, exc: Exception | None = None) -> None:
        self.exc = exc
        self.events: list[tuple[str, dict[str, Any]]] = []

    def put(self, header: Any, pieces: Any, *, batch_id: str | None = None) -> Any:
        if self.exc:
            raise self.exc
        return None

    def put_event(self, kind: str, details: dict[str, Any]) -> Any:
        if self.exc:
            raise self.exc
        self.events.append((kind, details))


def test_refused_evidence_is_counted_and_other_failures_alarm() -> None:
    stats = RecorderStats()
    alarms: list[Any] = []
    store(
        _NullSpool(EvidenceRefused("video: quota full")), EventJob("mark", {}), stats, what="video"
    )
    assert stats.refused == 1 and stats.events == 0
    store(_NullSpool(OSError("EIO")), EventJob("mark", {}), stats, alarms.append, what="video")
    assert stats.store_errors == 1 and [a.kind for a in alarms] == ["video_store_failed"]


def test_encoder_rejects_odd_sizes_and_wrong_frames() -> None:
    with pytest.raises(SourceError, match="even"):
        H264Encoder(321, 240, FPS, codec="libx264")
    enc = H264Encoder(W, H, FPS, codec="libx264")
    other = SyntheticSource(160, 120, FPS).read()
    assert other is not None
    with pytest.raises(SourceError, match="expects 320x240"):
        enc.encode(other, 0, True)


def test_auto_encoder_falls_back_to_libx264_without_the_v4l2_device() -> None:
    if any(Path("/dev").glob("video1[01]")):
        pytest.skip("this machine has a V4L2 M2M encoder")
    assert H264Encoder(W, H, FPS, codec="auto").codec == "libx264"


def test_overlay_corners_and_fields() -> None:
    import numpy as np

    img = np.full((H, W, 3), 128, np.uint8)
    for corner in ("top-left", "top-right", "bottom-left", "bottom-right"):
        ov = Overlay(position=corner, device_id="d1", fields=("time", "device"))
        y, x, _h, _w = ov.apply(img.copy(), 0.0)
        assert (y < H // 2) == corner.startswith("top")
        assert (x < W // 2) == corner.endswith("left")
    ov = Overlay(
        device_id="d1", officer="", vehicle="TRK-9", fields=("officer", "vehicle", "position")
    )
    assert ov.lines(0.0, None) == ("VEH TRK-9", "GPS no fix")
    assert ov.lines(FIX.time + 60, FIX) == ("VEH TRK-9", "N31.23040 E121.47370 (60s old)")


def test_settings_are_checked_by_name() -> None:
    s = load_dataclass(VideoSettings, {"watermark_fields": ["time", "position"]}, "video")
    assert s.watermark_fields == ("time", "position")
    with pytest.raises(ConfigError, match=r"video\.watermark_fields: unknown field"):
        load_dataclass(VideoSettings, {"watermark_fields": ["time", "shoe"]}, "video")
    with pytest.raises(ConfigError, match=r"video\.prebuffer_s: must be 0\.\.120"):
        load_dataclass(VideoSettings, {"prebuffer_s": 121}, "video")
    with pytest.raises(ConfigError, match=r"video\.encoder"):
        load_dataclass(VideoSettings, {"encoder": "nvenc"}, "video")


class _Controls:
    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[str, ...]] = queue.Queue()

    def start(self, trigger: str = "api", details: dict[str, Any] | None = None) -> None:
        self.calls.put(("start", trigger))

    def stop(self, trigger: str = "api") -> None:
        self.calls.put(("stop", trigger))

    def mark(self, trigger: str = "api", note: str = "") -> Future[None]:
        self.calls.put(("mark", trigger, note))
        stored: Future[None] = Future()
        if note == "refused":
            stored.set_exception(EvidenceRefused("event: disk full"))
        else:
            stored.set_result(None)
        return stored

    def still(self, trigger: str = "api") -> None:
        self.calls.put(("still", trigger))


def test_line_protocol_and_platform_handlers() -> None:
    c = _Controls()
    assert handle_line("rec\r\n", c) == "OK REC"
    assert handle_line("MARK door kicked in", c) == "OK MARK"
    assert handle_line("PING", c) == "PONG"
    assert handle_line("FLY", c).startswith("ERR unknown command")
    assert handle_line("  ", c) == "ERR empty line"
    h = command_handlers(c)
    assert sorted(h) == ["video.mark", "video.start", "video.still", "video.stop"]
    assert h["video.mark"]({"note": "n"}) == {"ok": True, "recorded": True}
    # A mark whose event record the spool refused is not answered as recorded.
    assert handle_line("MARK refused", c) == "ERR mark not recorded: event: disk full"
    assert h["video.mark"]({"note": "refused"}) == {
        "ok": True,
        "recorded": False,
        "reason": "event: disk full",
    }
    got = [c.calls.get_nowait() for _ in range(5)]
    assert got == [
        ("start", "button"),
        ("mark", "button", "door kicked in"),
        ("mark", "platform", "n"),
        ("mark", "button", "refused"),
        ("mark", "platform", "refused"),
    ]


def _ping_tail(line: bytes) -> bool:
    prefix = b"ERR unknown command '"
    word = line[len(prefix) : -1] if line.startswith(prefix) else b""
    return bool(word) and b"PING".endswith(word)


def test_serial_trigger_over_a_pty() -> None:
    import tty

    master, slave = os.openpty()
    # A serial line does not echo: a new pty does (cooked mode) until pyserial configures it,
    # and its echo of each PING answered every select below at once, so a trigger slow to
    # open the port (a loaded machine) used up the pings before it could answer one.
    tty.setraw(slave)
    name = os.ttyname(slave)
    c = _Controls()
    stop = threading.Event()
    trig = SerialTrigger(name, c, stop, baudrate=115200)
    trig.thread.start()
    try:
        # pyserial empties the input buffer when it opens the port: ping until it answers.
        replies = b""
        deadline = time.monotonic() + 30
        while b"PONG\n" not in replies and time.monotonic() < deadline:
            os.write(master, b"PING\n")
            r, _, _ = select.select([master], [], [], 0.3)
            if r:
                replies += os.read(master, 1024)
        assert b"PONG\n" in replies, replies
        while select.select([master], [], [], 0.3)[0]:  # late PONGs
            os.read(master, 1024)
        os.write(master, b"REC\nMARK hello\nSNAP\nSTOP\nNOPE\n")
        calls = [c.calls.get(timeout=30) for _ in range(4)]
        assert calls == [
            ("start", "button"),
            ("mark", "button", "hello"),
            ("still", "button"),
            ("stop", "button"),
        ]
        lines: list[bytes] = []
        buf = b""
        while len(lines) < 5:
            r, _, _ = select.select([master], [], [], 30)
            assert r, f"no reply from the trigger thread (got {lines!r})"
            buf += os.read(master, 1024)
            *done, buf = buf.split(b"\n")
            # Answers to late pings, and to a ping the port's open cut in half ("NG").
            lines += [line for line in done if line != b"PONG" and not _ping_tail(line)]
        assert lines == [
            b"OK REC",
            b"OK MARK",
            b"OK SNAP",
            b"OK STOP",
            b"ERR unknown command 'NOPE'",
        ]
    finally:
        stop.set()
        trig.thread.join(10)
        os.close(master)
        os.close(slave)
    assert not trig.thread.is_alive()


def test_still_is_sealed_with_time_device_and_position(keys: Keys, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    spool = keys.spool(tmp_path / "spool")
    src = SyntheticSource(W, H, FPS, start_utc=1_700_000_000.0)
    frame: Frame | None = src.read()
    stills = Stills(spool, lambda: frame, threading.Event(), device_id="cam-7", fix=lambda: FIX)
    assert stills.snap("button") is not None
    (still,) = decrypt_all(spool, keys, "still")
    assert still.manifest["content_type"] == "image/jpeg"
    meta = still.meta
    assert meta["time"] == "2023-11-14T22:13:20.000Z" and meta["device"] == "cam-7"
    assert meta["position"]["lat"] == pytest.approx(31.2304)
    assert meta["trigger"] == "button" and meta["frame"] == 0
    img = cv2.imdecode(np.frombuffer(still.data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (H, W, 3) and read_counter(img) == 0
    frame = None
    assert stills.snap("button") is None and stills.failed == 1
    spool.close()


def test_video_probe_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["video", "probe", "--width", "160", "--height", "120", "--fps", "10"])
    out = capsys.readouterr().out
    assert code == 0
    assert "encoder:  libx264" in out or "encoder:  h264_v4l2m2m" in out
    assert "counter:  0" in out and "1 fragments, 10 frames" in out


def test_a_still_that_fails_unexpectedly_costs_that_still_not_the_thread(
    tmp_path: Path, keys: Keys
) -> None:
    """The stills thread runs each still under the one loop guard: a frame source that raises
    something no one expected (a bug) loses that request; the next one is taken."""
    spool = keys.spool(tmp_path / "spool")
    src = SyntheticSource(W, H, FPS, start_utc=1_700_000_000.0)
    frame = src.read()
    calls: list[int] = []

    def latest() -> Frame | None:
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("a bug behind the newest frame")
        return frame

    stop = threading.Event()
    stills = Stills(spool, latest, stop, device_id="cam-7")
    stills.thread.start()
    try:
        stills.request("button")
        wait_for(lambda: len(calls) >= 1, 10, "the first request tried")
        stills.request("button")
        wait_for(lambda: stills.taken >= 1, 20, "the next request taken")
        assert stills.thread.is_alive()
    finally:
        stop.set()
        stills.thread.join(5)
    (still,) = decrypt_all(spool, keys, "still")
    assert still.meta["trigger"] == "button"
    spool.close()
