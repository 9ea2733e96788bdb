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
