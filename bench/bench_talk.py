"""Talk: release of the talk button to the last chunk at the platform, and bytes on the wire.

Real parts on loopback: PulseAudio (440 Hz sine microphone), mosquitto with mTLS, the device's
:class:`Talk` on its own MQTT link, the platform's :class:`Listener` on another. Each message
is 5 s (press, wait, release); latency is the release to the arrival of the message's last
chunk at the listener. Wire bytes are the chunk payloads (Ogg pages + chunk headers) per second
of speech, against raw 48 kHz s16 mono PCM.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.labs.waiting import wait_for
from bench import Reporter

GROUP = "talk"
MESSAGES = int(os.environ.get("BENCH_TALK_MESSAGES", "8"))
LOADED = max(2, MESSAGES // 2)
WINDOW = 8  # the forwarder's default broker window
CHUNK = 128 * 1024  # the forwarder's default chunk
SECONDS = 5.0
BUDGET_MS = 500.0
RATE = 48000


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def _flood(link: Any, topic: str, stop: threading.Event, sent: list[int]) -> None:
    """A backfill lane at full speed: 128 KiB chunks, at most WINDOW unacknowledged."""
    payload = os.urandom(CHUNK)
    while not stop.is_set():
        ready = link.connected and link.outstanding() < WINDOW
        if ready and link.publish(topic, payload, qos=1) is not None:
            sent[0] += 1
            continue
        stop.wait(0.001)


def run(report: Reporter) -> None:
    from agent.labs.broker import INGEST_IDENTITY, Mosquitto, make_pki
    from agent.labs.pulse import PulseServer
    from agent.storage.keys import (
        init_device_keys,
        init_platform_keys,
        load_platform_public,
        load_signing_key,
    )
    from agent.storage.sealer import Sealer
    from agent.storage.settings import SealSettings, SpoolSettings
    from agent.storage.spool import Spool
    from agent.talk.device import Talk
    from agent.talk.platform import Listener
    from agent.talk.settings import TalkSettings
    from agent.uplink.mqtt import LinkConfig, MqttLink

    device = "talk-bench"
    with tempfile.TemporaryDirectory(prefix="bench-talk-") as tmp:
        root = Path(tmp)
        pulse = PulseServer(root / "pulse")
        pulse.start()
        os.environ["PULSE_SERVER"] = pulse.server
        pki = make_pki(root / "pki", (device, INGEST_IDENTITY))
        broker = Mosquitto(root / "mosquitto", pki)
        broker.start()
        stop = threading.Event()

        def cfg(identity: str) -> LinkConfig:
            c = pki.client(identity)
            return LinkConfig(broker.host, broker.port, identity, ca=pki.ca, cert=c.cert, key=c.key)

        dev_key, _ = init_device_keys(root / "dev")
        plat_key, _ = init_platform_keys(root / "plat")
        sealer = Sealer(
            device_id=device,
            boot_id="bench",
            signing_key=load_signing_key(dev_key),
            platform_public=load_platform_public(plat_key.with_suffix(".pub")),
            settings=SealSettings(),
        )
        spool = Spool(SpoolSettings(dir=root / "spool", reserve_mb=0), sealer)
        dev_link = MqttLink(cfg(device), stop)
        talk = Talk(
            TalkSettings(enabled=True),
            device_id=device,
            spool=spool,
            stop=stop,
            link=dev_link,
            command_key=None,
            signing_key=load_signing_key(dev_key),
        )
        plat_link = MqttLink(cfg(INGEST_IDENTITY), stop)
        done: dict[str, float] = {}
        listener = Listener(
            plat_link,
            stop,
            on_event=lambda e: done.__setitem__(e["id"], time.monotonic()),
        )
        threads = [threading.Thread(target=listener.run)]
        try:
            dev_link.start()
            plat_link.start()
            talk.start_threads()
            threads[0].start()
            wait_for(lambda: dev_link.connected and plat_link.connected, 10, "links")
            stop.wait(0.5)
            speech_s = [0.0]

            def talk_once() -> float:
                mid = talk.press("bench")["id"]
                stop.wait(SECONDS)
                released = time.monotonic()
                speech_s[0] += talk.release("bench")["duration_s"]
                wait_for(lambda: mid in done, 10, f"message {mid}", step=0.01)
                last = max(listener.chunk_times[mid])
                stop.wait(0.3)
                return (last - released) * 1000

            latencies = [talk_once() for _ in range(MESSAGES)]
            wire_bytes = talk.stats.sent_bytes
            speech = speech_s[0]
            # The same while a backfill lane keeps the device's link full.
            flood_stop = threading.Event()
            chunks = [0]
            flood = threading.Thread(
                target=_flood,
                args=(dev_link, f"devices/{device}/up/seg/video", flood_stop, chunks),
            )
            flood.start()
            t0 = time.monotonic()
            try:
                loaded = [talk_once() for _ in range(LOADED)]
            finally:
                flood_stop.set()
                flood.join(5)
            flood_mib_s = chunks[0] * CHUNK / (1 << 20) / (time.monotonic() - t0)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            talk.join(10)
            dev_link.join(5)
            plat_link.join(5)
            spool.close()
            broker.kill()
            pulse.stop()
    p50 = statistics.median(latencies)
    p99 = _percentile(latencies, 0.99)
    report.figure(
        GROUP, "release_to_last_chunk_p50", p50, "ms",
        ratio=p50 / BUDGET_MS, baseline=f"the {BUDGET_MS:.0f} ms budget", target=1.0,
        higher_is_better=False,
    )  # fmt: skip
    report.figure(
        GROUP, "release_to_last_chunk_p99", p99, "ms",
        ratio=p99 / BUDGET_MS, baseline=f"the {BUDGET_MS:.0f} ms budget ({len(latencies)} "
        f"messages of {SECONDS:g} s)", target=1.0, higher_is_better=False,
    )  # fmt: skip
    lp50, lp99 = statistics.median(loaded), _percentile(loaded, 0.99)
    report.info(
        GROUP, "with_backfill_p50", lp50, "ms",
        f"backfill at {flood_mib_s:.0f} MiB/s on the same link ({WINDOW} x 128 KiB window)",
    )  # fmt: skip
    report.figure(
        GROUP, "with_backfill_p99", lp99, "ms",
        ratio=lp99 / BUDGET_MS, baseline=f"the {BUDGET_MS:.0f} ms budget ({len(loaded)} "
        f"messages of {SECONDS:g} s during a full-speed backfill)", target=1.0,
        higher_is_better=False,
    )  # fmt: skip
    bps = wire_bytes / speech
    raw = RATE * 2
    report.figure(
        GROUP, "wire_bytes_per_s", bps, "B/s of speech",
        ratio=bps / raw, baseline=f"raw PCM 48 kHz s16 mono ({raw} B/s)", target=0.05,
        higher_is_better=False,
    )  # fmt: skip
