"""NATS over TLS: a nats-server with a certificate from a CA made here; the replicating primary and the
standby verify it (tls://…?tls_ca=FILE), and refuse a server they cannot verify."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from api.conftest import free_port
from ringfence.app import new_node
from ringfence.errors import ConfigError
from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import Replicator, parse_target

from .conftest import assert_follows, key_of, listening


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_nats(tmp_path):
    binary = shutil.which("nats-server")
    assert binary, "nats-server is not installed on this machine (required, never skipped)"
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ringfence test CA")])
    ca = _cert("ringfence test CA", ca_key, ca_name, ca_key, ca=True)
    srv = _cert("nats", ca_key, ca_name, srv_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.key").write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    port = free_port()
    proc = subprocess.Popen([binary, "-p", str(port), "-js", "-sd", str(tmp_path / "js"), "--tls", "--tlscert",
                             str(tmp_path / "srv.pem"), "--tlskey", str(tmp_path / "srv.key")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listening(port, proc)
    yield port, tmp_path / "ca.pem"
    proc.terminate()
    proc.wait(10)


def test_replication_over_verified_tls(tmp_path, tls_nats):
    port, ca = tls_nats
    target = parse_target(f"tls://127.0.0.1:{port}/RFTLS?tls_ca={ca}")
    node = new_node(tmp_path / "a")
    node.open()
    replicator = Replicator(target, "a", key=key_of("a"))
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        assert_follows(target, tmp_path / "b", node)
    finally:
        node.close()
        replicator.close()
    # without the CA the server's certificate cannot be verified: refused, not downgraded
    with pytest.raises(ConfigError, match="cannot reach NATS"):
        Replicator(parse_target(f"tls://127.0.0.1:{port}/RFTLS"), "a", key=key_of("a"))


def test_a_tls_server_without_users_is_still_refused_outside_dev_mode(tls_nats, monkeypatch):
    """Pinned TLS does not stand in for credentials (intruder review of session 16, F2)."""
    from ringfence.replication import NatsLink

    port, ca = tls_nats
    monkeypatch.setenv("RINGFENCE_MODE", "prod")
    with pytest.raises(ConfigError, match="requires no credentials.*replication nats-config"):
        NatsLink(parse_target(f"tls://127.0.0.1:{port}/RFTLS?tls_ca={ca}"))
    with pytest.raises(ConfigError, match="tls_ca"):
        parse_target(f"nats://127.0.0.1:{port}/RFTLS?tls_ca={ca}")


def test_a_tls_url_to_a_server_without_tls_is_refused_not_downgraded(tmp_path):
    """New-user review (session 13): `tls://` against this machine's plain NATS connected in plain text
    (nats-py starts TLS only when the server's INFO asks for it) and took the leadership."""
    from .conftest import NATS_URL

    plain = NATS_URL.replace("nats://", "tls://", 1)
    with pytest.raises(ConfigError, match="did not start TLS"):
        Replicator(parse_target(f"{plain}/RFTLSPLAIN"), "a", key=key_of("a"))


def test_a_tls_nats_command_says_nothing_of_asyncios_eof_received(tmp_path, tls_nats):
    """nats-py's protocol returns True from eof_received(), which asyncio's SSL transport ignores and logs as a warning
    ("returning true from eof_received() has no effect when using ssl") on every TLS connection the server ends: noise
    on the stderr of serve and `replication status` (a new user's run of #21). That one message is filtered, nothing
    else of asyncio's (replication/__init__.py `quiet_asyncio_eof`)."""
    import json
    import os
    import sys

    port, ca = tls_nats
    url = f"tls://127.0.0.1:{port}/RFEOF?tls_ca={ca}"
    node = new_node(tmp_path / "a")
    node.open()
    replicator = Replicator(parse_target(url), "a", key=key_of("a"))
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    finally:
        node.close()
        replicator.close()
    status = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "status", "--nats", url],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="400"))
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["messages"] >= 1, status.stdout
    assert "eof_received" not in status.stderr, status.stderr


def test_the_eof_received_filter_lets_asyncios_other_messages_through(caplog):
    import logging

    from ringfence.replication import quiet_asyncio_eof

    quiet_asyncio_eof()
    quiet_asyncio_eof()  # installed once however many clients are made
    logger = logging.getLogger("asyncio")
    assert sum(type(f).__name__ == "_EofReceivedNoise" for f in logger.filters) == 1
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        logger.warning("returning true from eof_received() has no effect when using ssl")
        logger.warning("Executing <Task ...> took 0.200 seconds")
        logger.error("Task exception was never retrieved")
    said = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert said == ["Executing <Task ...> took 0.200 seconds", "Task exception was never retrieved"], said
