"""The SQL store: engine creation, schema migrations, transactional sessions.

SQLite (embedded default, a file under ringfence-data/) or PostgreSQL when
``RINGFENCE_DATABASE_URL`` points at one (``postgresql+psycopg://...``). The schema is created and
upgraded only by the Alembic migrations shipped in this package (`migrate`), never by create_all.
Invariant: every unit of work runs in one transaction (`Store.tx`): it commits fully or not at all.
Opening a store runs the migrations (so `ringfence serve` brings the schema to head on start); a
database that cannot be reached is a `ConfigError` naming the URL with its password hidden.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ConfigError
from . import key_generation  # noqa: F401  (registers the API key generation hooks on every session)

__all__ = ["Store", "make_engine", "migrate", "MIGRATIONS_DIR", "safe_url"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, *, schema: str | None = None) -> Engine:
    """Create an engine for SQLite or PostgreSQL; `schema` pins PostgreSQL's search_path (tests)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
        return create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    raise ConfigError("must be a sqlite:/// or postgresql+psycopg:// URL", field="RINGFENCE_DATABASE_URL")


def safe_url(engine: Engine) -> str:
    """The engine's URL with any password replaced by ***: safe to print and log."""
    return engine.url.render_as_string(hide_password=True)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to `revision` with the migrations shipped in the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class Store:
    """A migrated database plus a transactional session factory."""

    def __init__(self, engine: Engine, *, run_migrations: bool = True) -> None:
        self.engine = engine
        if run_migrations:
            try:
                migrate(engine)
            except OperationalError as err:
                # psycopg's reason names host and port, never the password; the URL is redacted
                reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else "unreachable"
                raise ConfigError(f"cannot open the database {safe_url(engine)}: {reason}", field="RINGFENCE_DATABASE_URL") from None
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> "Store":
        return cls(make_engine(url, schema=schema))

    def describe(self) -> str:
        """`postgresql postgresql+psycopg://user:***@host/db, schema revision 0003_api_key_generation`."""
        with self.engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return f"{self.engine.dialect.name} {safe_url(self.engine)}, schema revision {revision}"

    @contextlib.contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back everything on any exception."""
        with self._sessions() as session:
            with session.begin():
                yield session
