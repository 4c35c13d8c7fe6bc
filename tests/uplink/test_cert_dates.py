"""agent/uplink/cert_dates.py reads the same validity as cryptography.x509, and refuses the rest
with a ValueError (what check_certificate turns into "not a PEM certificate")."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent.errors import UplinkError
from agent.uplink.cert_dates import certificate_dates, load_pem_x509_certificate
from agent.uplink.mqtt import check_certificate

# UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), both ends of each.
VALIDITIES = [
    (dt.datetime(1999, 1, 2, 3, 4, 5), dt.datetime(2049, 12, 31, 23, 59, 59)),
    (dt.datetime(1950, 1, 1), dt.datetime(2050, 1, 1)),
    (dt.datetime(2026, 11, 30, 12, 0, 1), dt.datetime(9999, 12, 31, 23, 59, 59)),
]


def _cert(not_before: dt.datetime, not_after: dt.datetime, key_kind: str) -> x509.Certificate:
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if key_kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "trk-0001"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o" * 64),  # long: multi-byte lengths
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    algorithm = None if key_kind == "ed25519" else hashes.SHA256()
    return builder.sign(key, algorithm)


@pytest.mark.parametrize("key_kind", ["ec", "rsa", "ed25519"])
@pytest.mark.parametrize(("not_before", "not_after"), VALIDITIES)
def test_dates_are_cryptography_s(
    not_before: dt.datetime, not_after: dt.datetime, key_kind: str
) -> None:
    cert = _cert(not_before, not_after, key_kind)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    # Text before it and a second certificate after it: the first one is read, as x509 does.
    other = _cert(dt.datetime(2001, 1, 1), dt.datetime(2002, 1, 1), "ec")
    data = b"subject=CN = trk-0001\n" + pem + other.public_bytes(serialization.Encoding.PEM)
    got = load_pem_x509_certificate(data)
    assert got.not_valid_before_utc == cert.not_valid_before_utc
    assert got.not_valid_after_utc == cert.not_valid_after_utc
    assert certificate_dates(cert.public_bytes(serialization.Encoding.DER)) == got


def test_the_test_pki_certificates(tmp_path: Path) -> None:
    """The certificates the test broker's PKI issues (agent/labs/broker.py)."""
    from agent.labs.broker import make_pki

    pki = make_pki(tmp_path / "pki", identities=("dev-a",))
    for path in (pki.ca, pki.server_cert, pki.client("dev-a").cert):
        data = path.read_bytes()
        want = x509.load_pem_x509_certificate(data)
        got = load_pem_x509_certificate(data)
        assert (got.not_valid_before_utc, got.not_valid_after_utc) == (
            want.not_valid_before_utc,
            want.not_valid_after_utc,
        )


def test_what_is_not_a_certificate_is_a_value_error() -> None:
    der = _cert(*VALIDITIES[0], "ec").public_bytes(serialization.Encoding.DER)
    body = base64.encodebytes(der)
    bad = [
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n" + body,  # no end line
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(b"\x30\x03\x02\x01\x01")
        + b"-----END CERTIFICATE-----\n",
    ]  # fmt: skip
    for data in bad:
        with pytest.raises(ValueError):
            load_pem_x509_certificate(data)
    # Every truncation, and random corruption: a ValueError or the dates, nothing else.
    for n in range(len(der)):
        with pytest.raises(ValueError):
            certificate_dates(der[:n])
    rng = random.Random(19)
    for _ in range(2000):
        b = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        with contextlib.suppress(ValueError):
            certificate_dates(bytes(b))


def test_check_certificate_messages(tmp_path: Path) -> None:
    now = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
    for (nb, na), expect in (
        ((dt.datetime(2020, 1, 1), dt.datetime(2030, 1, 1)), "expired on 2030-01-01 00:00 UTC"),
        ((dt.datetime(2031, 1, 1), dt.datetime(2040, 1, 1)), "not valid before 2031-01-01"),
    ):
        path = tmp_path / "c.pem"
        path.write_bytes(_cert(nb, na, "ec").public_bytes(serialization.Encoding.PEM))
        with pytest.raises(UplinkError, match=expect):
            check_certificate(path, now=now)
    path.write_bytes(_cert(dt.datetime(2030, 1, 1), dt.datetime(2031, 1, 1), "ec").public_bytes(
        serialization.Encoding.PEM))  # fmt: skip
    check_certificate(path, now=now)  # in date: no error
    path.write_bytes(b"not a certificate\n")
    with pytest.raises(UplinkError, match="not a PEM certificate"):
        check_certificate(path, now=now)
