"""StreamingWriter: what a put writes its sealed file through (durable.py)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.storage.durable import StreamingWriter


def test_every_byte_is_written_once_in_order(tmp_path: Path) -> None:
    """Pieces of any size (bytes, memoryview slices) across many writeback windows."""
    pieces = [os.urandom(n) for n in (0, 1, 4095, 4096, 4097, 70_000, 3)]
    pieces.append(memoryview(os.urandom(10_000))[1000:9000])  # type: ignore[arg-type]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        w = StreamingWriter(fd, window=4096)
        for p in pieces:
            assert w.write(p) == len(p)
        os.fsync(fd)
    finally:
        os.close(fd)
    want = b"".join(bytes(p) for p in pieces)
    assert path.read_bytes() == want
    assert w.pos == len(want)


def test_where_the_writeback_hint_is_refused_the_bytes_still_go_through() -> None:
    """A pipe refuses sync_file_range (ESPIPE): the hint is dropped, nothing else changes."""
    r, wfd = os.pipe()
    try:
        w = StreamingWriter(wfd, window=1024)
        data = os.urandom(20_000)  # within the pipe's buffer
        w.write(data[:5000])
        w.write(data[5000:])
        assert w._sync_range is None  # refused once, not asked again
        got = b""
        while len(got) < len(data):
            got += os.read(r, 65536)
        assert got == data
    finally:
        os.close(r)
        os.close(wfd)
