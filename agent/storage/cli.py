"""CLI: ``keys``, ``seal``, ``verify`` and ``spool`` subcommands."""

from __future__ import annotations

import argparse
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

from agent.errors import AgentError


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create device or platform keys")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    k_init = ksub.add_parser("init", help="create this device's Ed25519 signing key (0600)")
    k_init.add_argument("--dir", default="/etc/edge-agent/keys", help="key directory")
    k_init.add_argument("--force", action="store_true", help="replace existing keys")
    k_init.set_defaults(func=_keys_init)
    k_plat = ksub.add_parser(
        "platform-init", help="create a platform X25519 key pair (tests, demos, small fleets)"
    )
    k_plat.add_argument("dir", help="directory for platform.key (0600) and platform.pub")
    k_plat.add_argument("--force", action="store_true", help="replace existing keys")
    k_plat.set_defaults(func=_keys_platform_init)

    seal = sub.add_parser("seal", help="seal a file into the spool as one segment")
    seal.add_argument("file", help="file to seal")
    seal.add_argument("--stream", required=True, help="stream name (video, still, event, ...)")
    seal.add_argument("--content-type", help="MIME type (guessed from the name if omitted)")
    seal.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    seal.set_defaults(func=_seal)

    verify = sub.add_parser(
        "verify",
        help="verify sealed segments: signatures, hashes, chains; decrypt with the platform key",
    )
    verify.add_argument("paths", nargs="+", help="segment files, key records or directories")
    verify.add_argument("--platform-key", help="platform private key: check plaintext, decrypt")
    verify.add_argument("--device-key", help="pin the device's public key (device.pub)")
    verify.add_argument(
        "--decrypt-to",
        help="write decrypted contents (and each segment's meta, NNN.meta.json) under this"
        " directory; a recovered video or audio part is written as its playable media",
    )
    verify.add_argument(
        "--show-meta",
        action="store_true",
        help="print each segment's meta (sealed since format version 2: needs --platform-key)",
    )
    verify.add_argument(
        "--partial",
        action="store_true",
        help="the inputs are part of each stream (e.g. a device spool whose first segments the"
        " platform already has): a chain may begin after seq 0",
    )
    verify.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    verify.set_defaults(func=_verify)

    spool = sub.add_parser("spool", help="show what waits in the spool")
    spool.add_argument("--config", help="agent config (default /etc/edge-agent/agent.toml)")
    spool.add_argument(
        "--retry", action="store_true", help="offer segments the platform refused again"
    )
    spool.set_defaults(func=_spool_status)


def _keys_init(args: argparse.Namespace) -> int:
    from agent.storage.keys import init_device_keys

    path, fp = init_device_keys(Path(args.dir), force=args.force)
    print(f"device key {path} (fingerprint {fp}); public key {path.with_suffix('.pub')}")
    return 0


def _keys_platform_init(args: argparse.Namespace) -> int:
    from agent.storage.keys import init_platform_keys

    path, fp = init_platform_keys(Path(args.dir), force=args.force)
    print(f"platform key {path} (fingerprint {fp}); give {path.with_suffix('.pub')} to devices")
    return 0


def _seal(args: argparse.Namespace) -> int:
    from agent.config.reading import read_config
    from agent.model import ClockState
    from agent.storage.from_config import build_spool
    from agent.storage.seal import SegmentHeader

    src = Path(args.file)
    if not src.is_file():
        raise AgentError(f"{src}: no such file")
    cfg = read_config(args.config)
    ctype = args.content_type or mimetypes.guess_type(src.name)[0] or "application/octet-stream"
    st = src.stat()
    mono = time.monotonic_ns()
    header = SegmentHeader(
        stream=args.stream,
        content_type=ctype,
        start_utc=st.st_mtime,
        end_utc=st.st_mtime,
        start_mono_ns=mono,
        end_mono_ns=mono,
        clock=ClockState(),
        meta={"file": src.name},
    )
    with build_spool(cfg) as spool, src.open("rb") as f:
        result = spool.put(header, iter(lambda: f.read(1 << 20), b""))
    print(f"sealed {src} as {cfg.device.id}/{result.stream}#{result.seq}: {result.path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from agent.storage.keys import load_platform_private, load_verify_key
    from agent.storage.verify import verify_paths

    paths = [Path(p) for p in args.paths]
    for p in paths:
        if not p.exists():
            raise AgentError(f"{p}: no such file or directory")
    report = verify_paths(
        paths,
        trusted=load_verify_key(Path(args.device_key)) if args.device_key else None,
        platform_private=load_platform_private(Path(args.platform_key))
        if args.platform_key
        else None,
        decrypt_to=Path(args.decrypt_to) if args.decrypt_to else None,
        partial=args.partial,
    )
    if not args.quiet:
        print(f"{len(report.segments)} segments, {len(report.keys)} key records")
        for s in sorted(report.streams.values(), key=lambda s: (s.device, s.stream)):
            dec = f", {s.decrypted} decrypted" if args.platform_key else ""
            print(
                f"  {s.device}/{s.stream}: {s.count} segments, seq {s.first_seq}..{s.last_seq},"
                f" {s.bytes} bytes{dec}"
            )
        for note in report.notes:
            print(f"  note: {note}")
        if not args.device_key:
            signers = {i.manifest["signer"] for _p, i in report.segments}
            print(
                f"  note: device key not pinned (signers {', '.join(sorted(signers)) or '-'});"
                " pass --device-key to prove which device signed"
            )
        if args.decrypt_to:
            print(f"  decrypted {len(report.decrypted)} files under {args.decrypt_to}")
    if args.show_meta:
        _print_meta(report, with_key=bool(args.platform_key))
    for problem in report.problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if report.ok:
        print("OK: every segment verifies and every chain is continuous")
        return 0
    print(f"FAILED: {len(report.problems)} problem(s)", file=sys.stderr)
    return 1


def _print_meta(report: Any, *, with_key: bool) -> None:
    import json

    for _path, info in sorted(report.segments, key=lambda p: (p[1].device, p[1].stream, p[1].seq)):
        meta = report.metas.get(info.label)
        if meta is None and info.version == 1:
            meta = info.manifest["meta"]
        if meta is not None:
            shown = json.dumps(meta, sort_keys=True, ensure_ascii=True)
        else:
            shown = "(sealed: needs --platform-key)" if not with_key else "(not readable)"
        print(f"  meta {info.label}: {shown}")


def _spool_status(args: argparse.Namespace) -> int:
    from agent.config.reading import read_config
    from agent.storage.status import format_figures, read_figures, retry_refused

    cfg = read_config(args.config)
    if args.retry:
        print(f"{retry_refused(cfg.spool.dir)} refused segment(s) will be sent again")
    print(format_figures(read_figures(cfg.spool.dir)))
    return 0
