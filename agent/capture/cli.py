"""``edge-agent video ...``: commands for technicians. Nothing heavy is imported up here.

``edge-agent video probe`` says which board this is, which source and encoder the agent would
use here and why (the board's defaults, ``auto`` settled, the hardware encoder's probe), then
opens the source, takes a second of video through the same code the recorder runs (watermark
and encoder for raw frames; the remuxer for an encoded source) and shows what the fragmented
MP4 looks like. ``--json`` prints the same as one JSON object. ``edge-agent record
start|stop|mark`` belongs to the local control socket (see docs/video.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

SOURCES_HELP = (
    "auto, picamera2, rpicam, encoded (with --stream-url), synthetic, /dev/videoN, a file "
    "or a stream URL"
)


def register(sub: Any) -> None:
    video = sub.add_parser("video", help="camera, encoder and stills")
    vsub = video.add_subparsers(dest="video_command", metavar="SUBCOMMAND")
    probe = vsub.add_parser(
        "probe",
        help="show the board, the source and encoder chosen here and why, and encode a second",
    )
    probe.add_argument("--config", type=Path, help="agent config file (video and device tables)")
    probe.add_argument("--source", help=SOURCES_HELP)
    probe.add_argument("--stream-url", help="for --source encoded: rtsp://, tcp://, udp://...")
    probe.add_argument("--width", type=int)
    probe.add_argument("--height", type=int)
    probe.add_argument("--fps", type=int)
    probe.add_argument("--encoder", choices=("auto", "libx264", "h264_v4l2m2m"))
    probe.add_argument("--frames", type=int, default=0, help="frames to take (default: 1 s)")
    probe.add_argument("--save-frame", type=Path, help="write the first watermarked frame (JPEG)")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.add_argument(
        "--board-model",
        type=Path,
        help="read the board model from this file instead of /proc/device-tree/model",
    )
    probe.set_defaults(func=cmd_probe)
    video.set_defaults(func=lambda args: (video.print_help(), 2)[1])


def _settings(args: argparse.Namespace, board: Any) -> tuple[Any, dict[str, str]]:
    """The [video] settings the agent would run with here, and the device's identity."""
    import dataclasses
    import tomllib

    from agent.capture.boards import apply_board_defaults
    from agent.capture.settings import VideoSettings

    ident = {"device_id": "probe", "officer": "", "vehicle": "", "unit": ""}
    settings = VideoSettings()
    given: set[str] = set()
    if args.config:
        from agent.config.schema import load_config

        cfg = load_config(args.config)
        settings = cfg.video
        d = cfg.device
        ident = {"device_id": d.id, "officer": d.officer, "vehicle": d.vehicle, "unit": d.unit}
        raw = tomllib.loads(args.config.read_text(encoding="utf-8")).get("video", {})
        given = set(raw) if isinstance(raw, dict) else set()
    changes = {
        k: getattr(args, k)
        for k in ("source", "stream_url", "width", "height", "fps", "encoder")
        if getattr(args, k) is not None
    }
    settings = apply_board_defaults(settings, given | set(changes), board)
    return dataclasses.replace(settings, **changes), ident


def cmd_probe(args: argparse.Namespace) -> int:
    import threading

    from agent.capture.boards import MODEL_PATH, detect
    from agent.capture.frames import EncodedSource
    from agent.capture.service import build_source, make_overlay
    from agent.errors import SourceError

    model, board = detect(args.board_model or MODEL_PATH)
    s, ident = _settings(args, board)
    out: dict[str, Any] = {
        "board": {"model": model or "(none)", "row": board.key, "name": board.name},
        "defaults": {
            "source": board.source,
            "encoder": f"{board.encoder} ({board.encoder_note})",
            "size": f"{board.width}x{board.height}@{board.fps}",
            "bitrate_kbps": board.bitrate_kbps,
            "cpu_share": board.cpu_share,
        },
    }
    lines = [
        f"board:    {model or '(no device-tree model)'} -> {board.name} defaults",
        f"          source {board.source}, encoder {board.encoder} ({board.encoder_note}),",
        f"          {board.width}x{board.height}@{board.fps}, {board.bitrate_kbps} kbit/s, "
        f"expected CPU {board.cpu_share}",
    ]
    stop = threading.Event()
    overlay = make_overlay(
        s,
        device_id=ident["device_id"],
        officer=ident["officer"],
        vehicle=ident["vehicle"],
        unit=ident["unit"],
    )
    source, choice = build_source(s, stop, overlay=overlay, board=board)
    encoded = isinstance(source, EncodedSource)
    out["source"] = {
        "name": source.name,
        "chosen": choice.source,
        "why": choice.reason,
        "live": source.live,
        "encoded": encoded,
    }
    lines.append(f"source:   {source.name} ({'live' if source.live else 'not live'})")
    lines.append(f"          {choice.source}: {choice.reason}")
    try:
        if encoded:
            assert isinstance(source, EncodedSource)
            result = _take_units(args, s, source, lines)
        else:
            result = _take_frames(args, s, source, overlay, lines)
        out.update(result)
        code = 0
    except SourceError as exc:
        out["error"] = str(exc)
        lines.append(f"error:    {exc}")
        code = 1
    finally:
        stop.set()
        source.close()
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))
    return code


