"""`backup create` signs only what it copied itself (intruder review of session 22, B1).

The intruder, with write access to a shared backup area only, made tomorrow's dated folder beforehand
(empty: create took an existing empty folder), and while root's `backup create` ran it put its own
journal folder, the node's records plus one batch crediting an account, in place of the copy. Create
scanned, replayed, snapshotted, hashed and signed the intruder's journal by path; `verify` and
`restore` then said OK to a backup with a batch the node never journaled. Now create opens its folder
once (made by it, or an empty folder of its own user; never a symbolic link) and works through that
descriptor only, in a folder nobody else may enter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ringfence.backup as backup_mod
from ringfence.backup import MANIFEST, create_backup, restore_backup, verify_backup
from ringfence.errors import ConfigError
from ringfence.journal.journal import GENESIS_HASH, JournalWriter, scan

from .conftest import SIGNER, TRUST


def _doctored_journal(node: Path, out: Path) -> int:
    """The node's records, then one more batch crediting an account; returns its last sequence."""
    writer = JournalWriter(out, next_seq=1, last_hash=GENESIS_HASH, tail_segment=None, tail_size=0)
    last = None
    for record in scan(node / "journal", truncate=False):
        writer.append(record.payload, record.first_seq, record.last_seq - record.first_seq + 1)
        last = record
    assert last is not None
    seq, ts = last.last_seq + 1, json.loads(last.payload)[1] + 1_000_000
    extra = [seq, ts, "A" * 43 + "=", [["transfers.create/1", [[900000099, 15, 49, 25_000_000_000_000, 0, 0, 0, 0, 0]]]]]
    writer.append(json.dumps(extra, separators=(",", ":")).encode(), seq, 1)
    writer.close()
    return seq


def _last_seq(node: Path) -> int:
    return max(record.last_seq for record in scan(node / "journal", truncate=False))


def test_a_folder_swapped_in_while_create_runs_is_never_signed(demo_node, tmp_path, monkeypatch):
    """The swap at the step after the copy (where the intruder's rename landed): before, the scan, the
    replay and the signature took the intruder's journal (a signed backup ending one batch past the node)."""
    dest, evil = tmp_path / "2026-12-08", tmp_path / "evil"
    forged_seq = _doctored_journal(demo_node, evil / "journal")
    copy = backup_mod._copy_segments

    def copy_then_swap(src, dest_journal, progress):  # the intruder's rename, right after the copy
        mark = copy(src, dest_journal, progress)
        os.rename(dest, tmp_path / "moved-aside")
        os.rename(evil, dest)
        return mark

    monkeypatch.setattr(backup_mod, "_copy_segments", copy_then_swap)
    report = create_backup(demo_node, dest, signer=SIGNER)
    assert report.last_seq == _last_seq(demo_node) < forged_seq
    assert not (dest / MANIFEST).exists()  # nothing signed in the intruder's folder
    genuine = verify_backup(tmp_path / "moved-aside", trust=TRUST)  # what create copied itself, where it went
    assert not genuine.problems and genuine.last_seq == report.last_seq


def test_a_folder_of_another_user_is_refused(demo_node, tmp_path, monkeypatch):
    """An empty folder someone else owns (made beforehand in a shared area): refused, nothing written."""
    dest = tmp_path / "theirs"
    dest.mkdir()
    owner = os.stat(dest).st_uid
    monkeypatch.setattr(backup_mod.os, "geteuid", lambda: owner + 1)  # this process is not its owner
    with pytest.raises(ConfigError, match="belongs to user id") as err:
        create_backup(demo_node, dest, signer=SIGNER)
    assert err.value.field == "--to" and not any(dest.iterdir())


