"""Stream heads: after a change (and on each new connection) the forwarder publishes, retained
and signed with the device key, each stream's last sealed seq and manifest hash and how many
of its segments are not yet acknowledged (agent.uplink.heads), at most every ``HEADS_EVERY_S``.
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
    _heads_state: object
    _heads_generation: int  # the connection the last heads went out on

    def _send_heads(self) -> None:
        """Publish the signed stream heads when they changed (retained; see heads.py)."""
        if self._heads_key is None:
            return
        now = self._clock()
        if now < self._heads_due:
            return
        self._heads_due = now + HEADS_EVERY_S
        chains = self.spool.chain_state()
        pending = {s: b.count for s, b in self.spool.backlog().items()}
        state = (sorted(chains.items()), sorted(pending.items()))
        if state == self._heads_state:
            return
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
            self.stats.heads_sent += 1
