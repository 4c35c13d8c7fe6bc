"""KEY ACCEPTANCE: our NMEA reader agrees with gpsd over gpsd's own regression corpus.

For every epoch where gpsd's ``.chk`` reports a TPV fix (mode >= 2) our replay must report the
same time (to the ms) and lat/lon within 1e-6 degrees for >= 99.5% of gpsd's epochs, and at
most 0.5% of our fixes may fall at times where gpsd reports none (a log's final epoch aside).
Only NMEA logs count (see ``docs/gps.md``); every log must still be read without error.
"""

from __future__ import annotations

import pytest

from agent.gps.nmea import NmeaReader

from .corpus import CORPUS, compare, corpus_logs, is_binary_protocol, replay_fixes

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus missing: {CORPUS}")


def test_corpus_is_complete() -> None:
    assert len(corpus_logs()) == 50


def test_agreement_with_gpsd_over_the_corpus(report_lines: list[str]) -> None:
    results = [compare(log) for log in corpus_logs() if not is_binary_protocol(log)]
    skipped = [log.stem for log in corpus_logs() if is_binary_protocol(log)]
    epochs = sum(r.gpsd_epochs for r in results)
    strict = sum(r.matched for r in results)
    wkro = sum(r.matched_wkro for r in results)
    ours = sum(r.ours for r in results)
    extras = sum(len(r.extras) for r in results)
    agree = (strict + wkro) / epochs
    extra_share = extras / ours
    report_lines.append(
        f"gps corpus agreement: {len(results)} NMEA logs (binary-protocol logs left out: "
        f"{', '.join(skipped)}); gpsd epochs with a fix {epochs}; ours matched "
        f"{strict + wkro} = {100 * agree:.2f}% ({strict} = {100 * strict / epochs:.2f}% "
        f"without undoing gpsd's 1024-week WKRO shift on {wkro}); our fixes {ours}, "
        f"at times gpsd reports none {extras} = {100 * extra_share:.2f}% (final epochs aside)"
    )
    for r in results:
        for m in r.misses:
            report_lines.append(f"  {r.name}: missed {m}")
        for e in r.extras:
            report_lines.append(f"  {r.name}: extra {e}")
    assert epochs > 1000
    assert agree >= 0.995, "\n".join(report_lines)
    assert extra_share <= 0.005, "\n".join(report_lines)


@pytest.mark.parametrize("log", corpus_logs(), ids=lambda p: p.stem)
def test_every_log_is_read_without_error(log: object) -> None:
    from pathlib import Path

    assert isinstance(log, Path)
    fixes = replay_fixes(log)
    times = [f.time for f in fixes if f.has_position]
    assert times == sorted(times), "position fixes must never go back in time"
    for fix in fixes:
        if fix.has_position:
            assert fix.lat is not None and fix.lon is not None
            assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180


def test_chunking_does_not_change_the_result() -> None:
    """Feeding a log in odd-sized chunks (as a serial port does) gives the same fixes."""
    for log in corpus_logs()[:12]:
        data = log.read_bytes()
        whole = replay_fixes(log)
        reader = NmeaReader(source=log.name)
        chunked = []
        for i in range(0, len(data), 7):
            chunked += reader.feed(data[i : i + 7])
        chunked += reader.flush()
        assert chunked == whole, log.name
