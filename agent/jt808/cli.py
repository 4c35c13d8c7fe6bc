"""``edge-agent jt808 decode HEX|FILE``: any JT/T 808 frame as JSON, for technicians.

The argument is hex (spaces, ``0x`` and line breaks allowed; one or more frames, with or
without their 0x7e flags), or a file holding hex text or raw captured bytes (e.g. a TCP
stream saved with ``tcpdump -w`` then ``tshark -T fields -e tcp.payload``, or ``nc``). One
JSON object is printed per frame and line (``--indent 2`` for people). A frame that does not
decode prints ``{"error": ...}``; one read despite a wrong check code, body length or phone
number lists them in ``"problems"``; a body that does not parse gives ``"body_error"``. Any of
these makes the exit status 1.

Nothing heavy is imported at module level: the CLI imports this module for ``--help``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

HEX_TEXT = re.compile(rb"^[0-9a-fA-Fx\s,:]*$")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("jt808", help="JT/T 808: decode frames from a platform or terminal")
    sub = p.add_subparsers(dest="jt808_command", metavar="JT808_COMMAND")
    p.set_defaults(func=lambda args: _help(p))
    dec = sub.add_parser(
        "decode",
        help="print JT/T 808 frames (hex or a capture file) as JSON, one per line",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dec.add_argument("source", help="hex of one or more frames, or a file (hex text or raw bytes)")
    dec.add_argument("--indent", type=int, default=None, help="pretty-print with this indent")
    dec.set_defaults(func=cmd_decode)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def frames_of(data: bytes) -> list[bytes]:
    """Split hex text or raw bytes into frames (each with its flags where it had them)."""
    from agent.errors import FormatError
    from agent.jt808.codec import FrameReader

    if HEX_TEXT.match(data):
        text = re.sub(rb"0x|[\s,:]", b"", data)
        if len(text) % 2:
            raise FormatError("jt808 decode: an odd number of hex digits")
        data = bytes.fromhex(text.decode())
    if b"\x7e" not in data:
        return [data] if data else []
    reader = FrameReader()
    frames = [b"\x7e" + f + b"\x7e" for f in reader.feed(data)]
    if reader.pending:  # a last frame without its closing flag
        frames.append(b"\x7e" + data[data.rfind(b"\x7e") + 1 :])
    return frames


def cmd_decode(args: argparse.Namespace) -> int:
    from agent.errors import AgentError
    from agent.jt808.describe import describe_frame

    src = args.source
    path = Path(src)
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if is_file:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AgentError(f"jt808 decode: cannot read {path}: {exc}") from None
    else:
        data = src.encode()
        if not HEX_TEXT.match(data):
            raise AgentError(f"jt808 decode: {src!r} is neither a file nor hex")
    frames = frames_of(data)
    if not frames:
        raise AgentError("jt808 decode: no frame found")
    bad = 0
    for raw in frames:
        out = describe_frame(raw)
        bad += any(k in out for k in ("error", "problems", "body_error"))
        print(json.dumps(out, ensure_ascii=False, indent=args.indent))
    return 1 if bad else 0
