"""Bundles (protocol 3): small segments of one stream travel several to a message, each whole
and acknowledged on its own (``uplink.bundle_kib``), so a backlog of GPS batches costs a
round trip per bundle, not per segment. The first bundle on a connection is a probe: a
platform that answers for none of its segments within ``ack_timeout_s`` (protocol 2 drops
bundles as malformed) gets them again as single chunks, and no more bundles on that
connection.
"""

from __future__ import annotations

import logging

from agent.storage.spool import SpoolItem
from agent.uplink import protocol as proto
from agent.uplink.socket_budget import SocketBudget
from agent.uplink.token_bucket import TokenBucket
from agent.uplink.uploads import IDLE_POLL_S, KIB, Upload, UploadTable

# The forwarder's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.uplink.forwarder")


class Bundling(UploadTable):
    """Sends fresh small segments of a stream as bundles (a part of the Forwarder)."""

    topics: proto.Topics
    _bucket: TokenBucket
    _unacked: SocketBudget  # backfill publishes not acknowledged by the broker
    _counter: int
    # Does the platform take bundles? None: not known on this connection (one probe
    # bundle may go); False: it answered none of a bundle (single chunks until the next
    # connection); True: it answered for a bundled segment.
    _bundles: bool | None
    _probe_out: bool

    def _answered(self, u: Upload) -> None:
        """The platform said something about ``u``: if it came in a bundle, bundles work."""
        if u.bundled:
            u.bundled = False
            if self._bundles is not True:
                log.info("uplink: the platform takes bundles of small segments (protocol 3)")
            self._bundles = True
            self._probe_out = False

    def _probing(self, u: Upload) -> bool:
        """``u`` could go in a bundle, but the probe bundle has not been answered yet."""
        return (
            self._bundles is None
            and self._probe_out
            and self.settings.bundle_kib > 0
            and u.fresh
            and u.data is not None
        )

    def _may_bundle(self, u: Upload) -> bool:
        if self.settings.bundle_kib <= 0 or self._bundles is False:
            return False
        if self._bundles is None and self._probe_out:
            return False  # one probe at a time until the platform answers
        return u.fresh and u.data is not None and self._bundle_size(u) <= self._bundle_cap()

    def _gather(self, first: Upload, unconfirmed: int, now: float) -> list[Upload]:
        """``first`` and more fresh small segments of its stream (started from the spool as
        needed) for one bundle, within the bundle size, the platform window and the limit
        of segments in flight."""
        cap = self._bundle_cap()
        room = self.settings.platform_window_kib * KIB - unconfirmed
        stream, kid = first.item.stream, first.item.key_id
        members, total = [first], self._bundle_size(first)

        def fits(size: int) -> bool:
            return total + size <= cap and total + size <= room and len(members) < proto.MAX_BUNDLE

        for v in self._uploads:
            if (
                v is not first
                and v.fresh
                and v.data is not None
                and v.item.stream == stream
                and v.item.key_id == kid
                and v.hold_until <= now
                and fits(self._bundle_size(v))
            ):
                members.append(v)
                total += self._bundle_size(v)

        def accept(item: SpoolItem) -> bool:
            return item.stream == stream and item.key_id == kid and fits(self._bundle_size(item))

        while len(self._uploads) < self.settings.max_segments_in_flight:
            w = self._start_next(accept)
            if w is None:
                break
            if not (w.fresh and w.data is not None):
                break  # resumed from stored progress, or larger than indexed: on its own
            members.append(w)
            total += self._bundle_size(w)
        return members

    def _send_bundle(self, members: list[Upload]) -> float:
        payload = proto.encode_bundle(
            [
                (
                    proto.ChunkHeader(
                        u.item.stream, u.item.seq, u.boot, u.item.manifest_hash, u.size, 0
                    ),
                    u.read(0, u.size),
                )
                for u in members
            ]
        )
        delay = self._bucket.delay(len(payload))
        if delay > 0:
            return delay
        sent = self.link.publish(self.topics.segment(members[0].item.stream), payload, qos=1)
        if sent is None:
            return IDLE_POLL_S
        self._unacked.append((sent, len(payload)))
        now = self._clock()
        self._counter += 1
        for u in members:
            u.sent_at[0] = self._counter
            u.next = u.high = u.size
            u.last_word = now
            u.bundled = True
            self.stats.bytes_sent += u.size
        if self._bundles is None:
            self._probe_out = True
        self.stats.bundles_sent += 1
        self.stats.segments_bundled += len(members)
        self.stats.chunks_sent += 1
        return 0.0
