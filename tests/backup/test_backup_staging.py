"""What verify and restore read is what they hashed (intruder review of #21: I4, I6c, I6d).

I4: with write access to the backup folder the intruder swapped a doctored identity.sqlite3 into
the backup after restore had hashed it and before it copied it (a thread waiting for
`--to/engine`), and restore said OK. Now every listed file is copied once into a private staging
folder, hashed as it is copied, and only the copies are used; symbolic links are refused.
I6d: entries the manifest does not list (an extra file, a link to /etc/passwd) were ignored.
I6c: an older genuine backup swapped in verifies; the verdict now names its date and sequence.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

import ringfence.backup as backup_mod
from ringfence.backup import MANIFEST, BackupInvalid, create_backup, restore_backup, verify_backup
from ringfence.errors import ConfigError

from .conftest import SIGNER, TRUST, rf, verdict
from .test_backup_signed import _identity_db


@pytest.fixture(scope="module")
def genuine(demo_node, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("staging")
    create_backup(demo_node, root / "bk", signer=SIGNER, identity_db=_identity_db(root / "identity.sqlite3"))
    return root / "bk"


def _copy(genuine: Path, tmp_path: Path) -> tuple[Path, dict]:
    bk = tmp_path / "bk"
    shutil.copytree(genuine, bk)
    return bk, json.loads((bk / MANIFEST).read_bytes())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_staging_left(folder: Path) -> bool:
    return not any(p.name.startswith(".ringfence-restore-") for p in folder.iterdir())


def test_an_identity_file_swapped_while_restoring_is_never_restored(genuine, tmp_path, monkeypatch):
    """The intruder's swap.sh: once the new engine folder exists, rename a doctored identity store over the
    backup's. The restored store is byte for byte the one the manifest hashed. (The swap ran in a thread
    polling for the folder; on a loaded machine the restore sometimes ended first and the test failed on its
    own precondition: now the swap runs at the first replay after the folder exists.)"""
    bk, manifest = _copy(genuine, tmp_path)
    evil = tmp_path / "evil.sqlite3"
    shutil.copyfile(bk / "identity.sqlite3", evil)
    conn = sqlite3.connect(evil)
    conn.execute("UPDATE identity_users SET email = 'intruder@evil.test' WHERE id = 1")
    conn.commit()
    conn.close()
    target = tmp_path / "restored"
    swapped = threading.Event()
    replay = backup_mod._replay

    def swap_then_replay(*args, **kwargs):  # type: ignore[no-untyped-def]
        # the new data directory is built privately beside target (F4 of session 19)
        if not swapped.is_set() and ((target / "engine").exists() or any(tmp_path.glob(".ringfence-restore-*/engine"))):
            shutil.copyfile(evil, bk / "identity.sqlite3.new")
            os.replace(bk / "identity.sqlite3.new", bk / "identity.sqlite3")
            swapped.set()
        return replay(*args, **kwargs)

    monkeypatch.setattr(backup_mod, "_replay", swap_then_replay)
    restore_backup(bk, target, trust=TRUST)
    assert swapped.is_set() and _sha256(bk / "identity.sqlite3") == _sha256(evil)  # the swap did happen
    assert _sha256(target / "identity.sqlite3") == manifest["files"]["identity"]["sha256"]
    assert (target / "identity.sqlite3").stat().st_mode & 0o777 == 0o600
    assert _no_staging_left(tmp_path)


def test_a_journal_segment_swapped_after_the_check_is_never_replayed(genuine, tmp_path, monkeypatch):
    """`--to-seq` below the last sequence compares no state hash: a segment swapped after the check
    (here at the lock restore takes on the new node, the first step after every check) must not be read."""
    bk, manifest = _copy(genuine, tmp_path)
    last = manifest["last_seq"]
    expected = restore_backup(bk, tmp_path / "reference", trust=TRUST, to_seq=last - 1)
    doctored = restore_backup(bk, tmp_path / "short", trust=TRUST, to_seq=last - 3)  # another history's tail
    tail = manifest["files"]["journal"][-1]["name"]
    assert (tmp_path / "short" / "engine" / "journal" / tail).read_bytes() != (bk / "journal" / tail).read_bytes()
    real_lock = backup_mod.DataDirLock

    def swap_then_lock(*args, **kwargs):
        shutil.copyfile(tmp_path / "short" / "engine" / "journal" / tail, bk / "journal" / tail)
        return real_lock(*args, **kwargs)

    monkeypatch.setattr(backup_mod, "DataDirLock", swap_then_lock)
    got = restore_backup(bk, tmp_path / "restored", trust=TRUST, to_seq=last - 1)
    assert (got.last_seq, got.chain_head, got.state_hash) == (last - 1, expected.chain_head, expected.state_hash)
    assert doctored.chain_head != expected.chain_head
    for seg in (tmp_path / "reference" / "engine" / "journal").glob("*.rfj"):
        assert (tmp_path / "restored" / "engine" / "journal" / seg.name).read_bytes() == seg.read_bytes()


@pytest.mark.parametrize("linked", ["identity.sqlite3", "journal"])
def test_a_symbolic_link_in_place_of_a_listed_file_or_folder_is_refused(linked, genuine, tmp_path, trust_file):
    """The link's target has the very bytes the manifest hashed: only the link itself is wrong."""
    bk, _ = _copy(genuine, tmp_path)
    os.replace(bk / linked, tmp_path / f"outside-{linked}")
    os.symlink(tmp_path / f"outside-{linked}", bk / linked)
    report = verify_backup(bk, trust=TRUST)
    assert f"{linked} is a symbolic link: refused" in report.problems, report.problems
    with pytest.raises(BackupInvalid) as err:
        restore_backup(bk, tmp_path / "restored", trust=TRUST)
    assert f"{linked} is a symbolic link: refused" in err.value.message
    assert not (tmp_path / "restored").exists() and _no_staging_left(tmp_path)
    proc = rf("backup", "verify", str(bk), "--trust", str(trust_file), check=False)
    assert proc.returncode == 1 and f"{linked} is a symbolic link: refused" in proc.stdout, proc.stdout + proc.stderr
    if linked == "identity.sqlite3":
        assert "(1 problem)" in proc.stderr, proc.stderr  # not "1 problems"


