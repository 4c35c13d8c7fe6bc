"""GPS benchmarks: reader speed vs pynmea2 and pyubx2, CPU of the whole GPS path at 10 Hz, RSS.

* ``gps/reader``: sentences per second of :class:`agent.gps.receiver.ReceiverReader` (the
  reader the serial source and replay use: framing, checksums, gpsd's cycle rules, one Fix per
  epoch) over every checksum-valid sentence of the corpus, versus ``pynmea2.parse`` plus the
  field reads a tracker needs on the same sentences in the same run (target ratio >= 2).
* ``gps/ubx``: NAV-PVT messages per second through the same reader (splitting, checksum,
  decoding, one Fix per epoch) versus ``pyubx2.UBXReader.parse`` alone on the same frames
  (target ratio >= 1: the reader validates with pyubx2 and must not cost more than it).
* ``gps/cpu_10hz``: a GPS-only subprocess replays a 10 Hz log paced in real time through the
  whole path (replay source thread -> bounded queue -> consumer: strategy, clock, wire
  encoding of kept fixes) for ``CPU_RUN_S`` seconds; CPU seconds are scaled to one hour and
  shown as % of one core against the 1% target.
* ``gps/rss``: peak RSS of that same subprocess against 40 MB.
* ``gps/fixdelta-bytes-per-fix``: bytes a fix of a GPS segment's plaintext
  (``application/x-edge-fix-delta``, agent.gps.fixdelta) for bench/truck.py's hour in
  minute-long batches (60 fixes), version 2 of the coding against version 1 on the same fixes
  in the same run (target <= 0.75: about 5 bytes a fix for a truck in town, issue 19).
  ``gps/fixdelta-corpus-bytes-per-fix``: the same for the fixes our readers make of the
  corpus's receivers, counting the fixes after each batch's first (the first is 28 bytes in
  both versions), with the per-receiver min/median/max (first fixes included) beside it.
  ``gps/fixdelta-encode`` and ``-decode``: fixes per second of each version (no target).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import Reporter
from bench.common import best_of

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / ".." / "shared" / "corpus" / "gpsd-nmea"
CPU_RUN_S = 15.0
ROUNDS = 9

_CHILD = r"""
import json, resource, sys, threading, time, queue
from pathlib import Path
from agent.gps.replay import ReplaySource
from agent.gps.source import SourceThread
from agent.gps.strategy import ReportingStrategy
from agent.gps.clock import ClockMonitor
from agent.gps.wire import encode_fix

log, run_s = Path(sys.argv[1]), float(sys.argv[2])
stop = threading.Event()
pump = SourceThread(ReplaySource(log, speed=1.0), stop, maxsize=256)
strategy, clock = ReportingStrategy(), ClockMonitor()
kept = live = n = 0
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.monotonic()
pump.start()
while time.monotonic() - t0 < run_s:
    try:
        fix = pump.queue.get(timeout=0.2)
    except queue.Empty:
        continue
    n += 1
    d = strategy.decide(fix)
    clock.observe(fix)
    if d.keep:
        kept += len(encode_fix(fix))
    live += d.report_live
stop.set()
pump.join(5)
wall = time.monotonic() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
bad = [m for m in ("cv2", "numpy") if m in sys.modules]
# VmHWM, not ru_maxrss: the latter counts the parent's pages this child had before exec.
hwm = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "fixes": n, "live": live,
                  "kept_bytes": kept, "maxrss_kb": hwm, "heavy": bad}))
