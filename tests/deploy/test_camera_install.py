"""install.sh --camera: the Pi camera stack only where it is asked for (docs/deploy.md).

``picamera2`` brings python3-picamera2 from the Raspberry Pi archive and a venv that sees the
system's site packages (with NumPy kept at 1.x for the Debian-built modules picamera2 imports)
and a drop-in allowing libcamera's devices; ``rpicam`` brings rpicam-apps and keeps the venv
pure PyPI; the default is neither. Checked on the dry-run plan, which changes nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTALL = DEPLOY / "install.sh"


def plan(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("camera", "package", "system_site"),
    [("picamera2", "python3-picamera2", True), ("rpicam", "rpicam-apps-lite", False),
     ("none", None, False)],
)  # fmt: skip
def test_camera_stack_plan(
    tmp_path: Path, camera: str, package: str | None, system_site: bool
) -> None:
    res = plan(tmp_path / "root", "--profile", "bodycam", "--camera", camera)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"camera stack {camera}" in out
    apt = next(line for line in out.splitlines() if "apt-get install" in line)
    for p in ("python3-picamera2", "rpicam-apps-lite"):
        assert (p in apt) == (p == package), apt
    venv = next(line for line in out.splitlines() if " -m venv " in line)
    assert ("--system-site-packages" in venv) == system_site, venv
    pip = next(line for line in out.splitlines() if " -m pip install " in line)
    assert ("numpy\\<2" in pip) == system_site, pip  # printed shell-quoted
    assert ("20-camera.conf" in out) == (camera != "none")
    assert not (tmp_path / "root").exists(), "a dry run created files"


def test_default_install_stays_pure_pypi(tmp_path: Path) -> None:
    res = plan(tmp_path / "root", "--profile", "dashcam")
    assert res.returncode == 0, res.stderr
    assert "camera stack none" in res.stdout
    assert "--system-site-packages" not in res.stdout and "picamera2" not in res.stdout


def test_camera_stack_is_refused_where_it_makes_no_sense(tmp_path: Path) -> None:
    res = plan(tmp_path / "root", "--profile", "tracker", "--camera", "picamera2")
    assert res.returncode == 1 and "only for bodycam or dashcam" in res.stderr
    res = plan(tmp_path / "root", "--profile", "bodycam", "--camera", "libcamera")
    assert res.returncode == 1 and "must be picamera2, rpicam or none" in res.stderr
