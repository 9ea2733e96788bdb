"""PostgreSQL for tests: a fresh schema or database per test, created and dropped here.

The server is the machine's PostgreSQL (127.0.0.1:5432, trust auth; `RINGFENCE_TEST_PG_URL`
overrides). When it is unreachable, creating the schema or database raises: the test FAILS with
the connection error, it is never skipped.

The suite's store profile (`RINGFENCE_TEST_PROFILE`, `sqlite` by default): with `postgresql`
(`make test-postgresql`), every server the tests start (tests/api/conftest.py `Server`) keeps its
identity and read models in a PostgreSQL database of its own — one per data folder, so a restart
on the same folder finds its users and keys again, as it finds `identity.sqlite3` on SQLite —
created on first use and dropped at the end of the session (`drop_profile_databases`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

__all__ = ["PG_URL", "PROFILE", "pg_schema", "pg_database", "profile_database_url", "profile_store_url",
           "drop_profile_databases"]

PG_URL = os.environ.get("RINGFENCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PROFILES = ("sqlite", "postgresql")
PROFILE = os.environ.get("RINGFENCE_TEST_PROFILE", "sqlite")
if PROFILE not in PROFILES:
    raise RuntimeError(f"RINGFENCE_TEST_PROFILE must be one of {', '.join(PROFILES)}, not {PROFILE!r}")
_profile_databases: dict[str, str] = {}  # data folder -> its database URL (this test process's)


def profile_database_url(data: Path, profile: str | None = None) -> str | None:
    """The database URL a server on `data` uses under the suite's profile: None on `sqlite` (the
    server's default, DATA/identity.sqlite3); on `postgresql` a database of its own, created on
    the first call for that folder and the same on every later call."""
    if (profile or PROFILE) != "postgresql":
        return None
    key = str(Path(data).resolve())
    if key not in _profile_databases:
        name = "rf_test_" + secrets.token_hex(6)
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:  # fails loudly (never falls back to SQLite) without PostgreSQL
                conn.execute(text(f"CREATE DATABASE {name}"))
        finally:
            admin.dispose()
        _profile_databases[key] = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    return _profile_databases[key]


@contextlib.contextmanager
def profile_store_url(folder: Path) -> Iterator[str]:
    """The URL of a fresh store for an in-process test under the suite's profile: on `sqlite` a file
    FOLDER/identity.sqlite3; on `postgresql` a database of its own, dropped when the block ends."""
    url = profile_database_url(folder)
    if url is None:
        yield f"sqlite:///{Path(folder).resolve() / 'identity.sqlite3'}"
        return
    try:
        yield url
    finally:
        drop_profile_databases([folder])


def drop_profile_databases(folders: list[Path] | None = None) -> int:
    """Drop the databases `profile_database_url` created in this process (all, or those of
    `folders`); returns how many."""
    keys = list(_profile_databases) if folders is None else [str(Path(f).resolve()) for f in folders]
    urls = [_profile_databases.pop(k) for k in keys if k in _profile_databases]
    if not urls:
        return 0
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for url in urls:
                conn.execute(text(f"DROP DATABASE IF EXISTS {make_url(url).database} WITH (FORCE)"))
    finally:
        admin.dispose()
    return len(urls)


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """CREATE SCHEMA rf_test_<random>; yield its name; DROP SCHEMA ... CASCADE."""
    schema = "rf_test_" + secrets.token_hex(6)
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:  # fails loudly (never skips) when PostgreSQL is missing
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            yield schema
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """CREATE DATABASE rf_test_<random>; yield its URL; DROP DATABASE ... WITH (FORCE)."""
    name = "rf_test_" + secrets.token_hex(6)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()
