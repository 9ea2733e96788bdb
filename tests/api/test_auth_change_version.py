"""`IdentityAuthenticator.change_version`: the number the WebSocket API's logged-on sessions compare to
skip re-checking their key (api/ws_api.py). It must move after any commit to the identity database,
also after the database was restored by renaming a copy over its file while the server runs."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import text

from ringfence.api.auth import IdentityAuthenticator
from ringfence.store import Store


def _commit(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))


def test_a_commit_by_another_connection_moves_the_version(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'id.sqlite'}")
    _commit(store)
    auth = IdentityAuthenticator(SimpleNamespace(store=store), cache=False)
    before = auth.change_version()
    assert before is not None and auth.change_version() == before
    _commit(store)
    assert auth.change_version() != before


def test_a_database_renamed_over_the_path_moves_the_version(tmp_path: Path) -> None:
    """A restore by rename while serving: the counter connection had the old file open, which nothing
    commits to any more, so the version stood still and logged-on sessions kept their key unchecked."""
    path = tmp_path / "id.sqlite"
    store = Store.from_url(f"sqlite:///{path}")
    _commit(store)
    auth = IdentityAuthenticator(SimpleNamespace(store=store), cache=False)
    seen = {auth.change_version()}
    copy = tmp_path / "restored.sqlite"
    with sqlite3.connect(path) as live, sqlite3.connect(copy) as into:
        live.backup(into)
    os.replace(copy, path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store.engine.dispose()  # the pool's connections reopen the path: the restored file
    after = auth.change_version()
    assert after is not None and after not in seen, "another file is another database: check the keys again"
    seen.add(after)
    _commit(store)  # committed to the restored file
    moved = auth.change_version()
    assert moved is not None and moved not in seen
