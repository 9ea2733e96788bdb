"""Outside dev mode a PostgreSQL URL is taken only over a way no other local user can stand in for (intruder review
of #21, store/transport.py): TCP with the server's certificate verified (sslmode=verify-full or verify-ca), a Unix
socket in a directory other users cannot write, or the operator's RINGFENCE_DATABASE_PLAIN_OK=1. Real PostgreSQL
throughout: the machine's (127.0.0.1:5432 and its socket /var/run/postgresql, trust, no TLS) and, for the verified
TLS case, a private cluster started here with a certificate signed by a CA made here.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgtest import pg_database

from ringfence.store.transport import database_problems, libpq_path

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
PROD = {"RINGFENCE_MODE": "prod", "RINGFENCE_IDENTITY_SECRET_KEY_HEX": "5e" * 32,
        "RINGFENCE_IDENTITY_ORIGIN": "https://exchange.example", "RINGFENCE_IDENTITY_SMTP_HOST": "mail.exchange.example"}
LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGSSLMODE", "PGSSLROOTCERT", "PGSERVICE", "PGREQUIRESSL", "PGSERVICEFILE",
             "PGSYSCONFDIR")


def rf(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`ringfence ARGS` with only `env` of the RINGFENCE_ and PG variables (this run's sources on its path)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_") and k not in LIBPQ_ENV}
    full.update(env, COLUMNS="400", PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path if p))
    return subprocess.run(RINGFENCE + args, env=full, capture_output=True, text=True, timeout=120, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


def tables(url: str) -> list[str]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


class Impostor:
    """A listener standing where the database should be (a TCP port or a socket file): counts who connects."""

    def __init__(self, family: int, address: object) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> int:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        return self.connections


def test_prod_refuses_tcp_without_a_verified_certificate_before_connecting(tmp_path, monkeypatch):
    """The machine's PostgreSQL over TCP without TLS, and an impostor on a free port: every command that opens the
    database exits 2 naming the variable or option and what is allowed; the impostor is never connected to (the
    password would go to it), the database is not touched, no folder or file is made."""
    impostor = Impostor(socket.AF_INET, ("127.0.0.1", 0))
    port = impostor.sock.getsockname()[1]
    try:
        with pg_database() as url:
            fake = f"postgresql+psycopg://rf:hunter2-secret@127.0.0.1:{port}/ringfence"
            cases = [
                (["identity", "migrate"], {"RINGFENCE_DATABASE_URL": url}, "RINGFENCE_DATABASE_URL"),
                (["identity", "migrate"], {"RINGFENCE_DATABASE_URL": fake}, "RINGFENCE_DATABASE_URL"),
                (["serve", "--data", str(tmp_path / "node")], {"RINGFENCE_DATABASE_URL": fake}, "RINGFENCE_DATABASE_URL"),
                (["monitoring", "export", "--out", str(tmp_path / "out.jsonl"), "--database-url", fake], {}, "--database-url"),
                (["monitoring", "export", "--out", str(tmp_path / "out.jsonl")], {"RINGFENCE_DATABASE_URL": fake},
                 "RINGFENCE_DATABASE_URL"),
                (["staff", "login", "ada", "--email", "ada@example.com", "--out", str(tmp_path / "ada.json")],
                 {"RINGFENCE_DATABASE_URL": fake}, "RINGFENCE_DATABASE_URL"),
                (["backup", "restore", str(tmp_path / "no-backup"), "--to", str(tmp_path / "restored"), "--trust",
                  str(tmp_path / "trust.json")], {"RINGFENCE_DATABASE_URL": fake}, "RINGFENCE_DATABASE_URL"),
            ]
            for args, env, field in cases:
                proc = rf(args, {**PROD, **env}, tmp_path)
                out = said(proc)
                assert proc.returncode == 2, (args, out)
                assert f"error: {field}: connects over TCP to 127.0.0.1:" in out and "sslmode=prefer (libpq's default)" in out, out
                assert "sslmode=verify-full (or verify-ca)" in out and "RINGFENCE_DATABASE_PLAIN_OK=1" in out, out
                assert "Traceback" not in out and "hunter2" not in out, out
            assert tables(url) == []  # identity migrate never reached the database
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # no node, no export, no login, no restore
    finally:
        assert impostor.close() == 0, "the password would have gone to whoever listens on the port"


def test_what_libpq_reads_besides_the_url_decides_too(tmp_path, monkeypatch):
    """The decision is libpq's view: sslmode in the URL wins over PGSSLMODE, PGSSLMODE counts when the URL has none,
    PGHOST counts when the URL names no host, a `host` query parameter replaces the URL's host, hostaddr is TCP
    whatever host says; dev mode takes anything."""
    for name in LIBPQ_ENV:
        monkeypatch.delenv(name, raising=False)
    tcp = "postgresql+psycopg://rf@db.internal:5432/rf"
    prod = {"mode": "prod", "plain_ok": False}

    def refused(url: str) -> str:
        return " ".join(str(p) for p in database_problems(url, **prod))  # type: ignore[arg-type]

    assert "sslmode=prefer (libpq's default)" in refused(tcp)
    assert refused(tcp + "?sslmode=require")  # TLS, but any certificate: refused
    assert not refused(tcp + "?sslmode=verify-full&sslrootcert=/etc/ringfence/pg-ca.pem")
    assert not refused(tcp + "?sslmode=verify-ca")
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert not refused(tcp) and libpq_path(tcp).sslmode_from == "PGSSLMODE"
    assert "sslmode=prefer (the URL)" in refused(tcp + "?sslmode=prefer")  # the URL's wins
    monkeypatch.setenv("PGSSLMODE", "require")
    assert "sslmode=require (PGSSLMODE)" in refused(tcp)
    monkeypatch.delenv("PGSSLMODE")
    assert "/tmp is writable by every user" in refused(tcp + "?host=/tmp")  # the query's host replaces db.internal
    assert "192.0.2.7" in refused("postgresql+psycopg://rf@/rf?host=/var/run/postgresql&hostaddr=192.0.2.7")
    monkeypatch.setenv("PGHOST", "/tmp")
    assert "/tmp is writable by every user" in refused("postgresql+psycopg://rf@/rf")
    assert "db.internal:5432" in refused(tcp)  # the URL's host wins over PGHOST
    monkeypatch.delenv("PGHOST")
    assert libpq_path("postgresql+psycopg://rf@/rf").sockets  # no host at all: libpq's default socket directory
    assert "db-a:5433, db-b:5434" in refused("postgresql+psycopg://rf@/rf?host=db-a:5433&host=db-b:5434")
    assert "invalid connection option" in refused(tcp + "?sslmod=verify-full")  # a typo is not a silent prefer
    for url in (tcp, tcp + "?host=/tmp"):
        assert database_problems(url, mode="dev", plain_ok=False) == []
        assert database_problems(url, mode="prod", plain_ok=True) == []
    monkeypatch.setenv("RINGFENCE_MODE", "prod")  # a command without Settings reads the environment
    monkeypatch.setenv("RINGFENCE_DATABASE_PLAIN_OK", "perhaps")
    assert [p.field for p in database_problems(tcp)] == ["RINGFENCE_DATABASE_PLAIN_OK"]
    monkeypatch.setenv("RINGFENCE_DATABASE_PLAIN_OK", "1")
    assert database_problems(tcp) == []
    monkeypatch.delenv("RINGFENCE_MODE")
    monkeypatch.delenv("RINGFENCE_DATABASE_PLAIN_OK")
    assert database_problems(tcp) == []  # dev mode by default


def test_socket_directories_other_users_can_write_are_refused(tmp_path):
    """A socket directory anyone can write (an impostor's socket already there: never connected to), one inside a
    folder anyone can write, an abstract name: refused. One only root can write, as /var/run/postgresql (the
    machine's PostgreSQL, reached through it in prod mode), or root's folder in the sticky /tmp: taken."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    impostor = Impostor(socket.AF_UNIX, str(open_dir / ".s.PGSQL.5432"))
    try:
        problems = database_problems(f"postgresql+psycopg://rf:hunter2-secret@/rf?host={open_dir}", mode="prod",
                                     plain_ok=False)
        assert len(problems) == 1 and problems[0].field == "RINGFENCE_DATABASE_URL", problems
        assert f"the socket directory {open_dir} is writable by every user (mode 777)" in str(problems[0])
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": f"postgresql+psycopg://rf@/rf?host={open_dir}"},
                  tmp_path)
        assert proc.returncode == 2 and "any local user could put a socket .s.PGSQL.5432 there" in said(proc), said(proc)
    finally:
        assert impostor.close() == 0
    inner = open_dir / "pg"
    inner.mkdir(mode=0o755)
    assert f"is inside {open_dir}, which every user can write" in str(database_problems(
        f"postgresql+psycopg:///rf?host={inner}", mode="prod", plain_ok=False)[0])
    assert "abstract socket name" in str(database_problems("postgresql+psycopg:///rf?host=@pg", mode="prod", plain_ok=False)[0])
    assert "does not exist" in str(database_problems(f"postgresql+psycopg:///rf?host={tmp_path / 'none'}", mode="prod",
                                                     plain_ok=False)[0])
    private = Path(tempfile.mkdtemp(prefix="rf-sock-"))  # root's (this user's) folder in the sticky /tmp
    try:
        assert database_problems(f"postgresql+psycopg:///rf?host={private}", mode="prod", plain_ok=False) == []
    finally:
        private.rmdir()
    with pg_database() as url:
        name = url.rsplit("/", 1)[1]
        via_socket = f"postgresql+psycopg://postgres@/{name}?host=/var/run/postgresql"
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": via_socket}, tmp_path)
        assert proc.returncode == 0 and "identity schema is at head" in said(proc), said(proc)
        assert "identity_users" in tables(url)


def test_the_operators_opt_in_takes_plain_tcp(tmp_path):
    with pg_database() as url:
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url, "RINGFENCE_DATABASE_PLAIN_OK": "maybe"},
                  tmp_path)
        assert proc.returncode == 2 and "error: RINGFENCE_DATABASE_PLAIN_OK:" in said(proc) and "Traceback" not in said(proc)
        assert tables(url) == []
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url, "RINGFENCE_DATABASE_PLAIN_OK": "1"},
                  tmp_path)
        assert proc.returncode == 0 and "identity schema is at head" in said(proc), said(proc)
        assert "identity_users" in tables(url)


