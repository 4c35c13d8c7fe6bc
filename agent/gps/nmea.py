"""A pure NMEA 0183 reader: feed it bytes, get one :class:`~agent.model.Fix` per epoch.

No I/O happens here. :class:`NmeaReader` accepts arbitrary chunks (binary noise, partial lines,
vendor sentences, lines cut in half by a vanished serial port) and never raises; it counts what
it refused in :class:`ReaderStats`. :func:`parse_sentence` is the strict, single-line entry
point and raises only :class:`~agent.errors.NmeaError`.

**Framing** (as gpsd's packet lexer): a sentence starts at its last ``$``, is printable ASCII,
ends at CR or LF, is at most 128 characters and carries a ``*hh`` checksum that must match
(after the last ``*``; anything after the two hex digits is ignored). Every talker is read
(GP, GN, GL, GA, GB, BD, GQ, GI, QZ, ...); proprietary ``$P`` sentences take part in the cycle
as gpsd's table says (most are only seen, a few carry a time or a fix).

**Epochs.** Which sentences make one fix is decided by
:class:`~agent.gps.nmea_cycle.CycleEngine` (gpsd's cycle detection and merge). The engine says
when gpsd would report the fix; the reader keeps, per report time, the last report that had a
position (else the last one) and emits it as one Fix when a report with another time arrives,
when a new cycle with a later time starts, or on :meth:`NmeaReader.flush`. A fix never goes
back in time: a report not later than the last emitted fix is dropped (``stats.stale``), and a
report without a date (no RMC/ZDA seen yet) makes no Fix (``stats.undated``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import islice

from agent.errors import NmeaError
from agent.gps.nmea_cycle import (
    CLEAR,
    NMEA_MAX,
    REPORT,
    CycleEngine,
    Prepared,
    Report,
    has_position,
    prepare,
)
from agent.model import Fix, FixMode

__all__ = [
    "MAX_SENTENCE",
    "NmeaReader",
    "ReaderStats",
    "Sentence",
    "checksum",
    "parse_sentence",
]

#: Longest sentence read, ``$`` to checksum (gpsd: 130 with CR LF; NMEA itself says 82).
MAX_SENTENCE = NMEA_MAX - 2
#: A partial line longer than this is dropped (binary protocol noise with no newline).
MAX_PENDING = 4096
#: Valid lines remembered, so that a repeated one is not checked again (about 100 KB).
_SEEN_MAX = 1024
_CLEAR_OR_REPORT = CLEAR | REPORT
_MODES = (FixMode.NO_FIX, FixMode.NO_FIX, FixMode.FIX_2D, FixMode.FIX_3D)
_isfinite = math.isfinite


@dataclass(frozen=True, slots=True)
class Sentence:
    """One checksum-verified sentence: ``$GPRMC,...`` is talker ``GP``, kind ``RMC``.

    Proprietary sentences (``$P...``) have talker ``P`` and the rest of the address as kind.
    ``fields`` are the comma-separated fields after the address, checksum removed.
    """

    talker: str
    kind: str
    fields: tuple[str, ...]


@dataclass
class ReaderStats:
    """What the reader has seen; useful for a technician and for the benchmarks."""

    lines: int = 0
    sentences: int = 0  # checksum-valid sentences
    bad_checksum: int = 0
    bad_framing: int = 0  # not a sentence: noise, partial line, missing checksum
    bad_fields: int = 0  # valid checksum but a malformed address
    ignored: int = 0  # not NMEA 0183 sentences (AIS ``!`` lines)
    stale: int = 0  # reports not later than the last emitted fix
    undated: int = 0  # reports without a date (no RMC/ZDA yet)
    fixes: int = 0  # Fix objects emitted (any mode)


def checksum(body: bytes) -> int:
    """XOR of all bytes of ``body`` (the text between ``$`` and ``*``).

    The body is read as one integer and folded in halves (each XOR of two big integers is one
    C-level operation) down to a byte: about 3x faster than a Python loop over the bytes.
    """
    n = len(body)
    if n > 128:
        return checksum(body[:128]) ^ checksum(body[128:])
    x = int.from_bytes(body, "little")
    if n > 64:
        x = (x >> 512) ^ (x & _M512)
    if n > 32:
        x = (x >> 256) ^ (x & _M256)
    if n > 16:
        x = (x >> 128) ^ (x & _M128)
    if n > 8:
        x = (x >> 64) ^ (x & _M64)
    x = (x >> 32) ^ (x & _M32)
    x ^= x >> 16
    x ^= x >> 8
    return x & 0xFF


_M512, _M256, _M128, _M64, _M32 = ((1 << b) - 1 for b in (512, 256, 128, 64, 32))
#: A sentence as receivers send it: ``$``, an address of capitals and digits, printable ASCII
#: without ``*``, ``*hh``, blanks.
_SENTENCE = re.compile(rb"\$([A-Z][0-9A-Z]+(?:,[\x20-\x29\x2b-\x7e]*)?)\*([0-9A-Fa-f]{2})[ \t]*\Z")
_HEX = {b"%02X" % i: i for i in range(256)} | {b"%02x" % i: i for i in range(256)}
_HEX |= {(b"%02X" % i)[:1] + (b"%02x" % i)[1:]: i for i in range(256)}
_HEX |= {(b"%02x" % i)[:1] + (b"%02X" % i)[1:]: i for i in range(256)}


def _frame(raw: bytes) -> tuple[bytes, int] | str:
    """Split a line into (body, checksum); a string says why it is not a sentence."""
    start = raw.rfind(b"$")
    if start < 0:
        return "no '$' in line"
    if start:
        raw = raw[start:]
    raw = raw.rstrip(b"\r\n \t")
    n = len(raw)
    if n > MAX_SENTENCE:
        return f"sentence longer than {MAX_SENTENCE} characters"
    star = raw.rfind(b"*")
    if star < 2 or star + 3 > n:
        return "missing checksum"
    want = _HEX.get(raw[star + 1 : star + 3])
    if want is None:
        return "malformed checksum"
    if _unprintable(raw):
        return "not a printable ASCII sentence"
    return raw[1:star], want


def _unprintable(raw: bytes) -> bool:
    return not raw.isascii() or any(b < 0x20 or b == 0x7F for b in raw)


def parse_sentence(line: bytes | str) -> Sentence:
    """Verify and split one sentence (with or without its line ending).

    Leading noise before the last ``$`` is skipped. Raises :class:`NmeaError` when the line is
    not a complete sentence or its checksum is wrong; never raises anything else.
    """
    if isinstance(line, str):
        try:
            raw = line.encode("ascii")
        except UnicodeEncodeError:
            raise NmeaError("not ASCII") from None
    else:
        raw = bytes(line)
    framed = _frame(raw)
    if isinstance(framed, str):
        raise NmeaError(framed)
    body, want = framed
    if checksum(body) != want:
        raise NmeaError("checksum mismatch")
    first_star = body.find(b"*")
    parts = (body if first_star < 0 else body[:first_star]).decode("ascii").split(",")
    address = parts[0]
    if len(address) < 2 or not address.isalnum() or not address.isupper():
        raise NmeaError(f"bad address field {address[:10]!r}")
    if address[0] == "P":
        return Sentence("P", address[1:], tuple(parts[1:]))
    if len(address) != 5:
        raise NmeaError(f"bad address field {address!r}")
    return Sentence(address[:2], address[2:], tuple(parts[1:]))


class NmeaReader:
    """Incremental, pure NMEA reader. ``feed(bytes) -> list[Fix]``; ``flush()`` at the end.

    ``source`` is copied into every Fix (e.g. ``"serial:/dev/ttyACM0"``). Not thread-safe:
    one reader per source thread.
    """

    def __init__(self, source: str = "nmea") -> None:
        self.source = source
        self.stats = ReaderStats()
        self.engine = CycleEngine()
        self._pending = bytearray()
        self._seen: dict[bytes, Prepared] = {}  # valid lines seen recently, ready to run
        self._epoch_ms: int | None = None  # time of the reports being collected
        self._epoch_pos: Report | None = None  # its last report with a position
        self._epoch_last: Report | None = None  # its last report
        self._last_ms: int | None = None  # time of the last emitted fix
        self._last_pos_ms: int | None = None  # ... of the last emitted fix with a position

    # ------------------------------------------------------------------ byte level
    def feed(self, data: bytes) -> list[Fix]:
        """Consume a chunk of bytes; return the Fixes of the epochs it completed."""
        out: list[Fix] = []
        buf = self._pending
        buf += data
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if cut < 0:
            if len(buf) > MAX_PENDING:
                self.stats.bad_framing += 1
                buf.clear()
            return out
        complete = bytes(buf[:cut])
        del buf[: cut + 1]
        self.feed_lines(complete, out)
        if len(buf) > MAX_PENDING:
            self.stats.bad_framing += 1
            buf.clear()
        return out

    def feed_lines(self, complete: bytes, out: list[Fix]) -> None:
        """Consume bytes that end at a line end (no partial sentence at the end).

        The hot loop (:meth:`_line` for one line, inlined): a receiver repeats many sentences
        byte for byte (satellite lists while the sky does not change, marine instruments), so
        a line seen recently and found valid is not checked again.
        """
        lines = complete.splitlines()
        stats = self.stats
        stats.lines += len(lines)
        seen_get = self._seen.get
        check = self._check
        run = self.engine.run
        for line in lines:
            prepared = seen_get(line)
            if prepared is None:
                if not line:
                    continue
                prepared = check(line, out)
                if prepared is None:
                    continue
            stats.sentences += 1
            mask = run(prepared)
            if mask & _CLEAR_OR_REPORT:
                self._after(mask, out)

    def feed_line(self, line: bytes | str) -> list[Fix]:
        """Consume exactly one line (with or without its ending)."""
        out: list[Fix] = []
        self.stats.lines += 1
        self._line(line.encode("latin-1") if isinstance(line, str) else line, out)
        return out

    def flush(self) -> list[Fix]:
        """Close the current epoch (end of input, or a quiet receiver): return its Fix."""
        out: list[Fix] = []
        self._emit(out)
        return out

    def reset(self) -> None:
        """Forget partial input (after a reconnect); keep the cycle learning and statistics."""
        self._pending.clear()

    def _line(self, line: bytes, out: list[Fix]) -> None:
        """The hot path: the checks of :func:`parse_sentence`, without the objects.

        A receiver repeats many sentences byte for byte (satellite lists while the sky does not
        change, marine instruments): a line seen recently and found valid is not checked again.
        """
        stats = self.stats
        prepared = self._seen.get(line)
        if prepared is None:
            prepared = self._check(line, out)
            if prepared is None:
                return
        stats.sentences += 1
        self._after(self.engine.run(prepared), out)

    def _after(self, mask: int, out: list[Fix]) -> None:
        """A sentence started a cycle or was reported: collect and emit epochs."""
        engine = self.engine
        if mask & CLEAR and self._epoch_ms is not None:
            t = engine.time_ns
            if t > 0 and (t + 500_000) // 1_000_000 > self._epoch_ms:
                self._emit(out)  # a later cycle began: the previous one is complete
        if mask & REPORT:
            self._report(engine.report(), out)

    def _check(self, line: bytes, out: list[Fix]) -> Prepared | None:
        """Frame and checksum a line not seen recently: the sentence ready for the engine."""
        stats = self.stats
        start = line.rfind(b"$")
        if start < 0:
            if line[:1] in b"!{#":  # AIS, gpsd's JSON, comments: not for us
                stats.ignored += 1
            else:
                stats.bad_framing += 1
            return None
        m = _SENTENCE.match(line, start)  # the usual shape: printable, one '*', two hex
        if m is None:
            self._odd_line(line[start:], out)
            return None
        body, hex_sum = m.groups()
        n = len(body) + 4
        if n > MAX_SENTENCE:
            stats.bad_framing += 1
            return None
        if checksum(body) != _HEX[hex_sum]:
            stats.bad_checksum += 1
            return None
        prepared = prepare(tuple(body.decode("ascii").split(",")), n + 2)
        if prepared is None:
            stats.bad_framing += 1
            return None
        seen = self._seen
        if len(seen) >= _SEEN_MAX:  # forget the older half
            for old in list(islice(seen, _SEEN_MAX // 2)):
                del seen[old]
        seen[line] = prepared
        return prepared

    def _odd_line(self, line: bytes, out: list[Fix]) -> None:
        """A line not of the usual shape: a '*' in the body, text after the checksum, ..."""
        stats = self.stats
        line = line.rstrip()
        n = len(line)
        star = line.rfind(b"*")
        if star < 3 or star + 3 > n or n > MAX_SENTENCE:
            stats.bad_framing += 1
            return
        want = _HEX.get(line[star + 1 : star + 3])
        if want is None:
            stats.bad_framing += 1
            return
        body = line[1:star]
        if checksum(body) != want:
            stats.bad_checksum += 1
            return
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            stats.bad_framing += 1
            return
        if not text.isprintable():
            stats.bad_framing += 1
            return
        if "*" in text:
            text = text[: text.find("*")]
        fields = text.split(",")
        address = fields[0]
        if not (address.isalnum() and address.isupper()) or len(address) < 2:
            stats.bad_fields += 1
            return
        stats.sentences += 1
        self._sentence(tuple(fields), n + 2, out)

    # ------------------------------------------------------------------ sentence level
    def apply(self, s: Sentence, out: list[Fix]) -> None:
        """Apply one verified sentence; append completed epochs to ``out``."""
        address = "P" + s.kind if s.talker == "P" else s.talker + s.kind
        fields = (address, *s.fields)
        self._sentence(fields, len(",".join(fields)) + 6, out)

    def _sentence(self, fields: tuple[str, ...], length: int, out: list[Fix]) -> None:
        self._after(self.engine.sentence(fields, length), out)

    def _report(self, r: Report, out: list[Fix]) -> None:
        if r is self._epoch_last:
            return  # the same report again: nothing changed
        t = r[0]
        if t <= 0:
            self.stats.undated += 1
            return
        ms = (t + 500_000) // 1_000_000  # gpsd prints times rounded to the ms
        if ms != self._epoch_ms:
            self._emit(out)
            self._epoch_ms = ms
        self._epoch_last = r
        if r[1] >= 2 and r[2] == r[2] and r[3] == r[3]:  # has_position(r), inlined
            self._epoch_pos = r

    def _emit(self, out: list[Fix]) -> None:
        ms = self._epoch_ms
        r = self._epoch_pos or self._epoch_last
        self._epoch_ms = self._epoch_pos = self._epoch_last = None
        if ms is None or r is None:
            return
        engine = self.engine
        final = engine.closed
        if final is None or final[0] != r[0]:
            final = engine.report() if engine.time_ns == r[0] else None
        if final is not None and final != r:
            r = _complete(r, final)
        fix = fix_from_report(r, ms, self.source)
        if fix.has_position:
            if self._last_pos_ms is not None and ms <= self._last_pos_ms:
                self.stats.stale += 1
                return
            self._last_pos_ms = ms
        elif self._last_ms is not None and ms <= self._last_ms:
            self.stats.stale += 1
            return
        self._last_ms = ms
        self.stats.fixes += 1
        out.append(fix)


def _complete(r: Report, final: Report) -> Report:
    """``r`` with what its cycle added after the report (speed, track, DOP, satellites, ...).

    gpsd reports a cycle when its ender arrives; a VTG or GSA that follows adds data to the
    same cycle. The time, position and mode stay those of the report.
    """
    t, mode, lat, lon, alt, speed, track, quality, hdop, used, visible, systems = r
    return (
        t,
        mode,
        lat,
        lon,
        alt if alt == alt or mode < 3 else final[4],
        speed if speed == speed else final[5],
        track if track == track else final[6],
        quality if quality is not None else final[7],
        hdop if hdop == hdop else final[8],
        used or final[9],
        visible or final[10],
        systems or final[11],
    )


def fix_from_report(r: Report, ms: int, source: str) -> Fix:
    """A :class:`Fix` named by time ``ms`` from an engine report (TPV fields, as gpsd)."""
    _, mode, lat, lon, alt, speed, track, quality, hdop, used, visible, systems = r
    pos = has_position(r)
    fix_mode = _MODES[mode] if pos else FixMode.NO_FIX
    return Fix(
        time=ms / 1000.0,
        mode=fix_mode,
        lat=lat if pos else None,
        lon=lon if pos else None,
        alt=alt if pos and fix_mode == FixMode.FIX_3D and _isfinite(alt) else None,
        speed=speed if pos and _isfinite(speed) else None,
        track=track if pos and _isfinite(track) else None,
        quality=quality,
        sats_used=used,
        sats_visible=visible,
        hdop=hdop if _isfinite(hdop) else None,
        source=source,
        systems=systems,
    )
