"""``edge-agent provision``: from a blank device to an enrolled one, without editing TOML.

A field technician answers a few questions (or a fleet script passes them all as flags):
device id, officer number or vehicle id, unit code, profile, broker URL, and where the
platform's public key and CA are (a path, or a USB stick with ``--from-dir``). This module:

1. creates the directories of ``docs/deploy.md`` under a target root (``/`` on a device);
2. makes the device's Ed25519 signing key (:func:`agent.storage.keys.init_device_keys`) and an
   ECDSA P-256 TLS key with a CSR (CN = the device id) for the platform CA: ``tls/device.csr``;
3. copies the platform's X25519 public key, its ack key (``ack.pub``: the device deletes a
   segment only on an acknowledgement signed by it), the CA (and the command key, if given);
4. renders ``agent.toml`` from the answers (the previous config's other settings are kept),
   validates it with :func:`agent.config.load_config` and the profile rules, and replaces the
   old one atomically;
5. gives the files the owners and modes of ``docs/deploy.md`` (private keys 0600 and the key
   and TLS files owned by ``edge-agent``; ``agent.toml`` root:edge-agent 0640) where the user
   exists and we run as root on the real root; otherwise says that ownership was left alone;
6. writes what the platform registers: ``/etc/edge-agent/enrol/<device id>.pub``, the device's
   Ed25519 public key under the name ``edge-agent ingest --devices DIR`` looks for (and, with
   ``--from-dir``, copies it and the CSR onto the stick for the trip back).

:func:`install_cert` takes the certificate the CA signed (``--install-cert FILE``) after
checking that it is for this device's TLS key, names the device id, is valid now and was
issued by the CA. Rerunning is safe: existing keys are kept (``--force`` replaces them), and
the previous config's answers are the defaults. Under ``--root DIR`` every path written into
the config lies under ``DIR`` too, so a staged tree is self-consistent (the tests use it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config.schema import AgentConfig, load_config, parse_config
from agent.config.toml_write import config_to_dict, render_toml
from agent.errors import ConfigError, KeyFileError
from agent.storage.durable import fsync_dir
from agent.storage.keys import (
    DEVICE_KEY,
    fingerprint,
    init_device_keys,
    load_platform_public,
    load_signing_key,
    raw_public,
    write_private,
)

log = logging.getLogger(__name__)

SERVICE_USER = "edge-agent"
PROFILES = ("bodycam", "tracker", "dashcam")
GPS_SOURCES = ("serial", "gpsd", "replay", "none")
DEFAULT_MQTTS_PORT = 8883
CERT_FILE = "device.pem"
CSR_FILE = "device.csr"
TLS_KEY_FILE = "device.key"
CA_FILE = "ca.pem"
PLATFORM_PUB_FILE = "platform.pub"
COMMAND_PUB_FILE = "command.pub"
ACK_PUB_FILE = "ack.pub"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Layout:
    """Where everything goes under a target root (``/`` on a device)."""

    root: Path

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "edge-agent"

    @property
    def config(self) -> Path:
        return self.etc / "agent.toml"

    @property
    def keys(self) -> Path:
        return self.etc / "keys"

    @property
    def tls(self) -> Path:
        return self.etc / "tls"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "edge-agent"

    @property
    def run(self) -> Path:
        return self.root / "run" / "edge-agent"

    @property
    def device_key(self) -> Path:
        return self.keys / DEVICE_KEY

    @property
    def platform_pub(self) -> Path:
        return self.keys / PLATFORM_PUB_FILE

    @property
    def command_pub(self) -> Path:
        return self.keys / COMMAND_PUB_FILE

    @property
    def ack_pub(self) -> Path:
        return self.keys / ACK_PUB_FILE

    @property
    def enrol(self) -> Path:
        """What the platform registers for this device (its key as ``<device id>.pub``)."""
        return self.etc / "enrol"

    def registration(self, device_id: str) -> Path:
        return self.enrol / f"{device_id}.pub"

    @property
    def tls_key(self) -> Path:
        return self.tls / TLS_KEY_FILE

    @property
    def csr(self) -> Path:
        return self.tls / CSR_FILE

    @property
    def cert(self) -> Path:
        return self.tls / CERT_FILE

    @property
    def ca(self) -> Path:
        return self.tls / CA_FILE


@dataclass(frozen=True)
class Answers:
    """What the technician told us. Source files are copied into the layout."""

    device_id: str
    profile: str
    unit: str
    broker: str  # mqtts://host:port
    officer: str = ""
    vehicle: str = ""
    platform_key: Path | None = None  # None: keep the installed one
    ca: Path | None = None  # None: keep the installed one
    command_key: Path | None = None  # None: keep the installed one (optional altogether)
    ack_key: Path | None = None  # None: keep the installed one
    gps_source: str = "serial"
    gps_port: str = "/dev/ttyACM0"
    gps_replay: Path | None = None
    video_source: str = "auto"  # the board's camera (docs/video.md)


@dataclass
class Outcome:
    """What one provisioning run did (printed for the technician, checked by the tests)."""

    config: Path
    device_key_fingerprint: str = ""
    device_key_new: bool = False
    tls_key_new: bool = False
    csr: Path | None = None
    registration: Path | None = None
    cert_installed: bool = False
    ownership: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------- answers


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtts://host[:port]`` -> (host, port). Plain ``mqtt://`` is refused (no mTLS)."""
    text = url.strip()
    if "://" not in text:
        text = "mqtts://" + text
    parts = urlsplit(text)
    if parts.scheme != "mqtts":
        raise ConfigError(
            f"broker URL {url!r}: must be mqtts://HOST:PORT (the device only speaks mutual TLS)"
        )
    try:
        port = parts.port or DEFAULT_MQTTS_PORT
    except ValueError:
        raise ConfigError(f"broker URL {url!r}: the port must be 1..65535") from None
    host = parts.hostname or ""
    if not host or parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"broker URL {url!r}: must be mqtts://HOST:PORT, nothing more")
    return host, port


