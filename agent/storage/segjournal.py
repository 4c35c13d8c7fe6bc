"""The fragment journal: every media fragment durable, encrypted, the moment it is encoded.

A segment of video (or audio) is ``segment_s`` long, but the encoder emits a fragment every
keyframe interval (~1 s). Each fragment is sealed into the body of the segment it belongs to as
it arrives, and made durable (one ``fsync`` per fragment): the segment's body *is* the journal.
When the segment is complete, the trailer (manifest and signature) is appended and the file is
renamed into the spool: its bytes are written once (docs/format.md, "Fragment journal").

Chunking: the sealed format cuts the plaintext into chunks of exactly ``chunk_size`` bytes
(the final one may be shorter). So that a fragment can be encrypted and written at once, each
fragment is padded to a whole number of chunks with an ISO-BMFF ``free`` box (which every MP4
reader skips), and the final chunk is an empty ``free`` box. With 4 KiB chunks the padding
costs ~2 KiB per fragment (<1% at 2 Mbit/s).

Files, under ``<spool>/journal/seg/``::

    <stream>.state          the recording in progress (id, trigger, mode, start, stop asked)
    <stream>-<jid>.json     the open part: recording, part, key id, salt, cipher, chunk size,
                            capture start (no secret; the salt names the segment key)
    <stream>-<jid>.body     "EASEG\\0" v1 + chunk frames: the future segment's body

Keys: the body is encrypted under the epoch's data key, which lives in RAM only; its key
record (the key wrapped to the platform key) is stored in the spool before the first frame.
After a power cut the device can no longer decrypt the body (and must not be able to: a key it
could recover would be on the SD card for a thief too). So, as the GPS record journal does, it
seals the body's ciphertext, whole frames only, as a *recovered* segment of the same recording
(content type ``application/x-edge-segment-journal``); the platform unwraps the epoch key,
decrypts that segment, then each inner frame (agent.storage.recovered): what authenticates is
recovered, a torn or corrupted frame is reported. The device reports what it saw (whole
frames, torn bytes) in a ``recording_interrupted`` event; sealed segments and chains are never
touched, so the chain stays whole.

Thread use: one instance per recorder, used by its writer thread only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import boundedjson, wallclock
from agent.errors import FormatError, SpoolError
from agent.model import format_utc
from agent.storage.durable import fsync_dir, makedirs_durable, write_atomic
from agent.storage.recovered import RECOVERED_CONTENT_TYPE, Recovered, open_recovered
from agent.storage.seal import (
    PREFIX_LEN,
    SEG_MAGIC,
    TAG_LEN,
    BodyWriter,
    SegmentHeader,
    canonical_json,
)
from agent.storage.spool import PutResult, Spool

log = logging.getLogger(__name__)

# The platform's side (reading a recovered part) lives in agent.storage.recovered.
__all__ = ["RECOVERED_CONTENT_TYPE", "Interrupted", "Recovered", "SegmentJournal", "open_recovered"]

JOURNAL_CHUNK = 4096
FREE_BOX = b"free"
FINAL_CHUNK = struct.pack(">I4s", 8, FREE_BOX)  # an empty free box: the sealed final chunk
STATE_VERSION = 1


def padded(data: bytes, chunk: int) -> bytes:
    """``data`` followed by a ``free`` box that ends it on a chunk boundary."""
    pad = -len(data) % chunk
    if pad == 0:
        return data
    if pad < 8:
        pad += chunk
    return data + struct.pack(">I4s", pad, FREE_BOX) + bytes(pad - 8)


@dataclass(frozen=True)
class Interrupted:
    """A recording that was running when the agent stopped without sealing (power cut)."""

    stream: str
    recording: str
    trigger: str
    mode: str
    started_utc: str
    next_part: int
    last_durable_utc: float | None
    resume: bool  # False when a stop had been asked (it is not resumed)
    recovered: list[dict[str, Any]] = field(default_factory=list)
    # False when an earlier start already reported this interruption and was cut before the
    # resumed recording wrote its state (no second recording_interrupted event).
    reported: bool = True


@dataclass
class _Open:
    jid: str
    recording: str
    part: int
    path: Path
    fd: int
    body: BodyWriter
    start_utc: float
    start_mono_ns: int


@dataclass
class JournalStats:
    fragments: int = 0
    bytes: int = 0  # bytes appended to bodies
    fsyncs: int = 0  # file and directory fsyncs issued by the journal
    failures: int = 0
    sealed: int = 0
    recovered: int = 0


class SegmentJournal:
    """Open parts of one spool's streams, fragment by fragment. See the module docstring."""

    def __init__(self, spool: Spool, *, chunk_size: int = JOURNAL_CHUNK) -> None:
        self.spool = spool
        self.chunk_size = chunk_size
        self.dir = spool.root / "journal" / "seg"
        makedirs_durable(self.dir)
        self._open: dict[str, _Open] = {}
        self._broken: dict[str, tuple[str, int]] = {}  # stream -> (recording, part) not journaled
        self._state: dict[str, dict[str, Any]] = {}
        self.stats = JournalStats()

    # ------------------------------------------------------------------ recording state

    def _state_path(self, stream: str) -> Path:
        return self.dir / f"{stream}.state"

    def set_recording(self, stream: str, state: dict[str, Any] | None) -> None:
        """Keep the recording in progress durably (``None``: no recording any more)."""
        path = self._state_path(stream)
        if state is None:
            self._state.pop(stream, None)
            removed = False
            for p in (path, *self._stale_sidecars(stream)):
                if p.exists():
                    p.unlink()
                    removed = True
            if removed:
                self._fsync_dir()
            return
        record = {"v": STATE_VERSION, "stream": stream, **state}
        self._state[stream] = record
        write_atomic(path, canonical_json(record))
        self.stats.fsyncs += 2

    def _stale_sidecars(self, stream: str, keep: Path | None = None) -> list[Path]:
        """Sidecars no longer needed: their body is gone (sealed or discarded). A body left
        on disk (a part whose journal failed) keeps its sidecar for recovery."""
        return [
            side
            for side in self.dir.glob(f"{stream}-*.json")
            if side != keep and not side.with_suffix(".body").exists()
        ]

    # ------------------------------------------------------------------ fragments

    def append(
        self,
        stream: str,
        recording: str,
        part: int,
        data: bytes,
        *,
        start_utc: float,
        start_mono_ns: int,
    ) -> bool:
        """Make one fragment (with the init boxes if it opens the part) durable.

        Returns False if this part is not journaled (an earlier failure): its segment is then
        sealed from memory. Raises OSError when the write fails (the caller reports it).
        """
        if self._broken.get(stream) == (recording, part):
            return False
        op = self._open.get(stream)
        if op is not None and (op.recording, op.part) != (recording, part):
            log.warning(
                "journal: %s part %s/%d left open when %s/%d began; abandoned to recovery",
                stream, op.recording, op.part, recording, part,
            )  # fmt: skip
            os.close(op.fd)
            del self._open[stream]
            op = None
        try:
            if op is None:
                op = self._open_part(stream, recording, part, start_utc, start_mono_ns)
            frames = self._frames(op.body, padded(data, self.chunk_size))
            _write_all(op.fd, frames)
            self._sync_fragment(op.fd)
        except OSError:
            self.stats.failures += 1
            self._break(stream, recording, part)
            raise
        self.stats.fsyncs += 1
        self.stats.fragments += 1
        self.stats.bytes += len(frames)
        return True

    def _sync_fragment(self, fd: int) -> None:
        """The one fsync per fragment: after it, the fragment survives a power cut."""
        os.fsync(fd)

    def _frames(self, body: BodyWriter, data: bytes) -> bytes:
        c = self.chunk_size
        return b"".join(body.frame(data[i : i + c]) for i in range(0, len(data), c))

    def _open_part(
        self, stream: str, recording: str, part: int, start_utc: float, start_mono_ns: int
    ) -> _Open:
        makedirs_durable(self.dir)  # back, if something removed it
        key_id = self.spool.ensure_key_stored()
        key = self.spool.sealer.current_key()
        if key.key_id != key_id:  # the epoch turned in between: store the new one
            self.spool.ensure_key_stored()
        body = self.spool.sealer.open_body(key, self.chunk_size)
        jid = uuid.uuid4().hex
        sidecar = {
            "v": STATE_VERSION,
            "stream": stream,
            "journal": jid,
            "recording": recording,
            "part": part,
            "key_id": key.key_id,
            "salt": body.salt.hex(),
            "cipher": body.cipher,
            "chunk_size": self.chunk_size,
            "content_type": self._content_type(stream),
            "boot": self.spool.sealer.boot_id,
            "start_utc": start_utc,
            "start_mono_ns": start_mono_ns,
        }
        # Sidecar first (written and synced), then the body with its prefix, then one
        # directory fsync makes both names durable; the previous part's sidecar goes with it.
        side = self.dir / f"{stream}-{jid}.json"
        tmp = self.dir / f".{stream}-{jid}.json.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, canonical_json(sidecar))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, side)
        path = self.dir / f"{stream}-{jid}.body"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        _write_all(fd, BodyWriter.prefix())
        os.fsync(fd)
        for old in self._stale_sidecars(stream, keep=side):
            old.unlink()
        self._fsync_dir()
        self.stats.fsyncs += 2
        op = _Open(jid, recording, part, path, fd, body, start_utc, start_mono_ns)
        self._open[stream] = op
        self._broken.pop(stream, None)
        return op

    def _content_type(self, stream: str) -> str:
        return "audio/mp4" if stream == "audio" else "video/mp4"

    def _break(self, stream: str, recording: str, part: int) -> None:
        """Stop journaling this part (its segment will be sealed from memory); what reached
        the disk stays for recovery until that segment is sealed."""
        self._broken[stream] = (recording, part)
        op = self._open.pop(stream, None)
        if op is not None:
            with contextlib.suppress(OSError):
                os.close(op.fd)

    def is_open(self, stream: str, recording: str, part: int) -> bool:
        op = self._open.get(stream)
        return op is not None and (op.recording, op.part) == (recording, part)

    def seal(self, header: SegmentHeader, recording: str, part: int) -> PutResult:
        """Seal the open part as ``header`` describes (the spool renames the body in place)."""
        stream = header.stream
        op = self._open.get(stream)
        if op is None or (op.recording, op.part) != (recording, part):
            raise SpoolError(f"journal: {stream} part {recording}/{part} is not open")
        del self._open[stream]
        try:
            _write_all(op.fd, op.body.frame(FINAL_CHUNK, last=True))
        finally:
            os.close(op.fd)
        # The journal's id goes into the manifest as its batch (in clear: the device reads it
        # back without the key): a segment renamed into place but not indexed before a cut is
        # adopted with it, so recovery knows it was sealed.
        header = dataclasses.replace(header, batch=op.jid)
        result = self.spool.put_streamed(header, op.path, op.body, batch_id=op.jid)
        self.stats.fsyncs += 2
        self.stats.sealed += 1
        return result

    def discard(self, stream: str, recording: str, part: int) -> None:
        """The part's segment was sealed from memory: drop what its journal holds."""
        if self._broken.get(stream) == (recording, part):
            del self._broken[stream]
        for body in self.dir.glob(f"{stream}-*.body"):
            side = body.with_suffix(".json")
            try:
                info = boundedjson.loads(side.read_bytes(), str(side))
            except (OSError, FormatError):
                continue
            if info.get("recording") == recording and info.get("part") == part:
                body.unlink()
                self._fsync_dir()

    def close(self) -> None:
        """Close open files (shutdown after sealing; what is open stays for recovery)."""
        for op in self._open.values():
            os.close(op.fd)
        self._open.clear()

    def _fsync_dir(self) -> None:
        fsync_dir(self.dir)
        self.stats.fsyncs += 1

    # ------------------------------------------------------------------ recovery

    def streams_present(self) -> set[str]:
        """Streams with anything in the journal (a state, a sidecar or a body)."""
        out: set[str] = set()
        for path in self.dir.iterdir():
            name = path.name
            if name.startswith("."):
                continue
            if name.endswith(".state"):
                out.add(name.removesuffix(".state"))
            elif name.endswith((".json", ".body")) and len(name) > 38 and name[-38] == "-":
                out.add(name[:-38])  # <stream>-<32 hex digits>.json|body
        return out

    def recover(self, stream: str, *, resume: bool = True) -> Interrupted | None:
        """After any stop: seal what the journal of ``stream`` holds as recovered segments,
        record a ``recording_interrupted`` event, and say whether a recording is to resume
        (never with ``resume=False``: no recorder runs for that stream now)."""
        state = self._read_state(stream)
        sidecars: dict[str, dict[str, Any]] = {}
        for side in sorted(self.dir.glob(f"{stream}-*.json")):
            try:
                info = _check_sidecar(boundedjson.loads(side.read_bytes(), str(side)), stream)
            except (OSError, FormatError) as exc:
                self._quarantine(side, f"unreadable journal sidecar: {exc}")
                continue
            sidecars[info["journal"]] = info
        recovered: list[dict[str, Any]] = []
        last_durable: float | None = None
        for body in sorted(self.dir.glob(f"{stream}-*.body")):
            jid = body.stem.removeprefix(f"{stream}-")
            params = sidecars.get(jid)
            if params is None:
                self._quarantine(body, "a journal body without its sidecar (key, salt)")
                continue
            mtime = body.stat().st_mtime
            item = self._recover_body(stream, body, params)
            if item is not None:
                recovered.append(item)
                if item["chunks"]:
                    last_durable = max(last_durable or 0.0, mtime)
            body.unlink(missing_ok=True)
            self._fsync_dir()
        for stray in self.dir.glob(f".{stream}*.part"):
            stray.unlink()
        if state is None:
            for side in self.dir.glob(f"{stream}-*.json"):
                side.unlink()
            if recovered:
                self.spool.put_event(
                    "journal_recovered", {"stream": stream, "recovered": recovered}
                )
            return None
        next_part = int(state.get("next_part", 0))
        for info in sidecars.values():
            if info["recording"] != state["recording"]:
                continue
            sealed = self.spool.batch_sealed(info["journal"])
            next_part = max(next_part, info["part"] + 1 if sealed else info["part"])
        resume = resume and not state.get("stop_requested", False)
        already = bool(state.get("recovered")) and not recovered
        interrupted = Interrupted(
            stream=stream,
            recording=str(state["recording"]),
            trigger=str(state.get("trigger", "")),
            mode=str(state.get("mode", "")),
            started_utc=str(state.get("started_utc", "")),
            next_part=next_part,
            last_durable_utc=last_durable,
            resume=resume,
            recovered=recovered,
            reported=not already,
        )
        if already:
            return interrupted  # reported at an earlier start that was cut before it resumed
        self.spool.put_event(
            "recording_interrupted",
            {
                "stream": stream,
                "recording": interrupted.recording,
                "trigger": interrupted.trigger,
                "mode": interrupted.mode,
                "started_utc": interrupted.started_utc,
                "last_durable_utc": None if last_durable is None else format_utc(last_durable),
                "recovered": recovered,
                "resumes": resume,
                "reason": "the agent stopped without sealing (power cut, crash or kill)",
            },
        )
        log.warning(
            "journal: %s recording %s was interrupted (%d parts recovered); %s",
            stream,
            interrupted.recording,
            len(recovered),
            "resuming it" if resume else "a stop had been asked: not resumed",
        )
        if resume:
            # Reported: a second start before the resumed recording writes its state again
            # (a cut during this one) resumes without a second event.
            write_atomic(self._state_path(stream), canonical_json({**state, "recovered": True}))
        else:
            self.set_recording(stream, None)
        return interrupted

    def _read_state(self, stream: str) -> dict[str, Any] | None:
        path = self._state_path(stream)
        if not path.exists():
            return None
        try:
            state = boundedjson.loads(path.read_bytes(), str(path))
            if not isinstance(state.get("recording"), str) or not state["recording"]:
                raise FormatError(f"{path}: no recording id")
        except (OSError, FormatError) as exc:
            self._quarantine(path, f"unreadable recording state: {exc}")
            return None
        return dict(state)

    def _recover_body(self, stream: str, path: Path, info: dict[str, Any]) -> dict[str, Any] | None:
        jid = info["journal"]
        data = path.read_bytes()
        whole, chunks, torn = whole_frames(data, info["chunk_size"])
        item: dict[str, Any] = {
            "part": info["part"],
            "journal": jid,
            "chunks": chunks,
            "torn_bytes": torn,
            "seq": None,
        }
        if self.spool.batch_sealed(jid):
            return None  # sealed before the stop, only its removal was cut short
        if data[:6] != SEG_MAGIC:
            self._quarantine(path, "journal body with a bad prefix")
            return {**item, "chunks": 0, "torn_bytes": len(data), "unreadable": True}
        if chunks == 0:
            return item  # nothing durable was promised from this part
        now = wallclock.now()
        mono = time.monotonic_ns()
        end = max(path.stat().st_mtime, float(info["start_utc"]))
        meta = {
            "recovered": True,
            "recording": info["recording"],
            "part": info["part"],
            "final": False,
            "inner_content_type": info["content_type"],
            "inner_key_id": info["key_id"],
            "inner_salt": info["salt"],
            "inner_cipher": info["cipher"],
            "inner_chunk_size": info["chunk_size"],
            "inner_chunks": chunks,
            "torn_bytes": torn,
            "captured_boot": info["boot"],
            "captured_start_mono_ns": info["start_mono_ns"],
        }
        result = self.spool.put(
            SegmentHeader(
                stream=stream,
                content_type=RECOVERED_CONTENT_TYPE,
                start_utc=float(info["start_utc"]),
                end_utc=min(end, now),
                # Monotonic times of this boot (the capture boot's are in meta): a verifier
                # compares start_mono_ns only within one boot.
                start_mono_ns=mono,
                end_mono_ns=mono,
                clock=self.spool.clock_state(),
                meta=meta,
                batch=jid,
            ),
            [whole],
            batch_id=jid,
        )
        self.stats.recovered += 1
        item["seq"] = result.seq
        log.warning(
            "journal: sealed %s part %s/%d recovered after a stop (%d chunks, %d torn bytes)",
            stream, info["recording"], info["part"], chunks, torn,
        )  # fmt: skip
        return item

    def _quarantine(self, path: Path, why: str) -> None:
        dest = self.spool.root / "quarantine" / f"{int(wallclock.now())}-{path.name}"
        log.error("journal: moving %s to quarantine: %s", path, why)
        os.replace(path, dest)
        fsync_dir(dest.parent)
        self._fsync_dir()
        try:
            self.spool.put_event("journal_unreadable", {"file": path.name, "reason": why})
        except (OSError, SpoolError) as exc:
            log.error("journal: cannot record that %s was unreadable: %s", path.name, exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _check_sidecar(info: Any, stream: str) -> dict[str, Any]:
    fields: dict[str, type | tuple[type, ...]] = {
        "journal": str,
        "recording": str,
        "part": int,
        "key_id": str,
        "salt": str,
        "cipher": str,
        "chunk_size": int,
        "content_type": str,
        "boot": str,
        "start_utc": (int, float),
        "start_mono_ns": int,
    }
    for name, tp in fields.items():
        if not isinstance(info.get(name), tp) or isinstance(info.get(name), bool):
            raise FormatError(f"field {name!r} missing or of the wrong type")
    if info.get("stream") != stream or not 16 <= info["chunk_size"] <= 16 * 1024 * 1024:
        raise FormatError("stream or chunk size out of range")
    return dict(info)


def whole_frames(data: bytes, chunk_size: int) -> tuple[bytes, int, int]:
    """The prefix and whole frames of a journal body (every frame but a final one is
    ``4 + chunk_size + 16`` bytes): (those bytes, how many frames, torn bytes after them).

    Frames are taken by position, not by their length field, so a corrupted length does not
    hide the frames after it; whether each frame authenticates is for the key holder to say.
    """
    stride = 4 + chunk_size + TAG_LEN
    if len(data) < PREFIX_LEN:
        return b"", 0, len(data)
    n = (len(data) - PREFIX_LEN) // stride
    end = PREFIX_LEN + n * stride
    rest = data[end:]
    if len(rest) >= 4 + TAG_LEN:
        (ln,) = struct.unpack_from(">I", rest)
        if TAG_LEN <= ln < chunk_size + TAG_LEN and 4 + ln <= len(rest):
            end += 4 + ln  # the final (short) frame: the part had been completed
            n += 1
    return data[:end], n, len(data) - end
