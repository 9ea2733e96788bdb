"""The verified-key cache's watcher (identity/key_cache.py): it reads the store's key generation every
`poll_s`, and a change committed by another process (another connection) is seen at the next poll.
On SQLite it reads on a plain sqlite3 connection of its own, not through SQLAlchemy's pool: each
read through SQLAlchemy cost ~0.5-0.8 ms of the serving process's GIL, 20 times a second (issue 18)."""

from __future__ import annotations

import time

from sqlalchemy import event, text

from ringfence.identity.key_cache import VerifiedKeyCache


def _bump_elsewhere(store) -> None:
    """What another process's commit does to the counter: a raw UPDATE on another connection (not
    through `Store.tx`, whose hook would move this process's own generation too)."""
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE identity_api_key_generation SET value = value + 1 WHERE id = 1"))


def _wait_for(pred, seconds: float = 5.0) -> bool:  # float-ok: a test's timeout
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_the_watcher_sees_a_counter_committed_elsewhere_at_its_next_poll(ctx):
    cache = VerifiedKeyCache(ctx, poll_s=0.01)
    cache.start()
    try:
        before = cache.generation()
        assert before is not None
        _bump_elsewhere(ctx.store)
        assert _wait_for(lambda: cache.generation() == [before[0], before[1] + 1]), (before, cache.generation())
        _bump_elsewhere(ctx.store)
        _bump_elsewhere(ctx.store)
        assert _wait_for(lambda: cache.generation() == [before[0], before[1] + 3])
    finally:
        cache.stop()
        cache._watcher.join(5)
    assert cache._watch_conn is None  # closed by the stopped watcher


def test_on_sqlite_the_watcher_polls_without_sqlalchemy(ctx):
    if ctx.store.engine.url.get_backend_name() != "sqlite":
        return  # PostgreSQL keeps reading through the store's engine
    checkouts = []
    event.listen(ctx.store.engine, "engine_connect", lambda conn: checkouts.append(1))
    cache = VerifiedKeyCache(ctx, poll_s=0.005)
    cache.start()  # its first read, through the store: one connection
    try:
        assert _wait_for(lambda: cache.polls >= 20)
        assert len(checkouts) <= 1, f"{len(checkouts)} SQLAlchemy connections for {cache.polls} polls"
    finally:
        cache.stop()
        cache._watcher.join(5)


def test_a_sqlite_uri_database_is_read_through_sqlalchemy(tmp_path):
    """A URI database (a shared in-memory one, or options in the query) is not a file path the plain
    connection could open: the watcher reads it through the store's engine (session 18's review: the
    plain connection opened an empty file named after the URI and failed every poll)."""
    import types

    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite:///file:rf_kc_uri?mode=memory&cache=shared&uri=true", poolclass=StaticPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE identity_api_key_generation (id INTEGER PRIMARY KEY, value INTEGER)"))
        conn.execute(text("INSERT INTO identity_api_key_generation VALUES (1, 41)"))
    ctx = types.SimpleNamespace(store=types.SimpleNamespace(engine=engine))
    cache = VerifiedKeyCache.__new__(VerifiedKeyCache)
    cache.ctx, cache._watch_conn = ctx, None
    assert cache._poll_store_generation() == 41
    assert cache._watch_conn is None
    engine.dispose()


def test_the_watcher_follows_a_database_renamed_over_the_path(ctx):
    """A restore by rename while serving (as in tests/api/test_auth_change_version.py): the watcher's
    connection had the old file open, which nothing commits to any more, so a key revoked by another
    process in the restored file stayed cached and accepted (on REST and on a WebSocket logon). The
    file changing is itself a change (the copy's counter may repeat a value seen before)."""
    import os
    import sqlite3
    from pathlib import Path

    if ctx.store.engine.url.get_backend_name() != "sqlite":
        return  # PostgreSQL: no file
    path = Path(ctx.store.engine.url.database)
    cache = VerifiedKeyCache(ctx, poll_s=0.01)
    cache.start()
    try:
        assert _wait_for(lambda: cache._watch_conn is not None)
        before = cache.generation()
        copy = path.with_name("restored.sqlite3")
        with sqlite3.connect(path) as live, sqlite3.connect(copy) as into:
            live.backup(into)
        os.replace(copy, path)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        ctx.store.engine.dispose()  # the pool's connections reopen the path: the restored file
        # the same counter value in another file is another state: the entries go
        assert _wait_for(lambda: cache.generation() not in (None, before), 2.0), (before, cache.generation())
        moved = cache.generation()
        _bump_elsewhere(ctx.store)  # a revocation committed by another process, to the restored file
        assert _wait_for(lambda: cache.generation() not in (None, moved), 2.0), (moved, cache.generation())
    finally:
        cache.stop()
        cache._watcher.join(5)
