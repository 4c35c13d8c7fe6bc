"""What the holder of the platform key checks inside a segment: its meta and its plaintext.

``docs/format.md`` ("Content rules") is normative. A keyless verifier checks the manifest and
the ciphertext; after decryption these rules hold as well:

- a **record batch** (a content type in :data:`RECORD_BATCH_TYPES`) is records, each prefixed
  by its u16 length, with nothing left over; ``meta.records`` counts them;
- a **delta-coded fix batch** (``application/x-edge-fix-delta``, agent.gps.fixdelta) decodes
  exactly into ``meta.records`` valid wire fixes;
- a **recovered journal** (``application/x-edge-journal``) is a whole journal (no torn frame)
  of ``meta.records`` frames, of the batch and inner key its manifest and meta name, and every
  frame decrypts with the cipher its header names;
- a **recovered part** (``application/x-edge-segment-journal``, agent.storage.recovered) has
  the meta the format names; its plaintext is a journal body of exactly ``meta.inner_chunks``
  whole frames (no torn bytes) and, with its inner key, each frame authenticates (frames that
  do not are not an error of the format: :attr:`ContentCheck.recovered_failed` lists them);
- an **event** record (stream ``event``) is a JSON object whose ``type`` is ``meta.type``; a
  ``telemetry_evicted`` record names in its body the stream and seqs its manifest names.

Plaintext is checked as it streams by (:class:`ContentCheck` is the decryption sink), so a
large segment is never held in memory; only an event body (at most 1 MiB) is.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag

from agent import boundedjson
from agent.errors import FormatError, VerificationError
from agent.gps import fixdelta
from agent.ids import check_key_id
from agent.storage.manifest import EVENT_STREAM, TAG_LEN
from agent.storage.records import (
    JOURNAL_CIPHERS,
    JOURNAL_CONTENT_TYPE,
    JOURNAL_HEADER,
    JOURNAL_HEADER_V1,
    JOURNAL_MAGIC,
    JOURNAL_VERSION,
    MAX_RECORD,
    RECORD_BATCH_TYPES,
)
from agent.storage.recovered import RECOVERED_CONTENT_TYPE, RecoveredReader, check_recovered_meta
from agent.storage.seal import SegmentInfo, aead_for, chunk_nonce, segment_key

EVENT_CONTENT_TYPE = "application/json"
MAX_EVENT = 1 << 20
MAX_FIX_DELTA = 8 << 20  # a delta batch of fixdelta.MAX_FIXES fixes is far smaller
TELEMETRY_EVICTED = "telemetry_evicted"


def _records(meta: dict[str, Any], label: str) -> int:
    n = meta.get("records")
    if type(n) is not int or n < 0:
        raise FormatError(f"{label}: meta.records must be a count")
    return n


def check_meta(info: SegmentInfo, meta: dict[str, Any]) -> None:
    """The meta fields the format fixes, for the segment's content type and stream."""
    label, ctype = info.label, info.content_type
    if ctype in RECORD_BATCH_TYPES or ctype == fixdelta.CONTENT_TYPE:
        _records(meta, label)
    elif ctype == JOURNAL_CONTENT_TYPE:
        if meta.get("recovered") is not True:
            raise FormatError(f"{label}: a recovered journal's meta.recovered must be true")
        check_key_id(meta.get("inner_key_id"), f"{label}: meta.inner_key_id")
        if meta.get("inner_content_type") not in RECORD_BATCH_TYPES:
            raise FormatError(f"{label}: meta.inner_content_type is not a record batch type")
        _records(meta, label)
        if info.batch is None:
            raise FormatError(f"{label}: a recovered journal must name its batch")
    elif ctype == RECOVERED_CONTENT_TYPE:
        check_recovered_meta(meta, label)
        if info.batch is None:
            raise FormatError(f"{label}: a recovered part must name its journal (batch)")
    if info.stream == EVENT_STREAM:
        if ctype != EVENT_CONTENT_TYPE:
            raise FormatError(f"{label}: an event record must be {EVENT_CONTENT_TYPE}")
        if not isinstance(meta.get("type"), str) or not meta["type"]:
            raise FormatError(f"{label}: an event record's meta.type must be a name")
        if (meta["type"] == TELEMETRY_EVICTED) != (info.evicted is not None):
            raise FormatError(
                f"{label}: a {TELEMETRY_EVICTED} record, and only one, names evicted seqs"
            )


