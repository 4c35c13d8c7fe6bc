"""``edge-agent jt808 decode`` and the ``[jt808]`` settings (errors name the field)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.jt808.codec import encode_frame

REPO = Path(__file__).resolve().parents[2]
# traccar Jt808ProtocolDecoderTest.testDecode: a 2019 0x0704 (satellites 14)
BATCH_2019 = (
    "7e0704402d0100000866496077582164881d0001000028000000000000000701a00192091f2a47001600000002"
    "26050916422701040000258230010031010e507e"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "jt808", "decode", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_decode_hex_prints_json() -> None:
    res = run(BATCH_2019)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["message_id"] == "0x0704" and out["standard"] == "JT/T 808-2019"
    (loc,) = out["body"]["locations"]
    assert loc["lat"] == -27.263378 and loc["lon"] == 153.037383  # status bit 2: south
    assert loc["time"] == {"gmt8": "2026-05-09 16:42:27", "utc": "2026-05-09T08:42:27.000Z"}
    assert {"id": "0x31", "hex": "0e", "satellites": 14} in loc["items"]


def test_decode_a_capture_file_of_several_frames(tmp_path: Path) -> None:
    stream = (
        b"\x00garbage"
        + encode_frame(0x0002, b"", phone="13800000001", serial=1)
        + bytes.fromhex(BATCH_2019)
        + encode_frame(0x8300, b"\x01\x01hello", phone="13800000001", serial=2)
    )
    raw = tmp_path / "capture.bin"
    raw.write_bytes(stream)
    res = run(str(raw))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["message_id"] for x in lines] == ["0x0002", "0x0704", "0x8300"]
    assert lines[2]["body"]["text"] == "hello"
    # the same as hex text, spaces and line breaks allowed
    text = tmp_path / "capture.txt"
    text.write_text("\n".join(stream[i : i + 16].hex(" ") for i in range(8, len(stream), 16)))
    res2 = run(str(text))
    assert [json.loads(x)["message_id"] for x in res2.stdout.splitlines()] == [
        "0x0002",
        "0x0704",
        "0x8300",
    ]


def test_decode_errors() -> None:
    bad = run("7e0002000004304832546500b7cb7e")  # check code off by one
    assert bad.returncode == 1
    out = json.loads(bad.stdout)
    assert out["message_id"] == "0x0002" and "check code" in out["problems"][0]
    res = run("not-hex-and-not-a-file")
    assert res.returncode == 1 and "neither a file nor hex" in res.stderr


def test_decode_exit_status_for_an_undecodable_frame() -> None:
    res = run("7e01027e")
    assert res.returncode == 1 and "error" in json.loads(res.stdout)


def test_help_lists_the_command() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "jt808" in res.stdout


BASE = """
[device]
id = "truck-7"
profile = "tracker"
"""


@pytest.mark.parametrize(
    "table, error",
    [
        ('enabled = true\nphone = "13800000001"', "jt808.server: required"),
        ('enabled = true\nserver = "808.example.cn:7611"', "jt808.phone: required"),
        ('server = "808.example.cn"', "jt808.server: must be host:port"),
        ('server = "808.example.cn:70000"', "jt808.server: must be host:port with a port"),
        ('phone = "1380000000A"', "jt808.phone: must be up to 20 digits"),
        ('phone = "123456789012345678901"', "jt808.phone: must be up to 20 digits"),
        ('protocol = "2011"', "jt808.protocol: must be one of 2019, 2013"),
        ('protocol = "2013"\nphone = "1234567890123"', "jt808.phone: at most 12"),
        ('protocol = "2013"\nterminal_id = "TRK00007"', "jt808.terminal_id: at most 7"),
        ('plate = "🚚"', "jt808.plate: must be writable in GBK"),
        ("plate_color = 6", "jt808.plate_color: must be one of"),
        ('imei = "12345"', "jt808.imei: must be empty or 15 digits"),
        ('manufacturer_id = "ABCDEFGHIJKL"', "jt808.manufacturer_id: must be at most 11"),
        ("heartbeat_s = 0", "jt808.heartbeat_s: must be 1..3600"),
        ("equipment_item = 16", "jt808.equipment_item: must be 0 (off) or 225..255"),
        ("batch_max = 0", "jt808.batch_max: must be 1..200"),
        ('cert = "/x.crt"', "jt808.cert: set only with jt808.tls"),
        ('tls = true\ncert = "/x.crt"', "jt808.cert: a client certificate needs jt808.key"),
        ("colour = 2", "jt808.colour: unknown setting"),
    ],
)
def test_settings_errors_name_the_field(table: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_config(BASE + "[jt808]\n" + table + "\n")


def test_a_good_table_and_the_profile_check() -> None:
    from agent.config import check_profile

    cfg = parse_config(
        BASE
        + '[jt808]\nenabled = true\nserver = "808.example.cn:7611"\nphone = "013800000001"\n'
        + 'plate = "粤B12345"\nplate_color = 2\n'
    )
    assert cfg.jt808.host == "808.example.cn" and cfg.jt808.port == 7611 and cfg.jt808.v2019
    check_profile(cfg)
    body = parse_config(
        BASE.replace("tracker", "bodycam")
        + '[jt808]\nenabled = true\nserver = "h:1"\nphone = "1"\n'
    )
    with pytest.raises(
        ConfigError, match=r"jt808\.enabled: the JT/T 808 terminal is for the tracker"
    ):
        check_profile(body)
