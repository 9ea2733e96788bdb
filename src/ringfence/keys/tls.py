"""Mutually authenticated signer transport: TLS 1.3 with pinned Ed25519 certificates.

Every party (each signer, the coordinator) has its own Ed25519 key and a self-signed certificate
for it (`ensure_identity`; the private key PEM is encrypted with the party's passphrase, mode 0600).
A signer trusts exactly one client certificate, the coordinator's (uvicorn `ssl_ca_certs` +
`CERT_REQUIRED`); the coordinator trusts exactly one server certificate per signer
(`client_context`). Nothing else is in either trust store, so a man in the middle with its own key
fails the handshake in both directions: the coordinator refuses its server certificate, and the
signer refuses it as a client. The pin is the certificate itself (host names add nothing to an
exact pin and are not checked). `fingerprint` is what operators compare when they exchange pins.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from ..errors import ConfigError

__all__ = ["ensure_identity", "fingerprint", "load_identity_key", "certificate_key", "client_context", "ClientTLS", "TlsIdentity"]


@dataclass(frozen=True)
class TlsIdentity:
    cert: Path
    key: Path
    password: str = field(repr=False)


def ensure_identity(directory: Path, name: str, password: str) -> TlsIdentity:
    """`directory/tls.crt` and `tls.key` (created on first use): an Ed25519 key and a self-signed
    certificate for it, valid ten years. The key file is encrypted with `password`."""
    directory = Path(directory)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    if cert_path.exists() and key_path.exists():
        return TlsIdentity(cert_path, key_path, password)
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, None))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(password.encode()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem_key)
    partial = cert_path.with_name(cert_path.name + ".tmp")  # whole or absent: a reader polls for this file
    partial.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(partial, cert_path)
    return TlsIdentity(cert_path, key_path, password)


def load_identity_key(identity: TlsIdentity) -> Ed25519PrivateKey:
    """The party's Ed25519 key (decrypted with its password): it also signs the signer's transport key."""
    key = serialization.load_pem_private_key(Path(identity.key).read_bytes(), password=identity.password.encode())
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{identity.key} is not an Ed25519 key", field="tls.key")
    return key


def certificate_key(cert_path: Path) -> bytes:
    """The raw Ed25519 public key of a pinned certificate (what verifies that party's signatures)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pub = x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise ConfigError(f"{cert_path} does not hold an Ed25519 key", field="pin")
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate's DER encoding, hex (what operators compare)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _check_pin(path: Path, who: str) -> str:
    try:
        pem = Path(path).read_text()
        x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{who}: cannot read the pinned certificate {path} ({exc.__class__.__name__})",
                          field="pin") from None
    return pem


def client_context(identity: TlsIdentity, pinned_server_cert: Path) -> ssl.SSLContext:
    """The coordinator's side of one signer connection: TLS 1.3, present our certificate, accept
    only the pinned server certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the exact certificate is pinned; a name adds nothing
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=_check_pin(pinned_server_cert, "signer"))
    ctx.load_cert_chain(str(identity.cert), str(identity.key), password=identity.password)
    return ctx


@dataclass
class ClientTLS:
    """The coordinator's identity and the pinned certificate of each signer (by identifier)."""

    identity: TlsIdentity
    pins: dict[int, Path]

    def context(self, signer: int) -> ssl.SSLContext:
        if signer not in self.pins:
            raise ConfigError(f"no pinned certificate for signer {signer}", field="pin")
        return client_context(self.identity, self.pins[signer])

    def add(self, pins: Mapping[int, Path]) -> None:
        self.pins.update(pins)