class _RecordCounter:
    """Counts u16-length-prefixed records as bytes stream by."""

    def __init__(self) -> None:
        self.count = 0
        self._head = bytearray()
        self._need = 0

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._need:
                take = min(self._need, end - pos)
                self._need -= take
                pos += take
                continue
            take = min(2 - len(self._head), end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) == 2:
                (self._need,) = struct.unpack(">H", self._head)
                self._head.clear()
                self.count += 1

    def finish(self, label: str) -> None:
        if self._head or self._need:
            raise FormatError(f"{label}: the last record is cut short")


class _JournalReader:
    """Parses a recovered journal as bytes stream by and decrypts each frame (inner key)."""

    def __init__(self, label: str, inner_key: bytes | None, outer_cipher: str) -> None:
        self.label = label
        self.inner_key = inner_key
        self.outer_cipher = outer_cipher
        self.frames = 0
        self.key_id = ""
        self.batch_id = ""
        self._buf = bytearray()
        self._header_len = 0
        self._salt = b""
        self._ciphers: list[str] = []

    def feed(self, data: bytes) -> None:
        self._buf += data
        if not self._header_len:
            if len(self._buf) < 8:
                return
            (version,) = struct.unpack_from(">H", self._buf, 6)
            need = JOURNAL_HEADER.size if version == JOURNAL_VERSION else JOURNAL_HEADER_V1.size
            if len(self._buf) < need:
                return
            self._header()
        while len(self._buf) >= 4:
            (n,) = struct.unpack_from(">I", self._buf)
            if n < TAG_LEN or n > MAX_RECORD + TAG_LEN:
                raise FormatError(f"{self.label}: journal frame of {n} bytes is impossible")
            if len(self._buf) < 4 + n:
                return
            self._frame(bytes(self._buf[4 : 4 + n]))
            del self._buf[: 4 + n]

    def _header(self) -> None:
        magic, version, kid, salt, bid = JOURNAL_HEADER_V1.unpack_from(self._buf)
        if magic != JOURNAL_MAGIC or version not in (1, JOURNAL_VERSION):
            raise FormatError(f"{self.label}: not a journal (bad magic or version)")
        self.key_id, self.batch_id, self._salt = kid.hex(), bid.hex(), salt
        if version == JOURNAL_VERSION:
            code = JOURNAL_HEADER.unpack_from(self._buf)[5]
            if code not in JOURNAL_CIPHERS:
                raise FormatError(f"{self.label}: journal names unknown cipher {code}")
            self._ciphers = [JOURNAL_CIPHERS[code]]
            self._header_len = JOURNAL_HEADER.size
        else:
            # Version 1 names no cipher: the segment's first, then the other (AEAD tells).
            self._ciphers = list(dict.fromkeys([self.outer_cipher, *JOURNAL_CIPHERS.values()]))
            self._header_len = JOURNAL_HEADER_V1.size
        del self._buf[: self._header_len]

    def _frame(self, ct: bytes) -> None:
        index = self.frames
        self.frames += 1
        if self.inner_key is None:
            return
        for name in list(self._ciphers):
            aead = aead_for(name, segment_key(self.inner_key, self._salt))
            try:
                aead.decrypt(chunk_nonce(index, False), ct, None)
            except InvalidTag:
                if len(self._ciphers) > 1:
                    self._ciphers.remove(name)
                    continue
                break
            self._ciphers = [name]
            return
        raise VerificationError(
            f"{self.label}: journal frame {index} fails authentication under the inner key"
        )

    def finish(self) -> None:
        if not self._header_len:
            raise FormatError(f"{self.label}: journal shorter than its header")
        if self._buf:
            raise FormatError(f"{self.label}: journal ends in a torn frame")