def broker_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"mqtts://{shown}:{port}"


def device_id_problem(value: str) -> str | None:
    """agent.ids' rule for a device id, the config loader's own (None when good)."""
    from agent import ids

    return ids.device_id_problem(value)
    return None  # pragma: no cover


def previous_config(layout: Layout) -> AgentConfig | None:
    """The config already in place (the install script's example, or an earlier run)."""
    if not layout.config.exists():
        return None
    try:
        return load_config(layout.config)
    except ConfigError as exc:
        log.warning("the existing config is not valid (%s); starting from the defaults", exc)
        return None


def is_provisioned(layout: Layout) -> bool:
    return layout.device_key.exists()


def defaults_from(previous: AgentConfig | None, layout: Layout) -> dict[str, Any]:
    """Default answers: the previous config's; identity only from a provisioned device (the
    install script's example names an example device, which must not become a default)."""
    d: dict[str, Any] = {
        "profile": "bodycam",
        "gps_source": "serial",
        "gps_port": "/dev/ttyACM0",
        "video_source": "auto",
    }
    if previous is None:
        return d
    d["profile"] = previous.device.profile
    d["gps_port"] = previous.gps.serial_port
    if previous.gps.replay_file is not None:
        d["gps_replay"] = previous.gps.replay_file
    if previous.video.source != "synthetic":
        d["video_source"] = previous.video.source
    if is_provisioned(layout):
        d["device_id"] = previous.device.id
        d["officer"] = previous.device.officer
        d["vehicle"] = previous.device.vehicle
        d["unit"] = previous.device.unit
        d["gps_source"] = previous.gps.source
        d["video_source"] = previous.video.source
        if previous.uplink.enabled:
            d["broker"] = broker_url(previous.uplink.host, previous.uplink.port)
    return d


def find_on_media(directory: Path | None, *names: str) -> Path | None:
    """The first of ``names`` present in ``directory`` (a USB stick's mount point)."""
    if directory is None:
        return None
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


# --------------------------------------------------------------------------- files


def service_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None


