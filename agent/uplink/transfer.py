"""Chunked transfer of stored segments, resumable: the backfill lane under the broker's
window, the platform window and the bytes/s cap; key records before the segments they open;
after a silence of ``ack_timeout_s`` a resend from the last byte the platform confirmed.
"""

from __future__ import annotations

import logging

from agent.errors import SpoolError
from agent.uplink.compact_lane import CompactSending
from agent.uplink.uploads import IDLE_POLL_S, KIB

# The forwarder's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.uplink.forwarder")


class ChunkedTransfer(CompactSending):
    """The backfill lane (a part of the Forwarder)."""

    _keys_acked: set[str]
    _keys_sent: dict[str, float]
    _keys_rejected: set[str]

    def _check_silence(self) -> None:
        now = self._clock()
        for u in self._uploads:
            waiting = u.next > u.confirmed or u.confirmed >= u.size
            if waiting and now - u.last_word > self.settings.ack_timeout_s:
                # All bytes confirmed but no acknowledgement: send the last chunk again so the
                # platform finishes (or says "duplicate").
                restart = (
                    u.confirmed if u.confirmed < u.size else max(0, u.size - self.chunk_size())
                )
                log.info(
                    "uplink: no word from the platform on %s#%d for %.0f s; resending from byte %d",
                    u.item.stream,
                    u.item.seq,
                    now - u.last_word,
                    restart,
                )
                self.stats.resends_after_silence += 1
                if u.bundled and self._bundles is not True:
                    if self._bundles is None:
                        log.warning(
                            "uplink: the platform answered nothing of a bundle (protocol 2?): "
                            "single chunks until the next connection"
                        )
                    self._bundles = False
                    self._probe_out = False
                u.bundled = False
                self._compact_silent(u)
                u.next = restart
                u.last_word = now

    def _send_backfill(self) -> float:
        if self.link.outstanding() >= self.settings.window or self._unacked.full():
            return IDLE_POLL_S  # woken by the PUBACK
        unconfirmed = sum(u.next - u.confirmed for u in self._uploads)
        if unconfirmed >= self.settings.platform_window_kib * KIB:
            return IDLE_POLL_S  # woken by the platform's progress
        now = self._clock()
        u = next((u for u in self._uploads if u.next < u.size and u.hold_until <= now), None)
        if u is None:
            if len(self._uploads) >= self.settings.max_segments_in_flight:
                return IDLE_POLL_S
            u = self._start_next()
            if u is None:
                return IDLE_POLL_S
        kid = u.item.key_id
        if kid not in self._keys_acked:
            if self.spool.key_acked(kid):
                self._keys_acked.add(kid)
            else:
                return self._send_key(kid)
        if self._may_bundle(u):
            members = self._gather(u, unconfirmed, now)
            if len(members) >= 2:
                return self._send_bundle(members)
        elif self._probing(u):
            return IDLE_POLL_S  # the probe's answer decides how this one goes: wait for it
        if self._compact_waits(u):
            return IDLE_POLL_S  # likewise for the compact form's probe
        wait = self._send_compact(u)
        if wait is not None:
            return wait
        n = min(self._unacked.chunk(self.chunk_size()), u.size - u.next)
        delay = self._bucket.delay(n)
        if delay > 0:
            return delay
        payload = u.chunk(u.next, n)
        if payload is None:
            log.error("uplink: %s is shorter than indexed; dropping it", u.item.path)
            self._remove(u)
            self._drop_upload(u, release=True)
            self._rejected.add(u.item.id)
            return 0.0
        sent = self.link.publish(self.topics.segment(u.item.stream), payload, qos=1)
        if sent is None:
            return IDLE_POLL_S  # not connected: woken by the reconnect
        self._unacked.append((sent, n))
        if u.next < u.high:
            self.stats.chunks_resent += 1
        if u.next == u.confirmed and u.next >= u.high:
            u.last_word = self._clock()
        self._counter += 1
        u.sent_at[u.next] = self._counter
        u.next += n
        u.high = max(u.high, u.next)
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += n
        return 0.0

    def _send_key(self, kid: str) -> float:
        if kid in self._keys_rejected:
            return IDLE_POLL_S
        now = self._clock()
        sent_at = self._keys_sent.get(kid)
        if sent_at is not None and now - sent_at < self.settings.ack_timeout_s:
            return IDLE_POLL_S  # woken by the key ack
        try:
            record = self.spool.key_record(kid)
        except SpoolError as exc:
            log.error("uplink: %s; its segments cannot be decrypted by the platform", exc)
            self._keys_rejected.add(kid)
            return 0.0
        payload = self._key_record(kid, record)
        if self.link.publish(self.topics.key, payload, qos=1) is not None:
            self._keys_sent[kid] = now
        elif payload is not record:
            self._keys_compact.discard(kid)  # not sent: nothing to wait for
        return IDLE_POLL_S
