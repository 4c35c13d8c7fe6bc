"""After a recording, no plaintext media anywhere on the device's filesystem.

The agent records (bodycam: synthetic camera, sine microphone where PulseAudio runs, a still)
inside a private mount namespace whose /tmp, /var/tmp and /dev/shm are fresh, so everything
there during the run is the agent's. Every file under the device's root, and every file created
or changed in those three during the run, is searched for MP4 ``ftyp``/``moof`` boxes, JPEG
JFIF/Exif markers, Ogg/Opus and WAV headers. The same scan then runs over the same recording
decrypted into /tmp and /dev/shm (a control): it must find it, or the scan proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.storage.keys import init_device_keys, init_platform_keys
from tests.security.media_scan import scan

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def device_root() -> Iterator[Path]:
    # Not under /tmp: the child mounts a fresh tmpfs over /tmp.
    root = Path(tempfile.mkdtemp(prefix="edge-agent-sec-", dir="/var/lib"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_scanner_finds_planted_media_and_not_ciphertext(tmp_path: Path) -> None:
    (tmp_path / "random.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    assert scan([tmp_path]) == (1, [])
    (tmp_path / "a.mp4").write_bytes(b"\x00\x00\x00\x20ftypisom" + b"\0" * 40)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\0" * 40)
    _, hits = scan([tmp_path])
    assert sorted(sig for _, sig in hits) == ["jpeg-jfif", "mp4-ftyp"]


def test_no_plaintext_media_after_a_recording(device_root: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("NOT EXERCISED: util-linux unshare is missing (private /tmp namespace)")
    from agent.errors import SourceError
    from agent.labs.pulse import PulseServer

    init_device_keys(device_root / "device" / "keys")
    init_platform_keys(device_root / "platform")
    env = {**os.environ}
    pulse: PulseServer | None = PulseServer(device_root / "pulse")
    try:
        pulse.start()
        env.update(pulse.env())
    except SourceError as exc:
        print(f"no microphone in this run (audio not exercised): {exc}")
        pulse = None
    cfg = device_root / "device" / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "cam-sec"
profile = "bodycam"
[keys]
device_key = "{device_root}/device/keys/device.key"
platform_public = "{device_root}/platform/platform.pub"
[spool]
dir = "{device_root}/device/spool"
reserve_mb = 0
[video]
enabled = true
width = 160
height = 120
fps = 10
segment_s = 1
prebuffer_s = 1
[audio]
enabled = {"true" if pulse else "false"}
[health]
status_file = "{device_root}/device/run/status.json"
control_socket = "{device_root}/device/run/control.sock"
"""
    )
    try:
        res = subprocess.run(
            [
                "unshare", "-m", "--propagation", "private",
                sys.executable, "-m", "tests.security.scan_child",
                str(device_root), str(device_root / "platform" / "platform.key"),
            ],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )  # fmt: skip
    finally:
        if pulse is not None:
            pulse.stop()
    if res.returncode != 0 and "mount" in res.stderr and "ermission" in res.stderr:
        pytest.skip(f"NOT EXERCISED: a private mount namespace was refused: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"\nplaintext scan: {out['files']} device files and {out['tmp_files']} new tmp files "
        f"scanned, {len(out['hits'])} hits; control: {len(out['control_hits'])} hits in "
        f"{len(out['control_plain'])} planted plaintext files"
    )
    assert out["hits"] == [], out["hits"]
    # The control: the recording's own plaintext, planted where a leak would be, is found.
    assert out["control_verify_rc"] == 0
    kinds = {sig for _, sig in out["control_hits"]}
    assert {"mp4-ftyp", "mp4-moof", "jpeg-jfif"} <= kinds, out["control_hits"]
    assert any(p.startswith("/dev/shm/") for p, _ in out["control_hits"])