class Owner:
    """Gives files to the service user where that is possible; else records why not."""

    def __init__(self, layout: Layout) -> None:
        user = service_user()
        self.uid: int | None = None
        self.gid: int | None = None
        if user is None:
            self.reason = f"no user {SERVICE_USER!r} on this system (install.sh creates it)"
        elif layout.root.resolve() != Path("/"):
            self.reason = f"staged under --root {layout.root}"
        elif os.geteuid() != 0:
            self.reason = "not running as root"
        else:
            self.reason = ""
            self.uid, self.gid = user.pw_uid, user.pw_gid

    @property
    def active(self) -> bool:
        return self.uid is not None

    def summary(self) -> str:
        if self.active:
            return f"key and TLS files owned by {SERVICE_USER}; agent.toml root:{SERVICE_USER} 0640"
        return f"ownership left unchanged: {self.reason}"

    def service(self, path: Path) -> None:
        """Owned by the service user (keys, TLS files, the state directory)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def config(self, path: Path) -> None:
        """root:edge-agent (the agent reads, only root writes)."""
        if self.gid is not None:
            os.chown(path, 0, self.gid)


def _mkdir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def write_file(path: Path, data: bytes, mode: int, chown: Callable[[Path], None]) -> None:
    """Write atomically with ``mode`` (and owner) set before the file takes its name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o600)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        chown(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _load_ca(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"CA file {path}: cannot read: {exc.strerror or exc}") from None
    try:
        ca = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise KeyFileError(f"CA file {path}: not a PEM certificate") from None
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = ca.issuer == ca.subject
    if not is_ca:
        raise KeyFileError(f"CA file {path}: this certificate is not a CA certificate")
    return ca


def _load_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no TLS key; run edge-agent provision first") from None
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a usable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: expected an ECDSA key, got {type(key).__name__}")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str, unit: str = "") -> bytes:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, device_id)]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _cn(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _same_key(a: Any, b: Any) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        a.public_bytes(serialization.Encoding.DER, fmt)
        == b.public_bytes(serialization.Encoding.DER, fmt)
    )


# --------------------------------------------------------------------------- config


def build_config(answers: Answers, layout: Layout, previous: AgentConfig | None) -> dict[str, Any]:
    """The config as a dict: the previous one's settings, overwritten by the answers."""
    base = previous or AgentConfig()
    data = config_to_dict(base)
    data["device"] = {
        "id": answers.device_id,
        "profile": answers.profile,
        "officer": answers.officer,
        "vehicle": answers.vehicle,
        "unit": answers.unit,
    }
    data["keys"] = {
        "device_key": str(layout.device_key),
        "platform_public": str(layout.platform_pub),
    }
    data["spool"]["dir"] = str(layout.state / "spool")
    gps = data["gps"]
    gps["source"] = answers.gps_source
    gps["serial_port"] = answers.gps_port
    if answers.gps_replay is not None:
        gps["replay_file"] = str(answers.gps_replay)
    host, port = parse_broker_url(answers.broker)
    up = data["uplink"]
    up.update(
        enabled=True,
        host=host,
        port=port,
        ca=str(layout.ca),
        cert=str(layout.cert),
        key=str(layout.tls_key),
        state_dir=str(layout.state / "uplink"),
    )
    if layout.command_pub.exists():
        up["command_key"] = str(layout.command_pub)
    if layout.ack_pub.exists() or answers.ack_key is not None:
        up["ack_key"] = str(layout.ack_pub)
    video, audio = data["video"], data["audio"]
    video["source"] = answers.video_source
    same_profile = previous is not None and previous.device.profile == answers.profile
    if answers.profile == "tracker":
        video["enabled"] = audio["enabled"] = False
    elif answers.profile == "dashcam":
        video["enabled"], video["mode"] = True, "continuous"
        if not same_profile:
            audio["enabled"] = False
    else:
        video["enabled"], video["mode"] = True, "event"
        if not same_profile:
            audio["enabled"] = True
    data["health"]["status_file"] = str(layout.run / "status.json")
    data["health"]["control_socket"] = str(layout.run / "control.sock")
    return data


CONFIG_HEADER = """edge-agent configuration, written by `edge-agent provision` on {when}.
Rerun `sudo edge-agent provision` to change the device's identity, broker or keys; every other
setting is described in /etc/edge-agent/agent.example.toml (deploy/agent.example.toml).
Check it with:  edge-agent config check {path}"""


def render_config(data: dict[str, Any], layout: Layout) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return render_toml(data, CONFIG_HEADER.format(when=when, path=layout.config))


def _validate(text: str, layout: Layout) -> AgentConfig:
    from agent.config.schema import check_profile

    cfg = parse_config(text, str(layout.config))
    check_profile(cfg)
    return cfg


