"""Whoever holds the NATS port never gets the password (intruder review of session 23, HIGH): a local user
who binds 127.0.0.1:PORT while nats-server is down or restarting received every (re)connecting client's
CONNECT, `"user": "rf-operator", "pass": "..."`. Now `nats-config` makes a private CA and a server
certificate (TLS on loopback too), and outside dev mode every client refuses a URL without tls:// and a
pinned CA (`tls_ca=`); a tls:// client never sends its CONNECT before TLS has started."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from api.conftest import free_port
from ringfence.app import new_node
from ringfence.errors import ConfigError
from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import NatsLink, Replicator, parse_target
from ringfence.replication.auth import make_tls

from .conftest import assert_follows, key_of, listening

STREAM = "RFPIN"
PASSWORD = "secret-" + "7" * 24


class FakeServer:
    """A listener on a free port that is not nats-server: sends an INFO asking for credentials (no TLS unless
    `tls_required`), then keeps every byte each client sends (`received`)."""

    def __init__(self, *, tls_required: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.info = {"server_id": "FAKE", "version": "2.9.10", "proto": 1, "max_payload": 1048576, "headers": True,
                     "auth_required": True, "tls_required": tls_required, "jetstream": True}
        self.received = bytearray()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(b"INFO " + json.dumps(self.info).encode() + b"\r\n")
                    while chunk := conn.recv(65536):
                        self.received += chunk
                        if b"PING" in chunk:  # a client that got this far: accept it, as a forger would
                            conn.sendall(b"PONG\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ca_file(tmp_path):
    (tmp_path / "ca.pem").write_bytes(make_tls("127.0.0.1")["ca"])
    return tmp_path / "ca.pem"


@pytest.mark.parametrize("tls_required", [False, True])
@pytest.mark.parametrize("scheme", ["nats", "tls"])
def test_a_listener_that_is_not_nats_server_never_receives_the_password_from_a_prod_client(scheme, tls_required, ca_file,
                                                                                          monkeypatch):
    monkeypatch.setenv("RINGFENCE_MODE", "prod")
    fake = FakeServer(tls_required=tls_required)
    try:
        query = f"?tls_ca={ca_file}" if scheme == "tls" else ""
        with pytest.raises(ConfigError) as refused:
            NatsLink(parse_target(f"{scheme}://rf-operator:{PASSWORD}@127.0.0.1:{fake.port}/{STREAM}{query}", "--nats"))
        said = str(refused.value)
        assert PASSWORD not in said, said
        if scheme == "nats":  # refused before connecting, naming the fix
            assert fake.connections == 0 and "tls_ca=" in said and "nats-config" in said and "--nats" in said, said
        elif not tls_required:  # INFO without TLS: the CONNECT line is never sent
            assert "did not start TLS" in said and "password was not sent" in said, said
        else:  # TLS asked for, but the listener has no certificate of the pinned CA: the handshake fails
            assert "cannot reach NATS" in said, said
    finally:
        fake.close()
    assert b"CONNECT" not in fake.received and b'"pass"' not in fake.received and PASSWORD.encode() not in fake.received


def test_prod_refuses_a_pinned_ca_file_another_user_could_change(tmp_path, ca_file, monkeypatch):
    """tls_ca is read again at every (re)connect: a CA file in a folder of uid 4242's, or one of theirs, would let them
    make it their own CA and take the password. Outside dev mode refused before connecting (intruder review of
    session 24); the same CA in this user's folder reaches the server (which here does not start TLS: refused then)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    shutil.copy(ca_file, theirs / "ca.pem")
    os.chown(theirs, 4242, 4242)
    monkeypatch.setenv("RINGFENCE_MODE", "prod")
    fake = FakeServer()
    try:
        for ca in (theirs / "ca.pem", ca_file):
            with pytest.raises(ConfigError) as refused:
                NatsLink(parse_target(f"tls://rf-node:{PASSWORD}@127.0.0.1:{fake.port}/{STREAM}?tls_ca={ca}", "--nats"))
            said = str(refused.value)
            assert PASSWORD not in said and said.startswith("--nats: "), said
            if ca != ca_file:
                assert f"the folder {theirs} belongs to user id 4242" in said and fake.connections == 0, said
            else:
                assert "did not start TLS" in said and fake.connections >= 1, said
        os.chown(ca_file, 4242, 4242)
        with pytest.raises(ConfigError, match=f"{ca_file} belongs to user id 4242"):
            NatsLink(parse_target(f"tls://rf-node:{PASSWORD}@127.0.0.1:{fake.port}/{STREAM}?tls_ca={ca_file}"))
        monkeypatch.setenv("RINGFENCE_MODE", "dev")  # dev mode takes it (and the server still gets no CONNECT)
        with pytest.raises(ConfigError, match="did not start TLS"):
            NatsLink(parse_target(f"tls://rf-node:{PASSWORD}@127.0.0.1:{fake.port}/{STREAM}?tls_ca={theirs / 'ca.pem'}"))
    finally:
        fake.close()
    assert b"CONNECT" not in fake.received and PASSWORD.encode() not in fake.received