def test_entries_the_manifest_does_not_list_are_problems_and_never_restored(genuine, tmp_path, trust_file):
    bk, _ = _copy(genuine, tmp_path)
    (bk / "notes.txt").write_text("extra")
    os.symlink("/etc/passwd", bk / "snapshots" / "passwd")
    os.mkfifo(bk / "journal" / "pipe")
    (bk / "extra").mkdir()
    problems = verify_backup(bk, trust=TRUST).problems
    assert problems == ["extra is not in the manifest", "journal/pipe is not in the manifest", "notes.txt is not in the manifest",
                        "snapshots/passwd is a symbolic link, not in the manifest: refused"], problems
    with pytest.raises(BackupInvalid) as err:
        restore_backup(bk, tmp_path / "restored", trust=TRUST)
    assert "snapshots/passwd is a symbolic link" in err.value.message and "notes.txt" in err.value.message
    assert not (tmp_path / "restored").exists() and _no_staging_left(tmp_path)
    proc = rf("backup", "verify", str(bk), "--trust", str(trust_file), check=False)
    assert proc.returncode == 1 and "(4 problems)" in proc.stderr and "notes.txt is not in the manifest" in proc.stdout


def test_the_verdict_names_the_backups_date_and_sequence_and_an_older_one_can_be_refused(genuine, tmp_path, trust_file):
    """I6c: a rollback to an older genuine backup verifies (it is genuine), but the operator sees which one."""
    manifest = json.loads((genuine / MANIFEST).read_bytes())
    last, made = manifest["last_seq"], manifest["created_at"]
    out = rf("backup", "verify", str(genuine), "--trust", str(trust_file)).stdout
    line = verdict(out, "backup verify:")
    assert line.startswith("backup verify: OK") and f"made {made}, last sequence {last:,}" in line, out
    out = rf("backup", "restore", str(genuine), "--trust", str(trust_file), "--to", str(tmp_path / "r1"),
             "--expect-seq-at-least", str(last)).stdout
    assert f"made {made}, last sequence {last:,}" in verdict(out, "restore: OK"), out
    for command in (("verify", str(genuine)), ("restore", str(genuine), "--to", str(tmp_path / "r2"))):
        proc = rf("backup", *command, "--trust", str(trust_file), "--expect-seq-at-least", str(last + 1), check=False)
        assert proc.returncode == 1 and "--expect-seq-at-least: the backup ends at sequence" in proc.stderr, proc.stderr
    assert not (tmp_path / "r2").exists() and _no_staging_left(tmp_path)


