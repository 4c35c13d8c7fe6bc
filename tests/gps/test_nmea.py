"""The NMEA reader: sentences, epochs, and property/fuzz tests (hypothesis)."""

from __future__ import annotations

import calendar
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import NmeaError
from agent.gps.nmea import NmeaReader, checksum, parse_sentence
from agent.model import FixMode

from .corpus import CORPUS, corpus_logs


def nmea(body: str) -> bytes:
    return f"${body}*{checksum(body.encode()):02X}\r\n".encode()


RMC = "GPRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,A"
GGA = "GPGGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
GSA = "GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"
RMC2 = "GPRMC,123520.00,A,4807.039,N,01131.001,E,022.4,084.4,230394,003.1,W,A"


def epoch_fixes(*bodies: str) -> list:
    r = NmeaReader()
    out = []
    for b in bodies:
        out += r.feed(nmea(b))
    return out + r.flush()


def test_sentences_of_one_epoch_combine_into_one_fix() -> None:
    fixes = epoch_fixes(RMC, GGA, GSA)
    assert len(fixes) == 1
    f = fixes[0]
    assert f.iso_time() == "1994-03-23T12:35:19.000Z"
    assert f.time == calendar.timegm((1994, 3, 23, 12, 35, 19))
    assert f.mode == FixMode.FIX_3D
    assert f.lat == pytest.approx(48 + 7.038 / 60)
    assert f.lon == pytest.approx(11 + 31.0 / 60)
    assert f.alt == pytest.approx(545.4)
    assert f.speed == pytest.approx(22.4 * 1852 / 3600)
    assert f.track == pytest.approx(84.4)
    assert f.quality == 1 and f.hdop == pytest.approx(1.3)
    assert f.sats_used == 8


GGA2 = "GPGGA,123520.00,4807.039,N,01131.001,E,1,08,0.9,545.4,M,46.9,M,,"


def test_next_epoch_closes_the_previous_one() -> None:
    r = NmeaReader()
    assert r.feed(nmea(RMC) + nmea(GGA)) == []
    out = r.feed(nmea(RMC2))
    assert [f.iso_time() for f in out] == ["1994-03-23T12:35:19.000Z"]
    # GGA is now known to end this receiver's cycle: 12:35:20 is reported when it arrives.
    assert r.flush() == []
    r.feed(nmea(GGA2))
    assert [f.iso_time() for f in r.flush()] == ["1994-03-23T12:35:20.000Z"]


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "GQ", "GI"])
def test_every_talker(talker: str) -> None:
    (f,) = epoch_fixes(talker + RMC[2:], talker + GGA[2:])
    assert f.has_position and f.lat == pytest.approx(48.1173)


def test_gns_gll_zda_vtg() -> None:
    fixes = epoch_fixes(
        "GNZDA,101010.50,05,06,2025,00,00",
        "GNGNS,101010.50,5130.0000,N,00007.5000,W,AAN,12,0.8,35.0,47.0,,,S",
        "GNGLL,5130.0000,N,00007.5000,W,101010.50,A,A",
        "GNVTG,270.0,T,,M,10.0,N,18.5,K,A",
    )
    (f,) = fixes
    assert f.iso_time() == "2025-06-05T10:10:10.500Z"
    assert (f.lat, f.lon) == (pytest.approx(51.5), pytest.approx(-0.125))
    assert f.alt == pytest.approx(35.0) and f.mode == FixMode.FIX_3D
    assert f.track == 270.0 and f.speed == pytest.approx(10 * 1852 / 3600)


def test_no_fix_epochs_carry_time_but_no_position() -> None:
    fixes = epoch_fixes(
        "GPGGA,123519.00,4807.038,N,01131.000,E,1,05,1.2,545.4,M,46.9,M,,",
        "GPRMC,123519.00,A,4807.038,N,01131.000,E,0,0,230394,,,A",
        "GPGGA,123520.00,,,,,0,00,99.9,,M,,M,,",
        "GPRMC,123520.00,V,,,,,,,230394,,,N",
        "GPGGA,123521.00,,,,,0,00,99.9,,M,,M,,",
    )
    # As gpsd: RMC V does not take part in the cycle, so GGA (which followed the learned
    # ender RMC) becomes an ender too and reports 12:35:21 without a position.
    assert [f.mode for f in fixes] == [FixMode.FIX_3D, FixMode.NO_FIX]
    assert fixes[1].lat is None and fixes[1].iso_time() == "1994-03-23T12:35:21.000Z"


def test_no_date_no_fix() -> None:
    """GGA alone has no date: the reader never guesses one."""
    assert epoch_fixes(GGA, GGA.replace("123519", "123520")) == []