# ---------------------------------------------------------------- a private PostgreSQL cluster with TLS ----

def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert found, "PostgreSQL's server binaries (initdb, pg_ctl) are not installed under /usr/lib/postgresql"
    return found[-1].parent


def _ca(name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _server_cert(ca_key, ca_cert, dns_name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pem(obj) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "public_bytes"):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def tls_cluster() -> Iterator[dict[str, object]]:
    """A PostgreSQL cluster of this test's own: TLS only (hostssl), listening on 127.0.0.1 at a free port, no socket
    but in its own folder, its certificate for `localhost` signed by the CA `ours` (an `impostor` CA signs another).
    initdb refuses root: as root it runs as the `postgres` user (setpriv), in a folder of that user's under /tmp."""
    bin_dir = _pg_bin()
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="rf-pgtls-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
        os.chown(folder, user.pw_uid, user.pw_gid)
    ours_key, ours = _ca("ringfence test CA")
    impostor_key, impostor = _ca("impostor CA")
    files = {"ours.pem": _pem(ours), "impostor.pem": _pem(impostor)}
    for label, (ca_key, ca_cert) in {"ours": (ours_key, ours), "impostor": (impostor_key, impostor)}.items():
        key, cert = _server_cert(ca_key, ca_cert, "localhost")
        files[f"server-{label}.crt"], files[f"server-{label}.key"] = _pem(cert), _pem(key)
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600 if name.endswith(".key") else 0o644)
        if as_user:
            os.chown(path, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    data_dir = folder / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-N",
                    "--locale=C", "-E", "UTF8"], check=True, capture_output=True, timeout=60)
    (data_dir / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n")  # TLS or nothing
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{folder}'\n"
                   f"fsync = off\nssl = on\nssl_cert_file = '{folder}/server-impostor.crt'\n"
                   f"ssl_key_file = '{folder}/server-impostor.key'\n")
    ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-w", "-t", "30"]
    subprocess.run([*ctl, "-l", str(folder / "log"), "start"], check=True, capture_output=True, timeout=60)

    def present(label: str) -> None:
        """The server presents the certificate CA `label` signed from now on (a reload re-reads them)."""
        conf = (data_dir / "postgresql.conf").read_text()
        other = "ours" if label == "impostor" else "impostor"
        (data_dir / "postgresql.conf").write_text(conf.replace(f"server-{other}.", f"server-{label}."))
        subprocess.run([*ctl, "reload"], check=True, capture_output=True, timeout=30)

    try:
        yield {"port": port, "folder": folder, "present": present}
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_reload(url: str, expect_error: str | None) -> None:
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(url, connect_timeout=5).close()
            ok = expect_error is None
        except psycopg.OperationalError as err:
            ok = expect_error is not None and expect_error in str(err)
        if ok or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def test_prod_connects_with_a_verified_certificate_and_refuses_another_cas(tmp_path, tls_cluster):
    """Prod mode `identity migrate` over TLS to a real server: with sslmode=verify-full and sslrootcert our CA it
    migrates (the session is TLS, pg_stat_ssl says so); a server presenting another CA's certificate, or ours
    reached by a name it was not issued for (verify-full), is refused by libpq: exit 2, one line naming the variable,
    no traceback, nothing migrated. Without verification the prod check refuses the URL before libpq is asked."""
    port, folder, present = tls_cluster["port"], tls_cluster["folder"], tls_cluster["present"]
    ours = folder / "ours.pem"
    url = f"postgresql+psycopg://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ours}"
    libpq_url = url.replace("postgresql+psycopg://", "postgresql://")

    proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url}, tmp_path)  # the impostor's certificate
    out = said(proc)
    assert proc.returncode == 2 and "error: RINGFENCE_DATABASE_URL: cannot open the database" in out, out
    assert "certificate verify failed" in out and "Traceback" not in out, out

    present("ours")
    _wait_for_reload(libpq_url, None)
    by_address = url.replace("localhost", "127.0.0.1")  # our certificate, but issued for localhost only
    proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": by_address}, tmp_path)
    out = said(proc)
    assert proc.returncode == 2 and "error: RINGFENCE_DATABASE_URL: cannot open the database" in out, out
    assert 'does not match host name "127.0.0.1"' in out and "Traceback" not in out, out
    with psycopg.connect(libpq_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)

    proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url.replace("verify-full", "require")}, tmp_path)
    assert proc.returncode == 2 and "sslmode=require (the URL)" in said(proc), said(proc)

    proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url}, tmp_path)
    assert proc.returncode == 0 and "identity schema is at head" in said(proc), said(proc)
    proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": by_address.replace("verify-full", "verify-ca")},
              tmp_path)  # verify-ca checks the CA, not the name
    assert proc.returncode == 0, said(proc)
    with psycopg.connect(libpq_url) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM identity_users").fetchone() == (0,)


