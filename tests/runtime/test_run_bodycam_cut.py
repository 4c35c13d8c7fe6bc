"""``edge-agent run`` as a body camera killed (SIGKILL) mid-recording, again and again.

After each kill the agent is started again and the recording resumes by itself (no new
``record start``): the journal's fragments from before the kill are sealed as a recovered
segment, a ``recording_interrupted`` and a ``recording_resumed`` event are recorded, and the
platform verifies every segment, every chain and every recovered fragment. The seconds of video
lost per kill (kill time minus the capture end of the last frame the platform holds from before
it) are printed: about one keyframe interval plus the encoder's lookahead.

CI runs 4 kills; ``EDGE_AGENT_SOAK=1`` (``make soak``) runs 24, the figure in docs/reliability.md.
"""

from __future__ import annotations

import io
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.labs.waiting import wait_for
from agent.storage.seal import parse_key_record
from agent.storage.segjournal import RECOVERED_CONTENT_TYPE, open_recovered
from agent.storage.settings import SpoolSettings
from agent.storage.spool import Spool
from agent.storage.verify import verify_paths
from tests.fixtures.keys import KeySet, make_sealer
from tests.storage.helpers import decrypt_stream

REPO = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("EDGE_AGENT_KILLS", 24 if os.environ.get("EDGE_AGENT_SOAK") else 4))
FPS = 15
KEYFRAME_S = 1.0
# A kill loses the fragment in progress (up to one keyframe interval), what the encoder holds
# (libx264's lookahead, ~11 frames) and the frames queued before it.
LOSS_LIMIT_S = KEYFRAME_S + 2.0


def _agent(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _utc(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _frames(mp4: bytes) -> int:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.timeout(120 + 30 * KILLS)
def test_sigkill_mid_recording_loses_about_a_keyframe_and_resumes(
    tmp_path: Path, keyset: KeySet
) -> None:
    spool_dir = tmp_path / "spool"
    cfg = tmp_path / "agent.toml"
    sock = tmp_path / "control.sock"
    cfg.write_text(
        f"""
[device]
id = "cam-k"
profile = "bodycam"
[keys]
device_key = "{keyset.device_key_path}"
platform_public = "{keyset.platform_pub_path}"
[spool]
dir = "{spool_dir}"
reserve_mb = 0
[video]
enabled = true
source = "synthetic"
width = 160
height = 120
fps = {FPS}
keyframe_s = {KEYFRAME_S}
segment_s = 4
prebuffer_s = 1
[health]
status_file = "{tmp_path / "status.json"}"
control_socket = "{sock}"
"""
    )
    rng = random.Random(6)
    state = spool_dir / "journal" / "seg" / "video.state"
    kills: list[float] = []
    proc = _agent(cfg)
    try:
        wait_for(sock.exists, 60, "the control socket", proc=proc)
        res = subprocess.run(
            [sys.executable, "-m", "agent.cli", "record", "start", "--config", str(cfg)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        for _ in range(KILLS):
            wait_for(state.exists, 60, "the recording's durable state", proc=proc)
            time.sleep(rng.uniform(2.5, 6.0))
            assert proc.poll() is None
            kills.append(time.time())
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
            sock.unlink(missing_ok=True)
            proc = _agent(cfg)  # no record start: the recording must resume by itself
            wait_for(sock.exists, 60, "the control socket", proc=proc)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    report = verify_paths([spool_dir], platform_private=keyset.platform_private)
    assert report.ok, [str(p) for p in report.problems][:10]
    spool = Spool(SpoolSettings(dir=spool_dir, reserve_mb=0), make_sealer(keyset, "cam-k"))
    try:
        ends: list[float] = []  # capture end of every segment's media (UTC)
        metas: list[dict[str, Any]] = []
        for s in decrypt_stream(spool, keyset.platform_private, "video"):
            meta = s.meta
            metas.append(meta)
            start = _utc(s.manifest["start_utc"])
            if s.manifest["content_type"] == RECOVERED_CONTENT_TYPE:
                dk = parse_key_record(spool.key_record(meta["inner_key_id"])).unwrap(
                    keyset.platform_private
                )
                rec = open_recovered(s.data, meta, dk)
                assert not rec.failed, rec.failed
                ends.append(start + _frames(rec.media) / FPS)
            else:
                ends.append(start + meta["frames"] / FPS)
        events = [s.record for s in decrypt_stream(spool, keyset.platform_private, "event")]
    finally:
        spool.close()
    lost = [k - max(e for e in ends if e <= k + 0.2) for k in kills]
    print(
        f"\nSIGKILL mid-recording: {len(lost)} kills, seconds lost per kill: "
        f"median {statistics.median(lost):.2f}, max {max(lost):.2f}, "
        f"all {[round(x, 2) for x in lost]}"
    )
    kinds = [e["type"] for e in events]
    assert kinds.count("record_start") == 1, kinds
    assert kinds.count("recording_interrupted") == KILLS, kinds
    assert kinds.count("recording_resumed") == KILLS, kinds
    assert len({m["recording"] for m in metas}) == 1
    assert sorted(m["part"] for m in metas) == list(range(len(metas)))
    assert sum(1 for m in metas if m.get("recovered")) >= KILLS // 2
    assert max(lost) <= LOSS_LIMIT_S, lost
