"""Every repository path the docs name exists, and every ``agent.x.y`` they name resolves.

README.md and docs/*.md are read for paths under the repository's top-level folders
(``agent/``, ``tests/``, ``deploy/``, ``bench/``, ``docs/``, ``.ci/``), backticked or not, and
for dotted module names (``agent.config.remote``, ``agent.wallclock.now``). The comments and
docstrings of agent/, bench/ and deploy/ (and the Makefile, pyproject.toml) are held to the
same rule for paths, since they point readers at files too. Globs (``*``), templates
(``{a,b}``, ``<id>``) and placeholders in capitals (``bench_GROUP.py``) are not paths.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATH = re.compile(r"(?<![\w/.-])((?:agent|tests|deploy|bench|docs|\.ci)/[\w./-]*[\w])")
DOTTED = re.compile(r"(?<![\w./-])(agent(?:\.[A-Za-z_]\w*)+)")
FILE_SUFFIXES = (".py", ".md", ".toml", ".log", ".service", ".sh", ".json", ".html")


def _docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _sources() -> list[Path]:
    files = [REPO / "Makefile", REPO / "pyproject.toml", *sorted((REPO / ".ci").glob("*"))]
    for top in ("agent", "bench", "deploy"):
        files += [p for p in sorted((REPO / top).rglob("*")) if p.is_file()]
    return [p for p in files if p.suffix not in (".pyc", ".png", ".jpg")]


def is_placeholder(path: str) -> bool:
    return any(c in path for c in "*{<") or re.search(r"[A-Z]{3,}", path) is not None


def missing_paths(text: str) -> list[str]:
    out = []
    for m in PATH.finditer(text):
        path = m.group(1)
        if not is_placeholder(path) and not (REPO / path).exists():
            out.append(path)
    return out


@cache
def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in (REPO / "agent").rglob("*.py"):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


@cache
def _top_names(path: Path) -> frozenset[str]:
    """What a module defines or imports at its top level (under ``if`` blocks too)."""
    names: set[str] = set()

    def scan(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If | ast.Try):
                scan(node.body)
                scan(node.orelse)

    scan(ast.parse(path.read_text(encoding="utf-8")).body)
    return frozenset(names)


def unresolved_dotted(text: str) -> list[str]:
    """``agent.a.b.c`` names whose longest module prefix does not define the next name."""
    out = []
    modules = _modules()
    for m in DOTTED.finditer(text):
        ref = m.group(1)
        if ref.endswith(FILE_SUFFIXES) or ref in ("agent.log",):
            continue
        parts = ref.split(".")
        for i in range(len(parts), 0, -1):
            mod = ".".join(parts[:i])
            if mod not in modules:
                continue
            if i < len(parts) and parts[i] not in _top_names(modules[mod]):
                out.append(ref)
            break
        else:
            out.append(ref)
    return out


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: p.name)
def test_every_path_and_module_a_doc_names_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert missing_paths(text) == []
    assert unresolved_dotted(text) == []


def test_every_path_named_in_the_sources_exists() -> None:
    problems = []
    for path in _sources():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        problems += [f"{path.relative_to(REPO)}: {p}" for p in missing_paths(text)]
    assert problems == []


def test_the_checks_find_what_does_not_exist() -> None:
    # the scanners must not pass everything
    assert missing_paths(
        "see `agent/app.py` and agent/runtime/app.py, not bench/bench_GROUP.py"
    ) == ["agent/app.py"]
    assert unresolved_dotted("agent.remote_settings and agent.config.remote.RemoteSettings") == [
        "agent.remote_settings"
    ]
    assert unresolved_dotted("agent.runtime.app.Nothing, agent.wallclock.now()") == [
        "agent.runtime.app.Nothing"
    ]


def test_no_doc_says_a_part_is_not_built_yet() -> None:
    offenders = []
    for path in [*_docs(), *_sources()]:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if re.search(r"not (yet built|built yet)", text, re.I):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