# ------------------------------------------------- intruder review of session 24: what else libpq trusts ----

OTHER = 4242  # another local user, played with chown (the suite runs as root; uid 4242 has no passwd entry)


def _theirs(path: Path, mode: int = 0o755) -> Path:
    """`path` made a folder of uid 4242's (not writable by anyone else: only its owner could change it)."""
    path.mkdir(mode=mode)
    path.chmod(mode)
    os.chown(path, OTHER, OTHER)
    return path


def test_a_socket_directory_another_user_owns_is_refused(tmp_path):
    """uid 4242's folder (0755: nobody but them can write it) as the socket directory, with their socket already in
    it, and root's folder inside one of theirs (they can rename it and make their own): refused, naming the owner;
    the impostor is never connected to. It was taken: the password went to their socket."""
    theirs = _theirs(tmp_path / "theirs")
    impostor = Impostor(socket.AF_UNIX, str(theirs / ".s.PGSQL.5432"))
    try:
        url = f"postgresql+psycopg://rf:hunter2-secret@/rf?host={theirs}"
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url}, tmp_path)
        out = said(proc)
        assert proc.returncode == 2 and f"{theirs}, which belongs to user id {OTHER}" in out, out
        assert "hunter2" not in out and "Traceback" not in out, out
    finally:
        assert impostor.close() == 0, "the password would have gone to uid 4242's socket"
    roots = theirs / "pg"
    roots.mkdir(mode=0o755)
    os.chown(roots, 0, 0)
    problems = database_problems(f"postgresql+psycopg:///rf?host={roots}", mode="prod", plain_ok=False)
    assert len(problems) == 1 and f"belongs to user id {OTHER}" in str(problems[0]), problems
    link = tmp_path / "link"  # a link of root's in root's folder, to uid 4242's folder: where it leads counts
    link.symlink_to(theirs)
    assert f"belongs to user id {OTHER}" in str(database_problems(f"postgresql+psycopg:///rf?host={link}", mode="prod",
                                                                  plain_ok=False)[0])


