"""One long-lived H.264 encoder writing fragmented MP4 into memory (PyAV).

Why PyAV: OpenCV's ``VideoWriter`` has no H.264 encoder here and writes an MP4 whose index sits
at the end, so a power cut leaves an unreadable file. PyAV encodes H.264 in process (libx264,
or ``h264_v4l2m2m``, the Raspberry Pi 4's hardware encoder) and muxes it as *fragmented* MP4
(``movflags=frag_keyframe+empty_moov+default_base_moof``): the ``ftyp``+``moov`` init boxes come
once, then a ``moof``+``mdat`` fragment per group of pictures, each starting at a keyframe. The
init boxes plus any run of whole fragments is a playable file whose timestamps continue those of
the fragments before it. So one encoder serves both the pre-event ring and the segments, with
no restart, and the bytes never leave memory until the sealer encrypts them.

Parameter sets: the muxer needs the SPS and PPS for the ``avcC`` in ``moov``. libx264 hands
them over when the encoder opens (a "global header"); ``h264_v4l2m2m`` only in-band, with (or
just before) the first keyframe, and FFmpeg's ``empty_moov`` then writes an empty ``avcC``: an
unplayable file (raspberrypi/linux#4995, #5150). So the muxer runs with ``delay_moov``: it
writes ``moov`` when the first fragment is cut, taking the parameter sets from the first
keyframe when there was no global header. A packet holding parameter sets but no picture (some
hardware encoders send one before the first frame) is held and put in front of the next
picture. The init boxes are checked before any fragment leaves (:func:`check_init`): one SPS
and one PPS at least, and the SPS parses. ``inband=True`` makes libx264 behave like the
hardware encoder (no global header, parameter sets repeated before every keyframe), which is
how that path is tested on a machine without the hardware.

``codec="auto"`` (:func:`choose_encoder`) takes ``h264_v4l2m2m`` only when a probe encode at
that size yields a valid init and a fragment that decodes; otherwise libx264, and the reason,
which the recorder raises as an alarm.

The pipeline (not the encoder's own GOP logic) decides where keyframes go: it marks a frame
``key`` every ``keyframe_s`` of capture time, and the encoder is told to make an IDR frame there
and nowhere else. A fragment is complete only when the next keyframe is muxed, so fragments lag
the camera by one keyframe interval plus the encoder's delay.

Second stream: :meth:`H264Encoder.add_stream` may add another stream (e.g. Opus audio) before the
first frame; its packets go through :meth:`H264Encoder.mux` from the same thread. Fragments are
still cut at video keyframes.

Thread use: one thread (the recorder's encoder thread) owns an encoder.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from agent.capture.frames import Frame
from agent.errors import SourceError

if TYPE_CHECKING:
    import av.container

    from agent.capture.settings import VideoSettings

log = logging.getLogger(__name__)

MOVFLAGS = "frag_keyframe+empty_moov+delay_moov+default_base_moof"
#: The bcm2835-codec encoder node: present on the boards with the VideoCore H.264 encoder.
HARDWARE_DEVICE = Path("/dev/video11")
HARDWARE = "h264_v4l2m2m"
SOFTWARE = "libx264"
PROBE_FRAMES = 6  # keyframes at 0 and 3: one whole fragment, then the last one at finish


@dataclass(frozen=True, slots=True)
class FrameInfo:
    index: int
    pts: int
    mono_ns: int
    utc: float
    key: bool


@dataclass(frozen=True, slots=True)
class Fragment:
    """One ``moof``+``mdat`` pair: a keyframe and the frames up to the next keyframe."""

    data: bytes
    seq: int  # fragments the encoder has produced before this one
    frames: int
    first_index: int  # source frame numbers (gaps mean frames dropped before encoding)
    last_index: int
    start_pts: int  # in 1/fps units on the encoder's timeline
    end_pts: int  # exclusive
    fps: int
    start_mono_ns: int
    end_mono_ns: int
    start_utc: float
    end_utc: float

    @property
    def start_s(self) -> float:
        return self.start_pts / self.fps

    @property
    def duration_s(self) -> float:
        return (self.end_pts - self.start_pts) / self.fps


class BoxReader:
    """Splits a byte stream into whole top-level ISO-BMFF boxes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Append ``data``; yield ``(type, whole box)`` for each box now complete."""
        self._buf += data
        while len(self._buf) >= 8:
            size, kind = struct.unpack_from(">I4s", self._buf, 0)
            head = 8
            if size == 1:
                if len(self._buf) < 16:
                    return
                (size,) = struct.unpack_from(">Q", self._buf, 8)
                head = 16
            if size < head:
                raise SourceError(f"muxer wrote a malformed box {kind!r} of size {size}")
            if len(self._buf) < size:
                return
            box = bytes(self._buf[:size])
            del self._buf[:size]
            yield kind, box

    @property
    def pending(self) -> int:
        return len(self._buf)


def children(box: bytes, offset: int = 8) -> Iterator[tuple[bytes, bytes]]:
    """The boxes inside ``box`` (``offset`` skips its header and any fixed fields)."""
    pos = offset
    while pos + 8 <= len(box):
        size, kind = struct.unpack_from(">I4s", box, pos)
        if size < 8 or pos + size > len(box):
            return
        yield kind, box[pos : pos + size]
        pos += size


def moof_samples(moof: bytes, track_id: int) -> int:
    """How many samples of ``track_id`` a ``moof`` box describes."""
    count = 0
    for kind, traf in children(moof):
        if kind != b"traf":
            continue
        tid = None
        n = 0
        for sub, body in children(traf):
            if sub == b"tfhd":
                (tid,) = struct.unpack_from(">I", body, 12)
            elif sub == b"trun":
                n += struct.unpack_from(">I", body, 12)[0]
        if tid == track_id:
            count += n
    return count


class MemorySink:
    """The file-like object a PyAV muxer writes to, in memory (never to disk): :meth:`take`
    returns the bytes written since the last call (push-to-talk's Ogg pages)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.written = 0

    def write(self, data: bytes) -> int:
        self._got(bytes(data))
        self.written += len(data)
        return len(data)

    def _got(self, data: bytes) -> None:
        self.buf += data

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def tell(self) -> int:
        return self.written

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass


class FragmentSink(MemorySink):
    """A :class:`MemorySink` for fragmented MP4 (video, audio and both): bytes are split into
    boxes as they come; ``init`` is ``ftyp`` + ``moov`` once seen, and each ``moof`` + ``mdat``
    pair waits in :meth:`fragments` until the encoder turns it into a fragment.
    """

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.reader = BoxReader()
        self.init: bytes | None = None
        self._ftyp = b""
        self._moof: bytes | None = None
        self._pairs: deque[tuple[bytes, bytes]] = deque()

    def _got(self, data: bytes) -> None:
        for kind, box in self.reader.feed(data):
            self._box(kind, box)

    def _box(self, kind: bytes, box: bytes) -> None:
        if kind == b"ftyp":
            self._ftyp = box
        elif kind == b"moov":
            self.init = self._ftyp + box
        elif kind == b"moof":
            self._moof = box
        elif kind == b"mdat" and self._moof is not None:
            self._pairs.append((self._moof, box))
            self._moof = None
        elif kind not in (b"mfra", b"free", b"styp", b"sidx"):
            log.warning("%s: unexpected %r box from the muxer (ignored)", self.what, kind)

    def fragments(self) -> list[tuple[bytes, bytes]]:
        """The (moof, mdat) pairs completed since the last call."""
        out = list(self._pairs)
        self._pairs.clear()
        return out


def find_box(data: bytes, path: tuple[bytes, ...]) -> bytes | None:
    """The first box along ``path`` (e.g. ``(b"moov", b"trak", ...)``) in ``data``."""
    boxes: Iterator[tuple[bytes, bytes]] = children(data, 0)
    for i, want in enumerate(path):
        found = next((box for kind, box in boxes if kind == want), None)
        if found is None:
            return None
        box = found
        if i == len(path) - 1:
            return box
        # Sample entries have fixed fields before their child boxes (ISO 14496-12 8.5.2).
        offset = {b"stsd": 16, b"avc1": 86, b"avc3": 86}.get(want, 8)
        boxes = children(box, offset)
    return None  # pragma: no cover


AVC_ENTRY = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd")


def init_avcc(init: bytes) -> bytes | None:
    """The ``avcC`` payload of the first video track in an init segment, if any."""
    for entry in (b"avc1", b"avc3"):
        box = find_box(init, (*AVC_ENTRY, entry, b"avcC"))
        if box is not None:
            return box[8:]
    return None


def check_init(init: bytes) -> str | None:
    """Why an init segment (ftyp + moov) cannot be decoded, or None."""
    from agent.capture.h264 import check_avcc

    record = init_avcc(init)
    if record is None:
        return "init segment has no avc1/avcC sample entry"
    if not record:
        return "init segment has an empty avcC (no SPS/PPS)"
    problem = check_avcc(record)
    return None if problem is None else f"init segment: {problem}"


def open_codec(name: str, width: int, height: int, fps: int) -> bool:
    """Whether encoder ``name`` opens here at this size (h264_v4l2m2m needs its device)."""
    return _open_problem(name, width, height, fps) is None


def _open_problem(name: str, width: int, height: int, fps: int) -> str | None:
    import av

    try:
        ctx: Any = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, fps)
        ctx.open()
    except (av.FFmpegError, ValueError, OSError) as exc:
        log.debug("video: encoder %s does not open here: %s", name, exc)
        return f"{name} does not open: {exc}"
    return None


