"""A laboratory broker for tests, benchmarks and demos: a throw-away PKI, mosquitto, a TCP cut.

Nothing here runs on a device. It lives in the package (not under ``tests/``) so that the
benchmarks and the demo can start the same broker the tests use:

- :func:`make_pki` writes a CA, a broker certificate for ``127.0.0.1``/``localhost`` and client
  certificates whose CN is the MQTT identity (a device id, or the ingest identity);
- :class:`Mosquitto` runs the Debian ``mosquitto`` with the **shipped** configuration and ACL
  (``deploy/mosquitto/edge-agent.conf`` and ``edge-agent.acl``: mutual TLS,
  ``use_identity_as_username``, per-device topics, queue and packet limits), rewriting only
  what is site-specific (certificate paths, a free loopback port) and adding what Debian's main
  mosquitto.conf would (user, persistence, log); each extra platform identity gets the ingest
  identity's rights. :meth:`Mosquitto.kill` sends SIGKILL and :meth:`Mosquitto.start` brings it
  back on the same port with the same persistence file;
- :class:`BlackHole` is a TCP proxy that can stop forwarding (a dead cellular zone): bytes are
  held, not forwarded, and new connections hang until the cut ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import UplinkError

log = logging.getLogger(__name__)

INGEST_IDENTITY = "ingest"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
SHIPPED_CONF = DEPLOY / "edge-agent.conf"
SHIPPED_ACL = DEPLOY / "edge-agent.acl"


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class ClientCert:
    identity: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def client(self, identity: str) -> ClientCert:
        return ClientCert(identity, self.dir / f"{identity}.crt", self.dir / f"{identity}.key")

    def issue(
        self,
        identity: str,
        *,
        not_after: dt.datetime | None = None,
        not_before: dt.datetime | None = None,
        name: str | None = None,
    ) -> ClientCert:
        """A client certificate with CN = ``identity`` signed by this CA (files named ``name``)."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        out = self.client(name or identity)
        _write_key(out.key, key)
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return out


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _self_signed_ca(directory: Path, cn: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = directory / f"{cn}.pem"
    ca_key = directory / f"{cn}.key"
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, key)
    return ca, ca_key


def make_pki(directory: Path, identities: tuple[str, ...] = ()) -> Pki:
    """A CA, a broker certificate for 127.0.0.1/localhost and one client cert per identity."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key_path = _self_signed_ca(directory, "test-ca")
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = directory / "server.crt"
    server_key = directory / "server.key"
    server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, key)
    pki = Pki(directory, ca, ca_key_path, server_cert, server_key)
    for identity in identities:
        pki.issue(identity)
    return pki


def other_ca(directory: Path) -> Path:
    """A CA that signed nothing we use: for 'wrong CA' tests."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, _ = _self_signed_ca(directory, "other-ca")
    return ca


# --------------------------------------------------------------------------- mosquitto


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shipped(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UplinkError(
            f"{path}: the shipped broker configuration is needed (run from the source tree): {exc}"
        ) from None


def acl_text(ingest_identities: tuple[str, ...] = (INGEST_IDENTITY,)) -> str:
    """The shipped ACL, plus the ingest identity's rights for each other platform identity."""
    text = _shipped(SHIPPED_ACL).rstrip("\n")
    lines = [text]
    for identity in ingest_identities:
        if identity != INGEST_IDENTITY:
            lines += [f"user {identity}", "topic readwrite devices/#"]
    return "\n".join(lines) + "\n"


def site_config(
    directory: Path,
    pki: Pki,
    port: int,
    acl: Path,
    *,
    max_queued_messages: int | None = None,
    extra: str = "",
) -> str:
    """The shipped mosquitto configuration with this site's paths and a loopback listener,
    after what Debian's /etc/mosquitto/mosquitto.conf adds around conf.d."""
    text = _shipped(SHIPPED_CONF)
    replacements = {
        "/etc/mosquitto/certs/ca.crt": str(pki.ca),
        "/etc/mosquitto/certs/broker.crt": str(pki.server_cert),
        "/etc/mosquitto/certs/broker.key": str(pki.server_key),
        "/etc/mosquitto/edge-agent.acl": str(acl),
        "\nlistener 8883\n": f"\nlistener {port} 127.0.0.1\n",
    }
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise UplinkError(f"{SHIPPED_CONF}: expected {old.strip()!r} exactly once")
        text = text.replace(old, new)
    if max_queued_messages is not None:
        out = []
        for line in text.splitlines():
            if line.startswith("max_queued_messages "):
                line = f"max_queued_messages {max_queued_messages}"
            out.append(line)
        text = "\n".join(out) + "\n"
    main = [
        # mosquitto started as root drops to the user "mosquitto", who cannot read these
        # files: stay the user who started it.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        "persistence true",
        f"persistence_location {directory / 'data'}/",
        f"log_dest file {directory / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    return "\n".join(main) + "\n" + text + (extra + "\n" if extra else "")


class Mosquitto:
    """The Debian mosquitto, shipped configuration and ACL, on a loopback port."""

    def __init__(
        self,
        directory: Path,
        pki: Pki,
        *,
        port: int | None = None,
        max_queued_messages: int | None = None,
        ingest_identities: tuple[str, ...] = (INGEST_IDENTITY,),
        extra: str = "",
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise UplinkError("mosquitto is not installed (Debian package mosquitto)")
        self.binary = binary
        self.dir = directory
        self.pki = pki
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        self.acl = directory / "acl"
        self.acl.write_text(acl_text(ingest_identities))
        self.log_path = directory / "mosquitto.log"
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            site_config(
                directory,
                pki,
                self.port,
                self.acl,
                max_queued_messages=max_queued_messages,
                extra=extra,
            )
        )

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        stop = threading.Event()
        deadline = timeout
        while deadline > 0:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise UplinkError(f"mosquitto exited at start: {err.strip() or self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                stop.wait(0.05)
                deadline -= 0.05
        raise UplinkError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: what a power cut or an OOM kill does to the broker."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# --------------------------------------------------------------------------- TCP black hole


class BlackHole:
    """A TCP proxy to ``target`` that can be cut: while cut, nothing is forwarded either way.

    Bytes that arrive during a cut stay in the kernel's buffers (as a real network outage
    leaves TCP retransmitting); connections opened during a cut wait. When the cut is long
    enough, MQTT keep-alive gives up on both sides and the clients reconnect after it ends.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, name="blackhole-accept", daemon=True)
        t.start()
        self._threads.append(t)

    def cut(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop.set()
        self._open.set()
        # close() alone does not wake a thread blocked in accept() on Linux: shut it down.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._socks.add(client)
        while not self._open.is_set():
            if self._stop.wait(0.05):
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._socks.add(upstream)
        pair = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                if not self._open.is_set():
                    self._stop.wait(0.05)
                    continue
                ready, _, _ = select.select(list(pair), [], [], 0.1)
                for s in ready:
                    if not self._open.is_set():
                        break
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except OSError:
            return
        finally:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._socks.discard(client)
                self._socks.discard(upstream)
