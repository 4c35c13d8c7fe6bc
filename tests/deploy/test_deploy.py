"""deploy/: the systemd unit, install.sh and uninstall.sh, checked with the real tools.

- the unit passes ``systemd-analyze verify`` (a copy whose ExecStart names an existing program:
  verify refuses a missing binary; nothing else in the copy differs), alone and with each
  profile drop-in install.sh writes, and keeps its ``systemd-analyze security`` exposure low;
- every directive the design asks for is present (parsed, repeated keys kept);
- ``bash -n`` and shellcheck on the scripts;
- install.sh --root stages a real tracker install (a real venv, real pip resolution from the
  package index that ``make setup`` uses): the tree, the modes, no OpenCV/numpy in the venv,
  a failed upgrade that leaves the working venv live, and a rerun that keeps the config;
- uninstall.sh keeps config and spool by default and refuses --purge while the spool holds
  evidence, unless --force.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "edge-agent.service"
INSTALL = DEPLOY / "install.sh"
UNINSTALL = DEPLOY / "uninstall.sh"
EXEC = "/opt/edge-agent/venv/bin/edge-agent"
HEAVY = ("opencv", "numpy", "av", "sounddevice")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: sections, and every value of a key that may repeat."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out[section][key.strip()].append(value.strip())
    return out


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is missing: install the Debian package systemd (make setup does)"
        )
    return path


def verify_copy(tmp: Path, unit_text: str, dropin: str | None = None) -> str:
    """Run systemd-analyze verify on a copy whose ExecStart names an existing executable."""
    stub = tmp / "bin" / "edge-agent"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    assert unit_text.count(f"ExecStart={EXEC} ") == 1
    unit = tmp / "edge-agent.service"
    unit.write_text(unit_text.replace(f"ExecStart={EXEC} ", f"ExecStart={stub} "))
    if dropin is not None:
        (tmp / "edge-agent.service.d").mkdir(exist_ok=True)
        (tmp / "edge-agent.service.d" / "10-profile.conf").write_text(dropin)
    res = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown keys or bad values ("... ignoring"): no output at all.
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
        res.stdout + res.stderr
    )
    return str(unit)


# --------------------------------------------------------------------------- the unit


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    verify_copy(tmp_path, UNIT.read_text())


def test_verify_catches_a_bad_line(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    bad = UNIT.read_text().replace("ProtectHome=yes", "ProtectHomes=yes")
    with pytest.raises(AssertionError, match="Unknown key"):
        verify_copy(tmp_path, bad)


@pytest.mark.parametrize("mdwe", ["yes", "no"])
def test_unit_with_profile_dropin_verifies(tmp_path: Path, mdwe: str) -> None:
    verify_copy(tmp_path, UNIT.read_text(), f"[Service]\nMemoryDenyWriteExecute={mdwe}\n")


def test_unit_security_exposure_stays_low(tmp_path: Path) -> None:
    unit = verify_copy(tmp_path, UNIT.read_text())
    res = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    # 1.5 today (0 = locked down, 10 = unprotected); the profile drop-in lowers it for trackers.
    assert float(m.group(1)) <= 2.0, res.stdout


def test_unit_has_every_required_directive() -> None:
    text = UNIT.read_text()
    unit = parse_unit(text)
    svc = unit["Service"]

    def one(key: str) -> str:
        assert len(svc[key]) == 1, f"{key}: {svc[key]}"
        return svc[key][0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert 10 <= int(one("WatchdogSec").removesuffix("s")) <= 120
    assert one("ExecStart") == f"{EXEC} run --config /etc/edge-agent/agent.toml"
    assert one("Restart") == "always"
    assert 1 <= int(one("RestartSec").removesuffix("s")) <= 30
    assert int(one("TimeoutStopSec").removesuffix("s")) >= 20
    assert one("KillMode") == "mixed"
    assert one("User") == "edge-agent"
    assert one("Group") == "edge-agent"
    expected = {
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/edge-agent",
        "StateDirectory": "edge-agent",
        "ConfigurationDirectory": "edge-agent",
        "RuntimeDirectory": "edge-agent",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "DevicePolicy": "closed",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert one(key) == value, key
    # Decided per profile in a drop-in (test_mdwe.py measures why), never in the unit.
    assert "MemoryDenyWriteExecute" not in svc
    # ProcSubset=pid would hide /proc/sys/kernel/random/boot_id, which every segment names.
    assert "ProcSubset" not in svc
    allowed = {v.split()[0]: v.split()[1] for v in svc["DeviceAllow"]}
    for group in ("video4linux", "alsa", "ttyACM", "ttyUSB", "ttyAMA", "ttyS", "gpiochip"):
        assert allowed.get(f"char-{group}") == "rw", group
    # The agent must start without a network (store-and-forward): no wait for network-online.
    assert "network-online.target" not in " ".join(unit["Unit"].get("Wants", []))
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # "a comment per line saying why": every directive of [Service] follows a comment within
    # a short run of related lines.
    lines = text.splitlines()
    start = lines.index("[Service]")
    since_comment: int | None = None
    for line in lines[start + 1 :]:
        if line.startswith("["):
            break
        if not line.strip():
            since_comment = None
        elif line.startswith("#"):
            since_comment = 0
        else:
            assert since_comment is not None, f"no comment above: {line}"
            since_comment += 1
            assert since_comment <= 4, f"no comment near: {line}"


# --------------------------------------------------------------------------- the scripts


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL], ids=lambda p: p.name)
def test_script_syntax(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if re.search(
            r"DEB_PACKAGES :=[^\n]*(\\\n[^\n]*)*\bshellcheck\b", (REPO / "Makefile").read_text()
        ):
            pytest.fail("shellcheck is missing though the Makefile installs it: run make setup")
        pytest.skip("shellcheck is not installed (add the Debian package to DEB_PACKAGES)")
    res = subprocess.run(
        [shellcheck, "-x", str(INSTALL), str(UNINSTALL), str(DEPLOY / "common.sh")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def run_script(*args: str | Path, user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(a) for a in args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_install_refuses_without_root_or_staging() -> None:
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root here")
        # The checkout may be private (0700, as under /tmp/pytest-of-root): the unprivileged
        # user runs a copy of deploy/ in a directory it can reach.
        public = Path(tempfile.mkdtemp(prefix="edge-agent-deploy-"))
        try:
            shutil.copytree(INSTALL.parent, public / "deploy")
            for d in (public, public / "deploy"):
                d.chmod(0o755)
            res = run_script(public / "deploy" / INSTALL.name, "--profile", "tracker", user="65534")
        finally:
            shutil.rmtree(public, ignore_errors=True)
    else:
        res = run_script(INSTALL, "--profile", "tracker")
    assert res.returncode == 1
    assert "must run as root" in res.stderr


def test_install_refuses_an_unknown_profile(tmp_path: Path) -> None:
    res = run_script(INSTALL, "--root", tmp_path, "--profile", "drone", "--dry-run")
    assert res.returncode == 1
    assert "must be bodycam, dashcam or tracker" in res.stderr
    res = run_script(INSTALL, "--root", tmp_path, "--dry-run")
    assert res.returncode == 1
    assert "--profile" in res.stderr


@pytest.mark.parametrize(
    ("profile", "extras", "mdwe", "portaudio"),
    [
        ("tracker", "gps\\,power", "yes", False),  # printf %q escapes the comma
        ("bodycam", "all", "no", True),
        ("dashcam", "all", "no", True),
    ],
)
def test_install_plan_per_profile(
    tmp_path: Path, profile: str, extras: str, mdwe: str, portaudio: bool
) -> None:
    """--dry-run prints the plan and changes nothing: which extras, packages and drop-in."""
    root = tmp_path / "root"
    res = run_script(INSTALL, "--root", root, "--profile", profile, "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    pip = [line for line in out.splitlines() if " -m pip install " in line]
    assert len(pip) == 1 and pip[0].endswith(f"/{REPO.name}\\[{extras}\\]"), pip
    assert ("libportaudio2" in out) == portaudio
    assert "ffmpeg" not in out.replace("FFmpeg", "")
    assert f"MemoryDenyWriteExecute={mdwe}" in out
    for cmd in ("apt-get install", "useradd --system", "usermod -a -G dialout", "daemon-reload"):
        assert any(cmd in line and line.endswith("# skipped: --root") for line in out.splitlines())
    assert "systemctl enable edge-agent.service # skipped: --root" in out
    assert not root.exists(), "a dry run created files"


# --------------------------------------------------------------------------- a staged install


def source_copy(dest: Path) -> Path:
    """The package's sources, so that pip's in-tree build never writes into the shared checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "agent", dest / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A real tracker install under a staging root (one real venv, built once)."""
    base = tmp_path_factory.mktemp("staged")
    src = source_copy(base / "src")
    root = base / "root"
    res = run_script(INSTALL, "--root", root, "--profile", "tracker", "--source", src)
    assert res.returncode == 0, (
        "install.sh failed (it needs the package index make setup used):\n"
        + res.stdout[-3000:]
        + res.stderr[-3000:]
    )
    return root, src, res.stdout


def test_staged_tracker_tree_and_modes(staged: tuple[Path, Path, str]) -> None:
    root, _src, out = staged
    etc = root / "etc/edge-agent"
    state = root / "var/lib/edge-agent"
    assert mode(etc) == 0o750
    assert mode(etc / "keys") == 0o700
    assert mode(etc / "tls") == 0o700
    assert mode(state) == 0o700
    assert mode(state / "spool") == 0o700
    assert mode(etc / "agent.toml") == 0o640
    # Ownership is the live system's business (printed, skipped under --root).
    for line in (
        f"chown root:edge-agent {etc}",
        f"chown edge-agent:edge-agent {etc / 'keys'}",
        f"chown edge-agent:edge-agent {state / 'spool'}",
    ):
        assert f"+ {line} # skipped: --root" in out
    # The example config became agent.toml, in the installed profile.
    assert 'profile = "tracker"' in (etc / "agent.toml").read_text()
    assert (etc / "agent.example.toml").read_bytes() == (DEPLOY / "agent.example.toml").read_bytes()
    unit_dir = root / "etc/systemd/system"
    assert (unit_dir / "edge-agent.service").read_bytes() == UNIT.read_bytes()
    assert mode(unit_dir / "edge-agent.service") == 0o644
    dropin = (unit_dir / "edge-agent.service.d/10-profile.conf").read_text()
    assert parse_unit(dropin)["Service"]["MemoryDenyWriteExecute"] == ["yes"]
    # The tracker's allocator settings (bench fleet runs its trackers with the same file).
    tracker = unit_dir / "edge-agent.service.d/15-tracker.conf"
    assert tracker.read_bytes() == (DEPLOY / "edge-agent-tracker.conf").read_bytes()
    assert mode(tracker) == 0o644
    env = parse_unit(tracker.read_text())["Service"]["Environment"]
    assert any(e.startswith("GLIBC_TUNABLES=glibc.malloc.arena_max=1") for e in env)
    opt = root / "opt/edge-agent"
    assert (opt / "venv").is_symlink() and os.readlink(opt / "venv").startswith("venv-")
    assert (opt / "profile").read_text().strip() == "tracker"
    assert os.readlink(root / "usr/local/bin/edge-agent") == EXEC
    assert os.access(opt / "uninstall.sh", os.X_OK)
    assert (opt / "common.sh").read_bytes() == (DEPLOY / "common.sh").read_bytes()
    # The unit's Documentation= points at it.
    assert "Documentation=file:/opt/edge-agent/docs/deploy.md" in UNIT.read_text()
    assert (opt / "docs/deploy.md").read_bytes() == (REPO / "docs/deploy.md").read_bytes()
    # The polkit rule for the power-off on a critical battery; no I2C unless configured.
    rule = root / "etc/polkit-1/rules.d/50-edge-agent-power-off.rules"
    assert rule.read_bytes() == (DEPLOY / "polkit/50-edge-agent-power-off.rules").read_bytes()
    assert mode(rule) == 0o644
    assert not (unit_dir / "edge-agent.service.d/20-i2c.conf").exists()
    # Not provisioned (example device id, no key): enabled, not started.
    assert "not provisioned" in out
    assert "systemctl restart" not in out


def test_staged_udev_rule_keeps_modemmanager_off(staged: tuple[Path, Path, str]) -> None:
    """The staged venv's own `edge-agent gps udev-rule` wrote the rule (no port configured in
    the example config: the u-blox USB line only)."""
    root, _src, out = staged
    rules = root / "etc/udev/rules.d/77-edge-agent-serial.rules"
    assert mode(rules) == 0o644
    text = rules.read_text()
    assert 'ATTRS{idVendor}=="1546", ENV{ID_MM_DEVICE_IGNORE}="1"' in text
    assert "KERNEL==" not in text
    assert "udevadm control --reload # skipped: --root" in out
    assert (root / "opt/edge-agent/docs/time.md").is_file()


def test_staged_unit_verifies_against_the_staged_venv(
    staged: tuple[Path, Path, str], tmp_path: Path
) -> None:
    root, _src, _out = staged
    binary = root / EXEC.lstrip("/")
    assert os.access(binary, os.X_OK)
    unit_dir = root / "etc/systemd/system"
    text = (unit_dir / "edge-agent.service").read_text().replace(EXEC, str(binary))
    (tmp_path / "edge-agent.service").write_text(text)
    shutil.copytree(unit_dir / "edge-agent.service.d", tmp_path / "edge-agent.service.d")
    res = subprocess.run(
        [systemd_analyze(), "verify", str(tmp_path / "edge-agent.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_staged_tracker_venv_has_no_opencv_or_numpy(staged: tuple[Path, Path, str]) -> None:
    root, _src, _out = staged
    venv = root / "opt/edge-agent/venv"
    freeze = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    names = {re.split(r"[=@ ]", line)[0] for line in freeze.splitlines() if line}
    assert {"edge-agent", "pyserial", "gpsd-py3", "paho-mqtt", "cryptography"} <= names, names
    assert not [n for n in names if n.startswith(HEAVY)], names
    res = subprocess.run(
        [str(venv / "bin/edge-agent"), "gps", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def test_failed_upgrade_leaves_the_working_venv_live(
    staged: tuple[Path, Path, str],
) -> None:
    """A venv that cannot run (here: installed without its dependencies) never goes live."""
    root, src, _out = staged
    venv = root / "opt/edge-agent/venv"
    before = os.readlink(venv)
    res = run_script(INSTALL, "--root", root, "--source", src, "--pip-arg=--no-deps")
    assert res.returncode != 0
    assert "nothing switched" in res.stderr
    assert os.readlink(venv) == before
    # The failed venv is gone; the live one is the only one.
    assert [p.name for p in venv.parent.glob("venv-*")] == [before]
    assert (
        subprocess.run([str(venv / "bin/edge-agent"), "--help"], capture_output=True).returncode
        == 0
    )


def test_rerun_upgrades_and_keeps_config(staged: tuple[Path, Path, str]) -> None:
    root, src, _out = staged
    cfg = root / "etc/edge-agent/agent.toml"
    cfg.write_text(cfg.read_text().replace('id = "cam-0001"', 'id = "truck-0042"'))
    edited = cfg.read_bytes()
    venv = root / "opt/edge-agent/venv"
    before = os.readlink(venv)
    # No --profile: the recorded one is reused. Provisioned now (a real id and its key).
    key = root / "etc/edge-agent/keys/device.key"
    key.write_bytes(b"not a real key; install.sh only looks for the file")
    res = run_script(INSTALL, "--root", root, "--source", src)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "profile tracker" in res.stdout
    assert "agent.toml exists: kept" in res.stdout
    assert cfg.read_bytes() == edited
    assert os.readlink(venv) != before
    # The previous venv stays for a rollback; older ones would go.
    venvs = sorted(p.name for p in (root / "opt/edge-agent").glob("venv-*"))
    assert venvs == sorted([before, os.readlink(venv)])
    assert "systemctl restart edge-agent.service # skipped: --root" in res.stdout


# --------------------------------------------------------------------------- uninstall


def fake_install(root: Path) -> None:
    for d in (
        "opt/edge-agent/venv-1/bin",
        "etc/edge-agent/keys",
        "var/lib/edge-agent/spool",
        "etc/systemd/system/edge-agent.service.d",
        "usr/local/bin",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "opt/edge-agent/venv").symlink_to("venv-1")
    (root / "usr/local/bin/edge-agent").symlink_to(EXEC)
    shutil.copy2(UNIT, root / "etc/systemd/system/edge-agent.service")
    (root / "etc/edge-agent/agent.toml").write_text("[device]\n")
    (root / "etc/edge-agent/keys/device.key").write_bytes(b"k")
    (root / "var/lib/edge-agent/spool/index.sqlite3").write_bytes(b"")


def add_segment(root: Path) -> Path:
    seg = root / "var/lib/edge-agent/spool/seg/video/000000000007.seg"
    seg.parent.mkdir(parents=True, exist_ok=True)
    seg.write_bytes(b"sealed evidence")
    return seg


def test_uninstall_keeps_config_and_spool(tmp_path: Path) -> None:
    fake_install(tmp_path)
    seg = add_segment(tmp_path)
    res = run_script(UNINSTALL, "--root", tmp_path)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "opt/edge-agent").exists()
    assert not (tmp_path / "etc/systemd/system/edge-agent.service").exists()
    assert not (tmp_path / "etc/systemd/system/edge-agent.service.d").exists()
    assert not (tmp_path / "usr/local/bin/edge-agent").is_symlink()
    assert (tmp_path / "etc/edge-agent/keys/device.key").exists()
    assert seg.exists()
    assert "systemctl disable --now edge-agent.service # skipped: --root" in res.stdout
    assert "1 file(s) of undelivered evidence" in res.stdout


def test_uninstall_refuses_purge_while_spool_holds_evidence(tmp_path: Path) -> None:
    fake_install(tmp_path)
    seg = add_segment(tmp_path)
    res = run_script(UNINSTALL, "--root", tmp_path, "--purge")
    assert res.returncode == 2
    assert "refusing --purge" in res.stderr and "not" in res.stderr
    assert "--force" in res.stderr
    # Nothing changed at all: not even the service was stopped.
    assert res.stdout == ""
    assert seg.exists()
    assert (tmp_path / "opt/edge-agent/venv").is_symlink()
    assert (tmp_path / "etc/systemd/system/edge-agent.service").exists()
    # Quarantined files are evidence too.
    seg.unlink()
    q = tmp_path / "var/lib/edge-agent/spool/quarantine/000000000003.seg"
    q.parent.mkdir()
    q.write_bytes(b"?")
    assert run_script(UNINSTALL, "--root", tmp_path, "--purge").returncode == 2


def test_uninstall_purge_force_and_empty_spool(tmp_path: Path) -> None:
    fake_install(tmp_path)
    add_segment(tmp_path)
    res = run_script(UNINSTALL, "--root", tmp_path, "--purge", "--force")
    assert res.returncode == 0, res.stderr
    assert "deleting 1 file(s) of undelivered evidence" in res.stderr
    assert not (tmp_path / "var/lib/edge-agent").exists()
    assert not (tmp_path / "etc/edge-agent").exists()
    assert "userdel edge-agent # skipped: --root" in res.stdout
    # An empty spool (only its index) purges without --force.
    other = tmp_path / "other"
    fake_install(other)
    res = run_script(UNINSTALL, "--root", other, "--purge")
    assert res.returncode == 0, res.stderr
    assert not (other / "var/lib/edge-agent").exists()


def test_uninstall_dry_run_changes_nothing(tmp_path: Path) -> None:
    fake_install(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    res = run_script(UNINSTALL, "--root", tmp_path, "--purge", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"+ rm -rf {tmp_path}/opt/edge-agent" in res.stdout
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert run_script(UNINSTALL, "--root", tmp_path, "--force").returncode == 1
