"""New-user review of issue #21 (session 23): what a promoted node, a restore and a rejoining node say."""

from __future__ import annotations


def test_a_relabelled_lock_names_its_new_purpose_to_another_writer(tmp_path):
    """A promoted standby keeps its lock into the primary it becomes: another writer was told `ringfence serve
    --standby (node b)`; the lock now says what holds it."""
    import pytest

    from ringfence.errors import DataDirLocked
    from ringfence.journal.journal import DataDirLock, lock_holder

    lock = DataDirLock(tmp_path, "ringfence serve --standby (node b)")
    try:
        lock.relabel("ringfence serve (node b, the primary since its promotion; started as --standby)")
        holder = lock_holder(tmp_path)
        assert holder is not None and "the primary since its promotion" in holder[0], holder
        with pytest.raises(DataDirLocked) as caught:
            DataDirLock(tmp_path, "another")
        assert "node b, the primary since its promotion" in str(caught.value)
        assert "serve --standby (node b)" not in str(caught.value)
    finally:
        lock.release()


def test_a_new_folder_for_a_node_of_the_peers_file_is_refused_before_a_key_is_made(tmp_path):
    """Rejoining a deposed primary on a fresh folder: `the peers file gives node 'a' a public key that is not
    the one of a-new/node.key` said nothing of what to do, and left a new, unusable node.key behind."""
    import json

    import pytest

    from ringfence import nodekey
    from ringfence.errors import ConfigError
    from ringfence.replication.serving import node_trust

    old = nodekey.public_hex(nodekey.load_or_create(tmp_path / "a"))
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"a": old}))
    fresh = tmp_path / "a-new"
    with pytest.raises(ConfigError) as caught:
        node_trust(fresh, "a", peers, print)
    said = str(caught.value)
    assert "copy node a's node.key" in said and "no key was made" in said, said
    assert not (fresh / nodekey.KEY_FILE).exists()
    # the key copied in: the node starts
    fresh.mkdir(mode=0o700, exist_ok=True)
    (fresh / nodekey.KEY_FILE).write_bytes((tmp_path / "a" / nodekey.KEY_FILE).read_bytes())
    (fresh / nodekey.KEY_FILE).chmod(0o600)
    key, trusted = node_trust(fresh, "a", peers, print)
    assert nodekey.public_hex(key) == old and set(trusted) == {"a"}
    # another key in the folder: the error says what to do, with this key's line for the peers file
    (fresh / nodekey.KEY_FILE).unlink()
    other = nodekey.public_hex(nodekey.load_or_create(fresh))
    with pytest.raises(ConfigError) as caught:
        node_trust(fresh, "a", peers, print)
    said = str(caught.value)
    assert "a public key that is not the one of" in said and "copy node a's node.key" in said, said
    assert f'{{"a": "{other}"}}' in said
