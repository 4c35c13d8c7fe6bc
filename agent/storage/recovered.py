"""Platform side of a recovered video or audio part (docs/format.md, "Fragment journal").

After a power cut the device seals the ciphertext of a journaled part, whole frames only, as a
segment of content type ``application/x-edge-segment-journal`` (agent.storage.segjournal).
Its plaintext is the journal body: the prefix, then frames of ``4 + inner_chunk_size + 16``
bytes taken by position, and possibly a final short frame. The holder of the platform key
unwraps the data key ``meta.inner_key_id`` and authenticates each frame on its own
(:class:`RecoveredReader`, as the plaintext streams by): what authenticates is the media, a
fragmented MP4. A frame that fails is reported and left out with what depends on it: each
fragment begins on a chunk boundary (the journal pads fragments with ``free`` boxes), so the
reader holds one fragment's chunks at a time and, if one of them failed, keeps only its whole
boxes that authenticate (``ftyp``, ``moov``, and ``moof`` + ``mdat`` pairs). What it writes
stays a valid fragmented MP4 that plays every fragment that survived.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag

from agent.errors import FormatError
from agent.ids import check_key_id
from agent.storage.manifest import CIPHERS, TAG_LEN
from agent.storage.seal import PREFIX_LEN, SEG_MAGIC, aead_for, chunk_nonce, segment_key

RECOVERED_CONTENT_TYPE = "application/x-edge-segment-journal"
INNER_CONTENT_TYPES = {"video/mp4": ".mp4", "audio/mp4": ".m4a"}
MIN_INNER_CHUNK = 16
MAX_INNER_CHUNK = 16 * 1024 * 1024
SALT_RE = re.compile(r"^[0-9a-f]{32}$")
FRAGMENT_STARTS = (b"ftyp", b"styp", b"moof")  # the box a chunk that opens a fragment begins with
INIT_BOXES = (b"ftyp", b"moov")


def check_recovered_meta(meta: dict[str, Any], label: str) -> None:
    """The sealed meta of a recovered part has every field the format names, typed."""

    def count(name: str, low: int, high: int | None = None) -> int:
        v = meta.get(name)
        if type(v) is not int or v < low or (high is not None and v > high):
            raise FormatError(f"{label}: meta.{name} must be an integer from {low}")
        return v

    if meta.get("recovered") is not True:
        raise FormatError(f"{label}: a recovered part's meta.recovered must be true")
    if meta.get("inner_content_type") not in INNER_CONTENT_TYPES:
        raise FormatError(f"{label}: meta.inner_content_type must be video/mp4 or audio/mp4")
    check_key_id(meta.get("inner_key_id"), f"{label}: meta.inner_key_id")
    if not isinstance(meta.get("inner_salt"), str) or not SALT_RE.match(meta["inner_salt"]):
        raise FormatError(f"{label}: meta.inner_salt must be 16 bytes in hex")
    if meta.get("inner_cipher") not in CIPHERS:
        raise FormatError(f"{label}: meta.inner_cipher is not a known cipher")
    count("inner_chunk_size", MIN_INNER_CHUNK, MAX_INNER_CHUNK)
    count("inner_chunks", 1)
    count("torn_bytes", 0)
    count("part", 0)
    if not isinstance(meta.get("recording"), str) or not meta["recording"]:
        raise FormatError(f"{label}: meta.recording must name the recording")


@dataclass
class RecoveredReader:
    """Reads a recovered part's plaintext as it streams by (:meth:`feed`, then :meth:`finish`).

    With ``data_key`` (the unwrapped key of ``meta.inner_key_id``) each frame is authenticated
    and the media that authenticates goes to ``emit``; without it only the frames are counted.
    """

    meta: dict[str, Any]
    data_key: bytes | None = None
    emit: Callable[[bytes], object] | None = None
    frames: int = 0
    failed: list[int] = field(default_factory=list)
    torn_bytes: int = 0
    media_bytes: int = 0

    def __post_init__(self) -> None:
        self._chunk = int(self.meta["inner_chunk_size"])
        self._stride = 4 + self._chunk + TAG_LEN
        self._aead = (
            aead_for(
                str(self.meta["inner_cipher"]),
                segment_key(self.data_key, bytes.fromhex(str(self.meta["inner_salt"]))),
            )
            if self.data_key is not None
            else None
        )
        self._buf = bytearray()
        self._prefix = False
        # The fragment being read: (plaintext length, plaintext or None if it failed) per chunk.
        self._fragment: list[tuple[int, bytes | None]] = []

    @property
    def authenticated(self) -> int:
        return self.frames - len(self.failed) if self._aead is not None else 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        if not self._prefix:
            if len(self._buf) < PREFIX_LEN:
                return
            if self._buf[:6] != SEG_MAGIC:
                raise FormatError("recovered part: its plaintext is not a journal body")
            del self._buf[:PREFIX_LEN]
            self._prefix = True
        # A whole frame is taken once more bytes follow it: the last one may be the final.
        while len(self._buf) > self._stride:
            self._frame(bytes(self._buf[4 : self._stride]), final=False)
            del self._buf[: self._stride]

    def finish(self) -> None:
        """After the whole plaintext: the last frame (a whole one, or a short final one);
        whatever is left after it is counted as torn."""
        if not self._prefix:
            raise FormatError("recovered part: shorter than the journal's prefix")
        rest = bytes(self._buf)
        self._buf.clear()
        if len(rest) == self._stride:
            self._frame(rest[4:], final=True)
        elif len(rest) >= 4 + TAG_LEN:
            (n,) = struct.unpack_from(">I", rest)
            if TAG_LEN <= n < self._chunk + TAG_LEN and 4 + n <= len(rest):
                self._frame(rest[4 : 4 + n], final=True)
                rest = rest[4 + n :]
            self.torn_bytes = len(rest)
        else:
            self.torn_bytes = len(rest)
        self._flush()

    def _frame(self, ct: bytes, *, final: bool) -> None:
        index = self.frames
        self.frames += 1
        if self._aead is None:
            return
        pt: bytes | None = None
        for last in (False, True) if final else (False,):
            try:
                pt = self._aead.decrypt(chunk_nonce(index, last), ct, None)
                break
            except InvalidTag:
                continue
        if pt is None:
            self.failed.append(index)
        elif pt[4:8] in FRAGMENT_STARTS:
            self._flush()
        self._fragment.append((len(ct) - TAG_LEN, pt))

    def _flush(self) -> None:
        """The fragment read so far, whole if every chunk of it authenticated, else its whole
        boxes that did (a failed chunk may also have been the start of the next fragment)."""
        chunks, self._fragment = self._fragment, []
        if all(pt is not None for _n, pt in chunks):
            out: list[bytes] = [pt for _n, pt in chunks if pt is not None]
        else:
            out = _whole_boxes(chunks)
        for data in out:
            self.media_bytes += len(data)
            if self.emit is not None:
                self.emit(data)


def _whole_boxes(chunks: list[tuple[int, bytes | None]]) -> list[bytes]:
    """The top-level boxes of a fragment with holes (failed chunks) that lie wholly in chunks
    that authenticated: ``ftyp``, ``moov``, and each ``moof`` with the ``mdat`` after it."""
    spans: list[tuple[int, int, bytes | None]] = []
    pos = 0
    for n, pt in chunks:
        spans.append((pos, pos + n, pt))
        pos += n
    total = pos

    def read(lo: int, hi: int) -> bytes | None:
        if hi > total:
            return None
        out = bytearray()
        for start, end, pt in spans:
            if end <= lo or start >= hi:
                continue
            if pt is None:
                return None
            out += pt[max(lo, start) - start : min(hi, end) - start]
        return bytes(out)

    boxes: list[tuple[bytes, bytes | None]] = []
    pos = 0
    while pos + 8 <= total:
        head = read(pos, pos + 8)
        if head is None:
            break  # a box header in a failed chunk: nothing after it can be placed
        size, kind = struct.unpack(">I4s", head)
        header = 8
        if size == 1:
            large = read(pos + 8, pos + 16)
            if large is None:
                break
            (size,) = struct.unpack(">Q", large)
            header = 16
        elif size == 0:
            size = total - pos
        if size < header:
            break
        boxes.append((kind, read(pos, pos + size)))
        pos += size
    out: list[bytes] = []
    for i, (kind, data) in enumerate(boxes):
        if data is None:
            continue
        if kind in INIT_BOXES:
            out.append(data)
        elif kind == b"moof" and i + 1 < len(boxes):
            mdat_kind, mdat = boxes[i + 1]
            if mdat_kind == b"mdat" and mdat is not None:
                out += [data, mdat]
    return out


@dataclass
class Recovered:
    """A recovered part, opened by the platform: the media that authenticates, and what not."""

    media: bytes
    chunks: int
    authenticated: int
    failed: list[int]
    torn_bytes: int


def open_recovered(plain: bytes, meta: dict[str, Any], data_key: bytes) -> Recovered:
    """The media inside a recovered segment's plaintext (the journal body), in memory.

    ``data_key`` is the inner key (``meta.inner_key_id``, unwrapped by the platform). Every
    frame is authenticated on its own (its position is its nonce, so frames cannot be moved);
    a frame that fails is reported and skipped, and the media resumes at the next fragment.
    """
    out = bytearray()
    reader = RecoveredReader(meta, data_key, out.extend)
    reader.feed(plain)
    reader.finish()
    return Recovered(
        bytes(out), reader.frames, reader.authenticated, reader.failed, reader.torn_bytes
    )
