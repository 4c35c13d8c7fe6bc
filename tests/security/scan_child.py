"""Run inside a private mount namespace (``unshare -m``) by test_no_plaintext.py.

Fresh tmpfs on /tmp, /var/tmp and /dev/shm, so whatever lands there during the recording came
from the agent, not from other tests on this machine. A checkout or venv that lives under one of
them (a CI workspace in /tmp) is bound back at its own path, and left out of the scans.
Records with ``edge-agent run`` (bodycam, synthetic camera, microphone when PulseAudio runs),
scans, then plants real plaintext (the recording decrypted by ``edge-agent verify``) as a
control, scans again; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.security.media_scan import scan

TMP_DIRS = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
REPO = Path(__file__).resolve().parents[2]


def needed() -> list[Path]:
    """What this run must still reach after the fresh mounts: the checkout and the venv (either
    may live under /tmp), each once."""
    paths = sorted({REPO, Path(sys.prefix).resolve()})
    return [p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)]


def fresh_tmp_dirs(stash: Path) -> list[Path]:
    """A fresh tmpfs on each of TMP_DIRS; what :func:`needed` had under one of them is bound
    back at its own path (through a bind of the old directory kept under ``stash``). Returns
    those paths: they are not the agent's, so the scans leave them out."""
    kept: list[Path] = []
    for d in TMP_DIRS:
        inside = [p for p in needed() if p.is_relative_to(d) and p != d]
        old = stash / d.as_posix().strip("/").replace("/", "_")
        if inside:
            old.mkdir(parents=True)
            subprocess.run(["mount", "--bind", str(d), str(old)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(d)], check=True)
        for p in inside:
            p.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(old / p.relative_to(d)), str(p)], check=True)
            kept.append(p)
    return kept


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def main() -> int:
    root, platform_key = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = root / "device" / "agent.toml"
    kept = fresh_tmp_dirs(root / "stash")
    t0 = time.time() - 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=root,
        stdout=(root / "agent.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        sock = root / "device" / "run" / "control.sock"
        deadline = time.monotonic() + 90
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                print(json.dumps({"error": "the agent did not start"}))
                return 2
            time.sleep(0.1)
        assert cli(root, "record", "start", "--config", str(cfg)).returncode == 0
        video = root / "device" / "spool" / "seg" / "video"
        while len(list(video.glob("*.seg"))) < 3:
            if proc.poll() is not None or time.monotonic() > deadline + 60:
                print(json.dumps({"error": "no video segments"}))
                return 2
            time.sleep(0.2)
        assert cli(root, "still", "--config", str(cfg)).returncode == 0
        time.sleep(1.5)
        assert cli(root, "record", "stop", "--config", str(cfg)).returncode == 0
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    n, hits = scan([root], None, exclude=[root / "stash"])
    m, tmp_hits = scan(TMP_DIRS, t0, exclude=kept)
    # Control: the same recording in plaintext, where a leak would be.
    res = cli(
        root,
        "verify",
        str(root / "device" / "spool"),
        "--platform-key",
        str(platform_key),
        "--decrypt-to",
        "/tmp/leak",
    )
    plain = sorted(str(p.relative_to("/tmp/leak")) for p in Path("/tmp/leak").rglob("*.*"))
    for p in Path("/tmp/leak").rglob("*.jpg"):
        (Path("/dev/shm") / p.name).write_bytes(p.read_bytes())
    _, control_hits = scan(TMP_DIRS, t0, exclude=kept)
    print(
        json.dumps(
            {
                "files": n,
                "tmp_files": m,
                "hits": hits + tmp_hits,
                "control_plain": plain,
                "control_verify_rc": res.returncode,
                "control_hits": control_hits,
            }
        )
    )
    return 0


if __name__ == "__main__":
    os.environ.pop("TMPDIR", None)
    sys.exit(main())
