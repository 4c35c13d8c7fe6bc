"""``edge-agent provision`` end to end in a temporary root, non-interactive (stdin not a TTY)."""

from __future__ import annotations

import datetime as dt
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.enrol.provision import Layout
from agent.labs.broker import Pki, other_ca
from tests.enrol.helpers import edge_agent, sign_csr
from tests.fixtures.keys import KeySet

DEVICE = "cam-0042"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def provision_args(root: Path, keyset: KeySet, pki: Pki, ack_key: Path, *extra: str) -> list[str]:
    return [
        "provision",
        "--root", str(root),
        "--device-id", DEVICE,
        "--profile", "dashcam",
        "--vehicle", "TRK-7",
        "--unit", "SAN-2",
        "--broker", "mqtts://127.0.0.1:18883",
        "--platform-key", str(keyset.platform_pub_path),
        "--ca", str(pki.ca),
        "--ack-key", str(ack_key.with_name("ack.pub")),
        "--gps-source", "none",
        "--video-source", "synthetic",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def provisioned(tmp_path: Path, keyset: KeySet, pki: Pki, ack_key: Path) -> Layout:
    root = tmp_path / "root"
    res = edge_agent(*provision_args(root, keyset, pki, ack_key))
    assert res.returncode == 0, res.stderr + res.stdout
    return Layout(root)


def test_blank_to_enrolled(provisioned: Layout, pki: Pki, tmp_path: Path) -> None:
    lay = provisioned
    # Keys, CSR, platform files, config: with the modes of docs/deploy.md.
    for private in (lay.device_key, lay.tls_key):
        assert mode(private) == 0o600, private
    assert mode(lay.config) == 0o640
    assert mode(lay.etc) == 0o750
    assert mode(lay.keys) == mode(lay.tls) == 0o700
    assert lay.platform_pub.read_bytes() and lay.ca.read_bytes() == pki.ca.read_bytes()
    csr = x509.load_pem_x509_csr(lay.csr.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE
    assert not lay.cert.exists()
    cfg = tomllib.loads(lay.config.read_text())
    assert cfg["device"] == {
        "id": DEVICE, "profile": "dashcam", "officer": "", "vehicle": "TRK-7", "unit": "SAN-2",
    }  # fmt: skip
    assert cfg["uplink"]["enabled"] is True
    assert (cfg["uplink"]["host"], cfg["uplink"]["port"]) == ("127.0.0.1", 18883)
    assert cfg["uplink"]["cert"] == str(lay.cert)
    assert cfg["video"]["enabled"] is True and cfg["video"]["mode"] == "continuous"
    assert cfg["keys"]["device_key"] == str(lay.device_key)

    # The CA signs the CSR; the certificate is checked and installed.
    cert = sign_csr(lay.csr, tmp_path / "signed.pem", ca=pki.ca, ca_key=pki.ca_key)
    res = edge_agent("provision", "--root", str(lay.root), "--install-cert", str(cert),
                     "--no-selftest")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "certificate installed" in res.stdout
    assert lay.cert.read_bytes() == cert.read_bytes()
    assert not lay.csr.exists()

    res = edge_agent("config", "check", str(lay.config))
    assert res.returncode == 0, res.stderr
    assert f"OK (device {DEVICE}, profile dashcam" in res.stdout

    # What the platform registers: the device's signing key, named for `ingest --devices`.
    from agent.storage.keys import load_signing_key, load_verify_key, raw_public

    reg = lay.registration(DEVICE)
    assert raw_public(load_verify_key(reg)) == raw_public(
        load_signing_key(lay.device_key).public_key()
    )
    assert cfg["uplink"]["ack_key"] == str(lay.ack_pub) and lay.ack_pub.exists()


def test_rerun_keeps_keys_and_answers(provisioned: Layout, pki: Pki, tmp_path: Path) -> None:
    lay = provisioned
    sign_csr(lay.csr, tmp_path / "signed.pem", ca=pki.ca, ca_key=pki.ca_key)
    assert edge_agent("provision", "--root", str(lay.root), "--install-cert",
                      str(tmp_path / "signed.pem"), "--no-selftest").returncode == 0  # fmt: skip
    before = {p: p.read_bytes() for p in (lay.device_key, lay.tls_key, lay.cert)}

    # No answers at all: the previous config's are the defaults; one answer changes.
    res = edge_agent("provision", "--root", str(lay.root), "--unit", "SAN-3", "--no-selftest")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "refusing to replace it without --force" in res.stdout
    assert {p: p.read_bytes() for p in before} == before
    cfg = tomllib.loads(lay.config.read_text())
    assert cfg["device"]["id"] == DEVICE and cfg["device"]["vehicle"] == "TRK-7"
    assert cfg["device"]["unit"] == "SAN-3"
    assert cfg["uplink"]["port"] == 18883
    assert "installed and matching this device" in res.stdout
    assert mode(lay.config) == 0o640

    # Another identity on the same keys is refused ...
    res = edge_agent("provision", "--root", str(lay.root), "--device-id", "cam-0043",
                     "--no-selftest")  # fmt: skip
    assert res.returncode == 1
    assert "provisioned as 'cam-0042'" in res.stderr and "--force" in res.stderr
    assert lay.device_key.read_bytes() == before[lay.device_key]

    # ... and --force makes new keys (and drops the certificate of the old TLS key).
    res = edge_agent("provision", "--root", str(lay.root), "--device-id", "cam-0043",
                     "--force", "--no-selftest")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert lay.device_key.read_bytes() != before[lay.device_key]
    assert lay.tls_key.read_bytes() != before[lay.tls_key]
    assert not lay.cert.exists() and lay.csr.exists()
    assert mode(lay.device_key) == mode(lay.tls_key) == 0o600


def test_the_camera_defaults_to_the_boards_and_the_pi_stack_is_pointed_to(
    tmp_path: Path, keyset: KeySet, pki: Pki, ack_key: Path
) -> None:
    """No --video-source: the board's camera (auto). picamera2 where it is not installed
    (this machine): provisioning goes on and says how to install it."""
    args = provision_args(tmp_path / "a", keyset, pki, ack_key)
    i = args.index("--video-source")
    del args[i : i + 2]
    res = edge_agent(*args, "--no-selftest", "--skip-receiver")
    assert res.returncode == 0, res.stderr + res.stdout
    assert tomllib.loads(Layout(tmp_path / "a").config.read_text())["video"]["source"] == "auto"
    assert "install.sh --camera" not in res.stdout
    args[args.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    res = edge_agent(*args, "--video-source", "picamera2", "--no-selftest", "--skip-receiver")
    assert res.returncode == 0, res.stderr + res.stdout
    cfg = tomllib.loads(Layout(tmp_path / "b").config.read_text())
    assert cfg["video"]["source"] == "picamera2"
    assert "rerun deploy/install.sh --camera picamera2" in res.stdout


def test_missing_answers_are_named(tmp_path: Path, keyset: KeySet) -> None:
    res = edge_agent("provision", "--root", str(tmp_path / "root"), "--device-id", "cam-1",
                     "--platform-key", str(keyset.platform_pub_path))  # fmt: skip
    assert res.returncode == 1
    assert "missing answers" in res.stderr
    assert "--broker" in res.stderr and "--ca (or --from-dir)" in res.stderr
    assert "--ack-key (or --from-dir)" in res.stderr
    assert not (tmp_path / "root" / "etc" / "edge-agent" / "agent.toml").exists()


def test_bad_inputs_refused_before_anything_changes(
    tmp_path: Path, keyset: KeySet, pki: Pki, ack_key: Path
) -> None:
    root = tmp_path / "root"
    args = provision_args(root, keyset, pki, ack_key)
    bad_url = [*args]
    bad_url[bad_url.index("--broker") + 1] = "mqtt://broker:1883"
    res = edge_agent(*bad_url)
    assert res.returncode == 1 and "must be mqtts://HOST:PORT" in res.stderr
    swapped = [*args]
    swapped[swapped.index("--ca") + 1] = str(keyset.platform_pub_path)
    res = edge_agent(*swapped)
    assert res.returncode == 1 and "not a PEM certificate" in res.stderr
    # Device ids as agent.ids defines them (issue 15, finding 5): no path tricks, no names the
    # platform uses for itself, ASCII only.
    for bad, why in (
        ("cam 42", "must be 1-64 ASCII letters"),
        ("..", "must be 1-64 ASCII letters"),
        (".", "must be 1-64 ASCII letters"),
        ("cam-d/up", "must be 1-64 ASCII letters"),
        ("c\u00e4m-1", "must be 1-64 ASCII letters"),
        ("ingest", "'ingest' is reserved for the platform"),
    ):
        bad_id = [*args]
        bad_id[bad_id.index("--device-id") + 1] = bad
        res = edge_agent(*bad_id)
        assert res.returncode == 1 and f"--device-id: {why}" in res.stderr, (bad, res.stderr)
    assert not (root / "etc" / "edge-agent" / "keys" / "device.key").exists()
    no_ack = [*args]
    del no_ack[no_ack.index("--ack-key") : no_ack.index("--ack-key") + 2]
    res = edge_agent(*no_ack)
    assert res.returncode == 1 and "--ack-key" in res.stderr
    assert not (root / "etc" / "edge-agent" / "keys" / "device.key").exists()


def test_from_dir_reads_a_usb_stick(
    tmp_path: Path, keyset: KeySet, pki: Pki, ack_key: Path
) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "platform.pub").write_bytes(keyset.platform_pub_path.read_bytes())
    (usb / "ca.crt").write_bytes(pki.ca.read_bytes())
    (usb / "ack.pub").write_bytes(ack_key.with_name("ack.pub").read_bytes())
    res = edge_agent("provision", "--root", str(tmp_path / "root"), "--device-id", "trk-9",
                     "--profile", "tracker", "--broker", "broker.example:8883",
                     "--gps-source", "gpsd", "--from-dir", str(usb))  # fmt: skip
    assert res.returncode == 0, res.stderr
    lay = Layout(tmp_path / "root")
    assert lay.ca.read_bytes() == pki.ca.read_bytes()
    assert lay.ack_pub.read_bytes() == ack_key.with_name("ack.pub").read_bytes()
    cfg = tomllib.loads(lay.config.read_text())
    assert cfg["video"]["enabled"] is False and cfg["gps"]["source"] == "gpsd"
    assert cfg["uplink"]["host"] == "broker.example"
    assert cfg["uplink"]["ack_key"] == str(lay.ack_pub)
    # What the platform registers comes back on the stick: the key and the CSR.
    assert (usb / "trk-9.pub").read_bytes() == lay.registration("trk-9").read_bytes()
    assert (usb / "trk-9.csr").read_bytes() == lay.csr.read_bytes()


@pytest.mark.parametrize("fault", ["wrong key", "wrong CN", "expired", "other CA"])
def test_bad_certificate_refused(fault: str, provisioned: Layout, pki: Pki, tmp_path: Path) -> None:
    lay = provisioned
    out = tmp_path / "bad.pem"
    if fault == "wrong key":
        issued = pki.issue(DEVICE, name="stolen")  # a certificate for another key pair
        out.write_bytes(issued.cert.read_bytes())
        expect = "for a different key"
    elif fault == "wrong CN":
        sign_csr(lay.csr, out, ca=pki.ca, ca_key=pki.ca_key, cn="cam-0099")
        expect = "issued to CN 'cam-0099', but this device is 'cam-0042'"
    elif fault == "expired":
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        sign_csr(lay.csr, out, ca=pki.ca, ca_key=pki.ca_key,
                 not_before=past - dt.timedelta(days=30), not_after=past)  # fmt: skip
        expect = "expired on"
    else:
        ca = other_ca(tmp_path / "other")
        sign_csr(lay.csr, out, ca=ca, ca_key=ca.with_suffix(".key"))
        expect = "not issued by the CA in"
    res = edge_agent("provision", "--root", str(lay.root), "--install-cert", str(out),
                     "--no-selftest")  # fmt: skip
    assert res.returncode == 1
    assert expect in res.stderr
    assert not lay.cert.exists()


def test_interactive_prompts_on_a_terminal(
    tmp_path: Path, keyset: KeySet, pki: Pki, ack_key: Path
) -> None:
    """stdin a terminal: every missing answer is asked, a bad one asked again."""
    import os
    import subprocess
    import sys

    from tests.enrol.helpers import REPO

    answers = [
        "cam 7",  # refused: a space
        "cam-0007",
        "",  # profile: the default (bodycam)
        "B5678",  # officer
        "ENF-1",  # unit
        "mqtt://nope",  # refused: not mqtts
        "mqtts://127.0.0.1:18883",
        str(keyset.platform_pub_path),
        str(tmp_path / "missing.pem"),  # refused: no such file
        str(pki.ca),
        str(ack_key.with_name("ack.pub")),
        "",  # no command key
        "none",  # GPS
        "synthetic",  # camera
    ]
    master, slave = os.openpty()
    os.write(master, ("\n".join(answers) + "\n").encode())
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "provision", "--root", str(tmp_path / "root")],
        cwd=REPO,
        stdin=slave,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    os.close(slave)
    os.close(master)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Device id (e.g. cam-0042): " in proc.stdout
    assert "must be 1-64 ASCII letters" in proc.stdout
    assert "Profile (bodycam, tracker, dashcam) [bodycam]: " in proc.stdout
    assert (
        "picamera2|rpicam), /dev/video0 (USB), a stream URL, or synthetic [auto]: " in proc.stdout
    )
    assert "must be mqtts://HOST:PORT" in proc.stdout
    assert "no such file" in proc.stdout
    cfg = tomllib.loads(Layout(tmp_path / "root").config.read_text())
    assert cfg["device"] == {
        "id": "cam-0007", "profile": "bodycam", "officer": "B5678", "vehicle": "", "unit": "ENF-1",
    }  # fmt: skip
    assert cfg["audio"]["enabled"] is True and cfg["video"]["source"] == "synthetic"
    assert "NEXT: send the certificate request" in proc.stdout