def probe_encoder(
    codec: str, width: int, height: int, fps: int, *, inband: bool | None = None
) -> str | None:
    """Encode a few frames with ``codec``; None if the init is valid and a fragment decodes,
    else the reason. Runs in a fraction of a second (six frames)."""
    import io

    import av
    import numpy as np

    problem = _open_problem(codec, width, height, fps)
    if problem is not None:
        return problem
    try:
        enc = H264Encoder(width, height, fps, codec=codec, inband=inband)
        frags: list[Fragment] = []
        ramp = (np.arange(width, dtype=np.uint16)[None, :] + np.arange(height)[:, None]) % 256
        for i in range(PROBE_FRAMES):
            img = np.repeat(((ramp + 8 * i) % 256).astype(np.uint8)[:, :, None], 3, axis=2)
            frags += enc.encode(Frame(img, i, i, 0.0), i, i % 3 == 0)
        frags += enc.finish()
    except (SourceError, av.FFmpegError, ValueError, OSError) as exc:
        return f"{codec} probe encode failed: {exc}"
    init = enc.init
    if init is None:
        return f"{codec} probe encode wrote no init segment"
    problem = check_init(init)
    if problem is not None:
        return f"{codec}: {problem}"
    if not frags:
        return f"{codec} probe encode made no fragment"
    try:
        with av.open(io.BytesIO(init + frags[0].data), "r") as c:
            decoded = len(list(c.decode(video=0)))
    except (av.FFmpegError, ValueError) as exc:
        return f"{codec}: its first fragment does not decode: {exc}"
    if decoded != frags[0].frames:
        return f"{codec}: first fragment decodes to {decoded} of {frags[0].frames} frames"
    return None