def test_a_symbolic_link_is_refused(demo_node, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not a folder") as err:
        create_backup(demo_node, tmp_path / "link", signer=SIGNER)
    assert err.value.field == "--to" and not any(elsewhere.iterdir())


def test_an_empty_folder_of_this_user_is_taken_and_made_private(demo_node, tmp_path):
    dest = tmp_path / "made-for-it"
    dest.mkdir(mode=0o755)
    report = create_backup(demo_node, dest, signer=SIGNER)
    assert report.directory == str(dest) and (dest / MANIFEST).is_file()
    assert os.stat(dest).st_mode & 0o777 == 0o700
    assert not verify_backup(dest, trust=TRUST).problems


def test_restore_into_a_folder_of_another_user_is_refused(demo_node, tmp_path, monkeypatch):
    """The same for `restore --to`: an empty folder someone else owns would let its owner swap the
    restored engine folder before `serve` reads it."""
    bk = tmp_path / "bk"
    create_backup(demo_node, bk, signer=SIGNER)
    target = tmp_path / "theirs"
    target.mkdir()
    owner = os.stat(target).st_uid
    monkeypatch.setattr(backup_mod.os, "geteuid", lambda: owner + 1)
    with pytest.raises(ConfigError, match="belongs to user id") as err:
        restore_backup(bk, target, trust=TRUST)
    assert err.value.field == "--to" and not any(target.iterdir())
    assert not any(p.name.startswith(".ringfence-restore-") for p in tmp_path.iterdir())


def test_an_entry_put_in_a_folder_open_to_others_before_it_was_made_private_is_refused(demo_node, tmp_path, monkeypatch):
    """Fresh-eyes review of B1: an empty folder of this user's that others may write (0777) was checked empty,
    then made 0700; between the two, another user could put a `snapshots` folder of theirs in it (and keep it
    open): create wrote the snapshot into it. The folder is checked again once it is private."""
    dest = tmp_path / "open-to-all"
    dest.mkdir()
    dest.chmod(0o777)
    fchmod = os.fchmod

    def intruder_then_fchmod(fd, mode):
        (dest / "snapshots").mkdir(mode=0o777)  # the other user's, between the check and the chmod
        fchmod(fd, mode)

    monkeypatch.setattr(backup_mod.os, "fchmod", intruder_then_fchmod)
    with pytest.raises(ConfigError, match="something was put in it") as err:
        create_backup(demo_node, dest, signer=SIGNER)
    assert err.value.field == "--to" and sorted(p.name for p in dest.iterdir()) == ["snapshots"]
    assert not any((dest / "snapshots").iterdir())


def test_without_proc_create_and_restore_say_so_naming_the_option(demo_node, tmp_path, monkeypatch):
    """Create (and restore into an existing folder) write through /proc/PID/fd/N: where /proc is not mounted
    the command says so, naming --to, instead of a FileNotFoundError out of the copy."""
    bk = tmp_path / "bk"
    create_backup(demo_node, bk, signer=SIGNER)
    monkeypatch.setattr(backup_mod, "PROC_FD", str(tmp_path / "no-proc" / "{pid}" / "fd" / "{fd}"))
    with pytest.raises(ConfigError, match="needs /proc mounted") as err:
        create_backup(demo_node, tmp_path / "new", signer=SIGNER)
    assert err.value.field == "--to" and not any((tmp_path / "new").iterdir())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="needs /proc mounted") as err:
        restore_backup(bk, tmp_path / "empty", trust=TRUST)
    assert err.value.field == "--to" and not any((tmp_path / "empty").iterdir())


