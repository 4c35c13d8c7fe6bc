"""The fragment journal: each fragment durable and encrypted as it is encoded; a cut recording
recovered as a sealed segment of the same recording, and resumed (docs/format.md)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest

from agent.capture.encoder import H264Encoder
from agent.capture.frames import read_counter
from agent.capture.jobs import FragmentJob, Job, JournalWriter, RecordingJob, store
from agent.capture.recorder import RecorderStats, VideoPipeline
from agent.capture.settings import VideoSettings
from agent.capture.sim import SyntheticSource
from agent.model import Alarm
from agent.storage.seal import parse_key_record
from agent.storage.segjournal import (
    JOURNAL_CHUNK,
    RECOVERED_CONTENT_TYPE,
    Interrupted,
    SegmentJournal,
    open_recovered,
)
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer
from tests.storage.helpers import decrypt_stream

W, H, FPS = 160, 120, 10
SETTINGS = VideoSettings(
    width=W, height=H, fps=FPS, mode="continuous", segment_s=1, prebuffer_s=0, keyframe_s=0.2
)


def decode_counters(mp4: bytes) -> list[int]:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        return [read_counter(f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]


class Run:
    """A pipeline whose jobs go through the writer's code (journal + store), in this thread."""

    def __init__(
        self,
        spool: Spool,
        interrupted: Interrupted | None = None,
        settings: VideoSettings = SETTINGS,
    ) -> None:
        self.spool = spool
        self.journal = SegmentJournal(spool)
        self.alarms: list[Alarm] = []
        self.writer = JournalWriter(self.journal, "video", self.alarms.append)
        self.stats = RecorderStats()
        self.fragment_frames: list[tuple[int, int]] = []  # (first, last) index journaled
        enc = H264Encoder(W, H, FPS, codec="libx264")
        self.pipe = VideoPipeline(settings, enc, self.emit)
        self.pipe.begin(interrupted)

    def emit(self, job: Job) -> None:
        if isinstance(job, FragmentJob | RecordingJob):
            self.writer.handle(job)
            return
        store(self.spool, job, self.stats, self.alarms.append, what="video", journal=self.journal)

    def feed(self, source: SyntheticSource, n: int) -> None:
        for _ in range(n):
            frame = source.read()
            assert frame is not None
            self.pipe.feed(frame)


def _spool(where: Path, keyset: KeySet, boot: str = "boot-a") -> Spool:
    return Spool(SpoolSettings(dir=where, reserve_mb=0), make_sealer(keyset, boot_id=boot))


def _media(spool: Spool, keyset: KeySet) -> list[tuple[dict[str, Any], bytes]]:
    """(meta, MP4) of every video segment, recovered ones opened like the platform would."""
    out = []
    for s in decrypt_stream(spool, keyset.platform_private, "video"):
        data = s.data
        if s.manifest["content_type"] == RECOVERED_CONTENT_TYPE:
            kid = s.meta["inner_key_id"]
            dk = parse_key_record(spool.key_record(kid)).unwrap(keyset.platform_private)
            rec = open_recovered(data, s.meta, dk)
            assert not rec.failed, rec
            data = rec.media
        out.append((s.meta, data))
    return out


def _events(spool: Spool, keyset: KeySet) -> list[dict[str, Any]]:
    return [s.record for s in decrypt_stream(spool, keyset.platform_private, "event")]


def test_journaled_segments_are_ordinary_sealed_segments(tmp_path: Path, keyset: KeySet) -> None:
    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool)
    src = SyntheticSource(W, H, FPS, limit=37)
    run.feed(src, 37)
    run.pipe.finish("shutdown")
    assert run.stats.segments >= 3 and not run.alarms
    # Every fragment went through the journal and every segment was sealed from it in place.
    j = run.journal.stats
    assert j.fragments == run.pipe.fragments and j.sealed == run.stats.segments
    # One per fragment, five per part (open 3, seal 2), five for the recording state.
    assert j.fsyncs <= j.fragments + 5 * j.sealed + 5
    assert not list(run.journal.dir.glob("*.body"))
    report = verify_paths([spool.root], platform_private=keyset.platform_private)
    assert report.ok, report.problems
    counters: list[int] = []
    for meta, mp4 in _media(spool, keyset):
        assert not meta.get("recovered")
        counters += decode_counters(mp4)
    assert counters == list(range(37))
    manifests = [s.manifest for s in decrypt_stream(spool, keyset.platform_private, "video")]
    assert {m["chunk_size"] for m in manifests} == {JOURNAL_CHUNK}
    assert not (run.journal.dir / "video.state").exists()  # stopped cleanly: nothing to resume
    spool.close()


