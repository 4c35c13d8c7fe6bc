"""Looks for plaintext media in files: MP4 boxes, JPEG, Ogg/Opus, WAV.

Ciphertext is random, so a bare four-byte tag could appear by chance; each signature therefore
checks the structure around the tag (a plausible box size and brand, a JFIF/Exif segment after
the JPEG start, an OpusHead page after ``OggS``). Whole files are searched, not only their first
bytes, so plaintext embedded in a database or journal is found too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

SIGNATURES: dict[str, re.Pattern[bytes]] = {
    # ISO BMFF: u32 size (8..4096) then 'ftyp' and a printable major brand.
    "mp4-ftyp": re.compile(rb"\x00\x00[\x00-\x0f][\x08-\xff]ftyp[a-zA-Z0-9 ]{4}", re.S),
    # A movie fragment: 'moof' whose first child is 'mfhd'.
    "mp4-moof": re.compile(rb"moof\x00\x00\x00\x10mfhd", re.S),
    "jpeg-jfif": re.compile(rb"\xff\xd8\xff\xe0..JFIF\x00", re.S),
    "jpeg-exif": re.compile(rb"\xff\xd8\xff\xe1..Exif\x00", re.S),
    "ogg-opus": re.compile(rb"OggS\x00.{22,300}?OpusHead", re.S),
    "wav": re.compile(rb"RIFF....WAVEfmt ", re.S),
}
MAX_BYTES = 256 * 1024 * 1024


def scan_file(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES)
    except OSError:
        return []
    return [name for name, pat in SIGNATURES.items() if pat.search(data)]


def files_under(
    roots: Iterable[Path], since: float | None = None, exclude: Iterable[Path] = ()
) -> Iterator[Path]:
    """Regular files under ``roots`` (modified or changed at/after ``since`` if given), not
    under any of ``exclude``."""
    skip = {str(e) for e in exclude}
    for root in roots:
        for dirpath, dirs, names in os.walk(root, followlinks=False):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
            for n in names:
                p = Path(dirpath) / n
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if not p.is_file() or p.is_symlink():
                    continue
                if since is not None and max(st.st_mtime, st.st_ctime) < since:
                    continue
                yield p


def scan(
    roots: Iterable[Path], since: float | None = None, exclude: Iterable[Path] = ()
) -> tuple[int, list[tuple[str, str]]]:
    """(files scanned, [(path, signature)])."""
    n = 0
    hits: list[tuple[str, str]] = []
    for p in files_under(roots, since, exclude):
        n += 1
        hits += [(str(p), sig) for sig in scan_file(p)]
    return n, hits
