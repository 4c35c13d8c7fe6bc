"""A stand-in for ``rpicam-vid --codec h264 --inline --flush -o -`` that misbehaves on cue.

It replays an Annex-B stream made by ffmpeg (AUD before each picture, SPS/PPS before every
IDR: what rpicam-vid writes) to stdout, one access unit per write at the frame rate, and
remembers in a state file how far it got, so the next run (the agent reopening the "camera")
resumes at the next IDR after that point: frame counters in the pixels then show exactly which
pictures the outage cost. The fault for the n-th run is the n-th item of ``--faults``:

    none         play to the end of the file, then keep the pipe open (a camera that idles)
    garbage:N    after N pictures, write bytes that are not H.264, then carry on
    stall:N      after N pictures, write nothing more (the pipe stays open)
    eof:N        after N pictures, exit (the camera process died)

Standard library only: it runs as a child process of the tests (like rpicam-vid would).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

AUD = b"\x00\x00\x00\x01\x09"
# Start codes followed by NAL headers with the forbidden bit and unspecified types.
GARBAGE = (b"\x00\x00\x01\xff\x13\x37" + bytes(range(256)) * 4 + b"\x00\x00\x01\x1e\x55") * 8


def units(data: bytes) -> list[bytes]:
    starts = []
    i = data.find(AUD)
    while i >= 0:
        starts.append(i)
        i = data.find(AUD, i + 1)
    return [
        data[s : (starts[k + 1] if k + 1 < len(starts) else len(data))]
        for k, s in enumerate(starts)
    ]


def is_idr(unit: bytes) -> bool:
    i = unit.find(b"\x00\x00\x01")
    while i >= 0:
        if i + 3 < len(unit) and unit[i + 3] & 0x1F == 5:
            return True
        i = unit.find(b"\x00\x00\x01", i + 3)
    return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stream", type=Path, required=True)
    ap.add_argument("--fps", type=float, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--faults", default="none")
    args = ap.parse_args()
    state = json.loads(args.state.read_text()) if args.state.exists() else {"run": 0, "pos": 0}
    plan = args.faults.split(",")
    fault = plan[state["run"]] if state["run"] < len(plan) else "none"
    state["run"] += 1
    aus = units(args.stream.read_bytes())
    pos = state["pos"]
    while pos < len(aus) and not is_idr(aus[pos]):
        pos += 1
    kind, _, n = fault.partition(":")
    budget = int(n) if n else -1
    out = sys.stdout.buffer
    period = 1.0 / args.fps
    due = time.monotonic()
    written = 0
    while pos < len(aus):
        if written == budget:
            if kind == "eof":
                break
            if kind == "stall":
                time.sleep(3600)
            if kind == "garbage":
                out.write(GARBAGE)
                out.flush()
                budget = -1
        due += period
        time.sleep(max(0.0, due - time.monotonic()))
        out.write(aus[pos])
        out.flush()
        pos += 1
        written += 1
        state["pos"] = pos
        tmp = args.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, args.state)
    out.flush()
    if kind != "eof":
        time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
