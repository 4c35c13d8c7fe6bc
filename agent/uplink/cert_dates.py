"""The validity dates of a PEM certificate, read without ``cryptography.x509``.

The uplink checks its client certificate's dates before each connection, for a clear message
("expired on ...", "check the device clock") where the TLS handshake would only fail. Loading
``cryptography.x509`` for two dates costs a tracker ~1 MB resident for its whole life
(docs/scale.md "Tracker memory"); the dates sit at a fixed place in the DER (RFC 5280 4.1):

    Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER,
                                  signature AlgorithmIdentifier, issuer Name,
                                  validity SEQUENCE { notBefore Time, notAfter Time }, ... }
    Time ::= UTCTime (YYMMDDHHMMSSZ; YY >= 50 is 19YY) | GeneralizedTime (YYYYMMDDHHMMSSZ)

Only the first certificate of the file is read (as ``x509.load_pem_x509_certificate``). The
rest of the certificate is the TLS stack's to judge. Anything malformed is a ValueError.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _INTEGER, _VERSION = 0x30, 0x02, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18


@dataclass(frozen=True)
class CertificateDates:
    not_valid_before_utc: dt.datetime
    not_valid_after_utc: dt.datetime


def load_pem_x509_certificate(data: bytes) -> CertificateDates:
    """The validity of the first certificate in ``data`` (PEM)."""
    m = _PEM.search(data)
    if m is None:
        raise ValueError("no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the PEM body is not base64: {exc}") from None
    return certificate_dates(der)


def certificate_dates(der: bytes) -> CertificateDates:
    """The validity of a DER certificate."""
    tag, cert, end = _tlv(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise ValueError("not a DER certificate (one SEQUENCE)")
    tag, tbs_start, tbs_end = _tlv(der, cert)
    if tag != _SEQUENCE:
        raise ValueError("no tbsCertificate SEQUENCE")
    pos = tbs_start
    tag, _, nxt = _tlv(der, pos, tbs_end)
    if tag == _VERSION:
        pos = nxt
    for want, what in ((_INTEGER, "serialNumber"), (_SEQUENCE, "signature"), (_SEQUENCE, "issuer")):
        tag, _, pos = _tlv(der, pos, tbs_end)
        if tag != want:
            raise ValueError(f"no {what} where the tbsCertificate has it")
    tag, v_start, v_end = _tlv(der, pos, tbs_end)
    if tag != _SEQUENCE:
        raise ValueError("no validity SEQUENCE")
    tag1, s1, e1 = _tlv(der, v_start, v_end)
    tag2, s2, e2 = _tlv(der, e1, v_end)
    if e2 != v_end:
        raise ValueError("the validity holds more than two times")
    return CertificateDates(_time(tag1, der[s1:e1]), _time(tag2, der[s2:e2]))


def _tlv(der: bytes, pos: int, limit: int | None = None) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at ``pos``."""
    limit = len(der) if limit is None else limit
    if pos + 2 > limit:
        raise ValueError("truncated DER")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > limit:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + n], "big")
        pos += n
    if pos + length > limit:
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _time(tag: int, raw: bytes) -> dt.datetime:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("a validity time is not ASCII") from None
    if tag == _UTC_TIME and len(text) == 13 and text.endswith("Z") and text[:12].isdigit():
        yy = int(text[:2])
        text = ("19" if yy >= 50 else "20") + text
    elif not (tag == _GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")):
        raise ValueError(f"a validity time is neither UTCTime nor GeneralizedTime: {text!r}")
    if not text[:14].isdigit():
        raise ValueError(f"a validity time has non-digits: {text!r}")
    y, mo, d, h, mi, s = (
        int(text[i : i + w]) for i, w in ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2))
    )
    try:
        return dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"a validity time is not a date: {text!r}") from None