def test_a_cut_recording_is_recovered_and_resumed(tmp_path: Path, keyset: KeySet) -> None:
    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool)
    src = SyntheticSource(W, H, FPS, limit=200)
    run.feed(src, 27)  # a segment sealed, the next part open in the journal
    recording = run.pipe.rec.id if run.pipe.rec else ""
    in_fragments = run.pipe.rec.frames if run.pipe.rec else 0  # frames journaled
    open_parts = list(run.journal.dir.glob("video-*.body"))
    assert len(open_parts) == 1
    spool.close()  # the power cut: the encoder's frames and the open part are never finished

    spool = _spool(tmp_path / "spool", keyset, boot="boot-b")
    journal = SegmentJournal(spool)
    interrupted = journal.recover("video")
    assert interrupted is not None and interrupted.resume
    assert interrupted.recording == recording and interrupted.last_durable_utc is not None
    [item] = interrupted.recovered
    assert item["part"] >= 1 and item["chunks"] > 0 and item["torn_bytes"] == 0
    assert interrupted.next_part == item["part"] + 1
    # A second start before the resumed recording wrote anything: no second event.
    assert SegmentJournal(spool).recover("video") is not None
    resumed = Run(spool, interrupted)
    resumed.feed(src, 20)
    resumed.pipe.finish("shutdown")
    spool_root = spool.root
    media = _media(spool, keyset)
    events = _events(spool, keyset)
    spool.close()

    report = verify_paths([spool_root], platform_private=keyset.platform_private)
    assert report.ok, report.problems
    assert {m["recording"] for m, _ in media} == {recording}
    assert [m["part"] for m, _ in media] == list(range(len(media)))
    recovered = [(m, mp4) for m, mp4 in media if m.get("recovered")]
    assert len(recovered) == 1 and recovered[0][0]["part"] == item["part"]
    counters = [c for _, mp4 in media for c in decode_counters(mp4)]
    # Every frame that reached a fragment before the cut is there, in order, once; what was
    # lost is only what the encoder still held (its lookahead and the fragment in progress).
    before = [c for c in counters if c < 27]
    assert before == list(range(len(before))) and len(before) == in_fragments
    assert counters[len(before) :] == list(range(27, 47))  # the resumed part, every frame
    kinds = [e["type"] for e in events]
    assert kinds.count("recording_interrupted") == 1 and kinds.count("recording_resumed") == 1
    assert kinds.index("recording_interrupted") < kinds.index("recording_resumed")
    assert "record_start" in kinds and kinds.count("record_start") == 1  # not started again
    cut = next(e for e in events if e["type"] == "recording_interrupted")
    assert cut["recording"] == recording and cut["resumes"] and cut["last_durable_utc"]


def test_torn_and_corrupted_journal_recovers_what_authenticates(
    tmp_path: Path, keyset: KeySet
) -> None:
    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool)
    run.feed(SyntheticSource(W, H, FPS, limit=100), 19)  # part 1 open with several fragments
    spool.close()
    [body] = list((tmp_path / "spool" / "journal" / "seg").glob("video-*.body"))
    data = bytearray(body.read_bytes())
    stride = 4 + JOURNAL_CHUNK + 16
    assert (len(data) - 8) // stride >= 3
    data[8 + stride + 100] ^= 0xFF  # a flipped bit in the second chunk
    data += b"\x00\x00\x10\x14torn"  # and a torn frame after the last whole one
    body.write_bytes(bytes(data))

    spool = _spool(tmp_path / "spool", keyset, boot="boot-b")
    interrupted = SegmentJournal(spool).recover("video")
    assert interrupted is not None
    [item] = interrupted.recovered
    assert item["torn_bytes"] == 8
    [(meta, plain)] = [
        (s.meta, s.data)
        for s in decrypt_stream(spool, keyset.platform_private, "video")
        if s.meta.get("recovered")
    ]
    dk = parse_key_record(spool.key_record(meta["inner_key_id"])).unwrap(keyset.platform_private)
    rec = open_recovered(plain, meta, dk)
    assert rec.failed == [1] and rec.authenticated == rec.chunks - 1
    root = spool.root
    events = _events(spool, keyset)
    spool.close()
    # The chain is whole; the chunk that fails authentication is the one problem, and what
    # authenticates is written as the part's media.
    out = tmp_path / "out"
    report = verify_paths([root], platform_private=keyset.platform_private, decrypt_to=out)
    seq = item["seq"]
    problems = [(p.kind, p.where) for p in report.problems]
    assert problems == [("recovered_failed", f"dev-1/video#{seq}")], report.problems
    assert "(1)" in report.problems[0].detail
    written = out / "dev-1" / "video" / f"{seq:012d}.mp4"
    assert written.read_bytes() == rec.media
    cut = next(e for e in events if e["type"] == "recording_interrupted")
    assert cut["recovered"][0]["torn_bytes"] == 8


