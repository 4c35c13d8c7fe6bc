"""Compact segments (protocol 4, agent.uplink.compact): a fresh small segment goes as one
message without what the platform can rebuild, its manifest coded against the manifest of the
stream's last segment the platform acknowledged (the **base**, kept in memory: after a restart
the first one goes without a base).

The first compact segment on a connection is a probe, as bundles are: until the platform
answers for it, no other compact segment goes (the next small segments wait for that answer).
An answer turns the compact form on for as long as the device runs; ``ack_timeout_s`` of
silence turns it off for the connection (a platform of protocol 3 drops the message as a
malformed chunk) and the segment goes again as a chunk. A ``plain`` answer (the platform
lacks the base) sends that segment again as a chunk, and that stream's next ones without a
base. A resend is always a chunk.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from agent.uplink import compact
from agent.uplink.bundles import Bundling
from agent.uplink.uploads import IDLE_POLL_S, Upload

log = logging.getLogger("agent.uplink.forwarder")

RECENT = 1024  # acknowledged segments whose hashes are kept to check late compact answers


class CompactSending(Bundling):
    """Sends fresh small segments in the compact form (a part of the Forwarder)."""

    # Does the platform take compact segments? None: not known on this connection (one probe
    # may go); False: it answered none (chunks until the next connection); True: it answered.
    _compact: bool | None
    _compact_probe_out: bool
    _bases: dict[str, compact.Base]  # per stream: the last manifest the platform acknowledged
    # per stream: (seq, segment bytes) acknowledged after _bases[stream], its manifest not yet
    # taken out (only when a compact segment of that stream goes: a batch acknowledges many)
    _bases_unsplit: dict[str, tuple[int, bytes]]
    _unbased: set[str]  # streams whose base the platform did not have
    _recent: OrderedDict[tuple[str, int], str]  # (stream, seq) -> manifest hash, acknowledged
    _keys_compact: set[str]  # key records sent compact, not answered yet (this connection)

    def _answered(self, u: Upload) -> None:
        """The platform said something about ``u``: whatever form it went in works."""
        super()._answered(u)
        self._compact_answered(u)

    def _compact_answered(self, u: Upload) -> None:
        if u.compact:
            u.compact = False
            if self._compact is not True:
                log.info("uplink: the platform takes compact segments (protocol 4)")
            self._compact = True
            self._compact_probe_out = False

    def _compact_waits(self, u: Upload) -> bool:
        """``u`` could go compact, but the probe has not been answered yet."""
        return (
            self.settings.compact
            and self._compact is None
            and self._compact_probe_out
            and u.fresh
            and u.data is not None
        )

    def _compact_silent(self, u: Upload) -> None:
        """No answer for ``u`` within ``ack_timeout_s``."""
        if u.compact and self._compact is not True:
            if self._compact is None:
                log.warning(
                    "uplink: the platform answered nothing of a compact segment (protocol 3?): "
                    "chunks until the next connection"
                )
            self._compact = False
            self._compact_probe_out = False
        u.compact = False

    def _send_compact(self, u: Upload) -> float | None:
        """Send ``u`` compact if it may go so: the wait, or None (send it otherwise)."""
        if (
            not self.settings.compact
            or self._compact is False
            or (self._compact is None and self._compact_probe_out)
            or not u.fresh
            or u.data is None
        ):
            return None
        stream = u.item.stream
        base = self._base(stream)
        if base is not None and (base.seq >= u.item.seq or stream in self._unbased):
            base = None
        payload = compact.encode_segment(u.data, u.item.seq, base)
        if payload is None:
            return None
        delay = self._bucket.delay(len(payload))
        if delay > 0:
            return delay
        sent = self.link.publish(self.topics.segment(stream), payload, qos=1)
        if sent is None:
            return IDLE_POLL_S
        self._unacked.append((sent, len(payload)))
        self._counter += 1
        u.sent_at[0] = self._counter
        u.next = u.high = u.size
        u.last_word = self._clock()
        u.compact = True
        if self._compact is None:
            self._compact_probe_out = True
        self.stats.compact_sent += 1
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += u.size
        return 0.0

    def _compact_acked(self, u: Upload) -> None:
        """The platform acknowledged ``u`` (signed): its manifest is the stream's next base."""
        key = (u.item.stream, u.item.seq)
        self._recent[key] = u.item.manifest_hash
        self._recent.move_to_end(key)
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        if u.data is None:
            return
        stream, seq = u.item.stream, u.item.seq
        old = self._bases.get(stream)
        later = self._bases_unsplit.get(stream)
        if (old is None or old.seq < seq) and (later is None or later[0] < seq):
            self._bases_unsplit[stream] = (seq, u.data)

    def _base(self, stream: str) -> compact.Base | None:
        """The stream's base: the manifest of its last segment the platform acknowledged."""
        later = self._bases_unsplit.pop(stream, None)
        if later is not None:
            try:
                _body, manifest, _sig = compact.split_segment(later[1])
            except Exception:  # not a version 2 segment: no base from it (the older one stays)
                pass
            else:
                self._bases[stream] = compact.Base(later[0], manifest)
        return self._bases.get(stream)

    def _key_record(self, kid: str, record: bytes) -> bytes:
        """What to publish for key record ``kid``: its compact form while the platform may
        take it; plain when the compact one went unanswered (a platform of protocol 3 finds
        it unreadable and answers nothing), which also turns the compact form off for the
        connection."""
        if kid in self._keys_compact:
            self._keys_compact.discard(kid)
            if self._compact is not True:
                if self._compact is None:
                    log.warning(
                        "uplink: the platform answered nothing of a compact key record "
                        "(protocol 3?): plain forms until the next connection"
                    )
                self._compact = False
            return record
        if not self.settings.compact or self._compact is False:
            return record
        payload = compact.encode_key_record(record)
        if payload is None:
            return record
        self._keys_compact.add(kid)
        return payload

    def _key_answered(self, kid: str) -> None:
        if kid in self._keys_compact:
            self._keys_compact.discard(kid)
            self._compact = True

    def _resolve(self, stream: str, seq: int) -> str | None:
        """The manifest hash of this device's segment (stream, seq), if it knows it."""
        for u in self._uploads:
            if u.item.stream == stream and u.item.seq == seq:
                return u.item.manifest_hash
        return self._recent.get((stream, seq))

    def _send_plain(self, stream: str, seq: int) -> None:
        """The platform could not rebuild compact segment (stream, seq): send it as a chunk,
        and that stream's next ones without a base."""
        self._unbased.add(stream)
        for u in self._uploads:
            if u.item.stream == stream and u.item.seq == seq and u.compact:
                self._compact_answered(u)
                log.info("uplink: the platform asks for %s#%d as a chunk", stream, seq)
                u.next = u.confirmed
                u.last_word = self._clock()
