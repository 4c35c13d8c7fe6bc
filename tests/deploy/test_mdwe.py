"""Why MemoryDenyWriteExecute= is set for trackers only: measured, not assumed.

systemd's MemoryDenyWriteExecute=yes forbids memory that is (or becomes) both writable and
executable. We cannot run systemd as PID 1 here, but the kernel's own equivalent,
``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`` (Linux 6.3+), enforces the same rule on a process
and its children. Under it:

- the tracker profile (``edge-agent run``: replayed GNSS, sealing, spool) runs and stops cleanly,
  so install.sh's tracker drop-in turns MemoryDenyWriteExecute on;
- numpy, OpenCV and PyAV's libx264 work too;
- cffi's ``ffi.callback()``, which sounddevice uses for every PortAudio stream, fails with
  MemoryError: so bodycam and dashcam (which install sounddevice) run without it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.labs.nmea import truck_log
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet

REPO = Path(__file__).resolve().parents[2]
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

# Run argv[1:] with MDWE set: the flag is inherited across fork and kept across execve.
LAUNCHER = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_MDWE): " + os.strerror(ctypes.get_errno()))
    os.execv(sys.argv[1], sys.argv[1:])
    """
)

# Printed first by every probe: proof that MDWE is in force in the probed process.
PROOF = textwrap.dedent(
    """
    import mmap
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("MDWE OFF")
    except PermissionError:
        print("MDWE ON")
    """
)


def mdwe_supported() -> bool:
    """Probe in a child (the flag cannot be cleared once set)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        libc = ctypes.CDLL(None, use_errno=True)
        os._exit(0 if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


pytestmark = pytest.mark.skipif(
    not mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux 6.3 or later)"
)


def under_mdwe(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, *argv]


def probe(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        under_mdwe([sys.executable, "-c", PROOF + textwrap.dedent(code)]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_cffi_callbacks_fail_under_mdwe() -> None:
    """sounddevice's PortAudio callback is an ffi.callback(): this is why bodycams go without."""
    res = probe(
        """
        import cffi
        ffi = cffi.FFI()
        try:
            ffi.callback("int(int)", lambda x: x + 1)
            print("callback OK")
        except MemoryError as exc:
            print("callback refused:", exc)
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("MDWE ON\n"), res.stdout
    assert "callback refused: Cannot allocate write+execute memory" in res.stdout


def test_sounddevice_creates_its_stream_callback_with_ffi_callback() -> None:
    """The link between the two facts above: sounddevice's streams use ffi.callback()."""
    import importlib.util

    spec = importlib.util.find_spec("sounddevice")
    if spec is None or spec.origin is None:
        pytest.skip("sounddevice is not installed")
    source = Path(spec.origin).read_text()
    assert "_ffi.callback('PaStreamCallback'" in source or '_ffi.callback("PaStreamCallback"' in (
        source
    )


def test_video_stack_works_under_mdwe() -> None:
    pytest.importorskip("cv2")
    pytest.importorskip("av")
    res = probe(
        """
        import io
        import av, cv2, numpy as np
        img = np.zeros((240, 320, 3), np.uint8)
        cv2.putText(img, "mdwe", (10, 50), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        assert cv2.imencode(".jpg", img)[0]
        out = io.BytesIO()
        c = av.open(out, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"})
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i in range(15):
            f = av.VideoFrame.from_ndarray(np.full((240, 320, 3), i * 8, np.uint8), format="bgr24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        c.close()
        frames = sum(1 for _ in av.open(io.BytesIO(out.getvalue())).decode(video=0))
        print("frames", frames)
        """
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == ["MDWE ON", "frames 15"]


def test_tracker_runs_under_mdwe(tmp_path: Path, keyset: KeySet) -> None:
    """The tracker profile's real run: GNSS replay, sealing, spool, SIGTERM, all under MDWE."""
    g = time.gmtime(time.time() - 120)
    log = truck_log(60, start=(g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec))
    (tmp_path / "drive.nmea").write_bytes(log)
    spool = tmp_path / "spool"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "truck-mdwe"
profile = "tracker"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{spool}"
reserve_mb = 0
batch_max_records = 20
[gps]
source = "replay"
replay_file = "{tmp_path / "drive.nmea"}"
replay_speed = 0
[health]
status_file = "{tmp_path / "status.json"}"
"""
    )
    wrapper = PROOF + "import sys\nfrom agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen(
        under_mdwe([sys.executable, "-c", wrapper, "run", "--config", str(cfg)]),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not list((spool / "seg" / "gps").glob("*.seg")):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no GPS segment sealed under MDWE"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.startswith("MDWE ON\n"), out
    assert proc.returncode == 0, out
    assert "edge-agent stopped" in out
    assert "MemoryError" not in out
    report = verify_paths([spool])
    assert report.ok, report.problems
