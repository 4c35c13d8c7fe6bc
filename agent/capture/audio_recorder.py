"""The audio recorder: microphone -> Opus -> pre-event ring / segments -> the ``audio`` stream.

Threads (each loop waits on the one stop event or on a queue with a timeout, never sleeps)::

    PortAudio thread   callback copies a block    --blocks (bounded, drop-and-count)-->
    microphone thread  opens / watches / reopens the device (agent.capture.audio)
    encoder thread     AudioPipeline: mute, Opus, fragments, ring, segments, commands
                                                  --jobs (bounded)-->
    writer thread      spool.put(segment) / spool.put_event(record)

Recording follows the video recorder's rules: ``mode = "event"`` records between a start and a
stop (trigger button, platform command, the body camera's own recording), ``"continuous"``
always. Segments are ``segment_s`` of whole fragments; each is sealed into the ``audio`` stream
as ``audio/mp4`` (init boxes + fragments, playable on its own).

Privacy: pre-event audio exists only when ``prebuffer_s`` > 0. Otherwise, in event mode, no
encoder runs while idle: blocks are discarded as they arrive, and a recording's encoder starts
with the first block that reaches past the start moment. Mute replaces samples with silence
from the moment it is asked (to the sample), in the ring too; mute and unmute are each an event
record (``audio_mute``/``audio_unmute``), and segments list their muted spans.

Gaps: blocks dropped between the callback and the encoder, or a microphone outage shorter than
``MAX_FILL_S``, are filled with silence so the media timeline keeps to the wall clock; the
segment's manifest counts them. A longer outage ends the segment and starts a new encoder (a new
timeline, ``discontinuity`` in the next segment's manifest).

Audio in video segments: ``tap`` receives every block after mute (recording or not), e.g.
:meth:`agent.capture.av_mux.AvEncoder.push_audio`, so the track inside video is muted alike.

:class:`AudioPipeline` is the encoder-thread state machine with no threads of its own, so tests
and benchmarks can drive it block by block. Commands from other threads (:meth:`AudioRecorder.mute`
...) are queued to the encoder thread, which owns all recording state.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.capture.audio import SAMPLE_BYTES, AudioBlock, Microphone, load_sounddevice
from agent.capture.audio_encoder import CONTENT_TYPE, AudioFragment, OpusEncoder
from agent.capture.jobs import Job, RecorderThreads, SpoolLike
from agent.capture.recording import Recording, RecordingPipeline
from agent.capture.segmenter import Segment
from agent.capture.settings import AudioSettings
from agent.errors import AgentError, CommandError
from agent.model import Alarm, ClockState

log = logging.getLogger(__name__)

AUDIO_STREAM = "audio"
FRAGMENT_S = 1.0
MAX_FILL_S = 2.0  # gaps up to this long are filled with silence; longer ones restart the timeline
STOP_GRACE_S = 1.0  # a stop waits this long for the blocks that cover it, then seals anyway


@dataclass
class AudioStats:
    """Counters of the pipeline (encoder thread) and the writer (writer thread)."""

    blocks: int = 0  # encoder thread
    idle_blocks: int = 0  # discarded while nothing wanted them (no pre-event, not recording)
    filled_samples: int = 0  # silence put in for dropped blocks and short outages
    encoded_samples: int = 0
    fragments: int = 0
    restarts: int = 0  # new encoder timelines after long gaps
    recording: bool = False
    muted: bool = False
    segments: int = 0  # writer thread
    segment_bytes: int = 0
    events: int = 0
    refused: int = 0
    store_errors: int = 0


class AudioPipeline(RecordingPipeline[AudioFragment]):
    """Blocks in, sealed-segment jobs and event records out. See the module docstring; the
    recordings themselves are :class:`~agent.capture.recording.RecordingPipeline`'s."""

    stream = AUDIO_STREAM
    content_type = CONTENT_TYPE
    kinds = "audio_"

    def __init__(
        self,
        settings: AudioSettings,
        emit: Callable[[Job], None],
        *,
        clock: Callable[[], ClockState] = ClockState,
        losses: Callable[[], dict[str, int]] = dict,
        meta: dict[str, Any] | None = None,
        fragment_s: float = FRAGMENT_S,
        tap: Callable[[AudioBlock], None] | None = None,
    ) -> None:
        super().__init__(settings, emit, slack_s=0.01, clock=clock, meta=meta)
        self.settings = settings
        self._tap = tap
        self._losses = losses
        self._fragment_s = fragment_s
        self.stats = AudioStats()
        self.encoder: OpusEncoder | None = None
        self._part_encoder: OpusEncoder | None = None  # whose fragments the open part holds
        self._next_index: int | None = None  # the sample index the encoder expects next
        self._session: int | None = None
        self._losses_reported: dict[str, int] = {}
        self._pending_discontinuity = False
        self.muted = False
        self._mute_changes: deque[tuple[int, bool]] = deque()  # (at mono ns, muted)
        self._mute_spans: list[list[int]] = []  # encoder samples [start, end or -1] muted
        self._fed_ns = 0  # when the last block was fed (monotonic)

    # ------------------------------------------------------------------ blocks

    @property
    def _keeps_running(self) -> bool:
        """Whether an encoder runs even while not recording (continuous or pre-event)."""
        return self.mode == "continuous" or self.prebuffer_s > 0

    def feed(self, block: AudioBlock) -> None:
        self.stats.blocks += 1
        self._fed_ns = time.monotonic_ns()
        self.last_mono_ns, self.last_utc = block.end_mono_ns, block.utc + block.duration_s
        rec = self.rec
        if (
            rec is not None
            and rec.stop_at_ns is not None
            and block.mono_ns >= rec.stop_at_ns
            and not self._keeps_running
        ):
            self._end_recording()  # every block up to the stop is in: seal now
            rec = self.rec
        idle = self.encoder is None and not self._keeps_running
        if idle and (rec is None or block.end_mono_ns <= rec.start_at_ns):
            pcm = self._mute(block, 0)
            self.stats.idle_blocks += 1
            self._to_tap(block, pcm)
            return
        enc = self._encoder_for(block)
        pcm = self._mute(block, enc.samples_in)
        self._to_tap(block, pcm)
        frags = enc.encode(pcm, block.mono_ns, block.utc)
        self._next_index = block.index + block.samples
        self.stats.encoded_samples += block.samples
        for frag in frags:
            self._fragment(enc, frag)

    def _encoder_for(self, block: AudioBlock) -> OpusEncoder:
        enc = self.encoder
        if enc is not None and self._next_index is not None:
            gap = block.index - self._next_index
            if block.session != self._session and gap < 0:
                gap = -1
            if 0 < gap <= MAX_FILL_S * block.rate:
                self.stats.filled_samples += gap
                fill_ns = round(gap * 1e9 / block.rate)
                for frag in enc.encode(
                    b"\0" * (gap * SAMPLE_BYTES),
                    block.mono_ns - fill_ns,
                    block.utc - gap / block.rate,
                ):
                    self._fragment(enc, frag)
            elif gap != 0:
                log.warning(
                    "audio: %.1f s gap in the microphone's samples: starting a new timeline",
                    gap / block.rate,
                )
                self._close_encoder()
                self._pending_discontinuity = True
                self.stats.restarts += 1
                enc = None
        if enc is None:
            enc = self.encoder = OpusEncoder(
                block.rate, bitrate_kbps=self.settings.bitrate_kbps, fragment_s=self._fragment_s
            )
            self._mute_spans = [[0, -1]] if self.muted else []
        self._session = block.session
        return enc

    def _mute(self, block: AudioBlock, base: int) -> bytes:
        """The block's samples with muted spans silenced (to the sample).

        ``base`` is the encoder timeline's sample number of the block's first sample.
        """
        pcm = block.pcm
        pieces: list[bytes] = []
        pos = 0
        while self._mute_changes and self._mute_changes[0][0] < block.end_mono_ns:
            at, muted = self._mute_changes.popleft()
            cut = min(block.samples, max(0, round((at - block.mono_ns) * block.rate / 1e9)))
            if cut > pos:
                chunk = pcm[pos * SAMPLE_BYTES : cut * SAMPLE_BYTES]
                pieces.append(b"\0" * len(chunk) if self.muted else chunk)
                pos = cut
            self._set_muted(muted, base + pos)
        chunk = pcm[pos * SAMPLE_BYTES :]
        pieces.append(b"\0" * len(chunk) if self.muted else chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _to_tap(self, block: AudioBlock, pcm: bytes) -> None:
        if self._tap is not None:
            self._tap(block if pcm is block.pcm else dataclasses.replace(block, pcm=pcm))

    def _set_muted(self, muted: bool, at_sample: int) -> None:
        if muted == self.muted:
            return
        self.muted = self.stats.muted = muted
        if self.encoder is None:
            return
        if muted:
            self._mute_spans.append([at_sample, -1])
        elif self._mute_spans and self._mute_spans[-1][1] < 0:
            self._mute_spans[-1][1] = at_sample

    def tick(self, now_ns: int | None = None) -> None:
        """Called when no block came for a while: a stop must not wait for a silent device."""
        rec = self.rec
        if rec is None or rec.stop_at_ns is None:
            return
        now = time.monotonic_ns() if now_ns is None else now_ns
        grace = STOP_GRACE_S * 1e9
        if now - (rec.stop_seen_ns or now) >= grace and now - self._fed_ns >= grace:
            log.info("audio: no audio reached the stop moment; sealing what is held")
            self._close_encoder()
            self._end_recording()

    # ------------------------------------------------------------------ fragments

    def _fragment(self, enc: OpusEncoder, frag: AudioFragment) -> None:
        self.stats.fragments += 1
        if self.rec is None:
            if self.prebuffer_s > 0:
                self.ring.push(frag)
            return
        self._take_from(enc, frag)

    def _take_from(self, enc: OpusEncoder, frag: AudioFragment) -> None:
        if self._part_encoder is not enc:
            self._seal_part(final=False)  # a new encoder is a new timeline: a new part
            self._part_encoder = enc
        init = enc.segment_init(frag.seq)
        if self._take(frag, init, discontinuity=self._pending_discontinuity):
            self._pending_discontinuity = False

    def _close_encoder(self) -> None:
        """Flush the encoder; its last fragments go where fragments go."""
        enc, self.encoder = self.encoder, None
        self._next_index = None
        if enc is None:
            return
        for frag in enc.finish():
            self._fragment(enc, frag)
        if self._part_encoder is enc:
            rec = self.rec
            self._seal_part(final=rec is None or rec.stop_at_ns is not None)
        self.ring.clear()

    # ------------------------------------------------------------------ commands (encoder thread)

    def mute(self, source: str, at_mono_ns: int | None = None, note: str = "") -> None:
        self._mute_command(True, source, at_mono_ns, note)

    def unmute(self, source: str, at_mono_ns: int | None = None, note: str = "") -> None:
        self._mute_command(False, source, at_mono_ns, note)

    def _mute_command(self, muted: bool, source: str, at_mono_ns: int | None, note: str) -> None:
        at = at_mono_ns if at_mono_ns is not None else time.monotonic_ns()
        pending = self._mute_changes[-1][1] if self._mute_changes else self.muted
        self._mute_changes.append((at, muted))
        rec = self.rec
        self.event(
            "audio_mute" if muted else "audio_unmute",
            {
                "source": source,
                "note": note,
                "at_utc": self._utc_at(at),
                "recording": rec.id if rec else None,
                "already": pending == muted,
            },
        )
        log.info("audio: %s by %s", "muted" if muted else "unmuted", source)

    def finish(self, reason: str) -> None:
        """Seal everything held (a clean stop): the recording's last segment, then its stop."""
        self._stop_cleanly(reason)
        self._close_encoder()
        self._end_recording()

    def _end_recording_if_covered(self) -> None:
        rec = self.rec
        if rec is None or rec.stop_at_ns is None:
            return
        seg = self._segmenter.current
        if self.encoder is None or (
            seg is not None and self._covers(seg.last.end_mono_ns, rec.stop_at_ns)
        ):
            self._end_recording()

    # ------------------------------------------------------------------ hooks

    def _now_ns(self) -> int:
        return time.monotonic_ns()

    def _pre_event(self, at: int) -> tuple[int, float | None, list[AudioFragment]]:
        horizon = at - self.ring.prebuffer_ns
        backlog = [f for f in self.ring.fragments() if f.end_mono_ns > horizon]
        self.ring.clear()
        pre: float | None = 0.0
        if backlog:
            pre = max(0.0, (at - backlog[0].start_mono_ns) / 1e9)
        elif self.encoder is not None and self.prebuffer_s > 0:
            pre = None  # the fragment in progress holds an unknown share before the trigger
        return 0, pre, backlog

    def _record(self, frag: AudioFragment) -> None:
        assert self.encoder is not None  # the ring holds the running encoder's fragments
        self._take_from(self.encoder, frag)

    def _covers(self, end_ns: int, at_ns: int) -> bool:
        return end_ns >= at_ns  # every sample before the moment is in

    def _stopping(self, rec: Recording, at: int) -> None:
        self._persist()
        if self.last_mono_ns is not None and self.last_mono_ns >= at:
            # Every block up to the stop has been fed already.
            if not self._keeps_running:
                self._close_encoder()
            self._end_recording_if_covered()

    def _set_recording(self, rec: Recording | None) -> None:
        self.rec = rec
        self.stats.recording = rec is not None

    def _ended(self) -> None:
        if not self._keeps_running and self.encoder is not None:
            self._close_encoder()

    def _stop_details(self, rec: Recording) -> dict[str, Any]:
        return {"duration_s": round(rec.media / self.settings.rate, 3)}

    def _size(self, frag: AudioFragment) -> int:
        return frag.samples

    def _media_meta(self, seg: Segment[AudioFragment]) -> dict[str, Any]:
        first, last = seg.first, seg.last
        losses = self._losses()
        delta = {k: v - self._losses_reported.get(k, 0) for k, v in losses.items()}
        self._losses_reported = dict(losses)
        rate = first.rate
        return {
            "codec": "opus",
            "container": "fmp4",
            "rate": rate,
            "channels": 1,
            "bitrate_kbps": self.settings.bitrate_kbps,
            "samples": last.end - first.start,
            "media_start_s": round(first.start / rate, 6),
            "duration_s": round((last.end - first.start) / rate, 6),
            "fragments": len(seg.fragments),
            "muted": self._muted_spans(first.start, last.end, rate),
            "filled_samples": self.stats.filled_samples,
            **{k: delta.get(k, 0) for k in ("dropped_blocks", "dropped_samples", "overflows")},
        }

    def _muted_spans(self, start: int, end: int, rate: int) -> list[list[float]]:
        """Muted spans within ``[start, end)`` as seconds from the segment's start."""
        out: list[list[float]] = []
        for a, b in self._mute_spans:
            b = end if b < 0 else b
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                out.append([round((lo - start) / rate, 3), round((hi - start) / rate, 3)])
        return out


class AudioRecorder(RecorderThreads[AudioPipeline, AudioStats]):
    """Runs the microphone, encoder and writer threads around an :class:`AudioPipeline`.

    ``microphone``: the device's one :class:`~agent.capture.audio.Microphone`, shared with
    push-to-talk (the recorder taps it and writes its events); without one it opens its own.
    ``start``, ``stop``, ``mute`` and ``unmute`` may be called from any thread.
    """

    what = "audio"

    def __init__(
        self,
        settings: AudioSettings,
        spool: SpoolLike,
        stop: threading.Event,
        *,
        alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], ClockState] = ClockState,
        meta: dict[str, Any] | None = None,
        loader: Callable[[], Any] = load_sounddevice,
        tap: Callable[[AudioBlock], None] | None = None,
        microphone: Microphone | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.stop_event = stop
        self._alarm = alarm or (lambda a: None)
        self._clock = clock
        self._meta = meta or {}
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=16)
        self._commands: queue.Queue[Callable[[AudioPipeline], object]] = queue.Queue(maxsize=256)
        self.mic = microphone or Microphone(settings, stop, alarm=self._alarm, loader=loader)
        self.mic.on_event = self._queue_event
        self._tap = self.mic.tap("recorder", settings.queue_blocks)
        self.pipeline = AudioPipeline(
            settings,
            self._jobs.put,
            clock=clock,
            losses=self._losses,
            meta=self._meta,
            tap=tap,
        )
        self.stats = self.pipeline.stats
        self.error: BaseException | None = None
        self._threads = [
            self.mic.thread,  # started here or by push-to-talk, whichever is first
            threading.Thread(target=self._encode_main, name="audio-encode", daemon=True),
            threading.Thread(target=self._write_main, name="audio-write", daemon=True),
        ]

    # ------------------------------------------------------------------ control (any thread)

    def start(self, trigger: str = "api", details: dict[str, Any] | None = None) -> None:
        at = time.monotonic_ns()
        self._command(lambda p: p.start(trigger, at, details))

    def stop(self, trigger: str = "api") -> None:
        at = time.monotonic_ns()
        self._command(lambda p: p.stop(trigger, at))

    def mute(self, source: str = "device", note: str = "") -> None:
        """Silence the microphone from now on (an ``audio_mute`` event record)."""
        at = time.monotonic_ns()
        self._command(lambda p: p.mute(source, at, note))

    def unmute(self, source: str = "device", note: str = "") -> None:
        at = time.monotonic_ns()
        self._command(lambda p: p.unmute(source, at, note))

    @property
    def recording(self) -> bool:
        return self.stats.recording

    @property
    def muted(self) -> bool:
        return self.stats.muted

    def health(self) -> dict[str, Any]:
        """The microphone's state (``ok``/``missing``/``off``, reason) and the recorder's."""
        st = self.stats
        return {
            **self.mic.health(),
            "recording": st.recording,
            "muted": st.muted,
            "segments": st.segments,
            "store_errors": st.store_errors,
            "failed": None if self.error is None else str(self.error),
        }

    def _losses(self) -> dict[str, int]:
        tap = self._tap
        return {
            "dropped_blocks": tap.dropped_blocks,
            "dropped_samples": tap.dropped_samples,
            "overflows": self.mic.stats.overflows,
        }

    # ------------------------------------------------------------------ threads

    def _encode_main(self) -> None:
        p = self.pipeline
        self._drive(p, self._tap.blocks, p.feed, self.mic.finished, idle=p.tick)
        if self.mic.error is not None and self.error is None:
            self._fail(self.mic.error)


def command_handlers(
    recorder: AudioRecorder, source: str = "platform"
) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """Handlers for the platform command channel (or, with ``source="device"``, the local
    control socket): ``audio.mute`` and ``audio.unmute``.

    ``audio.mute`` takes an optional ``{"note": "..."}``; ``{"mute": false}`` unmutes.
    """

    def mute(args: dict[str, Any]) -> dict[str, Any]:
        want = args.get("mute", True)
        if not isinstance(want, bool):
            raise CommandError("audio.mute: 'mute' must be true or false")
        note = str(args.get("note", ""))[:200]
        try:
            if want:
                recorder.mute(source, note)
            else:
                recorder.unmute(source, note)
        except AgentError as exc:
            raise CommandError(str(exc)) from None
        return {"muted": want}

    def unmute(args: dict[str, Any]) -> dict[str, Any]:
        return mute({**args, "mute": False})

    return {"audio.mute": mute, "audio.unmute": unmute}
