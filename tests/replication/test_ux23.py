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
