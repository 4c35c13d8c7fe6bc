#!/usr/bin/env python3
"""The third-party licences an installed device carries, from the installed packages' metadata.

Run it with the device's own interpreter, so it reads what that device has installed:

    /opt/edge-agent/venv/bin/python /opt/edge-agent/deploy/licences.py          # markdown
    .venv/bin/python deploy/licences.py --machine                               # + this CPU

It walks the requirements of ``edge-agent`` with the extras each profile installs
(install.sh: ``tracker`` = ``gps,power``, ``bodycam``/``dashcam`` = ``all``), reads each
distribution's ``License-Expression`` (else its ``License`` field, else its licence
classifiers), and lists the native libraries a wheel bundles (auditwheel's ``<name>.libs/``).
Those carry their own licences, which no metadata states: FFmpeg's libraries say theirs in the
binary (``libavcodec license: ...``, read here); the others come from :data:`KNOWN_LIBRARIES`
(each upstream's licence), and any library not in it is printed as "not classified".
docs/deploy.md ("Third-party licences") is this script's output; tests/deploy/test_licences.py
checks that it still is. Standard library only (``packaging`` from pip where it is not
installed).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a device's venv: pip vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

PROFILES = {"tracker": ("gps", "power"), "bodycam, dashcam": ("all",)}

#: Upstream licences of libraries wheels bundle (SPDX), where the wheel's metadata says none.
KNOWN_LIBRARIES = {
    "libx264": "GPL-2.0-or-later",
    "libx265": "GPL-2.0-or-later",
    "libSvtAv1Enc": "BSD-3-Clause-Clear",
    "libaom": "BSD-2-Clause",
    "libdav1d": "BSD-2-Clause",
    "libvpx": "BSD-3-Clause",
    "libopus": "BSD-3-Clause",
    "libmp3lame": "LGPL-2.0-or-later",
    "libopencore-amrnb": "Apache-2.0",
    "libopencore-amrwb": "Apache-2.0",
    "libwebp": "BSD-3-Clause",
    "libwebpmux": "BSD-3-Clause",
    "libsharpyuv": "BSD-3-Clause",
    "libavif": "BSD-2-Clause",
    "libpng16": "Libpng",
    "libvpl": "MIT",
    "libdrm": "MIT",
    "libxcb": "X11",
    "libxcb-shape": "X11",
    "libxcb-shm": "X11",
    "libxcb-xfixes": "X11",
    "libXau": "MIT-open-group",
    "libasound": "LGPL-2.1-or-later",
    "libgnutls": "LGPL-2.1-or-later",
    "libnettle": "LGPL-3.0-or-later OR GPL-2.0-or-later",
    "libhogweed": "LGPL-3.0-or-later OR GPL-2.0-or-later",
    "libgmp": "LGPL-3.0-or-later OR GPL-2.0-or-later",
    "libunistring": "LGPL-3.0-or-later OR GPL-2.0-or-later",
    "libssl": "OpenSSL",
    "libcrypto": "OpenSSL",
    "libopenblasp-r0": "BSD-3-Clause",
    "libopenblas": "BSD-3-Clause",
    "libscipy_openblas64_": "BSD-3-Clause",
    "libgfortran": "GPL-3.0-or-later WITH GCC-exception-3.1",
    "libquadmath": "LGPL-2.1-or-later",
    "libz": "Zlib",
}
FFMPEG = ("libavcodec", "libavformat", "libavutil", "libavfilter", "libavdevice",
          "libswscale", "libswresample")  # fmt: skip


@dataclass
class Package:
    name: str
    version: str
    licence: str
    profiles: set[str] = field(default_factory=set)
    bundled: dict[str, str] = field(default_factory=dict)  # library -> licence


def licence_of(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return str(expression)
    text = (meta.get("License") or "").strip()
    if text and len(text) <= 40 and "\n" not in text:
        return text
    classifiers = [
        c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    return " / ".join(classifiers) or "not stated"


def library_name(filename: str) -> str:
    """``libx264-d6533a8d.so.165`` -> ``libx264``: auditwheel adds hashes (and some names
    carry a version before ``.so``: ``libopenblasp-r0-59ffcd50.3.15.so``)."""
    stem = filename.split(".so")[0]
    return re.sub(r"(?:-[0-9a-f]{8})+(?:\.[0-9.]+)?$", "", stem)


def ffmpeg_licence(path: Path, name: str) -> str | None:
    """What an FFmpeg library says of itself (``libavcodec license: LGPL version 3 or later``)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    m = re.search(rb"%s license: ([A-Za-z0-9 .+-]+)" % name.encode(), data)
    return m.group(1).decode().strip() if m else None


def bundled(dist: metadata.Distribution) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in dist.files or ():
        parts = f.parts
        if len(parts) < 2 or not parts[0].endswith(".libs") or ".so" not in parts[-1]:
            continue
        name = library_name(parts[-1])
        if name in FFMPEG:
            said = ffmpeg_licence(Path(str(dist.locate_file(f))), name)
            out[name] = f"FFmpeg: {said}" if said else "FFmpeg (licence not stated)"
        else:
            out[name] = KNOWN_LIBRARIES.get(name, "not classified")
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def closure(extras: Iterable[str]) -> dict[str, metadata.Distribution]:
    """Every installed distribution ``edge-agent[extras]`` needs (itself left out)."""
    wanted = set(extras)
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, set[str]]] = [("edge-agent", wanted)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, want = todo.pop()
        key = (name.lower(), frozenset(want))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        if name != "edge-agent":
            found[dist.metadata["Name"].lower()] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            envs = [{"extra": e} for e in want] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            if req.name.lower() == "edge-agent":
                todo.append((name, want | set(req.extras)))
                continue
            try:
                metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                print(f"not installed here: {req.name}", file=sys.stderr)
                continue
            todo.append((req.name, set(req.extras)))
    return found


def packages() -> list[Package]:
    out: dict[str, Package] = {}
    for profile, extras in PROFILES.items():
        for key, dist in closure(extras).items():
            pkg = out.setdefault(
                key,
                Package(
                    dist.metadata["Name"], dist.version, licence_of(dist), bundled=bundled(dist)
                ),
            )
            pkg.profiles.add(profile)
    return sorted(out.values(), key=lambda p: p.name.lower())


def markdown(pkgs: list[Package], with_machine: bool = False) -> str:
    names = list(PROFILES)
    lines = [
        "| package | licence | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for p in pkgs:
        marks = " | ".join("yes" if n in p.profiles else "-" for n in names)
        lines.append(f"| {p.name} | {p.licence} | {marks} |")
    libs = [p for p in pkgs if p.bundled]
    if libs:
        where = f" ({platform.machine()} wheels)" if with_machine else ""
        lines += ["", f"Native libraries the wheels bundle{where}:", ""]
        lines += ["| package | library | licence |", "|---|---|---|"]
        for p in libs:
            lines += [f"| {p.name} | {lib} | {lic} |" for lib, lic in p.bundled.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", action="store_true", help="name this CPU's wheels")
    args = ap.parse_args(argv)
    sys.stdout.write(markdown(packages(), args.machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
