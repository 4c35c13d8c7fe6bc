"""Fuzz suite: prints how many inputs each target tried and what failed (terminal summary)."""

from __future__ import annotations

import pytest

from tests.fuzz import common


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if common.TRIED or common.FOUND:
        terminalreporter.write_sep("-", "fuzzing")
        terminalreporter.write_line(common.report())
