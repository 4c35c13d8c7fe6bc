"""Stream heads: the forwarder publishes, retained and signed with the device key, each
stream's last sealed seq and manifest hash and how many of its segments are not yet
acknowledged (agent.uplink.heads): on each new connection, and after a change the platform
has not learned otherwise, at most every ``HEADS_EVERY_S``.

What the platform learns otherwise (protocol 4): a stream whose last sealed segment the
platform itself acknowledged (a signed ``seg`` acknowledgement naming its seq and manifest
hash) holds no news for it: the stored segment is its own signed head. So in steady state
(a segment sealed, sent and acknowledged within seconds) no heads message follows each
segment; heads go out when a change stays unacknowledged for ``HEADS_GRACE_S`` (a backlog,
the platform away, a segment lost on the way, an evicted one), and on each connection.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import wallclock
from agent.storage.spool import Spool
from agent.uplink import heads as heads_msg
from agent.uplink import protocol as proto
from agent.uplink.mqtt import MqttLink
from agent.uplink.uploads import ForwarderStats

HEADS_EVERY_S = 2.0  # the signed stream heads go out at most this often
# A change the platform has not acknowledged for this long goes out as signed heads.
HEADS_GRACE_S = 5.0
# How often the forwarder looks for news at most (two index queries each time): not every
# round of its loop, which runs per broker acknowledgement while a backlog drains.
HEADS_CHECK_S = 0.25

# One stream's entry in the state compared between publications: (seq, hash, pending), or
# ("stored", seq, hash) when the platform acknowledged that head segment itself.
_Entry = tuple[object, ...]


class StreamHeads:
    """Publishes the signed stream heads (a part of the Forwarder)."""

    spool: Spool
    link: MqttLink
    topics: proto.Topics
    stats: ForwarderStats
    device_id: str
    _clock: Callable[[], float]
    _heads_key: Ed25519PrivateKey | None
    _heads_due: float
    _heads_state: dict[str, _Entry] | None  # as last published (None: due on this connection)
    _heads_generation: int  # the connection the last heads went out on
    _heads_news_since: float | None  # when a change the platform lacks was first seen
    _platform_has: dict[str, tuple[int, str]]  # per stream, the highest segment acknowledged

    def _heads_now(self) -> tuple[dict[str, _Entry], dict[str, tuple[int, str | None]]]:
        chains = self.spool.chain_state()
        pending = {s: b.count for s, b in self.spool.backlog().items()}
        state: dict[str, _Entry] = {}
        for stream, (next_seq, last_hash) in chains.items():
            if next_seq <= 0 or last_hash is None:
                continue
            head = (next_seq - 1, last_hash)
            if self._platform_has.get(stream) == head:
                state[stream] = ("stored", *head)
            else:
                state[stream] = (*head, pending.get(stream, 0))
        return state, chains

    def heads_news(self) -> bool:
        """True while a change the platform has not learned waits to go out as heads."""
        return self._heads_news_since is not None or self._heads_state is None

    def _send_heads(self) -> None:
        """Publish the signed stream heads when they hold news for the platform (retained;
        see heads.py and the module docstring)."""
        if self._heads_key is None:
            return
        now = self._clock()
        if now < self._heads_due:
            return
        state, chains = self._heads_now()
        last = self._heads_state
        if last is not None:
            news = any(
                entry[0] != "stored" and last.get(stream) != entry
                for stream, entry in state.items()
            )
            # Looked at: the next look after HEADS_CHECK_S, at the earliest.
            self._heads_due = now + HEADS_CHECK_S
            if not news:
                self._heads_news_since = None
                return
            if self._heads_news_since is None:
                self._heads_news_since = now
            if now - self._heads_news_since < HEADS_GRACE_S:
                return  # the segment itself may tell the platform: give it time
        self._heads_due = now + HEADS_EVERY_S
        pending = {s: b.count for s, b in self.spool.backlog().items()}
        payload = heads_msg.sign_heads(
            self._heads_key,
            self.device_id,
            str(getattr(self.spool.sealer, "boot_id", "") or "unknown"),
            wallclock.now(),
            chains,
            pending,
        )
        sent = self.link.publish(self.topics.heads, payload, qos=1, retain=True)
        if sent is not None:
            self._heads_state, self._heads_generation = state, sent.generation
            self._heads_news_since = None
            self.stats.heads_sent += 1
