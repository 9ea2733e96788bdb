"""A data directory (`--data`) another local user owns or may write is refused before anything is made
in it (intruder review of session 23: uid 4242 pre-made DIR/identity.sqlite3{,-wal,-shm} 0666 and root's
`serve` adopted them; swapped DIR/engine for a folder of theirs between two starts; linked
DIR/.identity-store.json.tmp to a root file that `serve` then overwrote). The rule is owned.safe_folder's,
applied in cli_paths.prepare_data_dir / prepare_node_dir, so every command that writes `--data` has it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from ringfence.cli_paths import prepare_data_dir, prepare_node_dir

OTHER = 4242
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="plays the other user with chown (root only)")


def _refused(capsys, call, *words):
    with pytest.raises(typer.Exit) as err:
        call()
    assert err.value.exit_code == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "--data" in said and all(w in said for w in words), said
    return said


@as_root
def test_a_folder_another_user_owns_is_refused(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    os.chown(data, OTHER, OTHER)
    _refused(capsys, lambda: prepare_data_dir(data), f"belongs to user id {OTHER}")


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_folder_others_may_write_is_refused_even_sticky(tmp_path, capsys, mode):
    data = tmp_path / "d"
    data.mkdir()
    os.chmod(data, mode)  # sticky or not, others could make identity.sqlite3-wal in it before the first start
    _refused(capsys, lambda: prepare_data_dir(data), "written by other users", "chmod 700")


def test_a_symbolic_link_is_refused(tmp_path, capsys):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "d").symlink_to(tmp_path / "real")
    _refused(capsys, lambda: prepare_data_dir(tmp_path / "d"), "symbolic link", str(tmp_path / "real"))


@as_root
def test_under_a_folder_another_user_owns_nothing_is_made(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER, OTHER)  # they could swap DIR/engine (or DIR itself) between two starts
    _refused(capsys, lambda: prepare_data_dir(theirs / "d"), f"belongs to user id {OTHER}")
    assert not (theirs / "d").exists()


@as_root
@pytest.mark.parametrize("name", ["identity.sqlite3", "identity.sqlite3-wal", "identity.sqlite3-shm", "engine"])
def test_an_entry_another_user_planted_is_refused(tmp_path, capsys, name):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    planted = data / name
    planted.mkdir() if name == "engine" else planted.write_text("")
    os.chmod(planted, 0o777 if name == "engine" else 0o666)
    os.chown(planted, OTHER, OTHER)
    _refused(capsys, lambda: prepare_data_dir(data), str(planted), f"belongs to user id {OTHER}")


def test_an_engine_link_is_refused(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (data / "engine").symlink_to(tmp_path / "elsewhere")
    _refused(capsys, lambda: prepare_data_dir(data), "engine", "symbolic link")


@as_root
def test_a_node_dir_writer_checks_the_folder_typed(tmp_path, capsys):
    data = tmp_path / "d"
    (data / "engine" / "journal").mkdir(parents=True)
    os.chown(data, OTHER, OTHER)  # staff init / trading commands: DIR resolves to DIR/engine, DIR is checked too
    _refused(capsys, lambda: prepare_node_dir(data), f"belongs to user id {OTHER}")


def test_own_folders_are_taken(tmp_path, monkeypatch):
    assert prepare_data_dir(tmp_path / "new").is_dir()  # pytest's tmp_path (under the sticky /tmp)
    existing = tmp_path / "old"
    (existing / "engine").mkdir(parents=True, mode=0o755)
    (existing / "identity.sqlite3").write_text("")
    assert prepare_data_dir(existing) == existing
    monkeypatch.chdir(tmp_path)
    assert prepare_data_dir(Path("ringfence-data") / "serve").is_dir()  # `make serve`: a new folder in the clone
    assert prepare_node_dir(tmp_path / "n").is_dir()


@as_root
def test_serve_refuses_a_data_folder_another_user_owns(tmp_path):
    data = tmp_path / "d"
    data.mkdir(mode=0o777)
    os.chown(data, OTHER, OTHER)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    try:
        out = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(data), "--port", "1"],
                             capture_output=True, text=True, env=clean, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("serve started on a data folder another user owns")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--data" in out.stderr and f"user id {OTHER}" in " ".join(out.stderr.split())
    assert list(data.iterdir()) == []


@as_root
@pytest.mark.parametrize("name", ["run", "gpg", "por", "custody", "notes.txt"])
def test_any_entry_another_user_made_is_refused(tmp_path, capsys, name):
    data = tmp_path / "d"
    data.mkdir(mode=0o755)  # what the refusal of a writable DIR advised: chmod'ed after uid 4242 made entries in it
    planted = data / name
    planted.write_text("") if "." in name else planted.mkdir(mode=0o755)
    os.chown(planted, OTHER, OTHER)  # their run/ would hold the engine's socket (serve --gateways N)
    said = _refused(capsys, lambda: prepare_data_dir(data), str(planted), f"belongs to user id {OTHER}", "move it out")
    assert "engine.sock" not in said and not (planted / "engine.sock").exists()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_an_own_subfolder_others_may_write_is_refused(tmp_path, capsys, mode):
    data = tmp_path / "d"
    (data / "run").mkdir(parents=True)
    os.chmod(data, 0o700)
    os.chmod(data / "run", mode)
    _refused(capsys, lambda: prepare_data_dir(data), str(data / "run"), "written by other users")


def test_an_entry_link_is_refused(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (data / "run").symlink_to(tmp_path / "elsewhere")
    _refused(capsys, lambda: prepare_data_dir(data), str(data / "run"), "symbolic link")


@as_root
def test_the_socket_folder_is_checked_once_made(tmp_path):
    from ringfence.errors import ConfigError
    from ringfence.owned import make_own_folder

    run = tmp_path / "run"
    assert make_own_folder(run, "--data", "r", "x") == run and run.stat().st_mode & 0o777 == 0o700
    os.chown(run, OTHER, OTHER)  # made by someone else between the start's check and serve's mkdir
    with pytest.raises(ConfigError, match=f"user id {OTHER}"):
        make_own_folder(run, "--data", "r", "x")
    os.rmdir(run)
    run.symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="symbolic link"):
        make_own_folder(run, "--data", "r", "x")


@as_root
def test_serve_refuses_a_run_folder_another_user_made(tmp_path):
    data = tmp_path / "d"
    (data / "run").mkdir(parents=True, mode=0o755)
    os.chmod(data, 0o755)
    os.chown(data / "run", OTHER, OTHER)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    try:
        out = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(data), "--port", "1",
                              "--gateways", "1"], capture_output=True, text=True, env={**clean, "COLUMNS": "500"},
                             timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("serve started with another user's run/ in its data folder")
    said = " ".join(out.stderr.split())
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--data" in said and str(data / "run") in said and f"user id {OTHER}" in said
    assert list((data / "run").iterdir()) == [] and sorted(p.name for p in data.iterdir()) == ["run"]