def test_a_folder_under_a_file_is_refused_naming_the_option(demo_node, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create the folder") as err:
        create_backup(demo_node, tmp_path / "a-file" / "bk", signer=SIGNER)
    assert err.value.field == "--to"


def test_ordinary_targets_still_work(demo_node, tmp_path, monkeypatch):
    """A relative path, a new folder with new parents, and a folder on another filesystem (/dev/shm, a tmpfs,
    when it is one apart from tmp_path's)."""
    monkeypatch.chdir(tmp_path)
    report = create_backup(demo_node, Path("rel") / "deep" / "bk", signer=SIGNER)
    assert report.directory == str(Path("rel") / "deep" / "bk")
    assert not verify_backup(tmp_path / "rel" / "deep" / "bk", trust=TRUST).problems
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        import tempfile

        with tempfile.TemporaryDirectory(dir=shm) as other:
            create_backup(demo_node, Path(other) / "bk", signer=SIGNER)
            assert not verify_backup(Path(other) / "bk", trust=TRUST).problems


def test_restore_into_an_empty_folder_other_users_may_write_is_refused(demo_node, tmp_path):
    """Fresh-eyes review of B1's restore side: a folder of this user's that is 0777 lets any user rename the
    restored `engine` folder away and put theirs in its place before `serve` reads it."""
    bk = tmp_path / "bk"
    create_backup(demo_node, bk, signer=SIGNER)
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    with pytest.raises(ConfigError, match="may be written by other users") as err:
        restore_backup(bk, target, trust=TRUST)
    assert err.value.field == "--to" and not any(target.iterdir())
    target.chmod(0o700)
    assert restore_backup(bk, target, trust=TRUST).last_seq == _last_seq(demo_node)


# --- restore --to NEW under folders others may write (intruder review of session 23, F3) ----------------------------
# Only an existing --to was checked: a new one was built beside it and renamed into place, and the owner of the folder
# above (or anyone who may write it) then swapped the restored folder for one with a journal of theirs, which root's
# next `serve --data` served. The folder above a new or existing --to, and every one above that, must be this user's
# or root's and closed to other users (sticky folders such as /tmp aside).


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_restore_to_a_new_folder_under_one_others_may_write_is_refused(demo_node, tmp_path, mode):
    bk = tmp_path / "bk"
    create_backup(demo_node, bk, signer=SIGNER)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    for target in (shared / "restored", shared / "deeper" / "restored"):
        with pytest.raises(ConfigError, match="may be written by other users") as err:
            restore_backup(bk, target, trust=TRUST)
        assert err.value.field == "--to" and str(shared) in str(err.value)
    assert not any(shared.iterdir())  # no staging folder, no restore folder
    (shared / "mine").mkdir(mode=0o700)  # a folder of this user's, an ancestor open to others: the same
    with pytest.raises(ConfigError, match="may be written by other users"):
        restore_backup(bk, shared / "mine" / "restored", trust=TRUST)
    with pytest.raises(ConfigError, match="may be written by other users"):
        restore_backup(bk, shared / "mine", trust=TRUST)  # an existing empty --to too
    assert not any((shared / "mine").iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="plays the other user with chown (root only)")
def test_restore_to_a_new_folder_in_a_folder_of_another_user_is_refused(demo_node, tmp_path):
    bk = tmp_path / "bk"
    create_backup(demo_node, bk, signer=SIGNER)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(ConfigError, match="belongs to user id 4242") as err:
        restore_backup(bk, theirs / "restored", trust=TRUST)
    assert err.value.field == "--to" and not any(theirs.iterdir())


def test_restore_to_a_new_folder_under_a_sticky_or_private_one_works(demo_node, tmp_path):
    bk = tmp_path / "bk"
    create_backup(demo_node, bk, signer=SIGNER)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /tmp: others may make entries, never rename or remove this user's
    (tmp_path / "via").symlink_to(sticky)  # a link on the way: the real path is checked and used
    report = restore_backup(bk, tmp_path / "via" / "a" / "restored", trust=TRUST)
    assert report.last_seq == _last_seq(demo_node)
    assert (sticky / "a" / "restored" / "engine").is_dir()
    assert sorted(p.name for p in sticky.iterdir()) == ["a"]  # no staging folder left


@pytest.mark.skipif(os.geteuid() != 0, reason="plays the other user with chown (root only)")
@pytest.mark.parametrize("how", ["folder", "dotdot"])
def test_a_folder_above_a_new_target_made_by_another_user_during_the_restore_is_refused(demo_node, tmp_path,
                                                                                       monkeypatch, how):
    """--to /tmp/a/restored, /tmp/a missing: /tmp (sticky) was checked, the restore built beside it, then made the
    missing folders by name (exist_ok) and renamed the result into them. uid 4242 made /tmp/a meanwhile (or a link
    there, for --to /tmp/a/../restored) and got the restored data directory in a folder of theirs."""
    bk = tmp_path / "bk"
    create_backup(demo_node, bk, signer=SIGNER)
    sticky, theirs = tmp_path / "tmp", tmp_path / "theirs"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (theirs / "sub").mkdir(parents=True)
    os.chown(theirs, 4242, 4242)
    os.chown(theirs / "sub", 4242, 4242)
    target = sticky / "a" / "restored" if how == "folder" else sticky / "a" / ".." / "restored"
    finish = backup_mod._NewDataDir.finish

    def intruder_first(self):
        if how == "folder":
            (sticky / "a").mkdir()
            os.chown(sticky / "a", 4242, 4242)
        else:
            (sticky / "a").symlink_to(theirs / "sub")
            os.lchown(sticky / "a", 4242, 4242)
        finish(self)

    monkeypatch.setattr(backup_mod._NewDataDir, "finish", intruder_first)
    with pytest.raises(ConfigError, match="belongs to user id 4242") as err:
        restore_backup(bk, target, trust=TRUST)
    assert err.value.field == "--to"
    assert not (theirs / "restored").exists() and not (theirs / "sub" / "restored").exists()
    assert not (sticky / "restored").exists() and sorted(p.name for p in sticky.iterdir()) == ["a"]
