"""``[seal] cipher = "auto"``: AES-GCM where the CPU has AES instructions, ChaCha20-Poly1305
where it has none, read from /proc/cpuinfo. The samples in ``cpuinfo/`` follow the kernel's
documented format for each board (see cpuinfo/README.md)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from agent.config.fields import load_dataclass
from agent.errors import ConfigError
from agent.model import ClockState
from agent.storage.cipherchoice import choose_cipher, cpu_features
from agent.storage.records import RecordLog, parse_journal
from agent.storage.seal import ChainLink, SegmentHeader, read_segment_info
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool
from tests.fixtures.keys import KeySet

SAMPLES = Path(__file__).parent / "cpuinfo"
EXPECTED = {
    "pi4-arm64.txt": "chacha20-poly1305",  # Cortex-A72 in BCM2711: no Cryptography Extension
    "pi4-armhf.txt": "chacha20-poly1305",
    "zero2w-arm64.txt": "chacha20-poly1305",  # Cortex-A53 in RP3A0: none either
    "zero2w-armhf.txt": "chacha20-poly1305",
    "pi5-arm64.txt": "aes-256-gcm",  # Cortex-A76 in BCM2712: has it
    "pi5-armhf-compat.txt": "aes-256-gcm",  # a 32-bit program on the 64-bit kernel
    "x86-laptop.txt": "aes-256-gcm",  # AES-NI
}


def test_every_sample_is_tested() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_auto_chooses_by_the_cpu_features(sample: str) -> None:
    choice = choose_cipher("auto", SAMPLES / sample)
    assert choice.cipher == EXPECTED[sample], choice
    assert choice.reason.startswith("auto: ")
    assert ("no AES instructions" in choice.reason) == (choice.cipher == "chacha20-poly1305")


def test_every_core_is_read_and_only_the_feature_lines() -> None:
    text = (SAMPLES / "x86-laptop.txt").read_text()
    cores = cpu_features(text)
    assert len(cores) == 8
    assert all("aes" in c and "sha_ni" in c for c in cores)
    assert not any("ept_x_only" in c for c in cores)  # "vmx flags" is not "flags"
    assert len(cpu_features((SAMPLES / "pi4-arm64.txt").read_text())) == 4


def test_aes_masked_on_one_core_or_all_means_chacha(tmp_path: Path) -> None:
    """The same laptop with AES-NI hidden (as some hypervisors do): on every core, or on one."""
    text = (SAMPLES / "x86-laptop.txt").read_text()
    masked = tmp_path / "masked"
    masked.write_text(text.replace(" aes ", " "))
    assert choose_cipher("auto", masked).cipher == "chacha20-poly1305"
    one = tmp_path / "one-core"
    one.write_text(text.replace(" aes ", " ", 1))
    assert choose_cipher("auto", one).cipher == "chacha20-poly1305"


def test_no_cpuinfo_or_no_features_falls_back_to_aes_and_says_why(tmp_path: Path) -> None:
    missing = choose_cipher("auto", tmp_path / "absent")
    assert missing.cipher == "aes-256-gcm" and "cannot read" in missing.reason
    bare = tmp_path / "bare"
    bare.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
    none = choose_cipher("auto", bare)
    assert none.cipher == "aes-256-gcm" and "lists no CPU features" in none.reason


def test_a_cipher_set_in_the_config_is_kept_whatever_the_cpu() -> None:
    choice = choose_cipher("aes-256-gcm", SAMPLES / "pi4-arm64.txt")
    assert (choice.cipher, choice.reason) == ("aes-256-gcm", "set in the config")


def test_config_accepts_auto_as_the_default_and_refuses_others() -> None:
    assert SealSettings().cipher == "auto"
    assert load_dataclass(SealSettings, {"cipher": "chacha20-poly1305"}).cipher == (
        "chacha20-poly1305"
    )
    with pytest.raises(ConfigError, match="cipher"):
        load_dataclass(SealSettings, {"cipher": "aes-128-gcm"}, "seal")


def test_a_pi4_sealer_seals_segments_and_journals_with_chacha(
    keyset: KeySet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the sealer chose reaches every manifest and the record journal's header, and the
    log says which cipher and why at start."""
    with caplog.at_level(logging.INFO, logger="agent.storage.sealer"):
        sealer = Sealer(
            device_id="dev-1",
            boot_id="boot-a",
            signing_key=keyset.signing_key,
            platform_public=keyset.platform_public,
            settings=SealSettings(cipher="auto"),
            cpuinfo=SAMPLES / "pi4-arm64.txt",
        )
    assert sealer.settings.cipher == "chacha20-poly1305"
    assert "seal: cipher chacha20-poly1305 (auto: the CPU has no AES instructions" in caplog.text
    out = io.BytesIO()
    header = SegmentHeader("video", "video/mp4", 1.7e9, 1.7e9, 0, 0, ClockState(), {})
    sealer.seal(out, header, ChainLink(0, None), [b"x" * 5000], sealer.current_key())
    assert read_segment_info(out).manifest["cipher"] == "chacha20-poly1305"
    sp = Spool(SpoolSettings(dir=tmp_path / "spool", reserve_mb=0), sealer)
    try:
        log = RecordLog(sp, "gps", content_type="application/x-edge-fix")
        log.append(b"f" * 28)
        journal = next((tmp_path / "spool" / "journal").rglob("gps.jnl"))
        header_j, frames = parse_journal(journal.read_bytes())
        assert (header_j.cipher, len(frames)) == ("chacha20-poly1305", 1)
        log.close()
    finally:
        sp.close()
