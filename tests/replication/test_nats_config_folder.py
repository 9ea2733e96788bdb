"""Where `nats-config` writes the services' passwords (intruder review of session 22, B2).

The intruder made the folder the operator was about to name as `--out` and put in it, with mode 0666,
the temporary files `write_private` writes through (`rf-node.password.tmp`...). The secret went into
the intruder's own file (truncated, written, renamed into place: still the intruder's), so every
service's password and the whole server config were theirs to read. Now a temporary file is always a
new one of this user's (O_EXCL, O_NOFOLLOW) and `--out` must be a folder of this user's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ringfence.replication.auth as auth
from ringfence.errors import ConfigError
from ringfence.nodekey import write_private
from ringfence.replication.auth import SERVICES, write_nats_config


def test_a_prepared_temporary_file_never_receives_a_password(tmp_path):
    out = tmp_path / "nats-auth"
    out.mkdir()
    held = {}
    for name in [f"{s}.password" for s in SERVICES] + ["nats-server.conf"]:
        prepared = out / f"{name}.tmp"
        prepared.write_bytes(b"")
        prepared.chmod(0o666)
        held[name] = os.open(prepared, os.O_RDONLY)  # the intruder keeps it open
    try:
        files = write_nats_config(out, "RF", ["a", "b"])
        for name, fd in held.items():
            assert os.read(fd, 4096) == b"", f"{name}: the secret went into the prepared file"
            assert os.fstat(fd).st_ino != os.stat(out / name).st_ino
        for path in files.values():
            info = os.stat(path)
            assert info.st_mode & 0o777 == 0o600 and info.st_uid == os.geteuid()
    finally:
        for fd in held.values():
            os.close(fd)


def test_a_temporary_name_that_is_a_symbolic_link_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / "node.key.tmp").symlink_to(target)
    write_private(tmp_path / "node.key", b"secret")
    assert not target.exists() and (tmp_path / "node.key").read_bytes() == b"secret"
    assert not (tmp_path / "node.key").is_symlink()


def test_an_out_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "theirs"
    out.mkdir()
    owner = os.stat(out).st_uid
    monkeypatch.setattr(auth.os, "geteuid", lambda: owner + 1)
    with pytest.raises(ConfigError, match="belongs to user id"):
        write_nats_config(out, "RF", ["a"])
    assert not any(out.iterdir())


def test_an_out_folder_that_is_a_symbolic_link_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="not a folder"):
        write_nats_config(Path(tmp_path / "link"), "RF", ["a"])
    assert not any(real.iterdir())


def test_a_folder_swapped_in_after_the_check_receives_nothing(tmp_path, monkeypatch):
    """Whoever may write the folder above `--out` renames it away after the check and puts a folder of
    theirs there: the passwords go into the folder checked, never the one swapped in by name."""
    out, moved = tmp_path / "nats-auth", tmp_path / "moved-aside"
    write = auth._write_0600
    swapped = []

    def swap_then_write(path, text):
        if not swapped:
            os.rename(out, moved)
            out.mkdir()  # (the intruder's folder)
            swapped.append(True)
        write(path, text)

    monkeypatch.setattr(auth, "_write_0600", swap_then_write)
    files = write_nats_config(out, "RF", ["a", "b"])
    assert not any(out.iterdir()), sorted(out.iterdir())
    assert sorted(p.name for p in moved.iterdir()) == sorted(p.name for p in files.values())


def test_an_out_folder_other_users_may_write_is_refused(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o777)
    with pytest.raises(ConfigError, match="may be written by other users"):
        write_nats_config(out, "RF", ["a"])
    assert not any(out.iterdir())


# --- --store-dir (intruder review of session 23, F4) ------------------------------------------------------------------
# A --store-dir owned (and writable) by uid 4242 went into the server config as it was: its owner could rename the
# stream's folder away, and after a nats-server restart every acknowledged batch was gone. It now gets --out's checks.


@pytest.mark.skipif(os.geteuid() != 0, reason="plays the other user with chown (root only)")
def test_nats_config_refuses_a_store_dir_another_user_owns(tmp_path):
    import subprocess
    import sys

    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)
    os.chown(store, 4242, 4242)
    peers = tmp_path / "peers.json"
    peers.write_text('{"a": "' + "11" * 32 + '"}')
    run = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "nats-config", "--stream", "RF",
                          "--peers", str(peers), "--out", str(tmp_path / "out"), "--store-dir", str(store)],
                         capture_output=True, text=True, env=dict(os.environ, COLUMNS="300"))
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 2 and "--store-dir" in out and "belongs to user id 4242" in out, out
    assert not (tmp_path / "out" / "nats-server.conf").exists()


def test_a_store_dir_of_another_user_is_refused_without_root(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    owner = os.stat(store).st_uid
    monkeypatch.setattr(auth.os, "geteuid", lambda: owner + 1)
    with pytest.raises(ConfigError, match="belongs to user id") as err:
        write_nats_config(tmp_path / "out", "RF", ["a"], store_dir=str(store))
    assert err.value.field == "--store-dir" and not (tmp_path / "out").exists()


def test_a_store_dir_others_may_write_or_a_symbolic_link_is_refused(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)
    with pytest.raises(ConfigError, match="may be written by other users") as err:
        write_nats_config(tmp_path / "out", "RF", ["a"], store_dir=str(store))
    assert err.value.field == "--store-dir"
    store.chmod(0o700)
    (tmp_path / "link").symlink_to(store)
    with pytest.raises(ConfigError, match="not a folder"):
        write_nats_config(tmp_path / "out", "RF", ["a"], store_dir=str(tmp_path / "link"))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the folder above: they could rename the store away
    with pytest.raises(ConfigError, match="may be written by other users"):
        write_nats_config(tmp_path / "out", "RF", ["a"], store_dir=str(shared / "js"))
    assert not (tmp_path / "out").exists()


def test_a_new_store_dir_is_made_private_and_named_by_its_real_path(tmp_path, monkeypatch):
    import json

    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")  # a link above the store is fine: its real path goes in
    monkeypatch.chdir(tmp_path)
    files = write_nats_config(tmp_path / "out", "RF", ["a"], store_dir="via/js")
    store = tmp_path / "real" / "js"
    assert store.is_dir() and os.stat(store).st_mode & 0o777 == 0o700
    config = json.loads(files["config"].read_text())
    assert config["jetstream"]["store_dir"] == os.path.realpath(store)
