"""``edge-agent video ...``: commands for technicians. Nothing heavy is imported up here.

``edge-agent video probe`` opens the configured (or given) source, reads frames, burns in the
watermark, encodes them and prints which encoder was chosen, what a frame looks like and what
the fragmented MP4 looks like. ``edge-agent record start|stop|mark`` belongs to the local
control socket (see docs/video.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    video = sub.add_parser("video", help="camera, encoder and stills")
    vsub = video.add_subparsers(dest="video_command", metavar="SUBCOMMAND")
    probe = vsub.add_parser(
        "probe", help="open the source, encode a second of video, show encoder and frame info"
    )
    probe.add_argument("--config", type=Path, help="agent config file (video and device tables)")
    probe.add_argument("--source", help="synthetic, /dev/videoN, a file or a stream URL")
    probe.add_argument("--width", type=int)
    probe.add_argument("--height", type=int)
    probe.add_argument("--fps", type=int)
    probe.add_argument("--encoder", choices=("auto", "libx264", "h264_v4l2m2m"))
    probe.add_argument("--frames", type=int, default=0, help="frames to encode (default: 1 s)")
    probe.add_argument("--save-frame", type=Path, help="write the first watermarked frame (JPEG)")
    probe.set_defaults(func=cmd_probe)
    video.set_defaults(func=lambda args: (video.print_help(), 2)[1])


def cmd_probe(args: argparse.Namespace) -> int:
    import dataclasses
    import threading

    import cv2

    from agent.capture.camera import CameraSource
    from agent.capture.encoder import H264Encoder
    from agent.capture.frames import FrameSource, read_counter
    from agent.capture.overlay import Overlay
    from agent.capture.settings import VideoSettings
    from agent.capture.sim import SyntheticSource
    from agent.errors import SourceError

    settings = VideoSettings()
    device_id, officer, vehicle = "probe", "", ""
    if args.config:
        from agent.config import load_config

        cfg = load_config(args.config)
        settings = cfg.video
        device_id, officer, vehicle = cfg.device.id, cfg.device.officer, cfg.device.vehicle
    changes = {
        k: getattr(args, k)
        for k in ("source", "width", "height", "fps", "encoder")
        if getattr(args, k) is not None
    }
    s = dataclasses.replace(settings, **changes)
    stop = threading.Event()
    source: FrameSource
    if s.source == "synthetic":
        source = SyntheticSource(s.width, s.height, s.fps)
    else:
        source = CameraSource(s.source, s.width, s.height, s.fps)
    overlay = Overlay(
        fields=s.watermark_fields,
        position=s.watermark_position,
        scale=s.watermark_scale,
        device_id=device_id,
        officer=officer,
        vehicle=vehicle,
    )
    t0 = time.monotonic()
    encoder = H264Encoder(
        s.width, s.height, s.fps, codec=s.encoder, bitrate_kbps=s.bitrate_kbps, preset=s.preset
    )
    print(f"source:   {source.name} ({'live' if source.live else 'not live'})")
    print(f"encoder:  {encoder.codec} (asked: {s.encoder}), {s.width}x{s.height}@{s.fps}")
    n = args.frames or s.fps
    source.open()
    frags = []
    first = None
    try:
        for i in range(n):
            frame = source.read()
            if frame is None:
                break
            if first is None:
                first = frame
                shape = frame.image.shape
                print(
                    f"frame:    #{frame.index} {shape[1]}x{shape[0]}x{shape[2]} {frame.image.dtype}"
                    f" mean {float(frame.image.mean()):.1f}"
                )
                if s.source == "synthetic":
                    print(f"counter:  {read_counter(frame.image)} (bar code read back)")
            box = overlay.apply(frame.image, frame.utc)
            if i == 0:
                print(f"overlay:  box y={box[0]} x={box[1]} h={box[2]} w={box[3]}")
                if args.save_frame:
                    cv2.imwrite(str(args.save_frame), frame.image)
            frags += encoder.encode(frame, i, i % max(1, round(s.fps * s.keyframe_s)) == 0)
        frags += encoder.finish()
    except SourceError:
        raise
    finally:
        source.close()
        stop.set()
    took = time.monotonic() - t0
    if first is None:
        raise SourceError(f"{source.name}: no frame")
    init = encoder.init or b""
    total = sum(f.frames for f in frags)
    size = len(init) + sum(len(f.data) for f in frags)
    print(f"mp4:      init {len(init)} bytes, {len(frags)} fragments, {total} frames, {size} bytes")
    print(f"speed:    {total / took:.1f} frames/s (open + capture + watermark + encode)")
    return 0
