"""What comes out of a receiver's port: NMEA 0183 and u-blox UBX, mixed, to one Fix per epoch.

:class:`ReceiverReader` splits the byte stream by framing, as gpsd's packet lexer does: a
``$`` starts a NMEA sentence (printable ASCII up to CR/LF), the sync word ``B5 62`` a UBX
frame (class, id, little-endian length, payload, Fletcher checksum). A UBX frame that fails
its checksum, or a sync word without a plausible header, is counted and skipped two bytes on,
so a frame boundary lost in noise is found again and a ``$`` hidden in the rejected bytes is
still seen. Anything else (binary noise, gpsd's JSON banner lines, comments) is counted and
skipped. A receiver may switch protocols at any time.

Fixes: the NMEA sentences go to :class:`~agent.gps.nmea.NmeaReader` (gpsd's cycle rules),
the UBX frames to :class:`~agent.gps.ubx.UbxReader`. While a receiver sends NAV-PVT, the
binary solution is the fix (finer, with validity and time accuracy) and the NMEA epochs of the
same port are not emitted; two NMEA epochs without a NAV-PVT and NMEA takes over again. Fixes
leave in time order; one not later than the last is dropped (``stale``). As in gpsd, once UBX
frames are seen the NMEA cycle counts as having a reliable end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.gps.nmea import MAX_PENDING, NmeaReader, ReaderStats
from agent.gps.ubx import MAX_PAYLOAD, SYNC, UbxReader, UbxStats, frame_ok, known_class
from agent.model import Fix

__all__ = ["ReceiverReader", "ReceiverStats"]

#: NMEA epochs without a NAV-PVT after which NMEA is the receiver's voice again.
UBX_SILENCE_EPOCHS = 2
_LINE_END = re.compile(rb"[\r\n]")


@dataclass
class ReceiverStats:
    nmea: ReaderStats
    ubx: UbxStats
    stale: int = 0  # fixes not later than the last one (duplicates across protocols)
    fixes: int = 0


class ReceiverReader:
    """Bytes from one receiver in, Fixes out. ``feed()``, ``flush()`` at the end, ``reset()``."""

    def __init__(self, source: str = "receiver") -> None:
        self.source = source
        self.nmea = NmeaReader(source)
        self.ubx = UbxReader(source)
        self.stats = ReceiverStats(self.nmea.stats, self.ubx.stats)
        self._buf = bytearray()
        self._last_time: float | None = None
        self._last_pos_time: float | None = None
        self._nmea_since_pvt: int | None = None  # None: no NAV-PVT seen yet

    def feed(self, data: bytes) -> list[Fix]:
        """Consume a chunk of bytes; return the Fixes of the epochs it completed."""
        nmea_out: list[Fix] = []
        ubx_out: list[Fix] = []
        buf = self._buf
        buf += data
        if b"\xb5" not in buf:
            self._text_lines(nmea_out)
        else:
            self._split(nmea_out, ubx_out)
        if len(buf) > MAX_PENDING + MAX_PAYLOAD:
            self.stats.nmea.bad_framing += 1
            buf.clear()
        return self._merge(nmea_out, ubx_out)

    def flush(self) -> list[Fix]:
        """End of input (or a quiet port): the epochs still open, in time order."""
        ubx_out = self.ubx.flush()
        nmea_out = self.nmea.flush()
        return self._merge(nmea_out, ubx_out)

    def reset(self) -> None:
        """Forget partial input after a reconnect (the learned cycle is kept)."""
        self._buf.clear()
        self.nmea.reset()

    # ------------------------------------------------------------------ framing
    def _text_lines(self, out: list[Fix]) -> None:
        """No UBX sync in the buffer: hand complete lines to the NMEA reader."""
        buf = self._buf
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if cut < 0:
            if len(buf) > MAX_PENDING:
                self.stats.nmea.bad_framing += 1
                buf.clear()
            return
        complete = bytes(buf[:cut])
        del buf[: cut + 1]
        self.nmea.feed_lines(complete, out)

    def _split(self, nmea_out: list[Fix], ubx_out: list[Fix]) -> None:
        buf = self._buf
        i = 0
        n = len(buf)
        while i < n:
            u = buf.find(SYNC, i)
            if u < 0:
                # No (complete) sync word: text up to the last line end; a lone B5 at the very
                # end may be the first half of a sync word, so it waits for the next chunk.
                del buf[:i]
                self._text_lines(nmea_out)
                return
            if u > i:
                self._text_region(bytes(buf[i:u]), nmea_out)
                i = u
            if n - u < 6:
                break  # the header is not all here yet
            length = buf[u + 4] | buf[u + 5] << 8
            if not known_class(buf[u + 2]) or length > MAX_PAYLOAD:
                self.stats.ubx.bad_frames += 1
                i = u + 2
                continue
            end = u + 8 + length
            if end > n:
                break  # the frame is not all here yet
            frame = bytes(buf[u:end])
            if not frame_ok(frame):
                self.stats.ubx.bad_checksum += 1
                i = u + 2  # resynchronise just after the sync word
                continue
            ubx_out += self.ubx.decode(frame)
            self.nmea.engine.reliable = True  # gpsd: UBX frames give the cycle a known end
            i = end
        del buf[:i]

    def _text_region(self, region: bytes, out: list[Fix]) -> None:
        """Bytes between binary frames: complete NMEA lines; a line cut by a frame is noise."""
        parts = _LINE_END.split(region)
        tail = parts.pop()
        self.stats.nmea.lines += len(parts)
        for line in parts:
            if line:
                self.nmea._line(line, out)
        if tail.strip(b" \t\x00"):
            self.stats.nmea.bad_framing += 1

    # ------------------------------------------------------------------ merging
    def _merge(self, nmea_out: list[Fix], ubx_out: list[Fix]) -> list[Fix]:
        out: list[Fix] = []
        if not ubx_out:
            for fix in nmea_out:
                self._nmea_fix(fix, out)
            return out
        self._nmea_since_pvt = 0
        tagged = sorted([(f.time, 0, f) for f in ubx_out] + [(f.time, 1, f) for f in nmea_out])
        for _, from_nmea, fix in tagged:
            if from_nmea:
                self._nmea_fix(fix, out)
            else:
                self._nmea_since_pvt = 0
                self._put(fix, out)
        return out

    def _nmea_fix(self, fix: Fix, out: list[Fix]) -> None:
        if self._nmea_since_pvt is not None:
            self._nmea_since_pvt += 1
            if self._nmea_since_pvt <= UBX_SILENCE_EPOCHS:
                return  # the receiver speaks UBX: its NMEA repeats the epoch
            self._nmea_since_pvt = None  # UBX has gone quiet: NMEA is the receiver's voice
        self._put(fix, out)

    def _put(self, fix: Fix, out: list[Fix]) -> None:
        if fix.has_position:
            if self._last_pos_time is not None and fix.time <= self._last_pos_time:
                self.stats.stale += 1
                return
            self._last_pos_time = fix.time
        elif self._last_time is not None and fix.time <= self._last_time:
            self.stats.stale += 1
            return
        self._last_time = fix.time
        self.stats.fixes += 1
        out.append(fix)
