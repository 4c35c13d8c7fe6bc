"""A reassembled (or whole) segment's checks before it is stored: its manifest hash, the
device and the chain it claims, the device's signature, and (with the platform key) that it
decrypts. A segment that fails is refused, or asked for again from byte 0 a few times when
its bytes may only have been damaged on the way.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import ids
from agent.errors import AgentError, VerificationError
from agent.ingest.device_keys import DeviceKeys
from agent.ingest.partials import Partial, PartialUploads
from agent.ingest.store_files import create_private
from agent.storage.seal import (
    SegmentInfo,
    decrypt_segment,
    open_meta,
    parse_key_record,
    read_segment_info,
    verify_segment,
)
from agent.uplink import protocol as proto

# The store's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.ingest.store")

MAX_RESETS = 3


def _why(exc: BaseException) -> str:
    """A refusal's reason: the message of our own errors, the type of anything else."""
    if isinstance(exc, AgentError):
        return str(exc)[:500]
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class SegmentChecks(DeviceKeys, PartialUploads):
    """Verifies and decrypts a complete segment (a part of the Store)."""

    platform_key: X25519PrivateKey | None

    def _verify(
        self, device: str, h: proto.ChunkHeader, f: BinaryIO, p: Partial | None
    ) -> tuple[SegmentInfo, Path | None] | list[proto.Ack]:
        """(info, decrypted plaintext file or None) of a segment that passes every check, or
        the acknowledgement that refuses it (or asks for it again)."""
        try:
            info = read_segment_info(f)
        except OSError:
            raise  # the store's disk, not the segment: the device is asked to retry
        except Exception as exc:  # FormatError, or anything a crafted manifest causes
            return self._reset_or_reject(device, h, p, f"unreadable: {_why(exc)}")
        if info.manifest_hash != h.hash:
            return self._reset_or_reject(
                device, h, p, "reassembled bytes do not carry the announced manifest hash"
            )
        try:
            self._check(device, h, f, info)
            return info, self._decrypt(device, f, info)
        except OSError:
            raise
        except Exception as exc:  # AgentError, or anything a crafted segment causes
            self.stats.rejected += 1
            log.warning("ingest: refused %s/%s: %s", device, h.label, _why(exc))
            self._drop_partial(device, h, known_only=p is None)
            return [proto.Reject("seg", _why(exc), h.stream, h.seq, h.hash)]

    def _reset_or_reject(
        self, device: str, h: proto.ChunkHeader, p: Partial | None, why: str
    ) -> list[proto.Ack]:
        resets = (p.resets if p is not None else MAX_RESETS) + 1
        self._drop_partial(device, h)
        if resets > MAX_RESETS:
            self.stats.rejected += 1
            return [proto.Reject("seg", f"{h.label}: {why}", h.stream, h.seq, h.hash)]
        log.warning("ingest: %s/%s %s; asking for it again from byte 0", device, h.label, why)
        fresh = self._load_partial(device, h)
        fresh.resets = resets
        return [proto.Progress(h.stream, h.seq, h.hash, 0, got=h.size)]

    def _check(self, device: str, h: proto.ChunkHeader, f: BinaryIO, info: SegmentInfo) -> None:
        m = info.manifest
        if info.device != device:
            raise VerificationError(
                f"{h.label} claims device {info.device!r} but was sent by {device!r}"
            )
        if (info.stream, info.seq, m["boot"]) != (h.stream, h.seq, h.boot):
            raise VerificationError(
                f"chunk header says {h.label} boot {h.boot}, manifest says "
                f"{info.stream}#{info.seq} boot {m['boot']}"
            )
        trusted = self._pin(device, m["device_pub"])
        verify_segment(f, info, trusted)
        prev = (
            self._stored_hash(self.seg_path(device, info.stream, info.seq - 1))
            if info.seq > 0
            else None
        )
        if info.seq == 0 and m["prev"] is not None:
            raise VerificationError(f"{h.label}: the first segment of a stream names a previous")
        if prev is not None and m["prev"] != prev:
            raise VerificationError(
                f"{h.label}: chain broken: prev {str(m['prev'])[:16]} but the stored "
                f"#{info.seq - 1} is {prev[:16]}"
            )
        after = (
            self.seg_path(device, info.stream, info.seq + 1) if info.seq + 1 < ids.MAX_SEQ else None
        )
        if after is not None and after.exists():
            with after.open("rb") as g:
                nxt = read_segment_info(g)
            if nxt.manifest["prev"] != info.manifest_hash:
                raise VerificationError(
                    f"{h.label}: chain broken: the stored #{info.seq + 1} names another prev"
                )
        if prev is None and info.seq > 0:
            log.info(
                "ingest: %s/%s arrived before #%d (gap for now)", device, h.label, info.seq - 1
            )

    def _decrypt(self, device: str, f: BinaryIO, info: SegmentInfo) -> Path | None:
        if self.platform_key is None:
            return None
        kpath = self.key_path(device, info.key_id)
        if not kpath.exists():
            self.stats.missing_keys += 1
            log.warning(
                "ingest: %s/%s: key record %s not received; stored sealed only",
                device,
                info.label,
                info.key_id,
            )
            return None
        rec = parse_key_record(kpath.read_bytes(), self._pinned(device))
        data_key = rec.unwrap(self.platform_key)
        open_meta(info, data_key)  # sealed meta (format v2) that does not open: refused
        out = self.tmp / f"{uuid.uuid4().hex}.bin"
        try:
            with create_private(out) as g:
                decrypt_segment(f, info, data_key, g.write)
                g.flush()
                self._fsync_fd(g.fileno())
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        self.stats.decrypted += 1
        return out
