"""One data directory, two real processes: a running `serve` and the CLI next to it.

A second writer (`reconcile lift`, `reconcile run`) is refused with the server's pid and writes
nothing; read-only commands (`journal verify/replay`, `reconcile status`, `por snapshot`) work while
the server runs, take the same DIR `serve --data` takes, and never change a byte of the journal.
Set-ups (`demo`) and some read-only checks run the same command code in the test's own process (`here`),
still another process than the server's; every writer the lock must refuse is a real process.
Reproduce by hand: `ringfence serve --demo --data D &` then `ringfence reconcile lift D x --reason r --approval a:b`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import string
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from api.conftest import ARGON2_TEST_COST, NO_CHAINS

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(RINGFENCE + list(args), capture_output=True, text=True, timeout=300)


def here(*args: str) -> subprocess.CompletedProcess[str]:
    """`run` in this process (typer's runner: the same command code without an interpreter start-up), for the
    set-ups and read-only checks beside the real processes each test is about; an exception the command let
    out fails the test."""
    from typer.testing import CliRunner

    from ringfence.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def journal_digest(node_dir: Path) -> str:
    h = hashlib.sha256()
    for seg in sorted((node_dir / "journal").glob("*.rfj")):
        h.update(seg.name.encode() + seg.read_bytes())
    return h.hexdigest()


def start_serve(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(data.parent / f"serve-{port}.log", "w")
    proc = subprocess.Popen(RINGFENCE + ["serve", "--demo", "--data", str(data), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, RINGFENCE_RECONCILE_EVERY_MS="600000",
                                                                                   # the demo's index feed would journal every second
                                                                                   RINGFENCE_DEMO_FEED="0",
                                                                                   # one server serves several tests: no proof
                                                                                   # after the first (DIR/por/<n>/ would be new
                                                                                   # files) and no shield sweep in the journal
                                                                                   RINGFENCE_POR_EVERY_S="0",
                                                                                   RINGFENCE_SHIELD_SWEEP_EVERY_S="3600",
                                                                                   # as every test server: no custody chains
                                                                                   # (no test here uses one; they cost a
                                                                                   # loaded start most of its 90 s) and dev
                                                                                   # mode's least password-hash cost
                                                                                   **NO_CHAINS, **ARGON2_TEST_COST))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("serve did not become ready; reproduce with: ringfence serve --demo --data " + str(data))


class Serving:
    """The module's `serve --demo` (one start for the tests below instead of one each); `running()`
    starts it again if a test stopped it."""

    def __init__(self, root: Path) -> None:
        self.root, self.n = root, 0
        self.proc: subprocess.Popen[bytes] | None = None

    def running(self) -> tuple[subprocess.Popen[bytes], str, Path]:
        if self.proc is None or self.proc.poll() is not None:
            self.n += 1
            self.data = self.root / f"run{self.n}" / "data"
            self.data.parent.mkdir(parents=True)
            self.proc, self.base = start_serve(self.data)
        return self.proc, self.base, self.data

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    holder = Serving(tmp_path_factory.mktemp("serving"))
    yield holder
    assert holder.stop() in (0, None), "the server did not shut down cleanly on SIGTERM"


def test_ambiguous_or_foreign_directories_are_refused_by_name(tmp_path):
    (tmp_path / "both" / "journal").mkdir(parents=True)
    (tmp_path / "both" / "engine" / "journal").mkdir(parents=True)
    out = here("journal", "verify", str(tmp_path / "both"))
    assert out.returncode == 2 and "name the one you mean" in " ".join(out.stderr.split())
    (tmp_path / "empty").mkdir()
    out = here("reconcile", "status", str(tmp_path / "empty"))
    assert out.returncode == 2 and "engine/journal" in " ".join(out.stderr.split())


def test_demo_never_deletes_a_directory_another_writer_holds(tmp_path):
    from ringfence.journal.journal import DataDirLock

    data = tmp_path / "demo"
    assert here("demo", "--data", str(data), "--seed", "2").returncode == 0
    before = journal_digest(data)
    lock = DataDirLock(data, "a test holding the demo's journal")
    try:
        again = run("demo", "--data", str(data), "--seed", "2")
        assert again.returncode == 1 and f"pid {os.getpid()}" in " ".join(again.stderr.split()), again.stderr
        assert journal_digest(data) == before  # not deleted, not rewritten
    finally:
        lock.release()
    assert here("demo", "--data", str(data), "--seed", "2").returncode == 0


def listing(root: Path) -> set[str]:
    """Every path under root, less SQLite's own transient files (the running server makes and drops those)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(("-journal", "-wal", "-shm"))}


def lasting(root: Path, before: set[str], looks: int = 5) -> set[str]:
    """Paths not in before that stay: the running server's own atomic writes (chains/bitcoin.json.tmp,
    replaced by a rename as each block is mined) come and go, and CI once caught one mid-write. A path
    a refused writer made stays, so it is in every one of several listings a little apart."""
    created = listing(root) - before
    for _ in range(looks - 1):
        if not created:
            break
        time.sleep(0.2)
        created &= listing(root)
    return created


WRITERS_BESIDE_SERVE = {
    # found against a real server: it wrote DIR/LOCK and DIR/journal beside DIR/engine, so
    # `journal verify DIR` then exited 2 ("holds both journal/ and engine/journal/")
    "trading demo --data DIR": lambda data: ["trading", "demo", "--data", str(data)],
    # it started a second server nested in the live node (DIR/engine/engine/journal, identity.sqlite3, ...)
    "serve --data DIR/engine": lambda data: ["serve", "--demo", "--data", str(data / "engine"), "--port", str(free_port())],
    # it was refused, but for the wrong reason ("not empty and was not made by `ringfence demo`")
    "demo --data DIR": lambda data: ["demo", "--data", str(data)],
    # a folder anywhere inside the live node directory is refused too
    "trading demo --data DIR/engine/x": lambda data: ["trading", "demo", "--data", str(data / "engine" / "x")],
    "serve --data DIR/engine/journal/y": lambda data: ["serve", "--data", str(data / "engine" / "journal" / "y"), "--port", str(free_port())],
}


@pytest.mark.parametrize("case", list(WRITERS_BESIDE_SERVE))
def test_a_writer_beside_or_inside_a_running_serve_is_refused_by_pid_and_creates_nothing(serving, case):
    # one server for every case: each refused writer must leave it exactly as it found it (checked below)
    proc, base, data = serving.running()
    node = data / "engine"
    before_digest, before = journal_digest(node), listing(data)
    out = run(*WRITERS_BESIDE_SERVE[case](data))
    text = " ".join(out.stderr.split())
    assert out.returncode != 0, out.stdout[-2000:]
    assert f"is in use by pid {proc.pid}" in text and "was not made by" not in text, out.stderr
    created = lasting(data, before)
    assert not created, f"{case} created {sorted(created)}"
    for made in ("LOCK", "journal", "engine/engine", "engine/identity.sqlite3", "engine/x", "engine/journal/y"):
        assert not (data / made).exists(), made
    assert journal_digest(node) == before_digest
    verify = here("journal", "verify", str(data))  # read-only, beside the server (a real process below)
    assert verify.returncode == 0 and "journal: OK" in verify.stdout, verify.stdout + verify.stderr
    assert httpx.get(base + "/readyz", timeout=5).status_code == 200


def test_a_node_is_never_opened_inside_or_beside_another(tmp_path):
    """The engine refuses on its own (library callers, not only the CLI), before creating anything."""
    from ringfence.app import new_node
    from ringfence.errors import DataDirLocked, RingfenceError

    outer = tmp_path / "outer"
    with new_node(outer) as node:
        before = listing(tmp_path)
        with pytest.raises(DataDirLocked) as held:
            new_node(outer / "inner").open()
        assert held.value.details["holder_pid"] == os.getpid() and "inside the node directory" in str(held.value)
        assert listing(tmp_path) == before and not (outer / "inner").exists()
        assert node.engine is not None
    with pytest.raises(RingfenceError, match="inside the node directory"):
        new_node(outer / "a" / "b").open()  # not running: still refused
    serve_dir = tmp_path / "serve"
    (serve_dir / "engine" / "journal").mkdir(parents=True)
    with pytest.raises(RingfenceError, match="serve"):
        new_node(serve_dir).open()
    assert not (serve_dir / "LOCK").exists() and not (serve_dir / "journal").exists()
    assert not (outer / "a").exists()


def test_reconcile_lift_names_the_field_once(tmp_path):
    from ringfence.journal.journal import DataDirLock

    node = tmp_path / "node"
    assert here("demo", "--data", str(node), "--seed", "1").returncode == 0
    lock = DataDirLock(node, "a test holding the lock")
    try:
        lift = run("reconcile", "lift", str(node), "rc.any", "--reason", "r", "--approval", "op1:" + "ab" * 16 + ":1:" + "ab" * 64)
    finally:
        lock.release()
    text = " ".join(lift.stderr.split())
    assert lift.returncode == 1 and f"pid {os.getpid()}" in text and "data_dir: data_dir" not in text, lift.stderr


def test_second_writer_is_refused_while_serve_runs_and_readers_use_the_serve_dir(serving, tmp_path):
    # last in the file: it stops the module's server to show that the lock dies with it
    proc, base, data = serving.running()
    try:
        node = data / "engine"
        lock = (node / "LOCK").read_text()
        assert lock.split("\n")[0] == str(proc.pid) and "serve" in lock
        before = journal_digest(node)

        for target in (data, node):  # the serve DIR and the node folder name the same journal
            lift = run("reconcile", "lift", str(target), "rc.any", "--reason", "r", "--approval", "op1:" + "ab" * 16 + ":1:" + "ab" * 64)
            assert lift.returncode != 0, lift.stdout
            assert f"pid {proc.pid}" in lift.stderr and "lifted" not in lift.stdout, lift.stderr
        rec = run("reconcile", "run", str(data))
        assert rec.returncode != 0 and f"pid {proc.pid}" in rec.stderr, rec.stderr + rec.stdout
        assert journal_digest(node) == before, "a refused writer changed the journal"

        # read-only commands: no lock, no change, the same DIR serve takes
        verify = run("journal", "verify", str(data))
        assert verify.returncode == 0 and "journal: OK" in verify.stdout, verify.stdout + verify.stderr
        assert here("journal", "verify", str(node)).returncode == 0  # the node folder's name: in this process
        replay = here("journal", "replay", str(data))
        assert replay.returncode == 0 and "replay: OK" in replay.stdout, replay.stderr
        status = here("reconcile", "status", str(data))
        assert status.returncode == 0 and "sequence" in status.stdout, status.stderr
        snap = run("por", "snapshot", "--data", str(data), "--out", str(tmp_path / "snap.json"))
        assert snap.returncode == 0 and (tmp_path / "snap.json").is_file(), snap.stderr
        assert journal_digest(node) == before

        # the server is unharmed and still accepts commands
        assert httpx.get(base + "/readyz", timeout=5).status_code == 200
    finally:
        assert serving.stop() == 0
    # the lock died with the server: a writer may now open the directory, by either name
    after = run("reconcile", "run", str(data), "--no-halt")
    assert after.returncode in (0, 3), after.stderr
    assert here("journal", "verify", str(data)).returncode == 0


def test_the_lock_file_never_holds_a_url_password_or_token(tmp_path):
    """Intruder review, session 19 (F2): the LOCK file kept the holder's whole command line, and with
    it `--replicate nats://user:PASSWORD@…`; every refused second writer printed it. Credentials in
    any URL are now hidden when the line is written, and when an older file's line is read."""
    from ringfence.errors import DataDirLocked
    from ringfence.journal.journal import LOCK_FILE, DataDirLock, lock_holder

    node = tmp_path / "node"
    node.mkdir()
    purpose = "ringfence serve --replicate nats://rfu:LOCKPW_SECRET@127.0.0.1:4222/S --standby tls://TOKSECRET@h:1"
    lock = DataDirLock(node, purpose)
    try:
        text = (node / LOCK_FILE).read_text()
        assert "LOCKPW_SECRET" not in text and "TOKSECRET" not in text, text
        assert "nats://rfu:***@127.0.0.1:4222/S" in text and "tls://***@h:1" in text, text
        with pytest.raises(DataDirLocked) as refused:
            DataDirLock(node, "a second writer")
        assert "rfu:***@" in str(refused.value) and "LOCKPW_SECRET" not in str(refused.value)
    finally:
        lock.release()
    (node / LOCK_FILE).write_text(f"{os.getpid()}\nserve --replicate nats://u:OLDPW@host:4222/S\n")  # an older holder's line
    fd = os.open(node / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        who, pid = lock_holder(node) or ("", None)
        assert pid == os.getpid() and "OLDPW" not in who and "u:***@host" in who, who
    finally:
        os.close(fd)


@given(user=st.text(alphabet=string.ascii_letters + string.digits + "-_.%", min_size=1, max_size=12),
       secret=st.text(alphabet=string.ascii_letters + string.digits + "-_.~%!$&'()*+,;=@", min_size=1, max_size=24),
       scheme=st.sampled_from(["nats", "tls", "postgresql+psycopg", "redis", "s3"]),
       before=st.text(alphabet=string.ascii_letters + " =-", max_size=10))
@settings(max_examples=200, deadline=None)
def test_without_credentials_hides_every_password_and_token_and_keeps_the_rest(user, secret, scheme, before):
    from ringfence.errors import without_credentials

    for url, kept in ((f"{scheme}://{user}:{secret}@host:4222/S?x=1", f"{scheme}://{user}:***@host:4222/S?x=1"),
                      (f"{scheme}://{secret}@host:4222", f"{scheme}://***@host:4222")):
        out = without_credentials(f"{before} {url} tail")
        assert out == f"{before} {kept} tail"
    plain = f"{before} {scheme}://host:4222/{user}"
    assert without_credentials(plain) == plain


#: any character a word of a command line can hold (ASCII whitespace ends the word, and the URL with
#: it; a shell does not split at a no-break space)
_WORD_CHARS = st.characters(blacklist_categories=("Cs",)).filter(lambda c: c not in " \t\n\r\f\v")


@given(user=st.text(alphabet=string.ascii_letters + string.digits + "-_.%", min_size=1, max_size=12),
       password=st.text(alphabet=_WORD_CHARS, min_size=4, max_size=30)
       | st.builds("".join, st.lists(st.sampled_from(["/", "@", ":", "?", "#", ",", "//", "://", "ab", "x", "%2F", "\xa0"]),
                                     min_size=2, max_size=12)),
       scheme=st.sampled_from(["nats", "tls", "postgresql+psycopg", "redis"]),
       rest=st.sampled_from(["host:4222/S?x=1", "h", "[::1]:5432/db", "db.example:5432/x#frag", "h1:4222,nats://h2:4222"]),
       before=st.text(alphabet=string.ascii_letters + " =-", max_size=10))
@settings(max_examples=500, deadline=None)
def test_without_credentials_hides_any_password_whole(user, password, scheme, rest, before):
    """Whatever a password holds (a raw `/`, `@`, `:`, `?`, `#`; session 21: `u:pa/ss@host` showed
    `pa/ss`), the line never shows it; and but for a password holding `,scheme://` (read as the start of
    the next URL of a list) the line is exactly the one with `***` in its place."""
    from ringfence.errors import without_credentials

    hidden = f"{before} {scheme}://{user}:***@{rest} tail"
    assume(len(password) >= 4 and password not in hidden)  # (else the rest of the line shows it anyway)
    out = without_credentials(f"{before} {scheme}://{user}:{password}@{rest} tail")
    assert password not in out
    if not re.search(r",[A-Za-z][A-Za-z0-9+.-]*://", password):
        assert out == hidden
    if ":" not in password:  # a token alone (nats-py sends a user name without a password as one)
        token = without_credentials(f"{before} {scheme}://{password}@{rest} tail")
        assert password not in token


def test_without_credentials_takes_linear_time_on_a_word_of_many_schemes():
    """A word of many `x://` with no `@` after them was tried from each to its end, twice (a password
    may hold `/`, `@`, `,x://`): 20,000 characters took 9 s, quadratic (fresh-eyes review, session 21).
    The text may come from elsewhere (a NATS server's error, an older lock file's line)."""
    from ringfence.errors import without_credentials

    for word in ("a://" * 8_000, "nats://" + ",a://" * 6_000, "a." * 15_000 + "://x", "b://@" + "a://" * 8_000):
        started = time.perf_counter()  # float-ok: seconds
        out = without_credentials(f"x {word} y")
        assert time.perf_counter() - started < 2, word[:20]  # float-ok: seconds (ms now; 10 s and more before)
        assert out.endswith(" y") and out.count("@") <= word.count("@")
    assert without_credentials("b://u:pw@" + "a://" * 8_000) == "b://u:***@" + "a://" * 8_000


@pytest.mark.parametrize("space", ["\xa0", "\u2003", "\u3000", "\x1c"])
def test_a_password_holding_a_unicode_space_is_hidden_in_the_line_and_the_lock_file(tmp_path, space):
    """A shell splits a command line at ASCII whitespace only: a password may hold a no-break space.
    `\\s` took it for the end of the word (the password shown), and the lock file's line was re-spaced
    (str.split) before its URLs were hidden, cutting the URL there."""
    from ringfence.errors import without_credentials
    from ringfence.journal.journal import LOCK_FILE, DataDirLock

    secret = f"PW{space}SECRET"
    assert without_credentials(f"serve --replicate nats://rfu:{secret}@h:4222/S") == "serve --replicate nats://rfu:***@h:4222/S"
    node = tmp_path / "node"
    node.mkdir()
    lock = DataDirLock(node, f"ringfence serve --replicate nats://rfu:{secret}@127.0.0.1:4222/S")
    try:
        text = (node / LOCK_FILE).read_text()
        assert "PW" not in text and "SECRET" not in text and "nats://rfu:***@127.0.0.1:4222/S" in text, text
    finally:
        lock.release()
