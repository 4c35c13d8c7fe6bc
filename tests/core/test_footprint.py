"""A GPS-only tracker must never import OpenCV or numpy."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from agent.cli import build_parser
from agent.storage.spool import Spool
from agent.storage.records import RecordLog
from agent.storage.verify import verify_paths
from agent.config import read_config
from agent.runtime import app
build_parser()
heavy = sorted(m for m in ("cv2", "numpy", "av", "sounddevice") if m in sys.modules)
print(",".join(heavy))
"""


def test_core_and_cli_import_no_video_or_numpy() -> None:
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""
