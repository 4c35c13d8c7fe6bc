"""The shared readers of outside input: identifiers and bounded JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import boundedjson, ids
from agent.errors import FormatError


@pytest.mark.parametrize("good", ["cam-01", "TRUCK_7", "a", "x" * 64, "cam.d", "0abc", "_x"])
def test_device_ids_accepted(good: str) -> None:
    assert ids.device_id_problem(good) is None
    assert ids.check_device_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        ".hidden",
        "-rf",
        "cam/d",
        "cam-d/up",
        "x" * 65,
        "caméra",
        "ingest",
        "INGEST",
        "a b",
        "a\0b",
        "+",
        "#",
    ],
)
def test_device_ids_refused(bad: str) -> None:
    assert ids.device_id_problem(bad) is not None
    with pytest.raises(FormatError):
        ids.check_device_id(bad)


def test_seq_bounds() -> None:
    assert ids.check_seq(0) == 0
    assert ids.check_seq(ids.MAX_SEQ - 1) == ids.MAX_SEQ - 1
    for bad in (-1, ids.MAX_SEQ, 10**300, True, 1.0, "1"):
        with pytest.raises(FormatError):
            ids.check_seq(bad)


def test_other_identifiers() -> None:
    ids.check_stream("video")
    ids.check_key_id("0123456789abcdef")
    ids.check_hash("ab" * 32)
    ids.check_command_id("c-1")
    ids.check_boot_id("f00d:1")
    for fn, bad in [
        (ids.check_stream, "Video"),
        (ids.check_key_id, "0123456789ABCDEF"),
        (ids.check_hash, "AB" * 32),
        (ids.check_command_id, "-x"),
        (ids.check_boot_id, ".."),
    ]:
        with pytest.raises(FormatError):
            fn(bad)


def test_contained_paths(tmp_path: Path) -> None:
    assert ids.contained(tmp_path, "a", "b") == tmp_path.resolve() / "a" / "b"
    for parts in (("..",), ("a", ".."), ("/etc",), ("a/b",), ("",), ("a\0",)):
        with pytest.raises(FormatError):
            ids.contained(tmp_path, *parts)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(FormatError):
        ids.contained(tmp_path, "link", "passwd")


def test_bounded_json_accepts_ordinary_documents() -> None:
    assert boundedjson.loads(b'{"a": [1, 2.5, "x", null, true]}', "t") == {
        "a": [1, 2.5, "x", None, True]
    }
    assert boundedjson.loads("[1]", "t", want=list) == [1]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "deep"),
        (b'{"a":' + b"[" * 17 + b"]" * 17 + b"}", "deeper than 16"),
        (b'{"issued": 1' + b"0" * 400 + b"}", "digits"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": -Infinity}', "not JSON"),
        (b'{"a": NaN}', "not JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"[1]", "dict"),
        (b"{", "not JSON"),
        (b'{"a": "' + b"x" * 2000 + b'"}', "bytes"),
    ],
)
def test_bounded_json_refuses(doc: bytes, reason: str) -> None:
    with pytest.raises(FormatError, match=reason):
        boundedjson.loads(doc, "t", max_bytes=1024 if b"xxxx" in doc else 1 << 20)
