"""A reference JT/T 808 platform on loopback and terminals talking to it over real TCP."""

from __future__ import annotations

import calendar
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.gps.settings import StrategySettings
from agent.jt808.queue import derive_key
from agent.jt808.settings import Jt808Settings
from agent.jt808.terminal import Jt808Terminal
from agent.labs.jt808_platform import ReferencePlatform
from agent.model import Fix, FixMode

PHONE = "13800000001"
T0 = calendar.timegm((2025, 6, 5, 6, 0, 0))
KEY = derive_key(b"\x07" * 32)


def settings(state_dir: Path, server: str, **over: Any) -> Jt808Settings:
    base: dict[str, Any] = dict(
        enabled=True,
        server=server,
        phone=PHONE,
        manufacturer_id="EDGEA",
        terminal_model="edge-agent",
        terminal_id="TRK0007",
        plate="粤B12345",
        plate_color=2,
        province_id=44,
        city_id=300,
        imei="860000000000017",
        state_dir=state_dir,
        heartbeat_s=60.0,
        response_timeout_s=3.0,
        reconnect_max_s=0.5,
        backlog_bytes_per_s=1_000_000,
    )
    base.update(over)
    return Jt808Settings(**base)


def fix(i: int, **kw: Any) -> Fix:
    """The i-th fix of a truck heading north at 10 m/s, one per second."""
    d: dict[str, Any] = dict(
        time=T0 + i,
        mode=FixMode.FIX_3D,
        lat=22.5 + i * 10 / 111_195,
        lon=113.9,
        alt=15.0,
        speed=10.0,
        track=0.0,
        sats_used=9,
        hdop=0.9,
    )
    d.update(kw)
    return Fix(**d)


@dataclass
class Rig:
    """Terminals started in a test are always stopped."""

    tmp: Path
    started: list[tuple[Jt808Terminal, threading.Event]] = field(default_factory=list)

    def terminal(
        self,
        server: str,
        *,
        name: str = "t",
        strategy: StrategySettings | None = None,
        start: bool = True,
        **over: Any,
    ) -> Jt808Terminal:
        stop = threading.Event()
        extra = {k: over.pop(k) for k in ("fleet", "spool", "inputs", "signal") if k in over}
        t = Jt808Terminal(
            settings(self.tmp / name, server, **over),
            strategy=strategy or StrategySettings(interval_s=5, distance_m=0, heading_deg=0),
            stop=stop,
            queue_key=KEY,
            **extra,
        )
        self.started.append((t, stop))
        if start:
            t.start()
        return t

    def stop(self, t: Jt808Terminal) -> None:
        for term, stop in self.started:
            if term is t:
                stop.set()
                term.join(10)

    def close(self) -> None:
        for _, stop in self.started:
            stop.set()
        for t, _ in self.started:
            t.join(10)
            assert not t.is_alive()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def platform() -> Iterator[ReferencePlatform]:
    with ReferencePlatform() as p:
        yield p


def wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