@dataclass(frozen=True, slots=True)
class EncoderChoice:
    codec: str
    reason: str
    fallback: bool = False  # auto wanted the hardware encoder and did not get it


def choose_encoder(
    preference: str, width: int, height: int, fps: int, *, device: Path = HARDWARE_DEVICE
) -> EncoderChoice:
    """``auto``: the hardware encoder when :func:`probe_encoder` passes, else libx264 (and
    why). Otherwise as asked.

    It is a *fallback* (the recorder raises an alarm) when the board has the hardware encoder
    (its V4L2 device ``device`` exists) and it still failed the probe; a machine without one
    simply uses libx264.
    """
    if preference != "auto":
        return EncoderChoice(preference, "configured")
    problem = probe_encoder(HARDWARE, width, height, fps)
    if problem is None:
        return EncoderChoice(HARDWARE, "auto: the hardware encoder passed the probe encode")
    if device.exists():
        return EncoderChoice(SOFTWARE, f"auto: software, {problem}", fallback=True)
    return EncoderChoice(SOFTWARE, f"auto: software, no hardware encoder here ({device} absent)")


def choose_codec(preference: str, width: int, height: int, fps: int) -> str:
    """The codec :func:`choose_encoder` picks."""
    return choose_encoder(preference, width, height, fps).codec


