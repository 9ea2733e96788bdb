"""Per-service NATS credentials for a replicated journal (zero trust inside, docs/resilience.md).

`nats_config(stream, ...)` writes an `authorization` block for nats-server with one user per
service, each allowed exactly the subjects its work needs:

* `rf-node` — a primary or standby (`serve --replicate|--standby`): publishes batches and fences
  to `rf.STREAM.batches`, creates its stream and the leadership bucket `STREAM-leader` when they
  are missing (it may not update, purge or delete either), writes the leader record.
* `rf-operator` — `ringfence replication promote|status`: reads the stream's and the bucket's
  state and writes promotion *requests* (`promote.NODE`), for the NODEs of the peers file only
  (`nats-config --peers`): it cannot make keys for made-up nodes, each value is at most
  `BUCKET_MAX_VALUE` bytes and each key keeps 16 (intruder review of #21, R3). It cannot publish a
  batch nor write the leader record (the standby does that, after verifying the staff quorum).
* `rf-monitor` — `ringfence replication status` only: reads, writes nothing.

Each service gets its replies on its own inbox prefix, `_INBOX_<user>` (`inbox_prefix`; NatsLink
connects with it), and may subscribe to nothing else: not to nats' shared `_INBOX.>`, where every
client's JetStream replies (a standby's `STREAM.MSG.GET` of a batch, orders and all) would show,
nor to another service's prefix. Everyone else (no user, a wrong password) cannot connect. Passwords are random (32 bytes, hex),
one per service, written with mode 0600: the server's config holds them all, each service gets only
its own (`DIR/rf-node.password`..., given to serve through `RINGFENCE_NATS_PASSWORD`, so it is not
on any command line).

The server speaks TLS, on loopback too (intruder review of session 23: whoever binds the port while
nats-server is down or restarting would otherwise read every reconnecting client's password, and could
acknowledge the primary's publishes). Without `--tls-cert/--tls-key`, `write_nats_config` makes a private
CA and a certificate for the listen address (`make_tls`); the CA's key is never written, so the CA
signs that one certificate only. Clients pin the CA: `tls://rf-node@HOST:PORT/STREAM?tls_ca=DIR/ca.pem`.
`no_tls` (`--no-tls`, loopback only) is for development.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..owned import open_own_folder

__all__ = ["SERVICES", "inbox_prefix", "is_loopback", "permissions", "nats_config", "write_nats_config", "MAX_NODES",
           "make_tls", "client_host", "TLS_FILES"]

SERVICES = ("rf-node", "rf-operator", "rf-monitor")
#: The most nodes a peers file given to `nats-config` may name: one `promote.NODE` grant each.
MAX_NODES = 64
#: The files `write_nats_config` writes for the TLS it makes: the CA clients pin, the server's certificate and key.
TLS_FILES = {"ca": "ca.pem", "cert": "nats-server.pem", "key": "nats-server.key"}
#: How long the certificates `make_tls` makes are valid (days): run nats-config again, into a new --out, before.
TLS_DAYS = 3650


def inbox_prefix(user: str) -> str:
    """Where `user`'s replies come back: `_INBOX_<service>` for the three services (each may subscribe
    only there, so none reads another's replies), nats' own `_INBOX` for any other user or none (a
    dev server without users, an admin running `replication harden`)."""
    return f"_INBOX_{user}" if user in SERVICES else "_INBOX"


def is_loopback(host: str) -> bool:
    """Whether nats-server listening on `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: other machines may reach it


def client_host(host: str) -> str:
    """The host a client on this machine connects to for a server listening on `host`: `host` itself, or
    127.0.0.1 for the wildcard addresses (0.0.0.0, ::)."""
    try:
        return "127.0.0.1" if ipaddress.ip_address(host).is_unspecified else host
    except ValueError:
        return host


def make_tls(host: str) -> dict[str, bytes]:
    """A private CA and a server certificate it signs (PEM: "ca", "cert", "key"; P-256, ECDSA-SHA256) for
    `host` and this machine's own names (127.0.0.1, ::1, localhost; and the machine's host name when
    `host` is a wildcard address). The CA's key is dropped here: nothing else can be signed with it."""
    import datetime as dt
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names: list[x509.GeneralName] = []

    def add(name: str) -> None:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(name)
        if entry not in names:
            names.append(entry)

    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    for name in ([socket.gethostname()] if wildcard else [host]) + ["127.0.0.1", "::1", "localhost"]:
        add(name)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ringfence nats-config CA {secrets.token_hex(4)}")])

    def builder(subject: x509.Name, public: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=TLS_DAYS)))

    ca = (builder(ca_name, ca_key.public_key()).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {"ca": ca.public_bytes(pem), "cert": cert.public_bytes(pem),
            "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}


def permissions(service: str, stream: str, nodes: Sequence[str]) -> dict[str, Any]:
    """The subjects `service` may publish to, and the one it may subscribe to: its own replies,
    `inbox_prefix(service).>`. A promotion request may be written for each of `nodes` (the peers
    file's) only: `promote.NODE`, never `promote.>`.

    These are every JetStream API call the replication code makes (nats-py 2.16: stream info, a
    message by sequence, a bucket entry by subject, a stream created when missing) and nothing
    else: no STREAM.DELETE, PURGE, UPDATE or MSG.DELETE, no consumers, for anyone. The stream and
    the bucket refuse rollup headers, purges and message deletes themselves (`HARDENED`), which
    no subject permission could express (a `Nats-Rollup` header rides on an allowed publish)."""
    bucket = f"KV_{stream}-leader"
    kv = f"$KV.{stream}-leader"
    if not nodes or len(nodes) > MAX_NODES:
        raise ValueError(f"--peers: the peers file must name 1..{MAX_NODES} nodes, it names {len(nodes)}")
    promotes = [f"{kv}.promote.{node}" for node in sorted(nodes)]
    read = [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.INFO.{bucket}", f"$JS.API.STREAM.MSG.GET.{bucket}",
            f"$JS.API.DIRECT.GET.{bucket}", f"$JS.API.DIRECT.GET.{bucket}.>"]
    if service == "rf-node":
        # a primary or standby: creates the stream and the bucket on first use, reads the stream by
        # sequence (catch-up, following), publishes batches and fences, writes the leader record and
        # answers promotion requests
        publish = read + [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.CREATE.{bucket}",
                          f"$JS.API.STREAM.MSG.GET.{stream}", f"rf.{stream}.batches", f"{kv}.leader", *promotes]
    elif service == "rf-operator":
        publish = read + promotes
    elif service == "rf-monitor":
        publish = read
    else:
        raise ValueError(f"unknown service {service!r}; services are {', '.join(SERVICES)}")
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{inbox_prefix(service)}.>"]}}


def nats_config(stream: str, passwords: dict[str, str], nodes: Sequence[str], *, port: int = 4222, store_dir: str = "", host: str = "127.0.0.1",
                tls_cert: str = "", tls_key: str = "") -> str:
    """A nats-server config (JSON is valid nats-server config syntax) with one user per service,
    listening on `host` (this machine only by default), with TLS when `tls_cert` and `tls_key` are
    given. A host other machines can reach without TLS is refused (ValueError): the passwords would
    cross the network in clear text. (Plain loopback is `--no-tls`, for development: see the module.)"""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if not tls_cert and not is_loopback(host):
        raise ValueError(f"--listen {host} is reachable from other machines: without TLS the passwords cross the network "
                         "in clear text; give --tls-cert and --tls-key (clients then use tls://HOST:PORT/STREAM?tls_ca=CA)")
    users = [{"user": s, "password": passwords[s], "permissions": permissions(s, stream, nodes)} for s in SERVICES]
    config: dict[str, Any] = {"host": host, "port": port, "authorization": {"users": users}}
    if tls_cert:
        config["tls"] = {"cert_file": tls_cert, "key_file": tls_key}
    config["jetstream"] = {"store_dir": store_dir} if store_dir else {}
    return json.dumps(config, indent=2) + "\n"


def write_private(path: Path, data: bytes) -> None:
    from ..nodekey import write_private as write

    write(path, data)


def _write_0600(path: Path, text: str) -> None:
    write_private(path, text.encode())


def _open_own_folder(out: Path, field: str = "--out", risk: str = "could read the passwords or replace the server's config",
                     remedy: str = "choose another --out") -> int:
    """`out`, opened once without following a symbolic link: it must be a folder of this user's that
    no other user may write, under folders no other user owns or may write (owned.open_own_folder:
    whoever could would read the passwords' files or put another nats-server.conf in place of this one
    before the server reads it; intruder review of session 22, B2). Everything is then written through
    this descriptor (`/proc/self/fd/N`), so a folder put in its place after the check is never written
    into. Raises ConfigError naming `field` (nothing is written)."""
    fd = open_own_folder(out, field, risk, remedy)
    try:
        if not os.path.samestat(os.stat(f"/proc/self/fd/{fd}"), os.fstat(fd)):
            raise OSError
    except OSError:
        os.close(fd)
        raise ConfigError(f"{out}: writing through the folder's handle needs /proc mounted (Linux's /proc/self/fd); "
                          "it is not", field=field) from None
    return fd


def _own_store_dir(store_dir: str) -> str:
    """`--store-dir` as the config gives it (its real path): made (0700) when missing, else a folder of
    this user's that no other user may write, under folders no one else owns or may write (intruder
    review of session 23, F4: its owner could delete the stream's folder, every acknowledged batch)."""
    path = Path(store_dir)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise ConfigError(f"cannot create {path}: {err.strerror}", field="--store-dir") from None
    fd = _open_own_folder(path, "--store-dir", "could delete the stream's files (every acknowledged batch)",
                          "give a folder of this user's (run nats-config as the user nats-server runs as)")
    try:
        return os.path.realpath(f"/proc/self/fd/{fd}")  # (the folder checked, wherever its name points later)
    finally:
        os.close(fd)


def write_nats_config(out: Path, stream: str, nodes: Sequence[str], *, port: int = 4222, store_dir: str = "", host: str = "127.0.0.1",
                      tls_cert: str = "", tls_key: str = "", no_tls: bool = False) -> dict[str, Path]:
    """Write `out/nats-server.conf` and `out/SERVICE.password` (all 0600); never overwrites. Without
    `tls_cert`/`tls_key` (and without `no_tls`, loopback development only) also `out/ca.pem`,
    `out/nats-server.pem` and `out/nats-server.key` (`make_tls`, 0600), which the config's tls block
    names. Bad `host`/TLS input raises ValueError before anything is written."""
    if no_tls and tls_cert:
        raise ValueError("--no-tls and --tls-cert/--tls-key contradict each other: give one or the other")
    make = not tls_cert and not no_tls
    nats_config(stream, dict.fromkeys(SERVICES, ""), nodes, port=port, store_dir=store_dir, host=host,
                tls_cert=tls_cert or ("-" if make else ""), tls_key=tls_key or ("-" if make else ""))  # checks the input first
    if store_dir:
        store_dir = _own_store_dir(store_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = _open_own_folder(out)
    try:
        there = Path(f"/proc/self/fd/{fd}")  # the folder checked, wherever its name points later
        names = {"config": "nats-server.conf", **{s: f"{s}.password" for s in SERVICES}}
        if make:
            names.update(TLS_FILES)
        existing = [name for name in names.values() if os.path.lexists(there / name)]
        if existing:
            raise FileExistsError(f"{out / existing[0]} exists; credentials are never overwritten (choose another --out)")
        passwords = {s: secrets.token_hex(32) for s in SERVICES}
        for s in SERVICES:
            _write_0600(there / names[s], passwords[s] + "\n")
        if make:
            real = Path(os.path.realpath(there))  # the folder checked: what the config names for nats-server to read
            for part, pem in make_tls(host).items():
                write_private(there / TLS_FILES[part], pem)
            tls_cert, tls_key = str(real / TLS_FILES["cert"]), str(real / TLS_FILES["key"])
        _write_0600(there / names["config"], nats_config(stream, passwords, nodes, port=port, store_dir=store_dir, host=host,
                                                         tls_cert=tls_cert, tls_key=tls_key))
    finally:
        os.close(fd)
    return {key: out / name for key, name in names.items()}
