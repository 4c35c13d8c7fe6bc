"""``edge-agent selftest`` against a real mosquitto (test PKI) and the reference ingest.

The device is enrolled the way a technician does it (keys, CSR signed by the test CA,
``install_cert``); GPS comes from a replayed log with current dates, video from the synthetic
source. Every item passes; with the broker away, the broker item fails with a clear reason and
the exit code is 1.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enrol.provision import Answers, Layout, install_cert, provision
from agent.ingest.receiver import Ingest
from agent.ingest.store import Store
from agent.labs.broker import INGEST_IDENTITY, Mosquitto, Pki, free_port, other_ca
from agent.labs.nmea import truck_log
from agent.uplink.control import load_ack_private
from agent.uplink.mqtt import LinkConfig
from tests.enrol.helpers import edge_agent, now_tuple, sign_csr
from tests.fixtures.keys import KeySet


def enrol(
    root: Path,
    device: str,
    keyset: KeySet,
    pki: Pki,
    port: int,
    gps_replay: Path | None,
    ack_pub: Path,
) -> Layout:
    layout = Layout(root)
    answers = Answers(
        device_id=device,
        profile="dashcam",
        unit="SAN-2",
        vehicle="TRK-7",
        broker=f"mqtts://127.0.0.1:{port}",
        platform_key=keyset.platform_pub_path,
        ca=pki.ca,
        ack_key=ack_pub,
        gps_source="replay" if gps_replay else "none",
        gps_replay=gps_replay,
        video_source="synthetic",
    )
    out = provision(answers, layout, say=lambda _s: None)
    assert out.csr is not None
    cert = sign_csr(out.csr, root / "signed.pem", ca=pki.ca, ca_key=pki.ca_key)
    install_cert(layout, cert, say=lambda _s: None)
    return layout


@pytest.fixture
def ingest(
    broker_alive: Mosquitto, pki: Pki, keyset: KeySet, tmp_path: Path, ack_key: Path
) -> Iterator[Store]:
    store = Store(tmp_path / "store", platform_key=keyset.platform_private)
    ident = pki.client(INGEST_IDENTITY)
    stop = threading.Event()
    worker = Ingest(
        store,
        LinkConfig(host=broker_alive.host, port=broker_alive.port, client_id=INGEST_IDENTITY,
                   ca=pki.ca, cert=ident.cert, key=ident.key),
        stop,
        ack_key=load_ack_private(ack_key),
    )  # fmt: skip
    worker.start()
    deadline = time.monotonic() + 15
    while not worker.link.subscribed:
        assert time.monotonic() < deadline, "ingest did not connect and subscribe"
        time.sleep(0.05)
    yield store
    stop.set()
    worker.join(10)


def selftest(layout: Layout, *extra: str) -> tuple[int, dict[str, dict[str, str]], str]:
    res = edge_agent("selftest", "--config", str(layout.config), "--json", "--gps-timeout", "10",
                     "--ack-timeout", "30", *extra)  # fmt: skip
    report = json.loads(res.stdout)
    return res.returncode, {i["item"]: i for i in report["items"]}, res.stderr


def test_all_items_pass(
    tmp_path: Path, keyset: KeySet, pki: Pki, broker_alive: Mosquitto, ingest: Store, ack_key: Path
) -> None:
    log = tmp_path / "drive.nmea"
    log.write_bytes(truck_log(60, start=now_tuple(ahead_s=2)))
    layout = enrol(
        tmp_path / "root",
        "cam-st1",
        keyset,
        pki,
        broker_alive.port,
        log,
        ack_key.with_name("ack.pub"),
    )
    rc, items, progress = selftest(layout, "--max-clock-offset", "10")
    summary = {k: (v["status"], v["detail"]) for k, v in items.items()}
    assert rc == 0, (summary, progress)
    assert items["camera"]["status"] == "PASS"
    assert "1280x720 from synthetic" in items["camera"]["detail"]
    # The dashcam profile records no audio: the microphone item says so.
    assert items["microphone"] == {**items["microphone"], "status": "SKIP",
                                   "detail": "audio is disabled in the config"}  # fmt: skip
    assert items["gps"]["status"] == "PASS" and "52.0000, 5.0000, 9 sats" in items["gps"]["detail"]
    assert items["clock"]["status"] == "PASS" and "GNSS - system" in items["clock"]["detail"]
    assert items["broker"]["status"] == "PASS"
    assert f"127.0.0.1:{broker_alive.port} as cam-st1" in items["broker"]["detail"]
    assert items["segment"]["status"] == "PASS"
    assert "acknowledged by the platform" in items["segment"]["detail"]
    # The progress display, one line per item. Warnings still show (run_selftest): the
    # replayed log's times lag the system clock by more than 2 s when this machine is slow
    # to start the self-test, and agent.gps.clock says so between an item and its result.
    warnings = r"(?:[^\n]* WARNING [^\n]*\n)*"
    assert re.search(
        rf"\[3/\d+\] GPS fix ... {warnings}PASS \(52.0000, 5.0000, 9 sats\)", progress
    ), progress
    # A replayed log has no serial port to check.
    assert items["serial"]["status"] == "SKIP"
    # skipped: the microphone, the serial port, and the power and modem (none configured,
    # not a Raspberry Pi)
    assert "self-test PASSED: 5 pass, 0 fail, 4 skipped" in progress
    assert "INFO" not in progress  # the agent's log lines do not break the display
    # The platform holds the sealed test record (verified, decrypted).
    body = json.loads(
        (ingest.root / "cam-st1" / "plain" / "event" / "000000000000.bin").read_text()
    )
    assert body["type"] == "selftest" and body["device"] == "cam-st1"


def test_broker_down_and_wrong_ca_fail_clearly(
    tmp_path: Path, keyset: KeySet, pki: Pki, broker_alive: Mosquitto, ack_key: Path
) -> None:
    port = free_port()  # nothing listens there
    layout = enrol(
        tmp_path / "root", "cam-st2", keyset, pki, port, None, ack_key.with_name("ack.pub")
    )
    rc, items, progress = selftest(layout)
    assert rc == 1, progress
    assert items["broker"]["status"] == "FAIL"
    assert items["broker"]["detail"] == (
        f"connection refused by 127.0.0.1:{port} (is the broker running there?)"
    )
    assert items["segment"]["status"] == "SKIP"
    assert "the broker is not reachable" in items["segment"]["detail"]
    assert "self-test FAILED" in progress

    # The real broker, but the device trusts another CA: the reason names the CA file.
    text = layout.config.read_text().replace(f"port = {port}", f"port = {broker_alive.port}")
    layout.config.write_text(text)
    layout.ca.write_bytes(other_ca(tmp_path / "other").read_bytes())
    rc, items, _ = selftest(layout)
    assert rc == 1
    assert items["broker"]["status"] == "FAIL"
    assert "is not signed by the CA in" in items["broker"]["detail"]
    assert "(wrong CA file?)" in items["broker"]["detail"]
