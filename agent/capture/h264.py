"""H.264 Annex-B byte streams: NAL units, access units, parameter sets, checks.

What the pass-through sources need to carry a camera's own H.264 into fragmented MP4 without
decoding it (ITU-T H.264 (08/2021) section 7 and Annex B):

- :func:`split_nals` cuts a byte string at start codes (``00 00 01``, ``00 00 00 01``); the
  NAL units come back without start codes and without trailing zero bytes.
- :class:`AnnexBReader` takes a byte stream in pieces of any size (a pipe from
  ``rpicam-vid --inline -o -``) and returns whole *access units* (one coded picture each, with
  the AUD, SPS, PPS and SEI that precede it). A new access unit starts at an AUD, SPS, PPS,
  SEI or NAL types 14..18 after a picture, or at a slice whose ``first_mb_in_slice`` is 0
  (7.4.1.2.3). An access unit is complete when the next one begins, so the reader lags one
  picture; :meth:`AnnexBReader.flush` hands over the last one at the end of the stream.
- :class:`StreamChecker` rejects what a camera never sends: a NAL unit with the forbidden bit,
  an unspecified or reserved type, an IDR/SPS/PPS with ``nal_ref_idc`` 0, a slice that names a
  PPS not seen, an SPS that does not parse, B slices (a raw stream has no timestamps to put
  reordered pictures back in order), or an access unit beyond a size limit. A stream that
  fails these is garbage mid-stream: the source reports it and reopens.
- :func:`parse_sps` reads the picture size from an SPS; :func:`avcc_record` and
  :func:`check_avcc` build and check an ``avcC`` (ISO/IEC 14496-15 5.3.3.1).

Pictures must be frames (``frame_mbs_only``) or field pairs coded as frames; a slice payload
itself is never looked at beyond its first three header fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import SourceError

START = b"\x00\x00\x00\x01"

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_END_SEQ = 10
NAL_END_STREAM = 11
NAL_FILLER = 12

VCL = frozenset({1, 2, 3, 4, 5})
#: Types that, after a picture, begin the next access unit.
AU_OPENERS = frozenset({NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD, 13, 14, 15, 16, 17, 18})
#: Types a camera may send: 1..13 (slices, partitions, SEI, parameter sets, AUD, end, filler,
#: SPS extension), 14..15 and 19..20 (SVC/MVC prefix, subset SPS, auxiliary and extension
#: slices: passed through, not decoded here).
KNOWN = frozenset(range(1, 16)) | {19, 20}
NEEDS_REF = frozenset({NAL_IDR, NAL_SPS, NAL_PPS})

MAX_AU_BYTES = 8 << 20  # a 4K intra frame at high quality is ~2 MB
MAX_NALS_PER_AU = 512

_START_RE = re.compile(b"\x00\x00\x01")


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F if nal else 0


def split_nals(data: bytes) -> list[bytes]:
    """The NAL units in ``data`` (Annex-B), without start codes or trailing zero bytes.

    Bytes before the first start code are dropped.
    """
    out: list[bytes] = []
    starts = [m.end() for m in _START_RE.finditer(data)]
    for i, s in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        nal = data[s:end].rstrip(b"\x00")
        if nal:
            out.append(nal)
    return out


def join_nals(nals: list[bytes]) -> bytes:
    """NAL units as Annex-B with 4-byte start codes."""
    return b"".join(START + n for n in nals)


def unescape(payload: bytes) -> bytes:
    """RBSP from a NAL payload: drop each emulation-prevention byte (``00 00 03``)."""
    if b"\x00\x00\x03" not in payload:
        return payload
    out = bytearray()
    zeros = 0
    for b in payload:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class BitReader:
    """MSB-first bits with Exp-Golomb codes (9.1); running off the end raises SourceError.

    The bytes are held as one integer, so each read is a few integer operations.
    """

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._bits = len(data) * 8
        self.pos = 0

    def u(self, n: int) -> int:
        end = self.pos + n
        if end > self._bits:
            raise SourceError("H.264: truncated header")
        self.pos = end
        return (self._value >> (self._bits - end)) & ((1 << n) - 1)

    def ue(self) -> int:
        left = self._bits - self.pos
        rest = self._value & ((1 << left) - 1)
        if rest == 0:
            raise SourceError("H.264: truncated header")
        zeros = left - rest.bit_length()
        if zeros > 31:
            raise SourceError("H.264: Exp-Golomb code too long")
        self.pos += zeros
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


@dataclass(frozen=True, slots=True)
class Sps:
    id: int
    profile_idc: int
    constraints: int
    level_idc: int
    width: int
    height: int
    frame_mbs_only: bool


HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def parse_sps(nal: bytes) -> Sps:
    """The fields of an SPS NAL unit (7.3.2.1.1) needed here; SourceError if it is not one."""
    if nal_type(nal) != NAL_SPS or len(nal) < 4:
        raise SourceError("H.264: not an SPS")
    r = BitReader(unescape(nal[1:]))
    profile = r.u(8)
    constraints = r.u(8)
    level = r.u(8)
    sps_id = r.ue()
    if sps_id > 31:
        raise SourceError(f"H.264: SPS id {sps_id} out of range")
    chroma = 1
    separate_planes = 0
    if profile in HIGH_PROFILES:
        chroma = r.ue()
        if chroma > 3:
            raise SourceError(f"H.264: chroma_format_idc {chroma}")
        if chroma == 3:
            separate_planes = r.u(1)
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    if r.ue() > 12:  # log2_max_frame_num_minus4
        raise SourceError("H.264: log2_max_frame_num out of range")
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        cycle = r.ue()
        if cycle > 255:
            raise SourceError("H.264: POC cycle too long")
        for _ in range(cycle):
            r.se()
    elif poc_type != 2:
        raise SourceError(f"H.264: pic_order_cnt_type {poc_type}")
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    w_mbs = r.ue() + 1
    h_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if r.u(1):
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    array_type = 0 if separate_planes else chroma
    sub_w = 2 if chroma in (1, 2) else 1
    sub_h = 2 if chroma == 1 else 1
    unit_x = 1 if array_type == 0 else sub_w
    unit_y = (1 if array_type == 0 else sub_h) * (2 - frame_mbs_only)
    width = w_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * h_units * 16 - unit_y * (crop[2] + crop[3])
    if not (16 <= width <= 16384 and 16 <= height <= 16384):
        raise SourceError(f"H.264: SPS picture size {width}x{height} out of range")
    return Sps(sps_id, profile, constraints, level, width, height, bool(frame_mbs_only))


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + r.se() + 256) % 256
        last = nxt or last


def pps_ids(nal: bytes) -> tuple[int, int]:
    """``(pps_id, sps_id)`` of a PPS NAL unit."""
    r = BitReader(unescape(nal[1:8]))
    pps, sps = r.ue(), r.ue()
    if pps > 255 or sps > 31:
        raise SourceError(f"H.264: PPS ids {pps}/{sps} out of range")
    return pps, sps


def slice_header(nal: bytes) -> tuple[int, int, int]:
    """``(first_mb_in_slice, slice_type % 5, pps_id)`` of a slice NAL unit (7.3.3)."""
    r = BitReader(unescape(nal[1:16]))
    first_mb = r.ue()
    kind = r.ue()
    pps = r.ue()
    if kind > 9 or pps > 255:
        raise SourceError(f"H.264: slice header out of range (type {kind}, pps {pps})")
    return first_mb, kind % 5, pps


SLICE_B = 1


@dataclass(frozen=True, slots=True)
class Unit:
    """One access unit as NAL units (no start codes) and what was learnt of it."""

    nals: tuple[bytes, ...]
    key: bool  # holds an IDR slice
    sps: bytes | None  # the SPS in it, if any (the first)
    pps: bytes | None

    @property
    def size(self) -> int:
        return sum(len(n) + 4 for n in self.nals)

    def annexb(self) -> bytes:
        return join_nals(list(self.nals))


class StreamChecker:
    """Checks access units of one stream in order; see the module docstring.

    ``max_au_bytes`` bounds one access unit. The checker remembers the parameter sets seen so
    a slice that names an unknown PPS (or a PPS an unknown SPS) is caught.
    """

    def __init__(self, *, max_au_bytes: int = MAX_AU_BYTES, allow_b: bool = False) -> None:
        self.max_au_bytes = max_au_bytes
        self.allow_b = allow_b
        self._sps: dict[int, Sps] = {}
        self._pps: dict[int, int] = {}  # pps id -> sps id

    @property
    def sps(self) -> dict[int, Sps]:
        return dict(self._sps)

    def check(self, nals: list[bytes] | tuple[bytes, ...]) -> Unit:
        """A checked :class:`Unit`; SourceError naming the fault otherwise."""
        if not nals:
            raise SourceError("H.264: empty access unit")
        if len(nals) > MAX_NALS_PER_AU:
            raise SourceError(f"H.264: {len(nals)} NAL units in one access unit")
        size = 0
        key = False
        vcl = False
        sps_nal = pps_nal = None
        for nal in nals:
            size += len(nal) + 4
            head = nal[0]
            kind = head & 0x1F
            if head & 0x80:
                raise SourceError("H.264: NAL unit with the forbidden bit set (garbage?)")
            if kind not in KNOWN:
                raise SourceError(f"H.264: NAL unit of unspecified type {kind} (garbage?)")
            if kind in NEEDS_REF and not head & 0x60:
                raise SourceError(f"H.264: NAL unit type {kind} with nal_ref_idc 0 (garbage?)")
            if kind == NAL_SPS:
                try:
                    sps = parse_sps(nal)
                except SourceError as exc:
                    raise SourceError(f"H.264: SPS does not parse ({exc})") from None
                self._sps[sps.id] = sps
                sps_nal = sps_nal or nal
            elif kind == NAL_PPS:
                pps, sid = pps_ids(nal)
                if sid not in self._sps:
                    raise SourceError(f"H.264: PPS {pps} names SPS {sid}, never seen")
                self._pps[pps] = sid
                pps_nal = pps_nal or nal
            elif kind in (NAL_SLICE, NAL_IDR):
                _first, stype, pps = slice_header(nal)
                if pps not in self._pps:
                    raise SourceError(f"H.264: slice names PPS {pps}, never seen")
                if stype == SLICE_B and not self.allow_b:
                    raise SourceError(
                        "H.264: B slices in a stream without timestamps (configure the camera "
                        "or encoder without B-frames, e.g. rpicam-vid --low-latency on a Pi 5)"
                    )
                key = key or kind == NAL_IDR
                vcl = True
            elif kind in VCL:
                vcl = True
        if size > self.max_au_bytes:
            raise SourceError(f"H.264: access unit of {size} bytes (limit {self.max_au_bytes})")
        if not vcl:
            raise SourceError("H.264: access unit without a picture")
        return Unit(tuple(nals), key, sps_nal, pps_nal)

    def reset(self) -> None:
        self._sps.clear()
        self._pps.clear()


class AnnexBReader:
    """Access units out of an Annex-B byte stream fed in pieces. See the module docstring.

    Each access unit comes with the stamp given to :meth:`feed` with the bytes that began it
    (for a camera writing one picture per write, its arrival time).
    """

    def __init__(self, *, max_au_bytes: int = MAX_AU_BYTES) -> None:
        self.max_au_bytes = max_au_bytes
        self._buf = bytearray()
        self._scan = 0  # where to look for the next start code
        self._nal_start: int | None = None  # payload start of the NAL being read
        self._au: list[bytes] = []
        self._au_vcl = False
        self._au_stamp: object = None
        self._nal_stamp: object = None  # the stamp of the read in which this NAL began
        self.skipped = 0  # bytes before the first start code

    def feed(self, data: bytes, stamp: object = None) -> list[tuple[list[bytes], object]]:
        """Append ``data``; return the access units completed, each ``(nals, stamp)``."""
        self._buf += data
        out: list[tuple[list[bytes], object]] = []
        buf = self._buf
        while True:
            i = buf.find(b"\x00\x00\x01", self._scan)
            if i < 0:
                # Keep the last two bytes to rescan: a start code may straddle two reads.
                self._scan = max(self._scan, len(buf) - 2)
                break
            if self._nal_start is None:
                self.skipped += i
            else:
                self._end_nal(bytes(buf[self._nal_start : i]), out)
            self._nal_start = i + 3
            self._nal_stamp = stamp
            self._scan = i + 3
        if self._nal_start is None:
            # No start code yet: junk (keep two bytes, a start code may begin in them).
            cut = max(0, len(buf) - 2)
            self.skipped += cut
        else:
            cut = self._nal_start
            if len(buf) - cut + sum(len(n) for n in self._au) > self.max_au_bytes:
                raise SourceError(
                    f"H.264: over {self.max_au_bytes} bytes without a complete access unit "
                    "(garbage?)"
                )
        if cut > 0:
            del buf[:cut]
            self._scan -= cut
            if self._nal_start is not None:
                self._nal_start -= cut
        return out

    def flush(self) -> list[tuple[list[bytes], object]]:
        """At the end of the stream: the last NAL unit ends, and so does the access unit."""
        out: list[tuple[list[bytes], object]] = []
        if self._nal_start is not None:
            self._end_nal(bytes(self._buf[self._nal_start :]), out)
        self._buf.clear()
        self._nal_start = None
        self._scan = 0
        if self._au:
            out.append((self._au, self._au_stamp))
        self._au, self._au_vcl = [], False
        return out

    def _end_nal(self, raw: bytes, out: list[tuple[list[bytes], object]]) -> None:
        nal = raw.rstrip(b"\x00")
        if not nal:
            return
        kind = nal[0] & 0x1F
        if self._au_vcl:
            opens = kind in AU_OPENERS
            if kind in (NAL_SLICE, NAL_IDR) and len(nal) > 1:
                # first_mb_in_slice == 0 <=> the first bit after the header is 1 (ue(0) = '1').
                opens = bool(nal[1] & 0x80)
            if opens:
                out.append((self._au, self._au_stamp))
                self._au, self._au_vcl = [], False
        if not self._au:
            self._au_stamp = self._nal_stamp
        self._au.append(nal)
        if kind in VCL:
            self._au_vcl = True
        if len(self._au) > MAX_NALS_PER_AU:
            raise SourceError(f"H.264: over {MAX_NALS_PER_AU} NAL units in one access unit")
        if kind in (NAL_END_SEQ, NAL_END_STREAM) and self._au_vcl:
            out.append((self._au, self._au_stamp))
            self._au, self._au_vcl = [], False


def avcc_nals(data: bytes, length_size: int) -> list[bytes]:
    """NAL units of a length-prefixed (MP4 / ``avcC``-style) access unit."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise SourceError("H.264: truncated NAL length")
        n = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > len(data):
            raise SourceError("H.264: NAL length beyond the packet")
        out.append(data[pos : pos + n])
        pos += n
    return out