def test_unreadable_journal_is_quarantined_and_reported(tmp_path: Path, keyset: KeySet) -> None:
    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool)
    run.feed(SyntheticSource(W, H, FPS, limit=100), 15)
    spool.close()
    seg_dir = tmp_path / "spool" / "journal" / "seg"
    [side] = list(seg_dir.glob("video-*.json"))
    side.write_bytes(b'{"journal": 12')  # torn sidecar

    spool = _spool(tmp_path / "spool", keyset, boot="boot-b")
    interrupted = SegmentJournal(spool).recover("video")
    assert interrupted is not None and interrupted.recovered == []
    assert not list(seg_dir.glob("video-*.body"))
    quarantined = sorted(p.name for p in (tmp_path / "spool" / "quarantine").iterdir())
    assert any(n.endswith(".json") for n in quarantined)
    assert any(n.endswith(".body") for n in quarantined)
    events = _events(spool, keyset)
    root = spool.root
    spool.close()
    bad = [e for e in events if e["type"] == "journal_unreadable"]
    assert len(bad) == 2, events
    assert verify_paths([root]).ok


@pytest.mark.parametrize("padding", [0, 1, 7, 8, 4095])
def test_padding_ends_each_fragment_on_a_chunk_boundary(padding: int) -> None:
    from agent.storage.segjournal import padded

    data = b"x" * (4096 * 2 - padding)
    out = padded(data, 4096)
    assert len(out) % 4096 == 0 and out.startswith(data)
    if len(out) > len(data):
        size = int.from_bytes(out[len(data) : len(data) + 4], "big")
        assert out[len(data) + 4 : len(data) + 8] == b"free" and size == len(out) - len(data)


def test_an_audio_only_recording_is_journaled_recovered_and_resumed(
    tmp_path: Path, keyset: KeySet
) -> None:
    import av
    import numpy as np

    from agent.capture.audio import AudioBlock
    from agent.capture.audio_recorder import AudioPipeline
    from agent.capture.settings import AudioSettings

    rate, block = 16000, 320
    settings = AudioSettings(enabled=True, rate=rate, segment_s=2, mode="continuous")

    def pipeline(spool: Spool, interrupted: Interrupted | None) -> tuple[AudioPipeline, Run]:
        run = Run.__new__(Run)
        run.spool, run.journal, run.alarms = spool, SegmentJournal(spool), []
        run.writer = JournalWriter(run.journal, "audio", run.alarms.append)
        run.stats = RecorderStats()
        p = AudioPipeline(settings, run.emit, losses=dict)
        p.begin(interrupted)
        return p, run

    def feed(p: AudioPipeline, start: int, seconds: float) -> int:
        # Stamped on this machine's monotonic clock (a new process after the cut: a new base).
        base = time.monotonic_ns() - round(start * 1e9 / rate)
        for k in range(round(seconds * rate / block)):
            i = start + k * block
            pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(i, i + block) / rate)).astype(
                "<i2"
            )
            mono = base + round(i * 1e9 / rate)
            p.feed(AudioBlock(pcm.tobytes(), i, mono, mono / 1e9, rate, 1))
        return start + round(seconds * rate / block) * block

    spool = _spool(tmp_path / "spool", keyset)
    p, _run = pipeline(spool, None)
    pos = feed(p, 0, 3.5)  # one 2 s segment sealed, the next part open
    recording = p.rec.id if p.rec else ""
    spool.close()  # power cut

    spool = _spool(tmp_path / "spool", keyset, boot="boot-b")
    interrupted = SegmentJournal(spool).recover("audio")
    assert interrupted is not None and interrupted.resume and interrupted.recording == recording
    [item] = interrupted.recovered
    assert item["part"] == 1 and item["chunks"] > 0
    p, run = pipeline(spool, interrupted)
    feed(p, pos, 2.5)
    p.finish("shutdown")
    assert not run.alarms
    parts, samples = [], 0
    for s in decrypt_stream(spool, keyset.platform_private, "audio"):
        data = s.data
        if s.manifest["content_type"] == RECOVERED_CONTENT_TYPE:
            dk = parse_key_record(spool.key_record(s.meta["inner_key_id"])).unwrap(
                keyset.platform_private
            )
            data = open_recovered(data, s.meta, dk).media
            with av.open(io.BytesIO(data)) as c:
                samples = sum(f.samples for f in c.decode(audio=0))
        parts.append((s.meta["recording"], s.meta["part"], bool(s.meta.get("recovered"))))
    kinds = [e["type"] for e in _events(spool, keyset)]
    root = spool.root
    spool.close()
    report = verify_paths([root], platform_private=keyset.platform_private)
    assert report.ok, report.problems
    assert [x[1] for x in parts] == list(range(len(parts))) and {x[0] for x in parts} == {recording}
    assert parts[1][2] and samples > 0.5 * rate  # the open part came back as audio
    assert kinds.count("recording_interrupted") == 1 and kinds.count("recording_resumed") == 1