def test_a_comma_in_a_host_list_is_never_escaped(tmp_path):
    """libpq and psycopg split host=/a\\,127.0.0.1 at the comma (a socket directory `/a\\`, then TCP to 127.0.0.1):
    the check read it as one socket directory `/a,127.0.0.1` (which existed), took it, and the TCP attempt sent the
    password without TLS to whoever held the port. Now the TCP attempt is named and refused; nobody is connected to."""
    impostor = Impostor(socket.AF_INET, ("127.0.0.1", 0))
    port = impostor.sock.getsockname()[1]
    (tmp_path / "x,127.0.0.1").mkdir()
    try:
        url = f"postgresql+psycopg://rf:hunter2-secret@/rf?host={tmp_path}/x%5C,127.0.0.1&port={port},{port}"
        path = libpq_path(url)
        assert path.tcp == (f"127.0.0.1:{port}",) and path.sockets == (f"{tmp_path}/x\\",), path
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url}, tmp_path)
        out = said(proc)
        assert proc.returncode == 2 and f"connects over TCP to 127.0.0.1:{port} with sslmode=prefer" in out, out
    finally:
        assert impostor.close() == 0, "the password would have gone to the TCP listener"


def test_a_ca_file_another_user_could_change_is_refused(tmp_path, monkeypatch):
    """sslrootcert decides whom libpq's verify-full takes, and libpq reads it again at every connection: a CA in a
    folder of uid 4242's, a CA file of theirs, one they may write, one not there yet in a folder anyone may write
    (sticky or not), a relative one from a folder of theirs, PGSSLROOTCERT naming theirs: refused, each naming the
    file. (uid 4242's own CA there made libpq take their server and send it the password.) Root's CA in root's
    folders, or in the sticky /tmp, and sslrootcert=system (root's store) are taken."""
    for name in LIBPQ_ENV:
        monkeypatch.delenv(name, raising=False)
    tcp = "postgresql+psycopg://rf@db.internal:5432/rf?sslmode=verify-full"

    def refused(url: str) -> str:
        return " ".join(str(p) for p in database_problems(url, mode="prod", plain_ok=False))

    theirs = _theirs(tmp_path / "theirs")
    (theirs / "ca.pem").write_bytes(b"uid 4242's CA")
    assert f"the folder {theirs} belongs to user id {OTHER}" in refused(f"{tcp}&sslrootcert={theirs}/ca.pem")
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    (mine / "ca.pem").write_bytes(b"root's CA")
    assert not refused(f"{tcp}&sslrootcert={mine}/ca.pem")
    assert not refused(f"{tcp.replace('verify-full', 'verify-ca')}&sslrootcert={mine}/ca.pem")
    (mine / "ca.pem").chmod(0o666)
    assert "may be written by other users (mode 0666)" in refused(f"{tcp}&sslrootcert={mine}/ca.pem")
    (mine / "ca.pem").chmod(0o644)
    os.chown(mine / "ca.pem", OTHER, OTHER)
    assert f"belongs to user id {OTHER}" in refused(f"{tcp}&sslrootcert={mine}/ca.pem")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert "is not there, and other users may make it" in refused(f"{tcp}&sslrootcert={sticky}/ca.pem")
    (sticky / "roots.pem").write_bytes(b"root's CA in a sticky folder")
    assert not refused(f"{tcp}&sslrootcert={sticky}/roots.pem")  # only root may replace root's file there
    monkeypatch.chdir(theirs)
    assert f"belongs to user id {OTHER}" in refused(f"{tcp}&sslrootcert=ca.pem")  # ./ca.pem: the current folder's
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGSSLROOTCERT", str(theirs / "ca.pem"))
    assert f"sslrootcert {theirs}/ca.pem" in refused(tcp)
    monkeypatch.delenv("PGSSLROOTCERT")
    assert not refused(f"{tcp}&sslrootcert=system")
    monkeypatch.setenv("RINGFENCE_MODE", "prod")  # and the command line says it: exit 2, nothing connected
    impostor = Impostor(socket.AF_INET, ("127.0.0.1", 0))
    try:
        url = (f"postgresql+psycopg://rf:hunter2-secret@localhost:{impostor.sock.getsockname()[1]}/rf?sslmode=verify-full"
               f"&sslrootcert={theirs}/ca.pem")
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": url}, tmp_path)
        out = said(proc)
        assert proc.returncode == 2 and "error: RINGFENCE_DATABASE_URL: verifies the server's certificate" in out, out
        assert "hunter2" not in out, out
    finally:
        assert impostor.close() == 0


