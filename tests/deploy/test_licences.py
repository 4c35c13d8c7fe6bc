"""The licence: the project's own (Apache-2.0), and the third-party table docs/deploy.md shows,
which must still be what deploy/licences.py reads from the installed packages."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARK = "<!-- deploy/licences.py --machine: from here to the next heading -->"


def _generated() -> str:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy" / "licences.py"), "--machine"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def _documented() -> str:
    text = (REPO / "docs" / "deploy.md").read_text()
    start = text.index(MARK) + len(MARK)
    end = text.index("\n**x264 and x265.**", start)
    return text[start:end].strip() + "\n"


def _rows(table: str) -> list[tuple[str, ...]]:
    return [
        tuple(c.strip() for c in line.strip("|").split("|"))
        for line in table.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]


def _split(text: str) -> tuple[str, str]:
    packages, _, libraries = text.partition("Native libraries the wheels bundle")
    return packages, libraries


def test_the_project_is_apache_2() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"
    assert meta["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_package_table_is_what_is_installed() -> None:
    generated, documented = _split(_generated()), _split(_documented())
    assert _rows(documented[0]) == _rows(generated[0]), (
        "docs/deploy.md's table differs from deploy/licences.py's output: paste it again"
    )
    names = {r[0] for r in _rows(generated[0])}
    assert {"cryptography", "paho-mqtt", "av", "pyserial"} <= names  # the walk is real


def test_every_bundled_library_is_classified_and_the_gpl_ones_are_documented() -> None:
    generated, documented = _split(_generated())[1], _split(_documented())[1]
    rows = _rows(generated)
    assert rows, "no bundled libraries found: the walk over the wheels' .libs is broken"
    assert not [r for r in rows if r[2] == "not classified"], rows
    gpl = {(r[0], r[1]) for r in rows if re.search(r"(?<!L)GPL", r[2])}
    assert ("av", "libx264") in gpl
    documented_rows = {(r[0], r[1]) for r in _rows(documented)}
    assert gpl <= documented_rows, gpl - documented_rows
