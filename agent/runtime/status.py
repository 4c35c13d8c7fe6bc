"""The running agent's health figures: the heartbeat on the status topic, the status file that
``edge-agent status`` prints (agent/runtime/status_text.py), the device page.

:func:`status_figures` reads the parts the root built (:class:`Running`: the root is one);
only the parts that run appear.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__, wallclock
from agent.runtime.readers import cpu_temperature

if TYPE_CHECKING:
    from agent.capture.audio_recorder import AudioRecorder
    from agent.capture.service import VideoService
    from agent.cellular.monitor import LinkMonitor
    from agent.config.schema import AgentConfig
    from agent.fleet.service import FleetService
    from agent.gps.chrony import ChronyMonitor
    from agent.gps.clock import ClockMonitor
    from agent.gps.service import GpsService
    from agent.jt808.terminal import Jt808Terminal
    from agent.power.monitor import PowerMonitor
    from agent.storage.spool import Spool
    from agent.talk.device import Talk
    from agent.uplink.service import Uplink


class Running(Protocol):
    """The parts the figures read (``None`` where the config leaves a part out)."""

    cfg: AgentConfig
    boot: str
    started: float
    spool: Spool
    clock: ClockMonitor
    chrony: ChronyMonitor | None
    power: PowerMonitor | None
    link: LinkMonitor | None
    gps: GpsService | None
    uplink: Uplink | None
    video: VideoService | None
    audio: AudioRecorder | None
    talk: Talk | None
    jt808: Jt808Terminal | None
    fleet: FleetService | None


def status_figures(a: Running, dead: list[str]) -> dict[str, Any]:
    """The figures of this moment; ``dead`` names the parts that stopped (agent/runtime/
    liveness.py), so a technician and the platform see which one and why the watchdog stops."""
    clock = a.clock.state()
    out: dict[str, Any] = {
        "device": a.cfg.device.id,
        "profile": a.cfg.device.profile,
        "boot": a.boot,
        "uptime_s": round(time.monotonic() - a.started, 1),
        "versions": {"edge-agent": __version__},
        "backlog": {
            s: {"count": b.count, "bytes": b.bytes, "oldest_age_s": b.oldest_age_s}
            for s, b in a.spool.backlog().items()
        },
        "storage": a.spool.usage(),
        "clock": clock.to_json(),
        **({"time": a.chrony.to_json()} if a.chrony is not None else {}),
        "cpu_temp_c": cpu_temperature(),
        "battery_pct": None,
        "dead": dead,
        "updated_utc": wallclock.now(),
    }
    if a.power is not None:
        out["power"] = a.power.health()
        out["battery_pct"] = out["power"].get("charge_pct")
    if a.link is not None:
        out["cellular"] = a.link.health()
    if a.gps is not None:
        fix = a.gps.latest
        out["gps"] = {
            "state": a.gps.state,
            "fix": fix.to_tpv() if fix else None,
            "seen": a.gps.fixes_seen,
            "kept": a.gps.fixes_kept,
            "reported": a.gps.fixes_reported,
        }
    if a.uplink is not None:
        out["uplink"] = {"connected": a.uplink.link.connected}
    if a.video is not None:
        st = a.video.recorder.stats
        out["video"] = {
            "recording": st.recording,
            "encoder": st.encoder,
            "frames_captured": st.captured,
            "frames_dropped": st.dropped,
            "camera_losses": st.losses,
            "segments": st.segments,
            "refused": st.refused,
        }
    if a.audio is not None:
        out["audio"] = a.audio.health()
    if a.talk is not None:
        out["talk"] = a.talk.health()
    if a.jt808 is not None:
        out["jt808"] = a.jt808.health()
    if a.fleet is not None:
        out["fleet"] = {
            "plan": a.fleet.plan.version,
            "origin": a.fleet.store.origin,
            "inputs": a.fleet.inputs.to_json(),
            "events": a.fleet.events_recorded,
            "sos": a.fleet.sos_count,
        }
    return out