@pytest.mark.parametrize("swap", ["symlink", "full folder"])
def test_a_target_swapped_after_its_check_is_never_written_into(genuine, tmp_path, monkeypatch, swap):
    """Intruder review, session 19 (F4): `--to` was checked new or empty, and `--to/engine` made by
    path after staging: a local user who can write --to's parent swapped in a symlink to a folder of
    theirs, the restore wrote into it and said OK. A new --to is now built in a private folder beside
    it that takes its place in one rename, which refuses anything else found there."""
    bk, _ = _copy(genuine, tmp_path)
    theirs = tmp_path / "attacker"
    theirs.mkdir()
    (theirs / "planted").write_text("x\n")
    target = tmp_path / "to"
    real_stage = backup_mod._stage_files

    def swap_then_stage(*args, **kwargs):  # after every check of --to, before anything is restored
        if swap == "symlink":
            target.symlink_to(theirs, target_is_directory=True)
        else:
            target.mkdir()
            (target / "planted").write_text("x\n")
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(backup_mod, "_stage_files", swap_then_stage)
    with pytest.raises(ConfigError) as refused:
        restore_backup(bk, target, trust=TRUST)
    assert refused.value.field == "--to" and "after it was checked" in str(refused.value)
    assert sorted(p.name for p in theirs.iterdir()) == ["planted"]
    assert sorted(p.name for p in target.iterdir()) == ["planted"]
    assert _no_staging_left(tmp_path)


def test_an_empty_target_swapped_after_it_was_opened_is_still_the_one_restored_into(genuine, tmp_path, monkeypatch):
    """An existing empty --to (a mount point, `--to .`) is written through the handle opened at the
    check: a symlink put in its place afterwards leads nowhere, and the folder keeps its mode."""
    bk, manifest = _copy(genuine, tmp_path)
    theirs, target, moved = tmp_path / "attacker", tmp_path / "to", tmp_path / "moved"
    theirs.mkdir()
    target.mkdir(mode=0o750)
    os.chmod(target, 0o750)
    real_stage = backup_mod._stage_files

    def swap_then_stage(*args, **kwargs):
        target.rename(moved)
        target.symlink_to(theirs, target_is_directory=True)
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(backup_mod, "_stage_files", swap_then_stage)
    got = restore_backup(bk, target, trust=TRUST)
    assert got.last_seq == manifest["last_seq"]
    assert list(theirs.iterdir()) == []
    assert sorted(p.name for p in moved.iterdir()) == ["engine", "identity.sqlite3"]
    assert oct(moved.stat().st_mode & 0o777) == "0o750"
    assert _no_staging_left(tmp_path)


def test_a_restore_into_the_current_folder_or_a_new_one_works(genuine, tmp_path, monkeypatch):
    bk, manifest = _copy(genuine, tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert restore_backup(bk, Path("."), trust=TRUST).last_seq == manifest["last_seq"]
    assert (here / "engine" / "journal").is_dir() and (here / "identity.sqlite3").is_file()
    got = restore_backup(bk, tmp_path / "a" / "b" / "new", trust=TRUST)
    assert got.last_seq == manifest["last_seq"] and (tmp_path / "a" / "b" / "new" / "engine").is_dir()
    assert oct((tmp_path / "a" / "b" / "new").stat().st_mode & 0o777) == "0o700"
    with pytest.raises(ConfigError) as refused:
        restore_backup(bk, here, trust=TRUST)
    assert refused.value.field == "--to" and "not empty" in str(refused.value)
    assert _no_staging_left(tmp_path) and _no_staging_left(here)