def test_a_service_file_another_user_could_change_or_ldap_is_refused(tmp_path, monkeypatch):
    """A service (`service=NAME`) is looked up at every connection: in a pg_service.conf another user may write
    (PGSERVICEFILE in a folder of uid 4242's, or PGSYSCONFDIR's), what the check saw could become their server the
    next time the pool connects; a definition in LDAP is asked over the network, by the probe itself too, before
    any check (an LDAP listener got a connection). Both refused outside dev mode, the LDAP listener never
    connected to; root's service file naming the machine's socket directory is taken and migrates."""
    for name in LIBPQ_ENV:
        monkeypatch.delenv(name, raising=False)
    theirs = _theirs(tmp_path / "theirs")
    (theirs / "pg_service.conf").write_text("[rf]\nhost=/var/run/postgresql\n")
    monkeypatch.setenv("PGSERVICEFILE", str(theirs / "pg_service.conf"))
    problems = database_problems("postgresql+psycopg:///rf?service=rf", mode="prod", plain_ok=False)
    assert len(problems) == 1 and "names the PostgreSQL service rf, and the service file" in str(problems[0]), problems
    assert f"belongs to user id {OTHER}" in str(problems[0])
    monkeypatch.setenv("PGSERVICE", "rf")  # named by the environment instead
    assert database_problems("postgresql+psycopg:///rf", mode="prod", plain_ok=False)
    monkeypatch.delenv("PGSERVICE")
    monkeypatch.delenv("PGSERVICEFILE")
    monkeypatch.setenv("PGSYSCONFDIR", str(theirs))  # the system-wide file, consulted when the user's has no [rf]
    assert f"belongs to user id {OTHER}" in str(database_problems("postgresql+psycopg:///rf?service=rf", mode="prod",
                                                                  plain_ok=False)[0])
    monkeypatch.delenv("PGSYSCONFDIR")

    ldap = Impostor(socket.AF_INET, ("127.0.0.1", 0))
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    try:
        (mine / "pg_service.conf").write_text(
            f"[rf]\nldap://127.0.0.1:{ldap.sock.getsockname()[1]}/dc=example?description?one?(cn=rf)\n")
        monkeypatch.setenv("PGSERVICEFILE", str(mine / "pg_service.conf"))
        problems = database_problems("postgresql+psycopg:///rf?service=rf", mode="prod", plain_ok=False)
        assert len(problems) == 1 and "is looked up in LDAP (ldap://127.0.0.1:" in str(problems[0]), problems
    finally:
        assert ldap.close() == 0, "the probe asked LDAP before any check"
    with pg_database() as url:
        name = url.rsplit("/", 1)[1]
        (mine / "pg_service.conf").write_text(f"[rf]\nhost=/var/run/postgresql\ndbname={name}\nuser=postgres\n")
        proc = rf(["identity", "migrate"], {**PROD, "RINGFENCE_DATABASE_URL": "postgresql+psycopg:///?service=rf",
                                            "PGSERVICEFILE": str(mine / "pg_service.conf")}, tmp_path)
        assert proc.returncode == 0 and "identity schema is at head" in said(proc), said(proc)
        assert "identity_users" in tables(url)


