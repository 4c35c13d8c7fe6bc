"""Spool -> key records + chunks -> the platform's acknowledgements -> spool.ack.

The class is put together from its parts, a module each in this package: ``uploads`` (the
segments in flight, started from the spool), ``transfer`` (the backfill lane: chunked,
resumable), ``bundles``, ``acks`` (signed acknowledgements, spool removal), ``live_lane``,
``stream_heads`` and ``token_bucket`` (the bytes/s cap).

Two lanes share one MQTT connection and one thread:

- **live**: the latest fix, alarms (newest first) and the latest status. Checked before every
  backfill chunk, so a live message waits at most for the chunks already in the socket (the
  broker window, ``window`` chunks), never for the backlog.
- **backfill**: stored segments, oldest first per stream, streams in ``priority`` order, under
  an optional bytes/s cap. A segment leaves the spool only on the **platform's** acknowledgement
  carrying its manifest hash; a broker PUBACK only frees a slot in the window.

Resume: the platform reports ``progress`` (bytes [0, next) of a segment held durably); the
forwarder stores it with ``spool.set_progress`` (in bytes) and after a reconnect, a restart or a
silence of ``ack_timeout_s`` resends from there, not from zero. A platform that reports a gap
(``got`` beyond ``next``) gets the missing bytes again unless they were already resent after the
chunk that revealed the gap.

Bundles (protocol 3): small segments of one stream travel several to a message, each whole
and acknowledged on its own (``uplink.bundle_kib``), so a backlog of GPS batches costs a
round trip per bundle, not per segment. The first bundle on a connection is a probe: a
platform that answers for none of its segments within ``ack_timeout_s`` (protocol 2 drops
bundles as malformed) gets them again as single chunks, and no more bundles on that
connection.

Flow control: at most ``window`` chunks unacknowledged by the broker, at most
``platform_window_kib`` bytes not yet confirmed by the platform and ``max_segments_in_flight``
segments awaiting acknowledgement, so the broker's per-client queue (mosquitto: 1000 messages)
never fills even when the platform is away.

Signed acknowledgements: with the platform's ack key (``uplink.ack_key``) only a batch signed
by it and naming this device counts (protocol.parse_acks); an unsigned or forged one deletes
nothing, is counted (``forged_acks``) and logged. A ``retry`` answer (the platform could not
store it for now) holds that segment or key record for ``after_s`` and then sends it again
from the last byte the platform confirmed.

Stream heads: on each new connection, and after a change the platform did not learn from the
acknowledged segment itself, the forwarder publishes, retained and signed with the device key,
each stream's last sealed seq and manifest hash and how many of its segments are not yet
acknowledged (agent.uplink.heads, agent.uplink.stream_heads), at most every ``HEADS_EVERY_S``.

Containment: every acknowledgement message is handled in its own ``try`` and acknowledged to
the broker whatever happens; the thread's loop outlives anything a round raises (reported once
per kind, then retried after a pause).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.contain import Failures
from agent.loops.guard import Guard
from agent.model import Alarm
from agent.storage.spool import Spool, SpoolItem
from agent.uplink import compact
from agent.uplink import protocol as proto
from agent.uplink.acks import AckHandling
from agent.uplink.live_lane import MAX_ALARMS, LiveLane
from agent.uplink.mqtt import MqttLink
from agent.uplink.settings import UplinkSettings
from agent.uplink.socket_budget import SocketBudget
from agent.uplink.stream_heads import HEADS_EVERY_S, StreamHeads
from agent.uplink.token_bucket import TokenBucket
from agent.uplink.uploads import IDLE_POLL_S, KIB, ForwarderStats, Upload, peek_segment

# Names the composition root, tests and benches import from here.
__all__ = ["HEADS_EVERY_S", "Forwarder", "ForwarderStats", "TokenBucket", "peek_segment"]

log = logging.getLogger(__name__)


class Forwarder(AckHandling, LiveLane, StreamHeads):
    """See the module docstring. ``run()`` is the thread body; live reports are thread-safe."""

    def __init__(
        self,
        spool: Spool,
        link: MqttLink,
        device_id: str,
        settings: UplinkSettings,
        stop: threading.Event,
        *,
        alarm: Callable[[Alarm], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ack_key: Ed25519PublicKey | None = None,
        heads_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.spool = spool
        self.link = link
        self.device_id = device_id
        self.topics = proto.Topics(device_id)
        if ack_key is None and settings.ack_key is not None:
            from agent.uplink.control import load_ack_public

            ack_key = load_ack_public(settings.ack_key)
        self._ack_key = ack_key
        if ack_key is None:
            log.warning(
                "uplink: no platform ack key (uplink.ack_key): acknowledgements are taken on "
                "trust; any client allowed to publish on %s can make this device delete "
                "evidence. Install the platform's ack.pub (edge-agent provision --ack-key)",
                self.topics.ack,
            )
        self._heads_key = heads_key if heads_key is not None else spool.sealer.signing_key
        self._heads_due = 0.0
        self._heads_state: dict[str, tuple[object, ...]] | None = None
        self._heads_generation = 0  # the connection the last heads went out on
        self._heads_news_since: float | None = None
        self._platform_has: dict[str, tuple[int, str]] = {}
        self._forged_logged = -1e18
        self.failures = Failures("uplink-forwarder", log)
        self.settings = settings
        self.stop = stop
        self._alarm = alarm or (lambda a: None)
        self._guard = Guard("uplink-forwarder", stop, log, alarm=alarm)
        self._clock = clock
        self.wake = link.wake
        self.acks = link.route(self.topics.ack)
        self.stats = ForwarderStats()
        self._bucket = TokenBucket(settings.bandwidth_bps, clock)
        self._max_chunk = settings.max_chunk_kib * KIB
        self._live_lock = threading.Lock()
        # guarded by _live_lock:
        self._fix: bytes | None = None
        self._status: bytes | None = None
        self._alarms: deque[bytes] = deque(maxlen=MAX_ALARMS)
        # owned by the forwarder thread:
        self._uploads: list[Upload] = []
        self._by_key: dict[tuple[str, int, str], Upload] = {}
        # Does the platform take bundles? None: not known on this connection (one probe
        # bundle may go); False: it answered none of a bundle (single chunks until the next
        # connection); True: it answered for a bundled segment.
        self._bundles: bool | None = None
        self._probe_out = False
        # The compact form (protocol 4, compact_lane.py): likewise per connection.
        self._compact: bool | None = None
        self._compact_probe_out = False
        self._bases: dict[str, compact.Base] = {}
        self._bases_unsplit: dict[str, tuple[int, bytes]] = {}
        self._unbased: set[str] = set()
        self._recent: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._keys_compact: set[str] = set()
        self._ready: deque[SpoolItem] = deque()
        self._ids: set[int] = set()  # spool ids of self._uploads
        # Backfill publishes not acknowledged by the broker, bounded by the link's measured
        # rate so a live message waits about uplink.live_wait_s behind them.
        self._unacked = SocketBudget(
            self.link.pending,
            lambda: self.link.generation,
            wait_s=self.settings.live_wait_s,
            cap=self.settings.window_kib * KIB,
        )
        self._ready_at = -1e9
        self._rejected: set[int] = set()
        self._keys_acked: set[str] = set()
        self._keys_sent: dict[str, float] = {}
        self._keys_rejected: set[str] = set()
        self._generation = 0
        self._counter = 0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ thread

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="uplink-forwarder")
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                # Any failure (a full disk, a broken file, a bug) is reported once per outage
                # and backed off; the thread goes on and the round is retried (agent/loops).
                with self._guard:
                    self.wake.clear()
                    wait = self._step()
                    if wait > 0:
                        self.wake.wait(min(wait, IDLE_POLL_S))
        finally:
            for u in self._uploads:
                self._drop_upload(u, release=True)
            self._uploads.clear()
            self._by_key.clear()
            self._ids.clear()

    def _step(self) -> float:
        """One round: acks, live, timeouts, then backfill messages while the broker's window
        has room (the live lane checked before each). Returns a wait."""
        gen = self.link.generation
        if gen != self._generation:
            self._generation = gen
            self._on_new_connection()
        self._drain_acks()
        if not self.link.connected:
            return IDLE_POLL_S
        self._send_live()
        self._send_heads()
        for mid, reason in self.link.failures().items():
            log.error("uplink: the broker refused publish %d: %s", mid, reason)
        self._check_silence()
        wait = self._send_backfill()
        for _ in range(self.settings.window - 1):
            if wait > 0 or self.stop.is_set():
                break
            self._send_live()
            wait = self._send_backfill()
        return wait

    def _on_new_connection(self) -> None:
        now = self._clock()
        if self._heads_generation != self._generation:
            # Say it again on this connection (unless it already went out on it: the link
            # may have connected between reading its generation and publishing the heads).
            self._heads_state = None
        self._keys_sent.clear()
        self._keys_compact.clear()
        if self._bundles is False:
            self._bundles = None  # the platform may have been upgraded: probe again
        self._probe_out = False
        if self._compact is False:
            self._compact = None
        self._compact_probe_out = False
        for u in self._uploads:
            if u.next != u.confirmed:
                log.debug("uplink: %s resumes at byte %d", u.item.stream, u.confirmed)
            u.next = u.confirmed
            u.last_word = now
            u.bundled = False  # sent again as chunks: an answer now says nothing of bundles
            u.compact = False

    # ------------------------------------------------------------------ figures

    def in_flight(self) -> int:
        return len(self._uploads)

    def socket_budget(self) -> int:
        """Bytes of backfill allowed in the socket now (by the link's measured rate)."""
        return self._unacked.budget()

    @property
    def acks_signed(self) -> bool:
        """True when only acknowledgements signed by the platform's ack key count."""
        return self._ack_key is not None