class Fmp4Fragments:
    """What both fragment producers share: the in-memory sink, the frames waiting for their
    fragment (muxed, not yet cut) and the turning of ``moof``+``mdat`` pairs into
    :class:`Fragment` s, after the init segment has been checked once.

    Subclasses set ``fps``, ``codec`` and ``track_id``, and append a :class:`FrameInfo` to
    ``_pending`` for each picture they mux.
    """

    fps: int
    codec: str
    track_id: int = 1

    def _setup_fragments(self) -> None:
        self._sink = FragmentSink("video")
        self._pending: deque[FrameInfo] = deque()
        self._fragments = 0
        self._init_checked = False

    @property
    def init(self) -> bytes | None:
        """The init boxes (ftyp + moov), once the muxer has written them."""
        return self._sink.init

    def _collect(self) -> list[Fragment]:
        pairs = self._sink.fragments()
        if pairs and not self._init_checked:
            init = self._sink.init
            problem = "no init segment before the first fragment" if init is None else None
            problem = problem or check_init(init or b"")
            if problem is not None:
                raise SourceError(f"video: {self.codec}: {problem}")
            self._init_checked = True
        return [self._fragment(moof, mdat) for moof, mdat in pairs]

    def _fragment(self, moof: bytes, mdat: bytes) -> Fragment:
        n = moof_samples(moof, self.track_id)
        if n <= 0 or n > len(self._pending):
            raise SourceError(
                f"fragment {self._fragments} holds {n} frames, {len(self._pending)} were pending"
            )
        infos = [self._pending.popleft() for _ in range(n)]
        if not infos[0].key:
            log.warning("video: fragment %d does not start at a forced keyframe", self._fragments)
        end_pts = infos[-1].pts + 1
        frag = Fragment(
            data=moof + mdat,
            seq=self._fragments,
            frames=n,
            first_index=infos[0].index,
            last_index=infos[-1].index,
            start_pts=infos[0].pts,
            end_pts=end_pts,
            fps=self.fps,
            start_mono_ns=infos[0].mono_ns,
            end_mono_ns=infos[-1].mono_ns + round(1e9 / self.fps),
            start_utc=infos[0].utc,
            end_utc=infos[-1].utc + 1.0 / self.fps,
        )
        self._fragments += 1
        return frag


class FragmentProducer(Protocol):
    """What :class:`agent.capture.recorder.VideoPipeline` uses of its encoder (besides
    ``encode``, which only raw frames need): :class:`H264Encoder` and
    :class:`agent.capture.remux.StreamRemuxer` both provide it."""

    fps: int
    codec: str
    width: int
    height: int

    @property
    def init(self) -> bytes | None: ...

    def finish(self) -> list[Fragment]: ...

    def segment_meta(self) -> dict[str, Any]: ...


