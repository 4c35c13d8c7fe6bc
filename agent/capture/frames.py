"""What every video source yields, and the small interface they share.

A :class:`FrameSource` is opened, read frame by frame and closed by one capture thread. It
raises :class:`~agent.errors.SourceError` when the camera fails or vanishes (the capture loop
reports the loss and reopens it) and returns ``None`` at the end of a finite source (a file).

A *live* source (a camera, a network stream, the paced synthetic source) runs in real time:
when the encoder falls behind, its frames are dropped and counted. A source that is not live
(a file, the unpaced synthetic source) is read as fast as the encoder takes frames, and none
is dropped.

An *encoded* source (:class:`EncodedSource`: the Pi camera through picamera2's encoder,
``rpicam-vid`` on a pipe, an IP camera's RTSP or MPEG-TS stream) yields
:class:`AccessUnit` objects instead: one H.264 picture each, already encoded, which the
recorder remuxes into the same fragmented MP4 without decoding or re-encoding it. The same
capture loop opens, reads, reports and reopens both kinds.

The frame-counter bar code lets tests and benchmarks read a frame's number back from decoded
pixels: 32 bits, most significant first, as white (1) and black (0) cells along the top-left
edge of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Image = npt.NDArray[np.uint8]
else:
    Image = object

COUNTER_BITS = 32


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured picture: ``image`` is height x width x 3, BGR, uint8 (OpenCV's layout).

    ``index`` counts every frame the source produced since it was created (frames dropped
    later still used a number); ``mono_ns`` and ``utc`` say when it was captured.
    """

    image: Image
    index: int
    mono_ns: int
    utc: float


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One encoded H.264 picture, Annex-B (4-byte start codes), with what came before it in
    the stream (AUD, SPS, PPS, SEI).

    ``key``: an IDR picture, where a fragment (and so a segment or the pre-event start) may
    begin; it carries its SPS and PPS in-band. ``index`` counts the source's pictures (gaps:
    pictures the source itself dropped); ``mono_ns``/``utc`` say when it was captured (the
    camera's own timestamps where it gives them, on the agent's clocks). ``resync``: the first
    unit after the source was (re)opened; decoding starts over at the next IDR.
    """

    data: bytes
    key: bool
    index: int
    mono_ns: int
    utc: float
    resync: bool = False


T_co = TypeVar("T_co", covariant=True)


class Source(Protocol[T_co]):
    """What the capture loop needs of any source: frames or access units."""

    @property
    def name(self) -> str: ...

    @property
    def live(self) -> bool: ...

    @property
    def fps(self) -> float: ...

    def open(self) -> None:
        """Open (or reopen) the source; raises SourceError when it cannot."""

    def read(self) -> T_co | None:
        """The next frame or access unit; None at the end of a finite source; SourceError
        on loss, stall or garbage."""

    def close(self) -> None:
        """Release the device, file or stream; safe to call twice and after a failure."""


class FrameSource(Source[Frame], Protocol):
    """A camera, a file, a stream or the synthetic source. See the module docstring."""


@runtime_checkable
class EncodedSource(Source[AccessUnit], Protocol):
    """A source of H.264 access units. Besides the :class:`Source` members:

    ``encoder`` names what encoded the stream (for manifests and ``video probe``);
    ``watermarked`` says whether the watermark is burned into its pictures (picamera2 draws it
    before the encoder; a pass-through stream cannot have it).
    """

    @property
    def encoder(self) -> str: ...

    @property
    def watermarked(self) -> bool: ...


class LiveEncoded:
    """What the live encoded sources (picamera2, an rpicam/ffmpeg pipe, a network stream) have
    alike: live, at the rate they were opened with, and (unless they say otherwise) without a
    burned-in watermark. Subclasses set ``_fps``, name themselves and their ``encoder``."""

    _fps: float

    @property
    def live(self) -> bool:
        return True

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def watermarked(self) -> bool:
        return False


def no_huge_page_advice() -> bool:
    """Stop NumPy advising transparent huge pages for big arrays, in this process; returns
    whether it had been advising them.

    On Linux NumPy advises ``MADV_HUGEPAGE`` for every array of 4 MiB or more. A raw source
    allocates each frame anew (6 MB at 1080p BGR, 30 times a second), freed on another
    thread; with the advice the frames' memory kept coming back as fresh 2 MiB pages the
    kernel zeroes first: some 1 ms of CPU a 1080p frame on a desktop core (7 % of a bare
    encode's; ``make bench B=video``), wherever the kernel honours the advice (transparent
    huge pages ``always`` or ``madvise``).
    The recorder calls this before its capture thread starts; the environment
    variable ``NUMPY_MADVISE_HUGEPAGE=0`` does the same for a process before NumPy is imported.
    """
    import numpy as np

    core = getattr(np, "_core", None) or getattr(np, "core", None)
    multiarray = getattr(core, "multiarray", None)
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    if setter is None:  # a NumPy without the advice (or without the switch): nothing to do
        return False
    return bool(setter(False))


def counter_cell(width: int) -> int:
    """Side in pixels of one bar-code cell for frames ``width`` wide."""
    return max(4, min(width // (COUNTER_BITS + 8), 64) // 2 * 2)


def draw_counter(image: Image, value: int) -> None:
    """Burn ``value`` (mod 2**32) into the top-left corner of ``image`` as a bar code."""
    import numpy as np

    cell = counter_cell(image.shape[1])
    channels = image.shape[2]
    word = (value % 2**COUNTER_BITS).to_bytes(COUNTER_BITS // 8, "big")
    bits = np.unpackbits(np.frombuffer(word, np.uint8))
    # One row of pixels, every channel of a cell's pixels alike, laid out as in the image:
    # copied into each of the ``cell`` rows with a contiguous inner loop (a broadcast over the
    # channel axis too is some 50 times slower, 0.5 ms a 1080p frame).
    row = np.repeat(bits * np.uint8(255), cell * channels).reshape(-1, channels)
    image[0:cell, 0 : COUNTER_BITS * cell] = row


def read_counter(image: Image) -> int:
    """The value :func:`draw_counter` burned into ``image`` (after lossy coding too)."""
    import numpy as np

    cell = counter_cell(image.shape[1])
    q = max(1, cell // 4)
    strip = image[q : cell - q, 0 : COUNTER_BITS * cell].astype(np.float32).mean(axis=(0, 2))
    value = 0
    for i in range(COUNTER_BITS):
        level = float(strip[i * cell + q : (i + 1) * cell - q].mean())
        value = (value << 1) | (1 if level >= 128 else 0)
    return value