def avcc_record(sps: bytes, pps: bytes) -> bytes:
    """An AVCDecoderConfigurationRecord for one SPS and one PPS, 4-byte NAL lengths."""
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"
        + len(pps).to_bytes(2, "big")
        + pps
    )


def parse_avcc(record: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """``(NAL length size, SPSs, PPSs)`` of an ``avcC`` payload; SourceError if malformed."""
    if len(record) < 7 or record[0] != 1:
        raise SourceError(f"avcC: {len(record)} bytes, not a version 1 record")
    length_size = (record[4] & 3) + 1
    pos = 6
    sps: list[bytes] = []
    pps: list[bytes] = []
    for count, into in ((record[5] & 0x1F, sps), (None, pps)):
        if count is None:
            if pos >= len(record):
                raise SourceError("avcC: no PPS count")
            count = record[pos]
            pos += 1
        for _ in range(count):
            if pos + 2 > len(record):
                raise SourceError("avcC: truncated")
            n = int.from_bytes(record[pos : pos + 2], "big")
            pos += 2
            if n == 0 or pos + n > len(record):
                raise SourceError("avcC: parameter set beyond the record")
            into.append(record[pos : pos + n])
            pos += n
    return length_size, sps, pps


def check_avcc(record: bytes) -> str | None:
    """Why ``record`` cannot configure a decoder, or None: one SPS and PPS at least, parsable."""
    try:
        _size, sps, pps = parse_avcc(record)
    except SourceError as exc:
        return str(exc)
    if not sps or not pps:
        return f"avcC holds {len(sps)} SPS and {len(pps)} PPS"
    try:
        parse_sps(sps[0])
    except SourceError as exc:
        return f"avcC SPS: {exc}"
    return None


def extradata_nals(extradata: bytes) -> list[bytes]:
    """Parameter sets from a demuxer's extradata (``avcC`` record or Annex-B)."""
    if not extradata:
        return []
    if extradata[0] == 1:
        _size, sps, pps = parse_avcc(extradata)
        return sps + pps
    return [n for n in split_nals(extradata) if nal_type(n) in (NAL_SPS, NAL_PPS)]
