"""Key files: created 0600, refused when looser, never silently replaced."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import KeyFileError
from agent.storage.keys import load_platform_private, load_signing_key


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, check=False
    )


def test_keys_init_writes_0600_and_refuses_to_replace(tmp_path: Path) -> None:
    d = tmp_path / "k"
    res = cli("keys", "init", "--dir", str(d))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((d / "device.key").stat().st_mode) == 0o600
    before = (d / "device.key").read_bytes()
    res = cli("keys", "init", "--dir", str(d))
    assert res.returncode == 1 and "refusing to replace it without --force" in res.stderr
    assert (d / "device.key").read_bytes() == before
    assert cli("keys", "init", "--dir", str(d), "--force").returncode == 0
    assert (d / "device.key").read_bytes() != before
    load_signing_key(d / "device.key")


def test_platform_init_and_loose_permissions_refused(tmp_path: Path) -> None:
    d = tmp_path / "p"
    assert cli("keys", "platform-init", str(d)).returncode == 0
    assert stat.S_IMODE((d / "platform.key").stat().st_mode) == 0o600
    load_platform_private(d / "platform.key")
    os.chmod(d / "platform.key", 0o640)
    with pytest.raises(KeyFileError, match=r"mode 0640\); run: chmod 600"):
        load_platform_private(d / "platform.key")


def test_wrong_key_type_is_named(tmp_path: Path) -> None:
    d = tmp_path / "p"
    assert cli("keys", "platform-init", str(d)).returncode == 0
    with pytest.raises(KeyFileError, match="expected an Ed25519 device key"):
        load_signing_key(d / "platform.key")
    (d / "garbage.key").write_bytes(b"nope")
    os.chmod(d / "garbage.key", 0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_signing_key(d / "garbage.key")


def test_seal_cli_puts_a_file_into_the_spool(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert cli("keys", "init", "--dir", str(keys)).returncode == 0
    assert cli("keys", "platform-init", str(keys)).returncode == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[device]\nid="tech-1"\n[keys]\ndevice_key="{keys}/device.key"\n'
        f'platform_public="{keys}/platform.pub"\n[spool]\ndir="{tmp_path}/spool"\nreserve_mb=0\n'
    )
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"\xff\xd8" + os.urandom(5000))
    res = cli("seal", str(src), "--stream", "still", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "as tech-1/still#0" in res.stdout
    status = cli("spool", "--config", str(cfg))
    assert "still" in status.stdout and status.returncode == 0
    out = tmp_path / "plain"
    res = cli(
        "verify",
        str(tmp_path / "spool"),
        "--platform-key",
        str(keys / "platform.key"),
        "--decrypt-to",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert (out / "tech-1" / "still" / "000000000000.jpg").read_bytes() == src.read_bytes()


def test_spool_retry_reoffers_refused_segments(tmp_path: Path) -> None:
    from agent.storage.keys import load_platform_public
    from agent.storage.sealer import Sealer
    from agent.storage.settings import SealSettings, SpoolSettings
    from agent.storage.spool import Spool

    keys = tmp_path / "keys"
    assert cli("keys", "init", "--dir", str(keys)).returncode == 0
    assert cli("keys", "platform-init", str(keys)).returncode == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[device]\nid="t"\n[spool]\ndir="{tmp_path}/spool"\n')
    sealer = Sealer(
        device_id="t",
        boot_id="b",
        signing_key=load_signing_key(keys / "device.key"),
        platform_public=load_platform_public(keys / "platform.pub"),
        settings=SealSettings(),
    )
    with Spool(SpoolSettings(dir=tmp_path / "spool", reserve_mb=0), sealer) as sp:
        sp.put_bytes("video", b"x")
        sp.park(sp.next_ready()[0].id, "unknown device")
        assert sp.next_ready() == []
        res = cli("spool", "--retry", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        assert "1 refused segment(s) will be sent again" in res.stdout
        assert [i.seq for i in sp.next_ready()] == [0]


# ------------------------------------------------------------- PEM without serialization


def _pems() -> list[tuple[bytes, bytes]]:
    """(private PEM, public PEM) of an Ed25519 and an X25519 key, as the agent writes them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    out = []
    for key in (Ed25519PrivateKey.generate(), X25519PrivateKey.generate()):
        priv = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out.append((priv, pub))
    return out


