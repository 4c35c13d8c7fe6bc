"""The NMEA reader never raises, whatever bytes a receiver (or a broken cable) sends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.gps.nmea import NmeaReader
from agent.gps.synth import truck_log
from tests.fuzz.common import TRIED, keep

LOG = truck_log(30, start=(2026, 1, 2, 3, 4, 5))
LINES = LOG.splitlines(keepends=True)


def _feed_all(pieces: list[bytes]) -> None:
    reader = NmeaReader("fuzz")
    data = b"".join(pieces)
    try:
        for p in pieces:
            for fix in reader.feed(p):
                if fix.lat is not None and fix.lon is not None:
                    assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180, fix
        reader.flush()
    except Exception:
        keep("nmea", data)
        raise


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes(pieces: list[bytes]) -> None:
    TRIED["nmea"] += 1
    _feed_all(pieces)


@given(st.data())
def test_mutated_sentences(data: st.DataObject) -> None:
    """A real drive with bytes changed, inserted or dropped, fed in arbitrary splits."""
    TRIED["nmea"] += 1
    buf = bytearray(LOG)
    for _ in range(data.draw(st.integers(1, 12))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "set":
            buf[i] = data.draw(st.sampled_from([*b",.*$\r\n-0123456789ENSWAV", *range(256)]))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[i : i + data.draw(st.integers(1, 30))]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(buf)), max_size=6)))
    pieces = [bytes(buf[a:b]) for a, b in zip([0, *cuts], [*cuts, len(buf)], strict=True)]
    _feed_all(pieces)


@given(
    st.lists(
        st.sampled_from(["GPRMC", "GNGGA", "GPGSA", "GPVTG", "GPGSV", "GNZDA", "GPGLL", "GNGST"]),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.text(alphabet="0123456789.,-ENSWAVMK", max_size=14), min_size=0, max_size=20),
)
def test_well_framed_sentences_with_random_fields(kinds: list[str], fields: list[str]) -> None:
    """Valid checksums, nonsense fields: the reader must judge the fields, not crash."""
    TRIED["nmea"] += 1
    out = []
    for k in kinds:
        body = ",".join([k, *fields]).encode()
        csum = 0
        for b in body:
            csum ^= b
        out.append(b"$" + body + f"*{csum:02X}\r\n".encode())
    _feed_all(out)
