"""The device's uplink, put together: one MQTT link, the forwarder and the command channel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import __version__
from agent.errors import ConfigError
from agent.model import Alarm
from agent.storage.spool import Spool
from agent.uplink import protocol as proto
from agent.uplink.control import CommandChannel, SeenIds, load_command_public
from agent.uplink.forwarder import Forwarder
from agent.uplink.mqtt import LinkConfig, MqttLink, Will
from agent.uplink.settings import UplinkSettings


def link_config(settings: UplinkSettings, client_id: str) -> LinkConfig:
    if settings.cert is None or settings.key is None or settings.ca is None:
        raise ConfigError("uplink.ca, uplink.cert and uplink.key: required for mutual TLS")
    return LinkConfig(
        host=settings.host,
        port=settings.port,
        client_id=client_id,
        ca=settings.ca,
        cert=settings.cert,
        key=settings.key,
        server_name=settings.server_name,
        protocol=settings.protocol,
        keepalive_s=settings.keepalive_s,
        session_expiry_s=settings.session_expiry_s,
        connect_timeout_s=settings.connect_timeout_s,
        backoff_min_s=settings.backoff_min_s,
        backoff_max_s=settings.backoff_max_s,
        receive_maximum=64,
        max_inflight=settings.window + 64,
        topic_aliases=settings.topic_aliases,
    )


class Uplink:
    """Builds and runs the uplink's threads; ``stop`` ends them all."""

    def __init__(
        self,
        settings: UplinkSettings,
        *,
        device_id: str,
        boot_id: str,
        spool: Spool,
        stop: threading.Event,
        alarm: Callable[[Alarm], None] | None = None,
        versions: dict[str, str] | None = None,
        heads_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.settings = settings
        self.topics = proto.Topics(device_id)
        self.spool = spool
        self.stop = stop
        self.boot_id = boot_id
        self._alarm = alarm
        self.versions = {"edge-agent": __version__, **(versions or {})}
        self.link = MqttLink(
            link_config(settings, device_id),
            stop,
            will=Will(self.topics.state, proto.last_will(boot_id)),
            birth=lambda: (self.topics.state, proto.birth(boot_id, self.versions, self.backlog())),
        )
        self.forwarder = Forwarder(
            spool, self.link, device_id, settings, stop, alarm=alarm, heads_key=heads_key
        )
        self.control: CommandChannel | None = None
        self._threads: list[threading.Thread] = []
        if settings.command_key is not None:
            self.control = CommandChannel(
                device_id,
                load_command_public(settings.command_key),
                SeenIds(settings.state_dir / "commands-seen.json"),
                max_ttl_s=settings.command_max_ttl_s,
                skew_s=settings.command_skew_s,
            )
            self.control.register("status", lambda args: self.status())
            self._commands = self.link.route(self.topics.command)

    def backlog(self) -> dict[str, Any]:
        return {
            s: {"count": b.count, "bytes": b.bytes, "oldest_age_s": b.oldest_age_s}
            for s, b in self.spool.backlog().items()
        }

    def status(self) -> dict[str, Any]:
        st = self.forwarder.stats
        return {
            "boot": self.boot_id,
            "versions": self.versions,
            "connected": self.link.connected,
            "backlog": self.backlog(),
            "in_flight": self.forwarder.in_flight(),
            "sent": {"chunks": st.chunks_sent, "bytes": st.bytes_sent},
            "acked": {"segments": st.segments_acked, "keys": st.keys_acked},
            "acks_signed": self.forwarder.acks_signed,
            "forged_acks": st.forged_acks,
        }

    def start(self) -> None:
        self._threads.append(self.link.start())
        self._threads.append(self.forwarder.start())
        if self.control is not None:
            control = self.control
            t = threading.Thread(
                target=control.serve,
                args=(self.link, self._commands, self.stop, self._alarm),
                name="uplink-commands",
            )
            t.start()
            self._threads.append(t)

    def is_alive(self) -> bool:
        """True while every uplink thread runs (the systemd watchdog asks)."""
        return all(t.is_alive() for t in self._threads)

    def threads(self) -> list[threading.Thread]:
        """The uplink's threads once started (the composition root watches each)."""
        return list(self._threads)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)
        self.link.join(timeout)