def test_a_tls_url_never_sends_its_connect_in_plain_text_in_dev_mode_either(ca_file, monkeypatch):
    monkeypatch.setenv("RINGFENCE_MODE", "dev")
    fake = FakeServer()
    try:
        with pytest.raises(ConfigError, match="did not start TLS"):
            NatsLink(parse_target(f"tls://rf-node:{PASSWORD}@127.0.0.1:{fake.port}/{STREAM}?tls_ca={ca_file}"))
    finally:
        fake.close()
    assert fake.connections >= 1 and b"CONNECT" not in fake.received and PASSWORD.encode() not in fake.received


def test_prod_refuses_tls_without_a_pinned_ca_and_dev_warns_about_a_plain_password(monkeypatch, caplog):
    """The system's CAs would take any certificate a public CA issued for the name: prod wants the server's own CA."""
    monkeypatch.setenv("RINGFENCE_MODE", "prod")
    with pytest.raises(ConfigError, match=r"over TLS without a pinned CA \(tls_ca=\).*nats-config"):
        NatsLink(parse_target(f"tls://rf-node:{PASSWORD}@127.0.0.1:{free_port()}/{STREAM}"))
    monkeypatch.setenv("RINGFENCE_MODE", "dev")
    fake = FakeServer()
    try:
        with caplog.at_level(logging.WARNING, logger="ringfence.replication"):
            link = NatsLink(parse_target(f"nats://rf-node:{PASSWORD}@127.0.0.1:{fake.port}/{STREAM}"))
            link.close()
    finally:
        fake.close()
    warned = [r.getMessage() for r in caplog.records if "without TLS and a pinned CA" in r.getMessage()]
    assert len(warned) == 1 and "dev mode only" in warned[0] and PASSWORD not in warned[0], caplog.text
    assert PASSWORD.encode() in fake.received  # the control: dev mode's plain URL does send it (hence the warning)


