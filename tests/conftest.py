"""Shared pytest fixtures. Real parts live in plugin modules under tests/fixtures/."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.leaks",
    "tests.fixtures.keys",
    "tests.fixtures.pki",
    "tests.fixtures.broker",
]