def test_pg_dump_takes_the_ca_files_this_process_takes_never_one_in_its_current_folder(tmp_path, tls_cluster,
                                                                                       monkeypatch):
    """backup's pg_dump runs with the machine's libpq (15 here), the prod check asks psycopg's (18): an older one
    reads sslrootcert=system as the file ./system, so run from a folder holding another CA's certificate there,
    pg_dump took the server that CA signed (and sent it the password). It runs in / now, its file parameters made
    absolute as this process reads them: ./system is never its CA; a relative sslrootcert still names this
    folder's file, as it does for psycopg."""
    from ringfence.backup import _pg
    from ringfence.errors import ConfigError

    port, folder, present = tls_cluster["port"], tls_cluster["folder"], tls_cluster["present"]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(folder / "impostor.pem", work / "system")  # the server presents the impostor CA's certificate
    monkeypatch.chdir(work)
    url = f"postgresql+psycopg://postgres:hunter2-secret@localhost:{port}/postgres?sslmode=verify-full"
    with pytest.raises(ConfigError) as err:
        _pg("pg_dump", url + "&sslrootcert=system", ["--schema-only", "--file", str(work / "dump.sql")])
    assert "pg_dump failed" in str(err.value) and "hunter2" not in str(err.value), err.value
    assert not (work / "dump.sql").exists()
    present("ours")
    shutil.copy(folder / "ours.pem", work / "ours.pem")
    _wait_for_reload(f"postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={work}/ours.pem",
                     None)
    _pg("pg_dump", url + "&sslrootcert=ours.pem", ["--schema-only", "--file", str(work / "dump.sql")])
    assert "PostgreSQL database dump" in (work / "dump.sql").read_text()