def test_a_nats_server_from_nats_configs_own_tls_accepts_prod_nodes_that_verify_it(tmp_path, monkeypatch):
    """`nats-config` without --tls-cert makes ca.pem and a certificate for 127.0.0.1, localhost and ::1; nats-server
    starts with it; a prod primary and standby (rf-node, the printed tls:// URL) replicate; a CA other than the
    config's is refused (verified against tls_ca alone, not the system's CAs)."""
    from ringfence.nodekey import public_hex

    binary = shutil.which("nats-server")
    assert binary, "nats-server is not installed on this machine (required, never skipped)"
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({node: public_hex(key_of(node)) for node in ("a", "b")}))
    for attempt in range(3):  # a free port can be taken by a parallel test before nats-server binds it
        port, out = free_port(), tmp_path / f"auth{attempt}"
        made = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "nats-config", "--stream", STREAM,
                               "--out", str(out), "--port", str(port), "--store-dir", str(tmp_path / f"js{attempt}"),
                               "--peers", str(peers)], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, COLUMNS="400"))
        assert made.returncode == 0, made.stdout + made.stderr
        assert sorted(os.listdir(out)) == ["ca.pem", "nats-server.conf", "nats-server.key", "nats-server.pem",
                                           "rf-monitor.password", "rf-node.password", "rf-operator.password"]
        assert all(oct((out / f).stat().st_mode & 0o777) == "0o600" for f in os.listdir(out))
        config = json.loads((out / "nats-server.conf").read_text())
        assert config["tls"] == {"cert_file": str(out / "nats-server.pem"), "key_file": str(out / "nats-server.key")}
        url = f"tls://rf-node@127.0.0.1:{port}/{STREAM}?tls_ca={out / 'ca.pem'}"
        assert f"URL {url}" in made.stdout, made.stdout  # the URL nats-config prints is the one that works
        proc = subprocess.Popen([binary, "-c", str(out / "nats-server.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if listening(port, proc, 30):
            break
        proc.kill()
        proc.wait(10)
    else:
        raise AssertionError("nats-server did not start")
    try:
        monkeypatch.setenv("RINGFENCE_MODE", "prod")
        monkeypatch.setenv("RINGFENCE_NATS_PASSWORD", (out / "rf-node.password").read_text().strip())
        node = new_node(tmp_path / "a")
        node.open()
        replicator = Replicator(parse_target(url + "&first_primary=a"), "a", key=key_of("a"))
        try:
            assert replicator.link.encrypted()
            replicator.attach(node)
            node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
            for host in ("127.0.0.1", "localhost"):  # the address and the certificate's other name
                assert_follows(parse_target(url.replace("127.0.0.1", host) + "&first_primary=a"), tmp_path / f"b-{host}", node)
        finally:
            node.close()
            replicator.close()
        (tmp_path / "other-ca.pem").write_bytes(make_tls("127.0.0.1")["ca"])  # another CA (nats-config run elsewhere)
        with pytest.raises(ConfigError, match="cannot reach NATS.*CERTIFICATE_VERIFY_FAILED|cannot reach NATS"):
            NatsLink(parse_target(f"tls://rf-node@127.0.0.1:{port}/{STREAM}?tls_ca={tmp_path / 'other-ca.pem'}"))
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_made_certificate_names_the_listen_address_and_this_machine():
    from cryptography import x509

    made = make_tls("10.0.0.5")
    cert = x509.load_pem_x509_certificate(made["cert"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1", "::1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate(made["ca"])
    assert cert.issuer == ca.subject and ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)
    assert "PRIVATE KEY" in made["key"].decode() and set(made) == {"ca", "cert", "key"}  # the CA's key is not kept
    ssl.create_default_context(cadata=made["ca"].decode())  # a CA file Python's ssl loads


def test_the_dr_drills_check_sends_no_password_without_pinned_tls_outside_dev_mode(monkeypatch):
    """`dr drill`'s own check of the server (in the operator's process): a password in prod mode needs tls:// with
    tls_ca=; a tls:// URL's CONNECT waits for TLS (the drill's nodes run in dev mode and stay as they were)."""
    from ringfence.replication.drill import check_nats

    monkeypatch.setenv("RINGFENCE_MODE", "prod")
    fake = FakeServer()
    try:
        with pytest.raises(RuntimeError, match="refusing to send the NATS password without TLS.*nats-config"):
            check_nats(f"nats://admin:{PASSWORD}@127.0.0.1:{fake.port}")
        with pytest.raises(RuntimeError, match=r"over TLS without a pinned CA.*takes no tls_ca= yet"):
            check_nats(f"tls://admin:{PASSWORD}@127.0.0.1:{fake.port}")
        monkeypatch.setenv("RINGFENCE_MODE", "dev")  # dev: a tls:// URL's CONNECT still waits for TLS
        with pytest.raises(RuntimeError, match="cannot reach NATS"):
            check_nats(f"tls://admin:{PASSWORD}@127.0.0.1:{fake.port}")
    finally:
        fake.close()
    assert b"CONNECT" not in fake.received and PASSWORD.encode() not in fake.received
