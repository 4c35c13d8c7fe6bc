"""Talk end to end with the real audio path: PulseAudio (sine microphone, null-sink speaker whose
monitor we record), mosquitto with mTLS, the CLI's send and listen."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import CommandError
from agent.labs.broker import Mosquitto
from agent.labs.waiting import wait_for
from agent.talk import wire
from agent.talk.audio_io import SoundDeviceIO
from agent.talk.platform import publish_all
from tests.audio.conftest import decode_audio, decrypt_all, peak_hz
from tests.fixtures.keys import KeySet
from tests.talk.conftest import (
    GROUP,
    RATE,
    ControlRoom,
    MonitorRecorder,
    broker_argv,
    message_chunks,
    tone_runs,
    write_tone_wav,
)

FREQS = (440.0, 600.0, 880.0, 1000.0)


def cli(argv: list[str]) -> argparse.Namespace:
    from agent.talk.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["talk", *argv])


def test_messages_wait_while_talking_then_play_in_order_and_voice_goes_out(
    make_device: Any,
    control: ControlRoom,
    talk_broker: Mosquitto,
    talk_pulse: Any,
    command_key: Path,
    keyset: KeySet,
    tmp_path: Path,
) -> None:
    dev = make_device("talk-a")
    saved = tmp_path / "heard"
    # The control room listens (CLI), and sends message A with the CLI, B by hand.
    keys_dir = tmp_path / "devkeys"
    keys_dir.mkdir()
    (keys_dir / "talk-a.pub").write_bytes(keyset.device_pub_path.read_bytes())
    listen_args = cli(
        [
            "listen",
            "--save",
            str(saved),
            "--devices",
            str(keys_dir),
            "--count",
            "1",
            "--timeout",
            "40",
            *broker_argv(talk_broker, "control-listen"),
        ]
    )
    listen = threading.Thread(target=listen_args.func, args=(listen_args,))
    listen.start()
    a = write_tone_wav(tmp_path / "a.wav", 600, 1.0)
    b = write_tone_wav(tmp_path / "b.wav", 1000, 1.0)
    monitor = MonitorRecorder(talk_pulse)
    try:
        time.sleep(0.5)  # the listener subscribes
        started = dev.talk.press()
        mid = started["id"]
        assert dev.talk.health()["talking"]
        send_args = cli(
            [
                "send",
                "--device",
                "talk-a",
                str(a),
                "--key",
                str(command_key),
                "--wait",
                "30",
                "--chunk-bytes",
                "1500",
                *broker_argv(talk_broker, "control-send"),
            ]
        )
        rc: list[int] = []
        sender = threading.Thread(target=lambda: rc.append(send_args.func(send_args)))
        sender.start()
        wait_for(lambda: any(r["status"] == "delivered" for r in control.poll()), 10, "A delivered")
        a_id = next(r["id"] for r in control.poll() if r["status"] == "delivered")
        chunks_b = message_chunks(command_key, b, wire.device_address("talk-a"))
        publish_all(
            control.link,
            wire.in_topic("talk-a"),
            [c.encode() for c in chunks_b],
            threading.Event(),
            10,
        )
        control.wait_status(chunks_b[0].id, "delivered")
        time.sleep(0.5)
        # The officer still talks: nothing is played.
        assert "played" not in control.statuses(a_id) + control.statuses(chunks_b[0].id)
        assert dev.talk.health()["waiting_to_play"] == 2
        released_at = monitor.seconds()
        released = dev.talk.release()
        assert released["id"] == mid
        control.wait_status(a_id, "played", 20)
        control.wait_status(chunks_b[0].id, "played", 20)
        sender.join(30)
        assert rc == [0]
        listen.join(40)
    finally:
        samples = monitor.stop()
    # What the speaker played: beep, 600 Hz, beep, 1000 Hz, in that order, complete, and
    # nothing before the release.
    runs = tone_runs(samples, RATE, FREQS)
    assert [f for f, _, _ in runs] == [880.0, 600.0, 880.0, 1000.0], runs
    assert runs[0][1] >= released_at - 0.1, (runs[0], released_at)
    assert runs[0][2] == pytest.approx(0.15, abs=0.04)
    assert runs[1][2] == pytest.approx(1.0, abs=0.06)
    assert runs[2][2] == pytest.approx(0.15, abs=0.04)
    assert runs[3][2] == pytest.approx(1.0, abs=0.06)
    # Receipts: delivered before played, for each.
    for m in (a_id, chunks_b[0].id):
        s = control.statuses(m)
        assert s.index("delivered") < s.index("played"), s
    # Device -> platform: the listener saved a verified, decodable Ogg file with the sine.
    files = list((saved / "talk-a").glob(f"*-{mid}.ogg"))
    assert len(files) == 1, list(saved.rglob("*"))
    heard = decode_audio(files[0].read_bytes())
    assert heard.codec == "opus"
    assert peak_hz(heard.samples, heard.rate) == pytest.approx(440, abs=5)
    assert heard.duration_s == pytest.approx(released["duration_s"], abs=0.05)
    # Sealed: the outgoing message and both incoming ones, in the audio stream.
    wait_for(lambda: dev.talk.stats.sealed == 3, 10, "3 talk segments sealed")
    sealed = decrypt_all(dev.spool, keyset, "audio")
    metas = {s.meta["message_id"]: s for s in sealed}
    out = metas[mid]
    assert out.manifest["content_type"] == "audio/ogg"
    assert out.meta["talk"] is True and out.meta["direction"] == "out"
    assert out.data == files[0].read_bytes()
    assert peak_hz(decode_audio(out.data).samples, RATE) == pytest.approx(440, abs=5)
    for m, hz in ((a_id, 600), (chunks_b[0].id, 1000)):
        seg = metas[m]
        assert seg.meta["direction"] == "in"
        assert peak_hz(decode_audio(seg.data).samples, RATE) == pytest.approx(hz, abs=5)


def test_cut_off_messages_are_completed_or_reported_never_played(
    make_device: Any, control: ControlRoom, talk_pulse: Any, command_key: Path, tmp_path: Path
) -> None:
    dev = make_device("talk-b", gap_s=0.4, resume_s=2.0)
    topic = wire.in_topic("talk-b")
    never = threading.Event()
    monitor = MonitorRecorder(talk_pulse)
    try:
        # C: the link drops after 3 of its chunks; the device asks; the rest comes; played.
        c = message_chunks(
            command_key,
            write_tone_wav(tmp_path / "c.wav", 1000, 0.8),
            wire.device_address("talk-b"),
            chunk_bytes=600,
        )
        assert len(c) >= 5
        publish_all(control.link, topic, [x.encode() for x in c[:3]], never, 5)
        asked = control.wait_status(c[0].id, "incomplete")
        assert asked["final"] is False and asked["have"] == [0, 1, 2]
        publish_all(control.link, topic, [x.encode() for x in c[3:]], never, 5)
        control.wait_status(c[0].id, "played")
        # D: cut off for good: reported incomplete (final), never delivered nor played.
        d = message_chunks(
            command_key,
            write_tone_wav(tmp_path / "d.wav", 600, 0.8),
            wire.device_address("talk-b"),
            chunk_bytes=600,
        )
        publish_all(control.link, topic, [x.encode() for x in d[:-2]], never, 5)
        wait_for(
            lambda: any(r.get("final") for r in control.poll() if r["id"] == d[0].id),
            10,
            "final incomplete receipt for D",
        )
        # Late chunks of a dropped message change nothing.
        publish_all(control.link, topic, [x.encode() for x in d[-2:]], never, 5)
        # E: tampered (a byte of the Ogg changed): rejected, not played.
        e = message_chunks(
            command_key,
            write_tone_wav(tmp_path / "e.wav", 600, 0.5),
            wire.device_address("talk-b"),
            chunk_bytes=600,
        )
        assert not e[0].last
        bad = wire.Chunk(e[0].id, 0, False, b"X" + e[0].data[1:])
        publish_all(control.link, topic, [bad.encode()] + [x.encode() for x in e[1:]], never, 5)
        assert "bytes do not match" in control.wait_status(e[0].id, "rejected")["reason"]
        # F: to the group: delivered and played.
        f = message_chunks(
            command_key, write_tone_wav(tmp_path / "f.wav", 1000, 0.4), wire.group_address(GROUP)
        )
        publish_all(control.link, wire.group_topic(GROUP), [x.encode() for x in f], never, 5)
        control.wait_status(f[0].id, "played")
        time.sleep(0.3)
    finally:
        samples = monitor.stop()
    assert "delivered" not in control.statuses(d[0].id)
    assert "played" not in control.statuses(d[0].id) + control.statuses(e[0].id)
    runs = [(f, round(dur, 2)) for f, _, dur in tone_runs(samples, RATE, FREQS)]
    # Only C (1000 Hz, 0.8 s) and F (1000 Hz, 0.4 s), each after its beep: no 600 Hz ever.
    assert [f for f, _ in runs] == [880.0, 1000.0, 880.0, 1000.0], runs
    assert runs[1][1] == pytest.approx(0.8, abs=0.06)
    assert runs[3][1] == pytest.approx(0.4, abs=0.06)
    h = dev.talk.health()
    assert h["incomplete"] == 1 and h["rejected"] == 1 and h["played"] == 2


def test_no_speaker_no_microphone_refuses_talk_and_reports(
    make_device: Any, control: ControlRoom, command_key: Path, tmp_path: Path
) -> None:
    io = SoundDeviceIO("no-such-microphone", "no-such-speaker")
    dev = make_device("talk-c", io=io)
    h = dev.talk.health()
    assert h["state"] == "degraded"
    assert (
        h["microphone"]["state"] == "missing" and "no-such-microphone" in h["microphone"]["reason"]
    )
    assert h["speaker"]["state"] == "missing"
    with pytest.raises(CommandError, match="no microphone"):
        dev.talk.press()
    assert not dev.talk.talking
    # An incoming message is still delivered (and sealed), and reported not played.
    m = message_chunks(
        command_key, write_tone_wav(tmp_path / "m.wav", 600, 0.3), wire.device_address("talk-c")
    )
    publish_all(
        control.link, wire.in_topic("talk-c"), [x.encode() for x in m], threading.Event(), 5
    )
    control.wait_status(m[0].id, "delivered")
    r = control.wait_status(m[0].id, "not_played")
    assert "no speaker" in r["reason"]
    # A file can still be sent (no microphone needed) and the service keeps running.
    wav = write_tone_wav(tmp_path / "say.wav", 440, 0.5)
    said = dev.talk.say(wav)
    wait_for(lambda: dev.talk.stats.sent == 1, 10, "say sent")
    assert said["duration_s"] == pytest.approx(0.5, abs=0.01)
    assert dev.talk.is_alive()


def test_duplicates_and_wrong_addressee(
    make_device: Any, control: ControlRoom, command_key: Path, tmp_path: Path
) -> None:
    dev = make_device("talk-d", io=SoundDeviceIO("", "no-such-speaker"))
    wav = write_tone_wav(tmp_path / "m.wav", 600, 0.2)
    m = message_chunks(command_key, wav, wire.device_address("talk-d"))
    payloads = [x.encode() for x in m]
    never = threading.Event()
    publish_all(control.link, wire.in_topic("talk-d"), payloads, never, 5)
    control.wait_status(m[0].id, "delivered")
    # Delivered again (the sender missed the receipt): the receipt is repeated, nothing more.
    publish_all(control.link, wire.in_topic("talk-d"), payloads, never, 5)
    wait_for(lambda: control.statuses(m[0].id).count("delivered") == 2, 10, "repeated receipt")
    assert dev.talk.stats.received == 1
    # Signed for another device, sent to this one: refused.
    other = message_chunks(command_key, wav, wire.device_address("talk-c"))
    publish_all(control.link, wire.in_topic("talk-d"), [x.encode() for x in other], never, 5)
    assert "addressed to" in control.wait_status(other[0].id, "rejected")["reason"]


def test_lost_chunk_of_an_outgoing_message_is_asked_for_and_resent(
    make_device: Any, talk_broker: Mosquitto, tmp_path: Path
) -> None:
    from agent.talk.platform import Listener
    from agent.uplink.mqtt import MqttLink
    from tests.talk.conftest import link_config

    dev = make_device("talk-e", io=SoundDeviceIO("", "no-such-speaker"), chunk_ms=100)
    stop = threading.Event()
    link = MqttLink(link_config(talk_broker, "control-listen"), stop)
    events: list[dict[str, Any]] = []
    listener = Listener(link, stop, out_dir=tmp_path / "heard", on_event=events.append, gap_s=0.3)
    handle = listener.handle
    dropped: list[int] = []

    def lossy(msg: Any) -> None:  # the first copy of chunk 1 is lost on the way
        chunk = wire.parse_chunk(msg.payload)
        if chunk.index == 1 and not dropped:
            dropped.append(1)
            return
        handle(msg)

    listener.handle = lossy  # type: ignore[method-assign]
    link.start()
    t = threading.Thread(target=listener.run)
    t.start()
    try:
        wait_for(lambda: link.connected, 10, "listener connected")
        time.sleep(0.3)
        said = dev.talk.say(write_tone_wav(tmp_path / "s.wav", 440, 1.0))
        wait_for(lambda: any(e["event"] == "message" for e in events), 10, "message complete")
    finally:
        stop.set()
        t.join(5)
        link.join(5)
    assert dropped == [1]
    assert dev.talk.stats.resent_chunks >= 1
    (event,) = [e for e in events if e["event"] == "message"]
    assert event["id"] == said["id"] and event["chunks"] > 3
    heard = decode_audio(Path(event["path"]).read_bytes())
    assert peak_hz(heard.samples, heard.rate) == pytest.approx(440, abs=5)
    assert heard.duration_s == pytest.approx(1.0, abs=0.03)