class ContentCheck:
    """A decryption sink that checks the plaintext against the segment's meta.

    ``inner_key`` is the data key a recovered journal's (or part's) frames are under (None
    when its key record is not at hand: then the structure is checked, not its frames).
    ``media`` receives a recovered part's media that authenticates (the playable MP4).
    """

    def __init__(
        self,
        info: SegmentInfo,
        meta: dict[str, Any],
        inner_key: bytes | None = None,
        media: Callable[[bytes], object] | None = None,
    ) -> None:
        self.info = info
        self.meta = meta
        self._records = _RecordCounter() if info.content_type in RECORD_BATCH_TYPES else None
        self._journal = (
            _JournalReader(info.label, inner_key, str(info.manifest["cipher"]))
            if info.content_type == JOURNAL_CONTENT_TYPE
            else None
        )
        self._event: bytearray | None = bytearray() if info.stream == EVENT_STREAM else None
        self._deltas: bytearray | None = (
            bytearray() if info.content_type == fixdelta.CONTENT_TYPE else None
        )
        self.recovered = (
            RecoveredReader(meta, inner_key, media)
            if info.content_type == RECOVERED_CONTENT_TYPE
            else None
        )

    @property
    def recovered_failed(self) -> list[int]:
        """A recovered part's frames that fail authentication under its inner key."""
        return list(self.recovered.failed) if self.recovered is not None else []

    def __call__(self, data: bytes) -> None:
        if self.recovered is not None:
            self.recovered.feed(data)
        if self._deltas is not None:
            if len(self._deltas) + len(data) > MAX_FIX_DELTA:
                raise FormatError(f"{self.info.label}: delta batch larger than {MAX_FIX_DELTA}")
            self._deltas += data
        if self._records is not None:
            self._records.feed(data)
        if self._journal is not None:
            self._journal.feed(data)
        if self._event is not None:
            if len(self._event) + len(data) > MAX_EVENT:
                raise FormatError(f"{self.info.label}: event record larger than {MAX_EVENT}")
            self._event += data

    def finish(self) -> None:
        """After the whole plaintext went by: do the counts and names agree?"""
        label, meta = self.info.label, self.meta
        if self._records is not None:
            self._records.finish(label)
            if self._records.count != meta["records"]:
                raise FormatError(
                    f"{label}: {self._records.count} records, meta.records says {meta['records']}"
                )
        if self._deltas is not None:
            fixes = len(fixdelta.decode_batch(bytes(self._deltas)))
            if fixes != meta["records"]:
                raise FormatError(f"{label}: {fixes} fixes, meta.records says {meta['records']}")
        if self._journal is not None:
            j = self._journal
            j.finish()
            if j.frames != meta["records"]:
                raise FormatError(
                    f"{label}: journal of {j.frames} frames, meta.records says {meta['records']}"
                )
            if j.key_id != meta["inner_key_id"] or j.batch_id != self.info.batch:
                raise FormatError(f"{label}: journal header names another key or batch")
        if self.recovered is not None:
            _finish_recovered(self.recovered, label)
        if self._event is not None:
            body = boundedjson.loads(bytes(self._event), f"{label}: event record")
            if body.get("type") != meta["type"]:
                raise FormatError(f"{label}: event body type differs from meta.type")
            evicted = self.info.evicted
            if evicted is not None and (body.get("stream"), body.get("seqs")) != evicted:
                raise FormatError(f"{label}: event body names other evicted seqs than its manifest")


def _finish_recovered(reader: RecoveredReader, label: str) -> None:
    reader.finish()
    if reader.torn_bytes:
        raise FormatError(
            f"{label}: recovered part ends in {reader.torn_bytes} torn bytes "
            "(the device seals whole frames only)"
        )
    if reader.frames != reader.meta["inner_chunks"]:
        raise FormatError(
            f"{label}: recovered part of {reader.frames} frames, "
            f"meta.inner_chunks says {reader.meta['inner_chunks']}"
        )