"""


def corpus_sentences() -> list[bytes]:
    from agent.errors import NmeaError
    from agent.gps.nmea import parse_sentence

    out: list[bytes] = []
    for log in sorted(CORPUS.glob("*.log")):
        for line in log.read_bytes().splitlines():
            line = line.strip()
            if not line.startswith(b"$"):
                continue
            try:
                parse_sentence(line)
            except NmeaError:
                continue
            out.append(line)
    return out


#: What a tracker reads from each sentence. ``pynmea2.parse`` is lazy (it splits and checks
#: the checksum; fields are converted when read), so the baseline reads these fields, as our
#: reader converts them all. The bare ``parse`` rate is reported too.
PYNMEA2_FIELDS = {
    "RMC": ("timestamp", "datestamp", "latitude", "longitude", "spd_over_grnd", "true_course"),
    "GGA": (
        "timestamp",
        "latitude",
        "longitude",
        "gps_qual",
        "num_sats",
        "horizontal_dil",
        "altitude",
    ),
    "GLL": ("timestamp", "latitude", "longitude", "status"),
    "GNS": ("timestamp", "latitude", "longitude", "mode_indicator", "num_sats", "hdop", "altitude"),
    "GSA": ("mode_fix_type", "hdop", "sv_id01", "sv_id02", "sv_id03", "sv_id04"),
    "VTG": ("true_track", "spd_over_grnd_kts"),
    "ZDA": ("timestamp", "day", "month", "year"),
    "GSV": ("num_sv_in_view",),
}


def bench_reader(report: Reporter) -> None:
    import pynmea2

    from agent.gps.receiver import ReceiverReader

    lines = corpus_sentences()
    blob = b"\r\n".join(lines) + b"\r\n"
    texts = [line.decode("ascii") for line in lines]

    def ours() -> float:
        t = time.perf_counter()
        reader = ReceiverReader()
        for i in range(0, len(blob), 4096):  # as a serial port or a replay delivers it
            reader.feed(blob[i : i + 4096])
        reader.flush()
        return time.perf_counter() - t

    def theirs(read_fields: bool) -> float:
        t = time.perf_counter()
        for text in texts:
            try:
                msg = pynmea2.parse(text, check=True)
            except pynmea2.ParseError:
                continue
            if read_fields:
                for name in PYNMEA2_FIELDS.get(getattr(msg, "sentence_type", ""), ()):
                    # pynmea2 raises ValueError & co. on odd fields
                    with contextlib.suppress(Exception):
                        getattr(msg, name)
        return time.perf_counter() - t

    # Interleaved rounds, so that both sides see the same machine load; the ratio is the
    # median of the per-round ratios.
    rounds = [(ours(), theirs(True), theirs(False)) for _ in range(ROUNDS)]
    ours_s = min(r[0] for r in rounds)
    fields_s = min(r[1] for r in rounds)
    bare_s = min(r[2] for r in rounds)
    ratio_fields = statistics.median(r[1] / r[0] for r in rounds)
    ratio_bare = statistics.median(r[2] / r[0] for r in rounds)
    n = len(lines)
    report.figure(
        "gps",
        "reader",
        n / ours_s,
        f"sentences/s ({n} corpus sentences, epochs assembled)",
        ratio=ratio_fields,
        baseline=f"pynmea2 parse + field reads {n / fields_s:.0f}/s",
        target=2.0,
    )
    report.info(
        "gps",
        "reader_vs_bare_parse",
        ratio_bare,
        "x",
        f"pynmea2.parse alone (lazy, converts no field) {n / bare_s:.0f} sentences/s",
    )


def nav_pvt_frames() -> list[bytes]:
    """The NAV-PVT frames of the corpus's u-blox receiver (ZED-F9R), checksum-valid."""
    from agent.gps.ubx import frame_ok

    data = (CORPUS / "ublox-zed-f9r.log").read_bytes()
    frames, i = [], 0
    while (j := data.find(b"\xb5\x62\x01\x07", i)) >= 0:
        n = data[j + 4] | data[j + 5] << 8
        if frame_ok(data[j : j + 8 + n]):
            frames.append(data[j : j + 8 + n])
        i = j + 2
    return frames


def bench_ubx(report: Reporter) -> None:
    from pyubx2 import UBXReader

    from agent.gps.receiver import ReceiverReader

    frames = nav_pvt_frames() * 100
    stream = b"".join(frames)

    def ours() -> float:
        t = time.perf_counter()
        reader = ReceiverReader()
        for i in range(0, len(stream), 4096):
            reader.feed(stream[i : i + 4096])
        fixes = reader.stats.ubx.fixes + len(reader.flush())
        elapsed = time.perf_counter() - t
        assert fixes >= len(frames) // 100  # one per epoch (the log has 30 epochs, repeated)
        return elapsed

    def theirs() -> float:
        t = time.perf_counter()
        for f in frames:
            UBXReader.parse(f)
        return time.perf_counter() - t

    rounds = [(ours(), theirs()) for _ in range(5)]
    ours_s = min(r[0] for r in rounds)
    theirs_s = min(r[1] for r in rounds)
    ratio = statistics.median(r[1] / r[0] for r in rounds)
    n = len(frames)
    report.figure(
        "gps",
        "ubx",
        n / ours_s,
        f"NAV-PVT messages/s ({n} frames of a ZED-F9R: framing, checksum, decoding, epochs)",
        ratio=ratio,
        baseline=f"pyubx2 UBXReader.parse alone {n / theirs_s:.0f}/s",
        target=1.0,
    )


