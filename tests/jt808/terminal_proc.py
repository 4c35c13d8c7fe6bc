"""A terminal in its own process, for the SIGKILL test: ``python -m tests.jt808.terminal_proc
STATE SERVER DRIVE feed|drain RATE``.

``feed`` replays the drive's fixes into the terminal (the platform unreachable: every report
goes to the queue), prints ``stored N`` and waits to be killed; ``drain`` only connects and
sends what is stored, printing ``left N`` every 0.1 s.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from agent.gps.settings import StrategySettings
from agent.jt808.terminal import Jt808Terminal
from tests.fleet.harness import load_drive
from tests.jt808.conftest import KEY, settings


def main(argv: list[str]) -> int:
    state, server, drive, mode, rate = argv[1:6]
    stop = threading.Event()
    t = Jt808Terminal(
        settings(Path(state), server, backlog_bytes_per_s=int(rate), batch_max=4),
        strategy=StrategySettings(interval_s=5, distance_m=0, heading_deg=0),
        stop=stop,
        queue_key=KEY,
    )
    if mode == "feed":
        for f in load_drive(drive).fixes:
            t.on_fix(f)
        print(f"stored {t.reports}", flush=True)
        stop.wait()
        return 0
    t.start()
    while True:
        print(f"left {len(t.queue)}", flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
