"""Fixtures of the GPS tests: figure reporting, gpsfake on a random port, a pty serial port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

_LINES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_lines(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines a test wants printed in the terminal summary (measured figures)."""
    lines: list[str] = []
    yield lines
    request.config.stash.setdefault(_LINES, []).extend(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_LINES, [])
    if lines:
        terminalreporter.section("GPS figures")
        for line in lines:
            terminalreporter.write_line(line)