def bench_path(report: Reporter) -> None:
    from agent.labs.nmea import truck_log

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "truck-10hz.log"
        epochs = int((CPU_RUN_S + 5) * 10)
        log.write_bytes(truck_log(epochs, rate_hz=10.0))
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(log), str(CPU_RUN_S)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CPU_RUN_S + 60,
            check=True,
        ).stdout
    res = json.loads(out.strip().splitlines()[-1])
    if res["heavy"]:
        raise AssertionError(f"GPS-only process imported {res['heavy']}")
    core_pct = 100.0 * res["cpu_s"] / res["wall_s"]
    report.figure(
        "gps",
        "cpu_10hz",
        core_pct,
        f"% of a core ({res['cpu_s'] * 3600 / res['wall_s']:.1f} CPU s/hour, "
        f"{res['fixes']} fixes in {res['wall_s']:.0f} s)",
        ratio=core_pct / 1.0,
        baseline="1% of a core",
        target=1.0,
        higher_is_better=False,
    )
    rss_mb = res["maxrss_kb"] / 1024.0
    report.figure(
        "gps",
        "rss",
        rss_mb,
        "MB peak RSS of a GPS-only process",
        ratio=rss_mb / 40.0,
        baseline="40 MB",
        target=1.0,
        higher_is_better=False,
    )
    kept = res["kept_bytes"]
    report.info("gps", "wire_fix", 28, "bytes per encoded fix", f"{kept} bytes kept in the run")


FIXDELTA_BATCH = 60  # the shipped spool.batch_s at 1 Hz


def _batches(records: list[bytes]) -> list[list[bytes]]:
    return [records[i : i + FIXDELTA_BATCH] for i in range(0, len(records), FIXDELTA_BATCH)]


def _encode_all(encode: Callable[[list[bytes]], bytes], hour: list[list[bytes]]) -> None:
    for b in hour:
        encode(b)


def _decode_all(batches: list[bytes]) -> None:
    from agent.gps import fixdelta

    for b in batches:
        fixdelta.decode_batch(b)


def bench_fixdelta(report: Reporter) -> None:
    from agent.gps import fixdelta
    from agent.gps.replay import read_fixes
    from agent.gps.wire import encode_fix
    from bench import truck

    coders = {"v1": fixdelta.encode_batch_v1, "v2": fixdelta.encode_batch}
    hour = _batches([encode_fix(f) for f in truck.hour()])
    fixes = sum(map(len, hour))
    size = {v: sum(len(enc(b)) for b in hour) / fixes for v, enc in coders.items()}
    report.figure(
        "gps",
        "fixdelta-bytes-per-fix",
        size["v2"],
        f"bytes a fix (truck hour, {FIXDELTA_BATCH} a batch)",
        ratio=size["v2"] / size["v1"],
        baseline=f"version 1 ({size['v1']:.2f} B)",
        target=0.75,
        higher_is_better=False,
    )
    later = dict.fromkeys(coders, 0)
    per_receiver: dict[str, list[float]] = {v: [] for v in coders}
    n_later = 0
    for log in sorted(CORPUS.glob("*.log")):
        records = [encode_fix(f) for f in read_fixes(log)]
        if not records:
            continue
        for v, enc in coders.items():
            coded = [len(enc(b)) for b in _batches(records)]
            per_receiver[v].append(sum(coded) / len(records))
            # what the fixes after each batch's first cost (the first is 28 bytes in both)
            later[v] += sum(coded) - len(coded) * len(enc(records[:1]))
        n_later += len(records) - len(_batches(records))
    spread = {
        v: f"{min(x):.2f}/{statistics.median(x):.2f}/{max(x):.2f}" for v, x in per_receiver.items()
    }
    report.figure(
        "gps",
        "fixdelta-corpus-bytes-per-fix",
        later["v2"] / n_later,
        f"bytes a fix after each batch's first ({len(per_receiver['v2'])} receivers, "
        f"{n_later} fixes; per receiver, first fixes included, min/median/max "
        f"{spread['v2']}, version 1 {spread['v1']})",
        ratio=later["v2"] / later["v1"],
        baseline=f"version 1 ({later['v1'] / n_later:.2f} B)",
        target=0.75,
        higher_is_better=False,
    )
    for v, enc in coders.items():
        batches: list[bytes] = [enc(b) for b in hour]
        t_enc = best_of(partial(_encode_all, enc, hour), repeat=5)
        t_dec = best_of(partial(_decode_all, batches), repeat=5)
        report.info("gps", f"fixdelta-encode-{v}", fixes / t_enc, "fixes/s")
        report.info("gps", f"fixdelta-decode-{v}", fixes / t_dec, "fixes/s")


def run(report: Reporter) -> None:
    bench_fixdelta(report)
    bench_reader(report)
    bench_ubx(report)
    bench_path(report)