def test_a_journal_without_its_recorder_is_recovered_not_resumed(
    tmp_path: Path, keyset: KeySet
) -> None:
    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool)
    run.feed(SyntheticSource(W, H, FPS, limit=100), 15)
    spool.close()
    # The next start has video switched off (the agent's sweep of other streams' journals).
    spool = _spool(tmp_path / "spool", keyset, boot="boot-b")
    journal = SegmentJournal(spool)
    assert journal.streams_present() == {"video"}
    interrupted = journal.recover("video", resume=False)
    assert interrupted is not None and not interrupted.resume and interrupted.recovered
    assert journal.streams_present() == set()  # nothing left to resume or recover
    assert SegmentJournal(spool).recover("video") is None
    events = _events(spool, keyset)
    spool.close()
    [cut] = [e for e in events if e["type"] == "recording_interrupted"]
    assert cut["resumes"] is False


def test_a_failing_journal_is_reported_once_and_segments_are_sealed_from_memory(
    tmp_path: Path, keyset: KeySet
) -> None:
    import shutil

    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool)
    shutil.rmtree(run.journal.dir)  # the journal's directory is a file now: every write fails
    run.journal.dir.write_bytes(b"")
    run.feed(SyntheticSource(W, H, FPS, limit=37), 37)
    run.pipe.finish("shutdown")
    assert [a.kind for a in run.alarms] == ["video_journal_failed"]
    assert run.journal.stats.fragments == 0 and run.stats.segments >= 3
    counters = [c for _meta, mp4 in _media(spool, keyset) for c in decode_counters(mp4)]
    root = spool.root
    spool.close()
    assert counters == list(range(37))
    assert verify_paths([root], platform_private=keyset.platform_private).ok


def test_a_recording_being_stopped_when_cut_is_not_resumed(tmp_path: Path, keyset: KeySet) -> None:
    import dataclasses

    spool = _spool(tmp_path / "spool", keyset)
    run = Run(spool, settings=dataclasses.replace(SETTINGS, mode="event"))
    src = SyntheticSource(W, H, FPS, limit=100)
    run.feed(src, 5)
    run.pipe.start("button")
    run.feed(src, 20)
    run.pipe.stop("button")  # the stop moment is still inside the encoder: not yet sealed
    assert run.pipe.rec is not None
    spool.close()  # power cut before the stop took effect

    spool = _spool(tmp_path / "spool", keyset, boot="boot-b")
    interrupted = SegmentJournal(spool).recover("video")
    assert interrupted is not None and not interrupted.resume
    assert not (tmp_path / "spool" / "journal" / "seg" / "video.state").exists()
    events = _events(spool, keyset)
    spool.close()
    [cut] = [e for e in events if e["type"] == "recording_interrupted"]
    assert cut["resumes"] is False and cut["recovered"]