def test_pem_keys_read_as_cryptography_reads_them() -> None:
    """agent/storage/keys.py reads the one form it writes by itself (docs/scale.md "Tracker
    memory"); the key is the one cryptography's own parser gives, in that form and in others
    that go to that parser (CRLF line ends, surrounding blank space, a body on several lines)."""
    from cryptography.hazmat.primitives import serialization

    from agent.storage.keys import pem_private_key, pem_public_key, raw_public

    for priv, pub in _pems():
        ref_priv = serialization.load_pem_private_key(priv, password=None)
        ref_pub = serialization.load_pem_public_key(pub)
        variants = (b"", b"\n\n", b"  ")
        for pad in variants:
            for text in (priv, priv.replace(b"\n", b"\r\n")):
                got = pem_private_key(pad + text + pad)
                assert type(got) is type(ref_priv)
                assert raw_public(got.public_key()) == raw_public(ref_priv.public_key())  # type: ignore[attr-defined]
            for text in (pub, pub.replace(b"\n", b"\r\n")):
                got_pub = pem_public_key(pad + text + pad)
                assert type(got_pub) is type(ref_pub)
                assert raw_public(got_pub) == raw_public(ref_pub)  # type: ignore[arg-type]
        # The base64 body split over lines of 8 characters: the same key.
        head, body, tail = priv.split(b"\n")[:3]
        wrapped = b"\n".join(body[i : i + 8] for i in range(0, len(body), 8))
        got = pem_private_key(head + b"\n" + wrapped + b"\n" + tail + b"\n")
        assert raw_public(got.public_key()) == raw_public(ref_priv.public_key())  # type: ignore[attr-defined]


def test_malformed_pem_keys_fail_as_cryptography_fails() -> None:
    """Whatever is not exactly the agent's form goes to cryptography's parser, which refuses
    it with ValueError (a damaged body, a truncated key, another label, junk, nothing)."""
    from agent.storage.keys import pem_private_key, pem_public_key

    priv, pub = _pems()[0]
    head, body, tail = priv.split(b"\n")[:3]
    bad_private = [
        b"",
        b"\x00" * 64,
        b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        head + b"\n" + body[:-4] + b"\n" + tail + b"\n",  # 45 bytes: a truncated key
        head + b"\n" + body[:-1] + b"!\n" + tail + b"\n",  # not base64
        head + b"\n" + body + b"\n",  # no END line
        priv.replace(b"PRIVATE KEY", b"PUBLIC KEY"),
        pub,
        head + b"\n" + body * 40 + b"\n" + tail + b"\n",  # far too long
    ]
    for data in bad_private:
        with pytest.raises((ValueError, TypeError)):
            pem_private_key(data)
    for data in (b"", b"junk", priv, pub.replace(b"MCow", b"MCox"), pub[:-30]):
        with pytest.raises(ValueError):
            pem_public_key(data)


def test_wrong_kind_of_pem_key_is_named(tmp_path: Path) -> None:
    """A valid key of another kind read through the agent's loaders: named, as before."""
    from agent.storage.keys import load_platform_public, load_verify_key

    (_, ed_pub), (_, x_pub) = _pems()
    (tmp_path / "x.pub").write_bytes(x_pub)
    (tmp_path / "ed.pub").write_bytes(ed_pub)
    with pytest.raises(KeyFileError, match="expected an Ed25519 device public key"):
        load_verify_key(tmp_path / "x.pub")
    with pytest.raises(KeyFileError, match="X25519 public key"):
        load_platform_public(tmp_path / "ed.pub")
    assert load_platform_public(tmp_path / "x.pub") is not None
