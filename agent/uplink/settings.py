"""Settings of the MQTT uplink."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config.fields import at_least, check, in_range, one_of, port_number


@dataclass(frozen=True)
class UplinkSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=8883, metadata=check(port_number))
    protocol: str = field(default="mqtt5", metadata=check(one_of("mqtt5", "mqtt311")))
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # Server name checked against the broker certificate (defaults to host).
    server_name: str = ""
    keepalive_s: int = field(default=30, metadata=check(at_least(5)))
    # Bytes per second for the backfill lane; 0 = unlimited.
    bandwidth_bps: int = field(default=0, metadata=check(at_least(0)))
    priority: tuple[str, ...] = ("event", "gps", "still", "audio", "video")
    # MQTT 5 session expiry: how long the broker keeps our subscriptions and queued downlink.
    session_expiry_s: int = field(default=7 * 86400, metadata=check(at_least(0)))
    connect_timeout_s: float = field(default=10.0, metadata=check(in_range(1, 300)))
    # Reconnect backoff (exponential with jitter, never giving up).
    backoff_min_s: float = field(default=1.0, metadata=check(in_range(0.01, 60)))
    backoff_max_s: float = field(default=60.0, metadata=check(in_range(0.1, 3600)))
    # Largest chunk payload when the broker announces no maximum packet size (AWS IoT: 128 KiB).
    max_chunk_kib: int = field(default=128, metadata=check(in_range(1, 256 * 1024)))
    # Chunks published and not yet acknowledged by the broker (PUBACK) ...
    window: int = field(default=8, metadata=check(in_range(1, 1000)))
    # ... and their bytes: a live message waits behind at most this much backfill (on a
    # 20 Mbit/s link 512 KiB is 200 ms, and still more than its bandwidth-delay product).
    window_kib: int = field(default=512, metadata=check(in_range(1, 1024 * 1024)))
    # ... and, on a slow link, as many bytes as it drains in this long (measured from the
    # broker's PUBACKs): how long a live message waits behind backfill, about.
    live_wait_s: float = field(default=1.0, metadata=check(in_range(0.1, 60)))
    # Bytes sent beyond what the platform has confirmed; keeps the broker's per-client queue
    # (mosquitto: 1000 messages) far from full when the platform is slow or away.
    platform_window_kib: int = field(default=8192, metadata=check(in_range(1, 1024 * 1024)))
    # Segments sent and awaiting the platform's acknowledgement.
    max_segments_in_flight: int = field(default=256, metadata=check(in_range(1, 900)))
    # Live fixes: "binary" (protocol 3: the 28-byte wire fix and the vehicle's fields, about
    # 60 bytes on the wire) or "json" (protocol 2, ~230 bytes), for an ingest older than
    # protocol 3, which cannot read binary fixes (docs/protocol.md, "Versions").
    live_fix: str = field(default="binary", metadata=check(one_of("binary", "json")))
    # MQTT 5 topic aliases: each topic is named once per connection, then sent as a 2-byte
    # alias (at most the broker's Topic Alias Maximum; mosquitto's default is 10). 0 = off.
    topic_aliases: int = field(default=8, metadata=check(in_range(0, 65535)))
    # Small segments travel several to a message (a bundle, protocol 3) up to this many KiB
    # (at most the chunk size); 0 = one segment per message. A platform that never
    # acknowledges a bundled segment gets single chunks for the rest of the connection.
    bundle_kib: int = field(default=128, metadata=check(in_range(0, 256 * 1024)))
    # A fresh small segment goes in the compact form of protocol 4 (its manifest coded against
    # the stream's last acknowledged one, ~1/3 of the bytes; docs/protocol.md). A platform that
    # never answers one gets chunks for the rest of the connection. false = always chunks.
    compact: bool = True
    # Without word from the platform for this long, resend from its last confirmed byte.
    ack_timeout_s: float = field(default=20.0, metadata=check(in_range(0.1, 3600)))
    # The platform's Ed25519 command-signing public key (PEM); no commands without it.
    command_key: Path | None = None
    # The platform's Ed25519 acknowledgement-signing public key (PEM, `ack.pub`). With it, a
    # segment leaves the spool only on an acknowledgement signed by the platform; without it
    # (a laboratory) any client that may publish on devices/<id>/down/ack can make the device
    # delete evidence, and the agent says so at every start. `edge-agent provision` installs it.
    ack_key: Path | None = None
    # Where the command channel remembers the ids it has seen (replay protection).
    state_dir: Path = Path("/var/lib/edge-agent/uplink")
    # Longest lifetime a signed command may carry, and the clock skew tolerated.
    command_max_ttl_s: int = field(default=3600, metadata=check(in_range(1, 7 * 86400)))
    command_skew_s: int = field(default=300, metadata=check(in_range(0, 86400)))