def _take_frames(
    args: argparse.Namespace, s: Any, source: Any, overlay: Any, lines: list[str]
) -> dict[str, Any]:
    import cv2

    from agent.capture.encoder import H264Encoder
    from agent.capture.frames import read_counter
    from agent.errors import SourceError

    t0 = time.monotonic()
    encoder = H264Encoder(
        s.width, s.height, s.fps, codec=s.encoder, bitrate_kbps=s.bitrate_kbps, preset=s.preset
    )
    lines.append(f"encoder:  {encoder.codec} (asked: {s.encoder}), {s.width}x{s.height}@{s.fps}")
    lines.append(f"          {encoder.choice.reason}")
    result: dict[str, Any] = {
        "encoder": {"codec": encoder.codec, "asked": s.encoder, "why": encoder.choice.reason},
        "fallback_alarm": encoder.choice.fallback,
    }
    n = args.frames or s.fps
    source.open()
    frags = []
    first = None
    for i in range(n):
        frame = source.read()
        if frame is None:
            break
        if first is None:
            first = frame
            shape = frame.image.shape
            lines.append(
                f"frame:    #{frame.index} {shape[1]}x{shape[0]}x{shape[2]} {frame.image.dtype}"
                f" mean {float(frame.image.mean()):.1f}"
            )
            if s.source == "synthetic" or source.name.startswith("synthetic"):
                lines.append(f"counter:  {read_counter(frame.image)} (bar code read back)")
        if overlay is not None:
            box = overlay.apply(frame.image, frame.utc)
            if i == 0:
                lines.append(f"overlay:  box y={box[0]} x={box[1]} h={box[2]} w={box[3]}")
        if i == 0 and args.save_frame:
            cv2.imwrite(str(args.save_frame), frame.image)
        frags += encoder.encode(frame, i, i % max(1, round(s.fps * s.keyframe_s)) == 0)
    frags += encoder.finish()
    if first is None:
        raise SourceError(f"{source.name}: no frame")
    result["mp4"] = _mp4_line(encoder.init, frags, time.monotonic() - t0, lines)
    return result


def _take_units(args: argparse.Namespace, s: Any, source: Any, lines: list[str]) -> dict[str, Any]:
    from agent.capture.remux import StreamRemuxer
    from agent.errors import SourceError

    t0 = time.monotonic()
    source.open()
    remuxer = StreamRemuxer(s.fps, encoder=source.encoder, watermarked=source.watermarked)
    n = args.frames or s.fps
    frags = []
    keys = 0
    for _ in range(n):
        au = source.read()
        if au is None:
            break
        keys += au.key
        frags += remuxer.push(au).fragments
    frags += remuxer.finish()
    if not remuxer.units_in:
        raise SourceError(f"{source.name}: no decodable picture (no IDR) in {n} access units")
    lines.append(
        f"encoder:  {source.encoder}: passed through, not re-encoded "
        f"({'watermark burned in' if source.watermarked else 'no burned-in watermark'})"
    )
    lines.append(
        f"stream:   H.264 {remuxer.width}x{remuxer.height}, {remuxer.units_in} pictures, "
        f"{keys} IDR, {remuxer.skipped} skipped before the first IDR"
    )
    if args.save_frame:
        _save_first(remuxer.init, frags, args.save_frame)
    return {
        "encoder": {"codec": source.encoder, "passthrough": True, "why": "encoded source"},
        "watermark": source.watermarked,
        "stream": {
            "width": remuxer.width,
            "height": remuxer.height,
            "pictures": remuxer.units_in,
            "idr": keys,
            "skipped": remuxer.skipped,
        },
        "mp4": _mp4_line(remuxer.init, frags, time.monotonic() - t0, lines),
    }


def _mp4_line(
    init: bytes | None, frags: list[Any], took: float, lines: list[str]
) -> dict[str, Any]:
    from agent.capture.encoder import check_init

    init = init or b""
    total = sum(f.frames for f in frags)
    size = len(init) + sum(len(f.data) for f in frags)
    problem = check_init(init) if init else "no init segment"
    lines.append(
        f"mp4:      init {len(init)} bytes ({problem or 'avcC ok'}), {len(frags)} fragments, "
        f"{total} frames, {size} bytes"
    )
    lines.append(f"speed:    {total / took:.1f} frames/s (open + capture + encode or remux)")
    return {
        "init_bytes": len(init),
        "init_problem": problem,
        "fragments": len(frags),
        "frames": total,
        "bytes": size,
        "frames_per_s": round(total / took, 1),
    }


def _save_first(init: bytes | None, frags: list[Any], path: Path) -> None:
    import io

    import av
    import cv2

    if not init or not frags:
        return
    with av.open(io.BytesIO(init + frags[0].data), "r") as c:
        for vf in c.decode(video=0):
            cv2.imwrite(str(path), vf.to_ndarray(format="bgr24"))
            return
