"""Helpers for the provisioning tests: the CLI as a subprocess, a CA that signs CSRs."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]


def edge_agent(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGS`` with stdin not a terminal (so nothing is asked)."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def sign_csr(
    csr_path: Path,
    out: Path,
    *,
    ca: Path,
    ca_key: Path,
    cn: str | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Path:
    """What the platform CA does with a device's CSR (the CN may be overridden for tests)."""
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    subject_cn = cn or str(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def now_tuple(ahead_s: float = 0.0) -> tuple[int, int, int, int, int, int]:
    g = time.gmtime(time.time() + ahead_s)
    return (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