class H264Encoder(Fmp4Fragments):
    """Frames in, fragments out. See the module docstring."""

    @classmethod
    def for_video(cls, s: VideoSettings, **extra: Any) -> Self:
        """The encoder ``[video]`` asks for (size, rate, codec, bit rate, preset); ``extra``
        goes to the class (the audio track of :class:`~agent.capture.av_mux.AvEncoder`)."""
        video: dict[str, Any] = {"bitrate_kbps": s.bitrate_kbps, "preset": s.preset}
        return cls(s.width, s.height, s.fps, codec=s.encoder, **video, **extra)

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        *,
        codec: str = "auto",
        bitrate_kbps: int = 4000,
        preset: str = "veryfast",
        inband: bool | None = None,
        hardware_device: Path = HARDWARE_DEVICE,
    ) -> None:
        import av

        if width % 2 or height % 2:
            raise SourceError(f"video size {width}x{height}: width and height must be even")
        self.width, self.height, self.fps = width, height, fps
        self.choice = choose_encoder(codec, width, height, fps, device=hardware_device)
        self.codec = self.choice.codec
        # In-band parameter sets: the hardware encoder always; libx264 when asked (tests).
        self.inband = self.codec != SOFTWARE if inband is None else inband
        self._held = b""  # parameter sets waiting for the next picture
        self._setup_fragments()
        self._container: av.container.OutputContainer = av.open(
            self._sink, "w", format="mp4", options={"movflags": MOVFLAGS}
        )
        stream: Any = self._container.add_stream(self.codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.time_base = Fraction(1, fps)
        ctx.framerate = Fraction(fps, 1)
        ctx.bit_rate = bitrate_kbps * 1000
        big_gop = str(fps * 3600)
        if self.inband:
            ctx.flags = ctx.flags & ~av.codec.context.Flags.global_header
        if self.codec == SOFTWARE:
            # Keyframes only where the pipeline asks (no scene cuts, no periodic IDR), no B-frames
            # (decode order is display order, so fragments map one-to-one onto frame runs).
            ctx.options = {
                "preset": preset,
                "bf": "0",
                "g": big_gop,
                "keyint_min": big_gop,
                "sc_threshold": "0",
                "forced-idr": "1",
                **({"x264-params": "repeat-headers=1"} if self.inband else {}),
            }
        else:
            ctx.gop_size = fps * 3600
            ctx.max_b_frames = 0
        self._stream = stream
        # The wrapped I420 array's rows are exactly ``width`` (luma) and ``width / 2`` (chroma)
        # bytes apart. libx264 copies each picture into frames of its own whatever the stride;
        # another encoder (the Pi's V4L2 one) gets it only where both strides are multiples
        # of 64, as in libavcodec's own buffers (widths a multiple of 128: 640, 1280, 1920),
        # else a copy as before.
        wrap = hasattr(av.VideoFrame, "from_numpy_buffer")
        self._wrap = wrap and (self.codec == SOFTWARE or width % 128 == 0)
        self.track_id = 1  # the first stream added
        self._last_pts = -1
        self._closed = False
        self.frames_in = 0

    def segment_meta(self) -> dict[str, Any]:
        """Facts for the manifest of the segment just cut (a muxed audio track adds its own)."""
        return {}

    def add_stream(self, codec: str, **kwargs: Any) -> Any:
        """Add another stream (e.g. ``"libopus"``) before the first frame; returns it."""
        if self.frames_in:
            raise SourceError("streams must be added before the first frame is encoded")
        return self._container.add_stream(codec, **kwargs)

    def mux(self, packet: Any) -> list[Fragment]:
        """Mux a packet of another stream; returns fragments completed meanwhile."""
        self._container.mux(packet)
        return self._collect()

    def encode(self, frame: Frame, pts: int, key: bool) -> list[Fragment]:
        """Encode one frame at ``pts`` (1/fps units, increasing); ``key`` forces an IDR frame.

        The first frame is always a keyframe. Returns the fragments completed by this call.
        """
        import av
        import cv2

        if pts <= self._last_pts:
            raise SourceError(f"frame {frame.index}: pts {pts} does not follow {self._last_pts}")
        key = key or self.frames_in == 0
        img = frame.image
        if img.shape[0] != self.height or img.shape[1] != self.width:
            raise SourceError(
                f"frame {frame.index} is {img.shape[1]}x{img.shape[0]}, "
                f"the encoder expects {self.width}x{self.height}"
            )
        # Converted once, into a fresh I420 buffer that the frame wraps without copying it
        # (``from_ndarray`` would copy the 3 MB of a 1080p frame again into a buffer of its
        # own). The frame holds a reference to the array for as long as libavcodec holds the
        # frame, and nothing writes to the array after this line.
        yuv: Any = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)
        vf = None
        if self._wrap:
            try:
                vf = av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
            except ValueError:  # a PyAV that cannot wrap yuv420p (older than this one): copy
                self._wrap = False
        if vf is None:
            vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        vf.pts = pts
        vf.time_base = Fraction(1, self.fps)
        vf.pict_type = av.video.frame.PictureType.I if key else av.video.frame.PictureType.NONE
        self._pending.append(FrameInfo(frame.index, pts, frame.mono_ns, frame.utc, key))
        self._last_pts = pts
        self.frames_in += 1
        for packet in self._stream.encode(vf):
            self._mux_video(packet)
        return self._collect()

    def _mux_video(self, packet: Any) -> None:
        """Mux one video packet; in-band mode holds parameter sets that come without a
        picture and puts them in front of the next one."""
        if not self.inband:
            self._container.mux(packet)
            return
        import av

        from agent.capture.h264 import VCL, nal_type, split_nals

        data = bytes(packet)
        if not any(nal_type(n) in VCL for n in split_nals(data)):
            self._held += data
            return
        if self._held:
            joined = av.Packet(self._held + data)
            joined.pts, joined.dts, joined.duration = packet.pts, packet.dts, packet.duration
            joined.time_base = packet.time_base
            joined.is_keyframe = packet.is_keyframe
            joined.stream = self._stream
            packet, self._held = joined, b""
        self._container.mux(packet)

    def finish(self) -> list[Fragment]:
        """Drain the encoder and close the muxer: the last fragment comes out."""
        if self._closed:
            return []
        self._closed = True
        for packet in self._stream.encode(None):
            self._mux_video(packet)
        self._container.close()
        out = self._collect()
        if self._pending:
            log.error("video: %d encoded frames did not reach a fragment", len(self._pending))
        return out
