"""The node key and peers file (src/ringfence/nodekey.py): private at rest, every bad entry named."""

import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from ringfence import nodekey
from ringfence.errors import ConfigError


def test_the_key_is_made_once_private_and_loaded_again(tmp_path):
    old = os.umask(0o022)
    try:
        key = nodekey.load_or_create(tmp_path / "d")
    finally:
        os.umask(old)
    path = tmp_path / "d" / nodekey.KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert nodekey.public_hex(nodekey.load_or_create(tmp_path / "d")) == nodekey.public_hex(key)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        nodekey.load_key(path)


def test_a_file_that_is_not_a_key_is_named(tmp_path):
    (tmp_path / "k").write_text("nonsense")
    os.chmod(tmp_path / "k", 0o600)
    with pytest.raises(ConfigError, match="not a PEM Ed25519 private key") as err:
        nodekey.load_key(tmp_path / "k")
    assert err.value.field == "--node-key"


@pytest.mark.parametrize("content, field, said", [
    ("[]", "--peers", "must be a JSON object"), ("{}", "--peers", "must be a JSON object"), ("{", "--peers", "is not JSON"),
    ('{"a b": "' + "0" * 64 + '"}', "--peers[a b]", "node id 'a b'"),
    ('{"a1": "' + "0" * 63 + '"}', "--peers[a1]", "node 'a1' in "),
    ('{"a1": "' + "A" * 64 + '"}', "--peers[a1]", "node 'a1' in "),
    ('{"a1": 5}', "--peers[a1]", "node 'a1' in "),
])
def test_a_bad_peers_file_is_refused_with_the_entry_named(tmp_path, content, field, said):
    (tmp_path / "peers.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        nodekey.load_peers(tmp_path / "peers.json")
    assert err.value.field == field
    assert said in err.value.message  # the entry is named in the text too, not only in the field


def test_a_bad_peers_entry_is_named_by_the_command(tmp_path):
    from typer.testing import CliRunner

    from ringfence.cli import app

    (tmp_path / "peers.json").write_text('{"a": "' + "0" * 64 + '", "b": "' + "0" * 40 + '"}')
    result = CliRunner().invoke(app, ["replication", "status", "--nats", "nats://127.0.0.1:4222/RF", "--peers",
                                      str(tmp_path / "peers.json")], env={"COLUMNS": "300"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "--peers[b]: node 'b' in" in out and "got 40 characters" in out, out


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=256), flip=st.integers(min_value=0, max_value=63 * 8 + 7))
def test_a_signature_verifies_for_its_data_only(tmp_path_factory, data, flip):
    d = tmp_path_factory.mktemp("k")
    key = nodekey.load_or_create(d)
    (d / "peers.json").write_text(json.dumps({"a1": nodekey.public_hex(key)}))
    pub = nodekey.load_peers(d / "peers.json")["a1"]
    sig = key.sign(data)
    assert nodekey.verify(pub, sig, data)
    bad = bytearray(sig)
    bad[flip // 8] ^= 1 << (flip % 8)
    assert not nodekey.verify(pub, bytes(bad), data)
    assert not nodekey.verify(pub, sig, data + b"x")


# --- whose key it is (intruder review of session 23, F2) --------------------------------------------------------------
# uid 4242 made a data folder (0700) and a node.key (0600) of theirs beforehand; root's `replication node-key --data`
# printed the intruder's public key (it went into peers.json) and `serve` signed with it. The key file must be this
# user's, not a symbolic link, in folders no other user owns or may write (sticky folders aside).

OTHER = 4242
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="plays the other user with chown (root only)")


def _pem_key(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


@as_root
def test_a_node_key_another_user_planted_is_refused_by_node_key(tmp_path):
    from typer.testing import CliRunner

    from ringfence.cli import app

    data = tmp_path / "rfa-shared"
    data.mkdir(mode=0o700)
    key = _pem_key(data / nodekey.KEY_FILE)
    os.chown(data, OTHER, OTHER)
    os.chown(key, OTHER, OTHER)
    with pytest.raises(ConfigError, match=f"belongs to user id {OTHER}") as err:
        nodekey.load_or_create(data)
    assert err.value.field == "--data"
    result = CliRunner().invoke(app, ["replication", "node-key", "--data", str(data), "--node-id", "a"],
                                env={"COLUMNS": "300"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and str(data) in out and f"belongs to user id {OTHER}" in out, out
    assert "{" not in out  # no public key printed


@as_root
def test_a_key_file_of_another_user_in_this_users_folder_is_refused(tmp_path):
    key = _pem_key(tmp_path / nodekey.KEY_FILE)
    os.chown(key, OTHER, OTHER)
    with pytest.raises(ConfigError, match=f"{key} belongs to user id {OTHER}"):
        nodekey.load_or_create(tmp_path)
    with pytest.raises(ConfigError, match="belongs to user id") as err:
        nodekey.load_key(key, "--sign-key")  # `backup create --sign-key FILE`
    assert err.value.field == "--sign-key"


@as_root
def test_a_folder_of_another_user_is_refused_before_a_key_is_made_in_it(tmp_path):
    """No node.key yet: one made in their folder could be swapped for theirs the moment after."""
    data = tmp_path / "theirs"
    data.mkdir(mode=0o755)
    os.chown(data, OTHER, OTHER)
    with pytest.raises(ConfigError, match=f"belongs to user id {OTHER}"):
        nodekey.load_or_create(data)
    assert not any(data.iterdir())


def test_a_folder_of_another_user_is_refused_without_root(tmp_path, monkeypatch):
    """The same, where the tests cannot chown: this process plays another user than the folder's owner."""
    key = _pem_key(tmp_path / nodekey.KEY_FILE)
    owner = os.stat(key).st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(ConfigError, match="belongs to user id"):
        nodekey.load_key(key)


def test_a_node_key_reached_through_a_symbolic_link_is_refused(tmp_path):
    real = _pem_key(tmp_path / "elsewhere.pem")
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / nodekey.KEY_FILE).symlink_to(real)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        nodekey.load_or_create(tmp_path / "d")
    assert (tmp_path / "d" / nodekey.KEY_FILE).is_symlink()  # not replaced by a new key either
    dangling = tmp_path / "e"
    dangling.mkdir(mode=0o700)
    (dangling / nodekey.KEY_FILE).symlink_to(tmp_path / "nowhere")  # made "on first use" through the link, before
    with pytest.raises(ConfigError, match="is a symbolic link"):
        nodekey.load_or_create(dangling)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("mode, refused", [(0o777, True), (0o770, True), (0o1777, False), (0o755, False)])
def test_a_folder_others_may_write_is_refused_unless_sticky(tmp_path, mode, refused):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    data = shared / "node-a"  # a folder of this user's, under one others may write: they could rename it away
    if refused:
        with pytest.raises(ConfigError, match=f"{shared} may be written by other users") as err:
            nodekey.load_or_create(data)
        assert err.value.field == "--data" and not data.exists()  # nothing made under it
    else:
        key = nodekey.load_or_create(data)
        assert nodekey.public_hex(nodekey.load_or_create(data)) == nodekey.public_hex(key)


@as_root
def test_a_staff_key_file_another_user_planted_is_refused(tmp_path):
    from ringfence.errors import RingfenceError
    from ringfence.staff.console import load_key as load_staff_key
    from ringfence.staff.decisions import StaffKey, write_key_file

    path = tmp_path / "dora.key"
    write_key_file(path, StaffKey.from_seed_hex("dora", "11" * 32))
    assert load_staff_key(str(path)).staff_id == "dora"
    os.chown(path, OTHER, OTHER)
    with pytest.raises(RingfenceError, match=f"belongs to user id {OTHER}"):
        load_staff_key(str(path))  # `staff add --new-key FILE`: its public key would become dora's
    link = tmp_path / "link.key"
    os.chown(path, 0, 0)
    link.symlink_to(path)
    with pytest.raises(RingfenceError, match="is a symbolic link"):
        load_staff_key(f"{link}#dora")


@as_root
def test_an_epoch_memory_another_user_planted_is_refused(tmp_path):
    from ringfence.replication.epochs import MEMORY_FILE, EpochMemory

    node = tmp_path / "engine"
    node.mkdir(mode=0o700)
    (node / MEMORY_FILE).write_text('{"RF": 3}')
    assert EpochMemory(node, "RF").highest() == 3
    os.chown(node / MEMORY_FILE, OTHER, OTHER)
    with pytest.raises(ConfigError, match=f"belongs to user id {OTHER}"):
        EpochMemory(node, "RF")


# --- second look (s23 owners review) ----------------------------------------------------------------------------------


@as_root
def test_a_folder_swapped_for_a_link_after_realpath_looked_is_refused(tmp_path, monkeypatch):
    """safe_folder resolves the path, then checks each folder of it: one of uid 4242's in /tmp (sticky) that was a
    folder when realpath() looked and a link to a root folder when it was stat()ed passed, and the path returned
    (through their folder, a folder again the moment after) was where the key was read or made. Played here by a
    realpath() that saw the folder before the swap."""
    from ringfence import owned

    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    roots = tmp_path / "roots"
    (roots / "data").mkdir(parents=True, mode=0o700)
    (sticky / "x").symlink_to(roots)  # uid 4242's link, swapped in after realpath() looked
    os.lchown(sticky / "x", OTHER, OTHER)
    monkeypatch.setattr(owned.os.path, "realpath", lambda p: str(p))  # (what it saw: a folder, no link)
    with pytest.raises(ConfigError, match="no longer a folder but a symbolic link") as err:
        owned.safe_folder(sticky / "x" / "data", "--data", "could", "give another")
    assert err.value.field == "--data"


@as_root
def test_a_staff_key_is_never_written_through_a_file_or_link_another_user_put_there(tmp_path):
    """`staff keygen --out FILE` wrote FILE.tmp by name (O_CREAT|O_TRUNC, following links): a FILE.tmp uid 4242 made
    beforehand in /tmp (kept open) got the new seed, and a link there had root overwrite its target."""
    from ringfence.staff.decisions import StaffKey, read_key_file, write_key_file

    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    (sticky / "alice.key.tmp").symlink_to(victim)
    os.lchown(sticky / "alice.key.tmp", OTHER, OTHER)
    theirs = sticky / "bob.key.tmp"
    theirs.write_text("")
    theirs.chmod(0o666)
    os.chown(theirs, OTHER, OTHER)
    with open(theirs, "rb") as kept:  # uid 4242 keeps it open
        write_key_file(sticky / "alice.key", StaffKey.from_seed_hex("alice", "11" * 32))
        write_key_file(sticky / "bob.key", StaffKey.from_seed_hex("bob", "22" * 32))
        assert kept.read() == b""  # the seed never went into their file
    assert victim.read_text() == "root:x:0:0\n"
    for name, seed in (("alice", "11"), ("bob", "22")):
        info = os.lstat(sticky / f"{name}.key")
        assert info.st_uid == 0 and info.st_mode & 0o777 == 0o600
        assert read_key_file(sticky / f"{name}.key").seed_hex == seed * 32
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="may be written by other users"):  # it could not be read back either
        write_key_file(shared / "carol.key", StaffKey.from_seed_hex("carol", "33" * 32))
    assert not any(shared.iterdir())


def test_staff_init_refuses_an_out_dir_others_may_write_before_the_genesis(tmp_path):
    """Key files written after the genesis into a folder refused then would be lost: init says so first."""
    from typer.testing import CliRunner

    from ringfence.cli import app

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = CliRunner().invoke(app, ["staff", "init", "--data", str(tmp_path / "data"), "--out-dir",
                                      str(shared / "keys"), "--member", "ada:operator", "--member", "ben:operator"],
                                env={"COLUMNS": "300"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "--out-dir" in out and "may be written by other users" in out, out
    assert not (tmp_path / "data").exists() and not any(shared.iterdir())