def write_config(text: str, layout: Layout, owner: Owner) -> AgentConfig:
    """Validate ``text`` as the loader will read it, then replace the config atomically."""
    cfg = _validate(text, layout)
    tmp = layout.etc / f".agent.toml.{os.getpid()}.check"
    try:
        write_file(tmp, text.encode(), 0o640, owner.config)
        load_config(tmp)  # what the service will read, byte for byte
        os.replace(tmp, layout.config)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(layout.etc)
    return cfg


# --------------------------------------------------------------------------- provisioning


def _copy_in(src: Path, dest: Path, owner: Owner, check: Callable[[Path], object]) -> None:
    check(src)  # refuse a wrong file before it replaces a good one
    if src.resolve() == dest.resolve():
        return
    write_file(dest, src.read_bytes(), 0o644, owner.service)


def _cert_matches(layout: Layout, device_id: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(layout.cert.read_bytes())
        key = _load_tls_key(layout.tls_key)
    except (OSError, ValueError, KeyFileError):
        return False
    return _same_key(cert.public_key(), key.public_key()) and _cn(cert) == device_id


def provision(
    answers: Answers, layout: Layout, *, force: bool = False, say: Say = print
) -> Outcome:
    """Everything but the certificate: directories, keys, CSR, files, config. Idempotent."""
    problem = device_id_problem(answers.device_id)
    if problem:
        raise ConfigError(f"device id: {problem}")
    if answers.profile not in PROFILES:
        raise ConfigError(f"profile: must be one of {', '.join(PROFILES)}, got {answers.profile!r}")
    parse_broker_url(answers.broker)
    previous = previous_config(layout)
    provisioned = is_provisioned(layout)
    if (
        provisioned
        and previous is not None
        and previous.device.id != answers.device_id
        and not force
    ):
        raise KeyFileError(
            f"this device is provisioned as {previous.device.id!r}; its keys and certificate "
            f"belong to that id. Refusing to make it {answers.device_id!r} without --force "
            "(which makes new keys: the platform must enrol it again)"
        )
    # The config these answers make must load before anything is written.
    _validate(render_config(build_config(answers, layout, previous), layout), layout)
    owner = Owner(layout)
    out = Outcome(config=layout.config, ownership=owner.summary())
    _mkdir(layout.etc, 0o750)
    owner.config(layout.etc)
    for d in (layout.keys, layout.tls):
        _mkdir(d, 0o700)
        owner.service(d)
    for d in (layout.state, layout.state / "spool", layout.state / "uplink"):
        _mkdir(d, 0o700)
        owner.service(d)

    # Files from the platform first: a wrong one stops us before anything changes.
    if answers.platform_key is not None:
        _copy_in(answers.platform_key, layout.platform_pub, owner, load_platform_public)
    elif not layout.platform_pub.exists():
        raise ConfigError("platform public key: required (--platform-key FILE or --from-dir)")
    if answers.ca is not None:
        _copy_in(answers.ca, layout.ca, owner, _load_ca)
    elif not layout.ca.exists():
        raise ConfigError("CA certificate: required (--ca FILE or --from-dir)")
    if answers.command_key is not None:
        from agent.uplink.control import load_command_public

        _copy_in(answers.command_key, layout.command_pub, owner, load_command_public)
    if answers.ack_key is not None:
        from agent.uplink.control import load_ack_public

        _copy_in(answers.ack_key, layout.ack_pub, owner, load_ack_public)
    elif not layout.ack_pub.exists():
        raise ConfigError(
            "platform ack key: required (--ack-key FILE or --from-dir with ack.pub): without it "
            "the device could be made to delete evidence by an acknowledgement anyone forged"
        )

    # The device's signing key.
    if layout.device_key.exists() and not force:
        key = load_signing_key(layout.device_key)
        out.device_key_fingerprint = fingerprint(raw_public(key.public_key()))
        out.notes.append(
            f"device key {layout.device_key} exists (fingerprint {out.device_key_fingerprint}): "
            "kept; refusing to replace it without --force"
        )
    else:
        path, out.device_key_fingerprint = init_device_keys(layout.keys, force=force)
        out.device_key_new = True
        say(f"device signing key: {path} (Ed25519, fingerprint {out.device_key_fingerprint})")
    for name in (DEVICE_KEY, "device.pub"):
        owner.service(layout.keys / name)

    # The TLS key and its CSR.
    if layout.tls_key.exists() and not force:
        tls_key = _load_tls_key(layout.tls_key)
        out.notes.append(
            f"TLS key {layout.tls_key} exists: kept; refusing to replace it without --force"
        )
    else:
        tls_key = ec.generate_private_key(ec.SECP256R1())
        pem = tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(layout.tls_key, pem, force=True)
        out.tls_key_new = True
        if layout.cert.exists():  # it certified the old key: useless now
            layout.cert.unlink()
            out.notes.append(f"removed {layout.cert}: it certified the replaced TLS key")
    owner.service(layout.tls_key)
    out.cert_installed = _cert_matches(layout, answers.device_id)
    if not out.cert_installed:
        write_file(layout.csr, make_csr(tls_key, answers.device_id, answers.unit), 0o644,
                   owner.service)  # fmt: skip
        out.csr = layout.csr

    text = render_config(build_config(answers, layout, previous), layout)
    write_config(text, layout, owner)
    for f in (layout.platform_pub, layout.ca, layout.command_pub, layout.ack_pub, layout.cert):
        if f.exists():
            owner.service(f)
    out.registration = write_registration(layout, answers.device_id, owner)
    return out


def write_registration(layout: Layout, device_id: str, owner: Owner) -> Path:
    """``enrol/<device id>.pub``: the device's signing key as the platform registers it
    (``edge-agent ingest --devices DIR`` reads ``DIR/<device id>.pub``)."""
    pem = (
        load_signing_key(layout.device_key)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    _mkdir(layout.enrol, 0o755)
    owner.config(layout.enrol)
    for stale in layout.enrol.glob("*.pub"):
        if stale.name != f"{device_id}.pub":
            stale.unlink()  # an earlier identity of this device
    dest = layout.registration(device_id)
    write_file(dest, pem, 0o644, owner.config)
    return dest


# --------------------------------------------------------------------------- certificate


def check_cert(
    cert_pem: bytes,
    *,
    origin: str,
    tls_key: ec.EllipticCurvePrivateKey,
    device_id: str,
    ca: x509.Certificate,
    ca_path: Path,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Refuse a certificate that would not work, saying why; returns it when good."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise KeyFileError(f"{origin}: not a PEM certificate") from None
    cert = certs[0]
    if not _same_key(cert.public_key(), tls_key.public_key()):
        raise KeyFileError(
            f"{origin}: this certificate is for a different key, not this device's TLS key "
            "(was it issued for another device's CSR, or for an older CSR of this one?)"
        )
    cn = _cn(cert)
    if cn != device_id:
        raise KeyFileError(
            f"{origin}: issued to CN {cn!r}, but this device is {device_id!r} "
            "(the broker would take it for another device)"
        )
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise KeyFileError(
            f"{origin}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
            "(or the device clock is wrong: it says "
            f"{now:%Y-%m-%d %H:%M} UTC)"
        )
    if cert.not_valid_before_utc > now:
        raise KeyFileError(
            f"{origin}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
            f"the device clock says {now:%Y-%m-%d %H:%M} UTC: set the clock first"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise KeyFileError(
            f"{origin}: not issued by the CA in {ca_path} (subject {ca.subject.rfc4514_string()}); "
            "the broker would refuse it"
        ) from None
    return cert


def install_cert(
    layout: Layout, cert_file: Path, *, ca_file: Path | None = None, say: Say = print
) -> x509.Certificate:
    """Check ``cert_file`` against this device and install it as ``tls/device.pem``."""
    cfg = load_config(layout.config)
    key_path = cfg.uplink.key or layout.tls_key
    ca_path = ca_file or cfg.uplink.ca or layout.ca
    dest = cfg.uplink.cert or layout.cert
    try:
        pem = cert_file.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{cert_file}: cannot read: {exc.strerror or exc}") from None
    cert = check_cert(
        pem,
        origin=str(cert_file),
        tls_key=_load_tls_key(key_path),
        device_id=cfg.device.id,
        ca=_load_ca(ca_path),
        ca_path=ca_path,
    )
    owner = Owner(layout)
    write_file(dest, pem, 0o644, owner.service)
    say(
        f"certificate installed: {dest} (CN {cfg.device.id}, valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d} UTC)"
    )
    if layout.csr.exists():
        layout.csr.unlink()
    return cert


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
