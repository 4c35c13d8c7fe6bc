"""Key files: the device's Ed25519 signing key and the platform's X25519 key pair.

Private keys are PEM (PKCS#8, unencrypted: the device has no one to type a passphrase), written
with mode 0600 from the first byte, and refused when group or others can read them.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from agent.errors import KeyFileError

DEVICE_KEY = "device.key"
DEVICE_PUB = "device.pub"
PLATFORM_KEY = "platform.key"
PLATFORM_PUB = "platform.pub"


def fingerprint(raw_public: bytes) -> str:
    """Short, stable name of a public key: the first 8 bytes of its SHA-256, in hex."""
    return hashlib.sha256(raw_public).digest()[:8].hex()


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes_raw()


# The one DER encoding of each key this module writes (RFC 8410: PKCS#8 v1 for a private key,
# SubjectPublicKeyInfo for a public one; the algorithm OID 1.3.101.112 Ed25519, .110 X25519),
# followed by the 32 raw bytes. A key file in exactly this form is read without cryptography's
# serialization package, which a tracker would otherwise load for its key files alone (with its
# SSH, RSA, DSA and EC modules: 0.8 MB, docs/scale.md "Tracker memory"); any other form (a
# PKCS#8 v2 key with its public key, another algorithm, a damaged file) goes to that package.
_PRIVATE_DER: dict[bytes, type[Ed25519PrivateKey] | type[X25519PrivateKey]] = {
    bytes.fromhex("302e020100300506032b657004220420"): Ed25519PrivateKey,
    bytes.fromhex("302e020100300506032b656e04220420"): X25519PrivateKey,
}
_PUBLIC_DER: dict[bytes, type[Ed25519PublicKey] | type[X25519PublicKey]] = {
    bytes.fromhex("302a300506032b6570032100"): Ed25519PublicKey,
    bytes.fromhex("302a300506032b656e032100"): X25519PublicKey,
}


def _pem_body(data: bytes, label: bytes) -> bytes | None:
    """The DER inside one ``-----BEGIN <label>-----`` block that is the whole file (surrounding
    blank space allowed), or None for anything else."""
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    text = data.strip()
    if len(text) > 512 or not text.startswith(begin) or not text.endswith(end):
        return None
    try:
        return binascii.a2b_base64(b"".join(text[len(begin) : -len(end)].split()), strict_mode=True)
    except binascii.Error:
        return None


def pem_private_key(data: bytes) -> object:
    """A PEM private key, as ``serialization.load_pem_private_key(data, None)`` reads it
    (ValueError or TypeError when it cannot)."""
    der = _pem_body(data, b"PRIVATE KEY")
    if der is not None and len(der) == 48 and der[:16] in _PRIVATE_DER:
        return _PRIVATE_DER[der[:16]].from_private_bytes(der[16:])
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(data, password=None)


def pem_public_key(data: bytes) -> object:
    """A PEM public key, as ``serialization.load_pem_public_key(data)`` reads it."""
    der = _pem_body(data, b"PUBLIC KEY")
    if der is not None and len(der) == 44 and der[:12] in _PUBLIC_DER:
        return _PUBLIC_DER[der[:12]].from_public_bytes(der[12:])
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_public_key(data)


def write_private(path: Path, pem: bytes, force: bool = False) -> None:
    """Write a private key with mode 0600 from creation; refuse to replace one unless forced."""
    if path.exists() and not force:
        raise KeyFileError(f"{path}: a key already exists; refusing to replace it without --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _read_private(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: private key is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc}") from None


def _read_public(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc}") from None


def _load_private(path: Path) -> object:
    data = _read_private(path)
    try:
        return pem_private_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key: {exc}") from None


def _load_public(path: Path) -> object:
    data = _read_public(path)
    try:
        return pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None


def _wrong(path: Path, what: str, key: object) -> KeyFileError:
    return KeyFileError(f"{path}: expected {what}, got {type(key).__name__}")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = _load_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong(path, "an Ed25519 device key", key)
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    key = _load_public(path)
    if not isinstance(key, Ed25519PublicKey):
        raise _wrong(path, "an Ed25519 device public key", key)
    return key


def load_platform_public(path: Path) -> X25519PublicKey:
    key = _load_public(path)
    if not isinstance(key, X25519PublicKey):
        raise _wrong(path, "the platform's X25519 public key", key)
    return key


def load_platform_private(path: Path) -> X25519PrivateKey:
    key = _load_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise _wrong(path, "the platform's X25519 private key", key)
    return key


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def init_device_keys(directory: Path, force: bool = False) -> tuple[Path, str]:
    """Create ``device.key`` (0600) and ``device.pub``; returns the key path and fingerprint."""
    key = Ed25519PrivateKey.generate()
    write_private(directory / DEVICE_KEY, _private_pem(key), force)
    write_public(directory / DEVICE_PUB, _public_pem(key.public_key()))
    return directory / DEVICE_KEY, fingerprint(raw_public(key.public_key()))


def init_platform_keys(directory: Path, force: bool = False) -> tuple[Path, str]:
    """Create ``platform.key`` (0600) and ``platform.pub``; returns the key path and fingerprint."""
    key = X25519PrivateKey.generate()
    write_private(directory / PLATFORM_KEY, _private_pem(key), force)
    write_public(directory / PLATFORM_PUB, _public_pem(key.public_key()))
    return directory / PLATFORM_KEY, fingerprint(raw_public(key.public_key()))