def test_midnight_takes_the_new_date_from_rmc() -> None:
    fixes = epoch_fixes(
        "GPRMC,235959.00,A,4807.038,N,01131.000,E,0,0,311224,,,A",
        "GPGGA,235959.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "GPRMC,000000.00,A,4807.038,N,01131.000,E,0,0,010125,,,A",
        "GPGGA,000000.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "GPRMC,000001.00,A,4807.038,N,01131.000,E,0,0,010125,,,A",
    )
    assert [f.iso_time() for f in fixes] == ["2024-12-31T23:59:59.000Z", "2025-01-01T00:00:00.000Z"]


def test_bad_checksum_vendor_and_noise_never_fix() -> None:
    r = NmeaReader()
    data = (
        b"\xb5\x62\x01\x07garbage\x00\xff"
        + nmea("PUBX,00,123519.00,4807.038,N")
        + b"$"
        + RMC.encode()
        + b"*00\r\n"
        + b"$GPRMC,123519.00,A,48"
        + b"\r\n"
    )
    assert r.feed(data) + r.flush() == []
    assert r.stats.bad_checksum >= 1 and r.stats.sentences == 1  # the $PUBX


def test_parse_sentence_errors() -> None:
    with pytest.raises(NmeaError):
        parse_sentence(b"no dollar here")
    with pytest.raises(NmeaError):
        parse_sentence(b"$GPRMC,1,2,3")
    with pytest.raises(NmeaError):
        parse_sentence(RMC.encode() + b"*00")
    s = parse_sentence(nmea(GGA))
    assert (s.talker, s.kind, s.fields[0]) == ("GP", "GGA", "123519.00")
    p = parse_sentence(nmea("PGRME,15.0,M,45.0,M,25.0,M"))
    assert (p.talker, p.kind) == ("P", "GRME")


# ------------------------------------------------------------------------- property tests
def _corpus_sentences() -> list[bytes]:
    out: list[bytes] = []
    if CORPUS.is_dir():
        for log in corpus_logs()[::5]:
            out += [ln for ln in log.read_bytes().splitlines() if ln.startswith(b"$")][:20]
    return out or [nmea(RMC).strip(), nmea(GGA).strip(), nmea(GSA).strip()]


SENTENCES = _corpus_sentences()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_and_never_fix(data: bytes) -> None:
    r = NmeaReader()
    assert r.feed(data) + r.flush() == []
    with contextlib.suppress(NmeaError):
        parse_sentence(data)


@FUZZ
@given(st.sampled_from(SENTENCES), st.data())
def test_mutated_sentences_raise_only_nmea_error(line: bytes, data: st.DataObject) -> None:
    b = bytearray(line)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "field"]))
        i = data.draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            b[i:i] = data.draw(st.binary(min_size=1, max_size=5))
        elif op == "delete" and b:
            del b[i]
        else:
            b[i:i] = b","
    mutated = bytes(b)
    try:
        s = parse_sentence(mutated)
    except NmeaError:
        s = None
    r = NmeaReader()
    if s is not None:
        with contextlib.suppress(NmeaError):
            r.apply(s, [])
    r.feed(mutated + b"\r\n")  # and through the byte interface: never raises
    r.flush()


@FUZZ
@given(st.sampled_from(SENTENCES), st.integers(1, 255))
def test_a_bad_checksum_line_never_yields_a_fix(line: bytes, delta: int) -> None:
    star = line.rindex(b"*")
    good = int(line[star + 1 : star + 3], 16)
    bad = line[: star + 1] + f"{(good + delta) % 256:02X}".encode()
    r = NmeaReader()
    # Give the reader a date first, so a position sentence alone could make a fix.
    r.feed(nmea("GPZDA,000000.00,01,01,2025,00,00"))
    assert r.feed(bad + b"\r\n" + bad + b"\r\n") == []
    assert all(not f.has_position for f in r.flush())
    assert r.stats.bad_checksum == 2 and r.stats.sentences == 1  # only the ZDA


@FUZZ
@given(
    st.lists(st.text(alphabet="0123456789.,-ANSEWVMKTDP*$", max_size=15), min_size=1, max_size=20),
    st.sampled_from(["GPRMC", "GNGGA", "GPGSA", "GLGSV", "GNGNS", "GPGLL", "GPVTG", "GPZDA"]),
)
def test_random_fields_with_valid_checksum_raise_only_nmea_error(
    fields: list[str], address: str
) -> None:
    body = ",".join([address, *fields]).replace("*", "").replace("$", "")
    line = nmea(body)
    r = NmeaReader()
    r.feed(nmea("GPZDA,000000.00,01,01,2025,00,00"))
    with contextlib.suppress(NmeaError):
        r.apply(parse_sentence(line), [])
    for fix in r.feed(line) + r.flush():
        if fix.has_position:
            assert fix.lat is not None and -90 <= fix.lat <= 90
            assert fix.lon is not None and -180 <= fix.lon <= 180
