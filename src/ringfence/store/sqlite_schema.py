"""A new SQLite identity store made by one script, not by importing Alembic and running every migration.

`serve` opens its store on every start, and most starts (every test server, a first `serve --demo`) open
a brand-new SQLite file: importing Alembic (with the DDL of every dialect it knows) and running the five
migrations was ~0.25 s of CPU of each. `migrations/sqlite_schema.json` holds what those migrations make of
an empty SQLite database: `sqlite_master`'s statements in the order they were made, and the rows they
wrote (the revision alembic_version then holds, the API key generation counter's first value). It is generated from the migrations (`python -m ringfence.store.sqlite_schema`)
and names the SHA-256 of the migration sources it was made from (`migrations_digest`): it is used only
while they are unchanged (a changed or added migration: Alembic, as before, until it is generated again;
tests/identity/test_sqlite_schema.py fails until then and checks that both ways make the same database).

`prepare(engine)` returns True when the database needs no migration: it was empty and got the script (in
one transaction that holds SQLite's write lock from its start), or it is already at the script's revision
(`alembic upgrade head` would do nothing). Anything else (PostgreSQL, an older revision): False, migrate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

__all__ = ["SCRIPT", "migrations_digest", "dump", "prepare"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SCRIPT = MIGRATIONS_DIR / "sqlite_schema.json"


def migrations_digest() -> str:
    """SHA-256 over the migration environment and every revision file (names and contents)."""
    h = hashlib.sha256()
    for path in [MIGRATIONS_DIR / "env.py", *sorted((MIGRATIONS_DIR / "versions").glob("*.py"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def dump(engine: Engine) -> dict[str, Any]:
    """The script of a migrated SQLite database: its statements in the order they were made (SQLite's own
    objects, such as sqlite_sequence, left out: it makes them itself), then every row the migrations wrote
    (alembic_version's revision, the API key generation counter's first value), table by table."""
    with engine.connect() as conn:
        made = [tuple(r) for r in conn.execute(text("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                                                    "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"))]
        rows = []
        for kind, name, _ in made:
            if kind == "table":
                for row in conn.exec_driver_sql(f'SELECT * FROM "{name}" ORDER BY rowid'):
                    if not all(v is None or isinstance(v, (int, str)) for v in row):
                        raise ValueError(f"{name}: a migration wrote a value the script cannot hold: {row!r}")
                    rows.append([name, list(row)])
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return {"revision": revision, "migrations_sha256": migrations_digest(), "statements": [sql for _, _, sql in made],
            "rows": rows}


def _script() -> dict[str, Any] | None:
    try:
        script = json.loads(SCRIPT.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(script, dict) or script.get("migrations_sha256") != migrations_digest():
        return None  # made from other migrations than these
    return script


def prepare(engine: Engine) -> bool:
    """True when `engine`'s database needs no migration: an empty SQLite database given the script, or one
    already at the script's revision. False otherwise (then `migrate` runs)."""
    if engine.dialect.name != "sqlite":
        return False
    script = _script()
    if script is None:
        return False
    with engine.connect() as conn:  # (errors come as SQLAlchemy's, as from a migration: Store words them)
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: a second process opening the same new file waits
        try:
            if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar() == 0:
                for statement in script["statements"]:
                    conn.exec_driver_sql(statement)
                for table, values in script["rows"]:
                    conn.exec_driver_sql(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(values))})', tuple(values))
                conn.commit()
                return True
            known = conn.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").scalar()
            revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() if known else None
        finally:
            conn.rollback()  # (after the commit above: nothing left to roll back)
    return revision is not None and revision == script["revision"]


def main() -> None:
    """Write SCRIPT from the migrations: `python -m ringfence.store.sqlite_schema`."""
    import tempfile

    from . import make_engine, migrate

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'schema.sqlite3'}")
        migrate(engine)
        script = dump(engine)
        engine.dispose()
    SCRIPT.write_text(json.dumps(script, indent=1) + "\n")
    print(f"wrote {SCRIPT} ({len(script['statements'])} statements, revision {script['revision']})")


if __name__ == "__main__":
    main()
