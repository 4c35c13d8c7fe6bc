"""deploy/edge-agent-ingest.service: the platform's ingest worker under systemd (issue 15,
finding 10), and what makes it restart: a worker whose thread died exits non-zero.

- the unit passes ``systemd-analyze verify`` (on a copy whose ExecStart names an existing
  program) and keeps a low ``systemd-analyze security`` exposure;
- ``UMask=0077``, ``Restart=on-failure``, registered device keys (``--devices``) and signed
  acknowledgements (``--ack-key``), never ``--trust-on-first-use``;
- ``edge-agent ingest`` refuses to start without ``--devices`` unless trust on first use is
  asked for, naming both options;
- a real worker (the real broker) whose thread ends makes :func:`watch` return 70, the status
  ``edge-agent ingest`` exits with.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.ingest.cli import EXIT_THREAD_DIED, watch
from agent.ingest.receiver import Ingest
from agent.ingest.store import Store
from agent.labs.broker import Mosquitto, Pki
from agent.labs.waiting import wait_for
from tests.deploy.test_deploy import REPO, parse_unit, systemd_analyze
from tests.uplink.harness import ingest_config

UNIT = REPO / "deploy" / "edge-agent-ingest.service"
EXEC = "/opt/edge-agent/venv/bin/edge-agent"


def _exec_start(text: str) -> str:
    return " ".join(parse_unit(text.replace("\\\n", " "))["Service"]["ExecStart"])


def verify_copy(tmp: Path) -> str:
    stub = tmp / "bin" / "edge-agent"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    unit = tmp / "edge-agent-ingest.service"
    unit.write_text(text.replace(f"ExecStart={EXEC} ", f"ExecStart={stub} "))
    res = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
        res.stdout + res.stderr
    )
    return str(unit)


def test_ingest_unit_verifies_and_is_locked_down(tmp_path: Path) -> None:
    unit = verify_copy(tmp_path)
    res = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.0, res.stdout


def test_ingest_unit_directives() -> None:
    text = UNIT.read_text()
    svc = parse_unit(text.replace("\\\n", " "))["Service"]
    assert svc["UMask"] == ["0077"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["StateDirectoryMode"] == ["0700"]
    assert svc["User"] == ["edge-ingest"] and svc["NoNewPrivileges"] == ["yes"]
    cmd = _exec_start(text).split()
    assert cmd[:2] == [EXEC, "ingest"]
    assert "--devices" in cmd and "--ack-key" in cmd
    assert "--trust-on-first-use" not in cmd
    assert cmd[cmd.index("--store") + 1].startswith("/var/lib/edge-agent-ingest/")


def test_ingest_refuses_to_start_without_registered_keys(tmp_path: Path, pki: Pki) -> None:
    c = pki.client("ingest")
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "ingest", "--store", str(tmp_path / "store"),
         "--broker", "127.0.0.1:1", "--ca", str(pki.ca), "--cert", str(c.cert),
         "--cert-key", str(c.key)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 1
    assert "--devices DIR: required" in res.stderr and "--trust-on-first-use" in res.stderr
    assert not (tmp_path / "store").exists()


class _Poison:
    """An inbox entry that gets past every ``except Exception``: the stand-in for whatever
    might still end a thread (SystemExit is what ``sys.exit()`` in a library raises)."""

    qos = 0  # acknowledged like a QoS 0 message: nothing to tell the broker

    @property
    def topic(self) -> str:
        raise SystemExit("gone")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_thread_ends_the_worker_non_zero(
    tmp_path: Path, pki: Pki, broker_alive: Mosquitto
) -> None:
    stop = threading.Event()
    ingest = Ingest(
        Store(tmp_path / "store", trust_on_first_use=True),
        ingest_config(pki, broker_alive.port),
        stop,
        group="dead-thread-test",
    )
    ingest.start()
    try:
        wait_for(lambda: ingest.link.connected, 20, "the worker's connection")
        assert ingest.dead() == []
        ingest.inbox.put(_Poison())  # type: ignore[arg-type]
        status = [-1]
        watcher = threading.Thread(target=lambda: status.__setitem__(0, watch(ingest, stop, 0.1)))
        watcher.start()
        watcher.join(30)
        assert status[0] == EXIT_THREAD_DIED and ingest.dead() == ["ingest"]
    finally:
        stop.set()
        ingest.join()
