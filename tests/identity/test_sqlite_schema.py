"""A new SQLite store made by the migrations' script (store/sqlite_schema.py) is the database the migrations make."""

from __future__ import annotations

import json

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from ringfence.store import Store, make_engine, migrate, sqlite_schema
from ringfence.store.models import Base


def _everything(engine) -> dict:
    """What a SQLite database is: every object of sqlite_master (SQLite's own indexes too), each table's
    columns, indexes and foreign keys as SQLite reports them, and every row of every table."""
    with engine.connect() as conn:
        master = [tuple(r) for r in conn.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"))]
        tables = [r[1] for r in master if r[0] == "table"]
        pragmas = {t: [[tuple(r) for r in conn.exec_driver_sql(f"PRAGMA {p}('{t}')")] for p in ("table_xinfo", "index_list", "foreign_key_list")]
                   for t in tables}
        rows = {t: [tuple(r) for r in conn.exec_driver_sql(f'SELECT * FROM "{t}" ORDER BY rowid')] for t in tables}
    assert rows["alembic_version"] and rows["identity_api_key_generation"] == [(1, 0)]  # what the migrations wrote
    return {"master": master, "pragmas": pragmas, "rows": rows}


def test_the_shipped_script_is_what_the_migrations_make(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'migrated.sqlite3'}")
    migrate(engine)
    shipped = json.loads(sqlite_schema.SCRIPT.read_text())
    assert shipped == sqlite_schema.dump(engine), "a migration changed: run python -m ringfence.store.sqlite_schema"


def test_a_new_store_made_by_the_script_equals_a_migrated_one(tmp_path):
    migrated = make_engine(f"sqlite:///{tmp_path / 'migrated.sqlite3'}")
    migrate(migrated)
    fast = make_engine(f"sqlite:///{tmp_path / 'fast.sqlite3'}")
    assert sqlite_schema.prepare(fast) is True  # empty: made by the script
    assert _everything(fast) == _everything(migrated)
    with fast.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert sqlite_schema.prepare(fast) is True  # at head already: nothing to migrate
    assert _everything(fast) == _everything(migrated)
    store = Store(fast)  # opened as serve opens it: the store works on it
    assert store.describe().endswith("schema revision 0005_i18n")


def test_changed_migrations_or_an_older_database_go_through_alembic(tmp_path, monkeypatch):
    old = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    migrate(old, "0004_models")
    assert sqlite_schema.prepare(old) is False  # an older revision: migrate brings it to head
    Store(old)
    head = make_engine(f"sqlite:///{tmp_path / 'head.sqlite3'}")
    migrate(head)
    assert _everything(old) == _everything(head)
    # migrations that differ from those the script was made from: the script is not used
    monkeypatch.setattr(sqlite_schema, "migrations_digest", lambda: "0" * 64)
    new = make_engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert sqlite_schema.prepare(new) is False
    with new.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sqlite_master")).scalar() == 0  # untouched
    Store(new)
    assert _everything(new) == _everything(head)


CRASH = """
import os, sys
from sqlalchemy import event
from ringfence.store import Store, make_engine

engine = make_engine(sys.argv[1])
seen = []

@event.listens_for(engine, "before_cursor_execute")
def _die(conn, cursor, statement, parameters, context, executemany):
    seen.append(statement)
    if statement.startswith(sys.argv[2]):
        os._exit(9)  # killed there: no rollback, no close, as a power cut or SIGKILL would leave it

Store(engine)
"""


def test_a_start_killed_mid_script_leaves_a_new_database_that_the_next_start_completes(tmp_path):
    """The script runs in one transaction: a process killed in the middle of it leaves no half schema
    that a later start would take for one at head (nor one Alembic would trip over)."""
    import subprocess
    import sys

    head = make_engine(f"sqlite:///{tmp_path / 'head.sqlite3'}")
    migrate(head)
    for i, where in enumerate(['CREATE TABLE identity_sessions', 'INSERT INTO "alembic_version"',
                               'INSERT INTO "identity_api_key_generation"']):
        url = f"sqlite:///{tmp_path / f'killed-{i}.sqlite3'}"
        done = subprocess.run([sys.executable, "-c", CRASH, url, where], capture_output=True, timeout=120)
        assert done.returncode == 9, done.stderr.decode()[-2000:]
        killed = make_engine(url)
        with killed.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sqlite_master")).scalar() == 0, where  # nothing of it kept
        Store(killed)  # the next start: the script again, whole
        assert _everything(killed) == _everything(head)


def test_a_statement_that_fails_mid_script_leaves_the_database_empty(tmp_path, monkeypatch):
    script = json.loads(sqlite_schema.SCRIPT.read_text())
    broken = {**script, "statements": [*script["statements"][:5], "CREATE TABLE broken (", *script["statements"][5:]]}
    monkeypatch.setattr(sqlite_schema, "_script", lambda: broken)
    engine = make_engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    try:
        sqlite_schema.prepare(engine)
    except Exception as err:  # noqa: BLE001  (SQLAlchemy's error, as a migration's would be)
        assert "broken" in str(err) or "syntax" in str(err) or "incomplete" in str(err), err
    else:
        raise AssertionError("a broken statement went through")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sqlite_master")).scalar() == 0


def test_processes_opening_one_new_database_at_once_all_start_on_one_schema(tmp_path):
    """Two or more starts on the same new file: one runs the script (holding SQLite's write lock from its
    BEGIN IMMEDIATE), the others wait for it and then find the database at head."""
    import subprocess
    import sys

    head = make_engine(f"sqlite:///{tmp_path / 'head.sqlite3'}")
    migrate(head)
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    code = "import sys; from ringfence.store import Store, make_engine; print(Store(make_engine(sys.argv[1])).describe())"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.decode().strip().endswith("schema revision 0005_i18n"), err.decode()[-2000:]
    assert _everything(make_engine(url)) == _everything(head)
