"""The processes the uplink benchmarks measure, each alone: ``python -m bench.uplink_child``.

- ``device CONFIG.json``: opens a filled spool and drains it with the agent's uplink
  (agent.uplink.service.Uplink: forwarder, MQTT link, live lane), reporting a fix every 20 ms
  meanwhile, until every segment is acknowledged by the platform.
- ``raw CONFIG.json``: raw paho publishing the same segments' bytes as the forwarder's chunk
  payloads at QoS 1 (the same window), until the broker acknowledged them all: reading the
  files and framing the chunks is timed, as it is for the device.

Each prints one JSON line: ``{"t0": <unix s at the first byte>, "wall": s, "cpu": s}``, the
CPU time of the whole process (every thread) over the drain only: not its start, imports or
the opening of the spool, which a device does once per boot.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _device(cfg: dict[str, Any]) -> dict[str, float]:
    from agent.model import Fix, FixMode
    from agent.storage.keys import load_platform_public, load_signing_key
    from agent.storage.sealer import Sealer
    from agent.storage.settings import SealSettings, SpoolSettings
    from agent.storage.spool import Spool
    from agent.uplink.service import Uplink
    from agent.uplink.settings import UplinkSettings

    sealer = Sealer(
        device_id=cfg["device"],
        boot_id="bench",
        signing_key=load_signing_key(Path(cfg["device_key"])),
        platform_public=load_platform_public(Path(cfg["platform_pub"])),
        settings=SealSettings(),
    )
    spool = Spool(SpoolSettings(dir=Path(cfg["spool"]), evidence_quota_mb=4096), sealer)
    total = len(spool.items())
    up: dict[str, Any] = {
        k: (Path(v) if k in ("ca", "cert", "key", "state_dir") else v)
        for k, v in cfg["uplink"].items()
    }
    settings = UplinkSettings(**up)
    stop = threading.Event()
    uplink = Uplink(settings, device_id=cfg["device"], boot_id="bench", spool=spool, stop=stop)
    fixes = float(cfg.get("fix_every_s", 0.02))

    def report() -> None:
        while not stop.wait(fixes):
            uplink.forwarder.report_fix(
                Fix(time=time.time(), mode=FixMode.FIX_3D, lat=22.54, lon=113.95, speed=8.0)
            )

    c0, t0, w0 = time.process_time(), time.time(), time.perf_counter()
    uplink.start()
    if fixes > 0:
        threading.Thread(target=report, daemon=True).start()
    while uplink.forwarder.stats.segments_acked < total:
        stop.wait(0.01)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    stop.set()
    uplink.join(10)
    spool.close()
    return {"t0": t0, "wall": wall, "cpu": cpu, "segments": total}


def _raw(cfg: dict[str, Any]) -> dict[str, float]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from agent.labs.waiting import wait_for
    from agent.uplink.mqtt import LinkConfig, tls_context
    from bench.bench_uplink import chunks_of

    paths = [Path(p) for p in cfg["paths"]]
    link = LinkConfig(
        "127.0.0.1",
        int(cfg["port"]),
        cfg["device"],
        Path(cfg["ca"]),
        Path(cfg["cert"]),
        Path(cfg["key"]),
    )
    c = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=cfg["device"], protocol=MQTTProtocolVersion.MQTTv5
    )
    c.tls_set_context(tls_context(link))
    c.max_inflight_messages_set(int(cfg["window"]))
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", int(cfg["port"]))
    c.loop_start()
    wait_for(c.is_connected, 30, "the raw client to connect", step=0.01)
    # Timed from here: like any uploader, it reads the files and frames them (the same chunk
    # payloads as the forwarder's), then publishes.
    c0, t0, w0 = time.process_time(), time.time(), time.perf_counter()
    infos = []
    for path in paths:
        for topic, payload in chunks_of(cfg["device"], [path], int(cfg["chunk"])):
            infos.append(c.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    c.disconnect()
    c.loop_stop()
    return {"t0": t0, "wall": wall, "cpu": cpu, "messages": len(infos)}


def main(argv: list[str]) -> int:
    mode, path = argv[1], Path(argv[2])
    cfg = json.loads(path.read_text())
    out = _device(cfg) if mode == "device" else _raw(cfg)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
