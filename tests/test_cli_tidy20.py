"""Session 20's tidy list, each as a user meets it: a real `ringfence` process, its output and exit code.

* `journal sources --from-seq N` past the journal's end says so (it printed nothing at all);
* a mistyped `--data` is refused instead of becoming a tree of new folders (the quick start's
  `./ringfence-data/serve` in a fresh clone still works);
* `monitoring backtest/export --data` answer a missing or wrong data directory, and a bad database URL,
  as the other commands do (`cli_paths`: one `error:` line naming the option, exit 2).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ringfence ARGS` as a process of this checkout's sources, no RINGFENCE_ variable of the caller's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    base.update(PYTHONPATH=SRC, COLUMNS="300", **(env or {}))
    return subprocess.run(RINGFENCE + list(args), capture_output=True, text=True, cwd=cwd, env=base, timeout=300,
                          stdin=subprocess.DEVNULL)


def _node_with_commands(path: Path, n: int) -> None:
    """A node directory whose journal holds `n` commands (n=0: an opened node, nothing journaled)."""
    from ringfence.app import new_node
    from ringfence.ledger.commands import OpenAccount, RegisterAsset

    node = new_node(path)
    node.open()
    try:
        commands = [RegisterAsset("BTC", 8, "crypto", "bitcoin")] + [OpenAccount(f"u{i}", "BTC") for i in range(n - 1)]
        for command in commands[:n]:
            node.execute(command)
    finally:
        node.close()


def test_journal_sources_past_the_end_says_where_the_journal_ends(tmp_path):
    _node_with_commands(tmp_path / "n", 3)
    listed = run("journal", "sources", str(tmp_path / "n"), "--from-seq", "2")
    assert listed.returncode == 0 and [line[:9] for line in listed.stdout.splitlines()] == ['{"seq": 2', '{"seq": 3'], listed
    assert listed.stderr == ""
    for past in ("4", "1000"):
        out = run("journal", "sources", str(tmp_path / "n"), "--from-seq", past)
        # exit 0 as `journal verify` of an empty journal; stdout stays JSON lines only (callers parse every line)
        assert out.returncode == 0 and out.stdout == "", out
        assert f"no commands from sequence {int(past):,}: the journal ends at 3" in out.stderr, out
    _node_with_commands(tmp_path / "empty", 0)
    out = run("journal", "sources", str(tmp_path / "empty"))
    assert out.returncode == 0 and out.stdout == "", out
    assert "no commands from sequence 1: the journal is empty" in out.stderr, out


@pytest.mark.parametrize("command", [["export", "--out", "{tmp}/out.jsonl"], ["backtest"],
                                     ["deidentify", "--key-file", "{tmp}/pseudo.key", "--new-key", "--out", "{tmp}/out.jsonl"]])
def test_monitoring_opens_the_store_as_every_command_does(tmp_path, command):
    """`monitoring export/backtest/deidentify` opened the store by hand: `error (--data): no store at ...` with
    exit 1, after export had created its --out file; now one `error:` line naming the option, exit 2, nothing
    written, as `identity`, `staff login` and `serve` answer (cli_paths.open_store)."""
    args = ["monitoring", *[a.replace("{tmp}", str(tmp_path)) for a in command]]
    bare = tmp_path / "bare"
    bare.mkdir()
    postgres_node = tmp_path / "pg"
    postgres_node.mkdir()
    (postgres_node / "identity-store.json").write_text('{"dialect": "postgresql", "url": "postgresql+psycopg://rf:***@db.example:5432/rf"}')
    cases = [
        (["--data", str(tmp_path / "missing")], {}, f"error: --data: {tmp_path / 'missing'} does not exist"),
        (["--data", str(bare)], {}, f"error: --data: {bare} holds no identity store (identity.sqlite3)"),
        (["--data", str(postgres_node)], {}, "error: --data: the node keeps its users and API keys in PostgreSQL "
                                            "(postgresql+psycopg://rf:***@db.example:5432/rf), its event stream too; set "
                                            "--database-url or RINGFENCE_DATABASE_URL to that database"),
        (["--database-url", "mysql://rf:secret@127.0.0.1/rf"], {}, "error: --database-url: must be a sqlite:/// or postgresql+psycopg:// URL"),
        ([], {"RINGFENCE_DATABASE_URL": "postgres://rf:secret@127.0.0.1/rf"},
         "error: RINGFENCE_DATABASE_URL: must be a sqlite:/// or postgresql+psycopg:// URL"),
        (["--database-url", "postgresql+psycopg://rf:secret@127.0.0.1:1/rf"], {}, "error: --database-url: cannot open the database"),
    ]
    for extra, env, says in cases:
        out = run(*args, *extra, env=env, cwd=tmp_path)
        text = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == 2 and says in text, (extra, text)
        assert "Traceback" not in text and "secret" not in text, text
        assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "pseudo.key").exists(), extra
    assert not (tmp_path / "missing").exists()


def test_monitoring_export_reads_a_servers_data_directory(tmp_path):
    from ringfence.store import Store

    Store.from_url(f"sqlite:///{tmp_path / 'd' / 'identity.sqlite3'}")  # what serve --data d makes
    out = run("monitoring", "export", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s.jsonl"))
    assert out.returncode == 0 and "0 events written" in out.stdout, out


#: every command that makes a data directory through cli_paths (prepare_data_dir / prepare_node_dir)
MAKERS = [
    ["serve", "--data", "{dir}", "--port", "{port}"],
    ["demo", "--data", "{dir}"],
    ["sim", "--seed", "1", "--steps", "5", "--data", "{dir}"],
    ["trading", "demo", "--data", "{dir}"],
    ["custody", "demo", "--no-hsm", "--data", "{dir}"],
    ["staff", "init", "--data", "{dir}", "--member", "ada:operator", "--member", "ben:operator", "--out-dir", "{tmp}/keys"],
]


@pytest.mark.parametrize("command", MAKERS, ids=lambda c: " ".join(c[:2]))
def test_a_mistyped_data_path_is_refused_not_made(tmp_path, command):
    """`serve --data /srv/ringfnce/node1` made /srv/ringfnce and started an empty exchange there. The data
    directory itself is still made, but not a missing folder above it (outside the current directory):
    one line naming --data and the missing parent, exit 2, nothing created."""
    from api.conftest import free_port

    typo = tmp_path / "ringfnce" / "deeper" / "node1"
    args = [a.replace("{dir}", str(typo)).replace("{tmp}", str(tmp_path)).replace("{port}", str(free_port())) for a in command]
    (tmp_path / "cwd").mkdir()  # run elsewhere: inside the current directory, missing folders are made
    out = run(*args, cwd=tmp_path / "cwd")
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text
    assert f"--data: {typo.parent} does not exist (nor does {tmp_path / 'ringfnce'})" in text, text
    assert f"mkdir -p {typo.parent}" in text and "Traceback" not in text, text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cwd"], "a refused command made folders"


def test_inside_the_current_directory_is_where_the_path_leads_not_how_it_is_written(tmp_path):
    """Fresh-eyes review of s20: `new/x` was made but `$PWD/new/x` and `../cwd/new/x` (the same place) refused; a
    symlink in the current directory leading out let folders be made outside it; `--data=~/rf/node` (bash expands no
    ~ after --opt=) made ./~/rf/node. Now the existing part of the path is resolved, and a leading ~ is refused."""
    cwd, outside = tmp_path / "cwd", tmp_path / "outside"
    cwd.mkdir()
    outside.mkdir()
    (cwd / "link").symlink_to(outside)
    sim = ["sim", "--seed", "1", "--steps", "5", "--data"]
    for same_place in (str(cwd / "new" / "x"), "../cwd/new2/x"):
        out = run(*sim, same_place, cwd=cwd)
        assert out.returncode == 0 and (cwd / same_place).is_dir(), out
    out = run(*sim, "link/new/x", cwd=cwd)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2 and "--data: " in text and "does not exist" in text and "Traceback" not in text, text
    assert list(outside.iterdir()) == [], "folders made outside the current directory through a symlink"
    out = run(*sim[:-1], "--data=~/rf/node", cwd=cwd)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2 and "--data: ~/rf/node starts with ~, which the shell did not expand" in text, text
    assert not (cwd / "~").exists()


def test_a_new_data_directory_in_an_existing_folder_and_the_quick_starts_relative_path_still_work(tmp_path):
    """The data directory itself is made; so are the folders of a relative path inside the current directory:
    the README's `serve --demo --data ./ringfence-data/serve` and `make demo`'s ./ringfence-data/demo in a
    fresh clone, where ./ringfence-data is not there (it is git-ignored)."""
    import time

    import httpx

    from api.conftest import ARGON2_TEST_COST, NO_CHAINS, free_port

    out = run("sim", "--seed", "1", "--steps", "5", "--data", str(tmp_path / "new"))
    assert out.returncode == 0 and (tmp_path / "new").is_dir(), out
    clone = tmp_path / "clone"
    clone.mkdir()
    out = run("demo", "--data", "./ringfence-data/demo", cwd=clone)
    assert out.returncode == 0 and "replay matches" in out.stdout, out.stdout[-2000:] + out.stderr
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    env.update(PYTHONPATH=SRC, **NO_CHAINS, **ARGON2_TEST_COST)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(RINGFENCE + ["serve", "--demo", "--data", "./ringfence-data/serve", "--port", str(port)],
                            cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "serve did not answer /readyz; reproduce: cd a new folder and run ringfence " \
                                           "serve --demo --data ./ringfence-data/serve"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert (clone / "ringfence-data" / "serve" / "engine" / "journal").is_dir()
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def test_node_key_makes_the_data_directory_serve_would_make(tmp_path):
    """Fresh-eyes review of s20: in a fresh clone `replication node-key --data ./ringfence-data/serve` refused (a
    parent rule of its own) while `serve --data ./ringfence-data/serve` makes it; now both follow cli_paths."""
    (tmp_path / "clone").mkdir()
    out = run("replication", "node-key", "--data", "./ringfence-data/serve", "--node-id", "a", cwd=tmp_path / "clone")
    assert out.returncode == 0 and out.stdout.startswith('{"a": "'), out
    assert (tmp_path / "clone" / "ringfence-data" / "serve" / "node.key").is_file()
    (tmp_path / "cwd").mkdir()
    typo = tmp_path / "ringfnce" / "node1"
    out = run("replication", "node-key", "--data", str(typo / "a"), "--node-id", "a", cwd=tmp_path / "cwd")
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2 and f"--data: {typo} does not exist (nor does {tmp_path / 'ringfnce'})" in text, text
    assert not (tmp_path / "ringfnce").exists()


def test_staff_init_checks_its_out_dir_before_making_anything(tmp_path):
    """Fresh-eyes review of s20: `staff init --out-dir /etc/passwd/keys` made DIR/engine, then ended in a
    NotADirectoryError traceback. --out-dir is checked first: one `error:` line naming it, exit 2, nothing made."""
    (tmp_path / "cwd").mkdir()
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    cases = [(a_file / "keys", f"--out-dir: {a_file / 'keys'} cannot be a folder ({a_file} is a file)"),
             (a_file, f"--out-dir: {a_file} cannot be a folder"),
             (tmp_path / "kyes" / "deeper" / "keys", f"--out-dir: {tmp_path / 'kyes' / 'deeper'} does not exist (nor does "
              f"{tmp_path / 'kyes'}): the key files' folder is made only in a folder that exists")]
    for out_dir, says in cases:
        out = run("staff", "init", "--data", str(tmp_path / "node"), "--member", "ada:operator", "--member", "ben:operator",
                  "--out-dir", str(out_dir), cwd=tmp_path / "cwd")
        text = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == 2 and f"error: {says}" in text and "Traceback" not in text, text
        assert "data directory" not in text, text  # (it said "a data directory is made only in..." of the key files' folder)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "passwd"], "a refused staff init made folders"


def test_monitoring_speaks_as_every_command_and_a_bad_url_is_one_line(tmp_path):
    """Fresh-eyes review of s20: `monitoring export --from garbage` said `error (--from): ...` exit 1 where --data said
    `error: --data: ...` exit 2; `backtest --events /nonexist` was a FileNotFoundError traceback; a database URL
    SQLAlchemy cannot read (a port that is not a number) a ValueError traceback, in every command opening the store."""
    out = run("monitoring", "export", "--from", "garbage", "--out", str(tmp_path / "o.jsonl"), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: --from: must be an ISO 8601 time"), out
    out = run("monitoring", "backtest", "--events", str(tmp_path / "nonexist.jsonl"), cwd=tmp_path)
    assert out.returncode == 2 and f"error: --events: {tmp_path / 'nonexist.jsonl'} does not exist" in out.stderr, out
    url = "postgresql+psycopg://rf:s3cret@127.0.0.1:badport/rf"
    shown = "cannot read the URL postgresql+psycopg://rf:***@127.0.0.1:badport/rf"
    for args, env, says in [(["monitoring", "backtest", "--database-url", url], {}, f"error: --database-url: {shown}"),
                            (["monitoring", "export", "--out", str(tmp_path / "o.jsonl")], {"RINGFENCE_DATABASE_URL": url},
                             f"error: RINGFENCE_DATABASE_URL: {shown}"),
                            (["identity", "migrate"], {"RINGFENCE_DATABASE_URL": url}, f"error: RINGFENCE_DATABASE_URL: {shown}")]:
        out = run(*args, env=env, cwd=tmp_path)
        text = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == 2 and says in text, (args, text)
        assert "Traceback" not in text and "s3cret" not in text, text
    assert not (tmp_path / "o.jsonl").exists()


def test_monitoring_finds_a_nodes_store_as_backup_does(tmp_path):
    """Fresh-eyes review of s20: monitoring repeated backup's lookup of where a node keeps its store, without its
    DIR/engine handling or its check that a PostgreSQL URL names the node's database. One function now
    (store.node_identity_store): `--data DIR/engine` reads DIR's store; another database is refused before any
    connection is tried."""
    from ringfence.store import Store

    Store.from_url(f"sqlite:///{tmp_path / 'd' / 'identity.sqlite3'}")  # what serve --data d makes
    (tmp_path / "d" / "engine").mkdir()
    out = run("monitoring", "export", "--data", str(tmp_path / "d" / "engine"), "--out", str(tmp_path / "s.jsonl"))
    assert out.returncode == 0 and "0 events written" in out.stdout, out
    pg = tmp_path / "pg"
    pg.mkdir()
    (pg / "identity-store.json").write_text('{"dialect": "postgresql", "url": "postgresql+psycopg://rf:***@db.example:5432/rf"}')
    out = run("monitoring", "backtest", "--data", str(pg), "--database-url", "postgresql+psycopg://rf:s3cret@127.0.0.1:1/other")
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2 and "error: --database-url: names another database than the node's" in text, text
    assert "s3cret" not in text and "Traceback" not in text, text
