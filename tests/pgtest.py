"""PostgreSQL for tests: a fresh schema or database per test, created and dropped here.

The server is the machine's PostgreSQL (127.0.0.1:5432, trust auth; `RINGFENCE_TEST_PG_URL`
overrides). When it is unreachable, creating the schema or database raises: the test FAILS with
the connection error, it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

__all__ = ["PG_URL", "pg_schema", "pg_database"]

PG_URL = os.environ.get("RINGFENCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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
