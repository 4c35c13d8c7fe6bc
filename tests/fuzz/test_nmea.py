"""The NMEA reader never raises, whatever bytes a receiver (or a broken cable) sends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.gps.nmea import NmeaReader
from agent.labs.nmea import truck_log
from agent.model import Fix
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


# ------------------------------------------------------------- u-blox UBX and mixed streams
def _pvt_stream() -> tuple[bytes, list[bytes]]:
    from tests.gps.ubxframes import nav_eoe, nav_pvt

    frames = []
    for i in range(12):
        pvt = nav_pvt(1_760_000_000 + i, 30.0 + i / 1000, 114.0 + i / 1000)
        frames += [pvt, nav_eoe(int.from_bytes(pvt[6:10], "little"))]
    return b"".join([*frames[:12], LOG[:400], *frames[12:]]), frames


UBX_LOG, UBX_FRAMES = _pvt_stream()


def _valid_pvt_times(data: bytes) -> set[float]:
    """Times of the NAV-PVT frames that pass their checksum in ``data`` as delivered."""
    from agent.gps.ubx import frame_ok

    times: set[float] = set()
    i = 0
    while (j := data.find(b"\xb5\x62\x01\x07", i)) >= 0:
        n = data[j + 4] | data[j + 5] << 8 if j + 6 <= len(data) else 0
        f = data[j : j + 8 + n]
        if frame_ok(f):
            times |= {fix.time for fix in _one(f)}
        i = j + 2
    return times


def _one(f: bytes) -> list[Fix]:
    from agent.gps.ubx import UbxReader

    r = UbxReader()
    return r.frame(f) + r.flush()


def _feed_receiver(pieces: list[bytes]) -> list[Fix]:
    from agent.gps.receiver import ReceiverReader

    reader = ReceiverReader("fuzz")
    data = b"".join(pieces)
    out: list[Fix] = []
    try:
        for p in pieces:
            out += reader.feed(p)
        out += reader.flush()
    except Exception:
        keep("nmea", data)
        raise
    for fix in out:
        if fix.lat is not None and fix.lon is not None:
            assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180, fix
    return out


@given(st.lists(st.binary(max_size=200), max_size=20), st.data())
def test_random_bytes_with_ubx_sync_words(pieces: list[bytes], data: st.DataObject) -> None:
    TRIED["ubx"] += 1
    sync = data.draw(
        st.sampled_from([b"\xb5\x62", b"\xb5\x62\x01\x07", b"\xb5\x62\x01\x07\x5c\x00"])
    )
    _feed_receiver([sync + p for p in pieces])


@given(st.data())
def test_mutated_ubx_never_fixes_from_a_frame_that_fails_its_checksum(data: st.DataObject) -> None:
    """NAV-PVT frames and NMEA with bytes changed, inserted, dropped or truncated, fed in
    arbitrary splits: every UBX fix is one of a frame that still passes its checksum."""
    TRIED["ubx"] += 1
    buf = bytearray(UBX_LOG)
    for _ in range(data.draw(st.integers(1, 10))):
        op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "set":
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[i : i + data.draw(st.integers(1, 30))]
        else:
            del buf[i:]
        if not buf:
            buf += b"\xb5"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(buf)), max_size=6)))
    pieces = [bytes(buf[a:b]) for a, b in zip([0, *cuts], [*cuts, len(buf)], strict=True)]
    fixes = _feed_receiver(pieces)
    allowed = _valid_pvt_times(bytes(buf))
    for fix in fixes:
        if fix.time_resolved is not None:  # decoded from UBX
            assert fix.time in allowed, fix
