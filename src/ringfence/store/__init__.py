"""The SQL store: engine creation, schema migrations, transactional sessions.

SQLite (embedded default, a file under ringfence-data/) or PostgreSQL when
``RINGFENCE_DATABASE_URL`` points at one (``postgresql+psycopg://...``). The schema is created and
upgraded only by the Alembic migrations shipped in this package (`migrate`), never by create_all; a new
SQLite database gets the script those migrations generate (`sqlite_schema.py`: the same schema, made faster).
Invariant: every unit of work runs in one transaction (`Store.tx`): it commits fully or not at all.
Opening a store runs the migrations (so `ringfence serve` brings the schema to head on start); a
database that cannot be reached is a `ConfigError` naming the URL with its password hidden.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ConfigError, without_credentials
from . import key_generation  # noqa: F401  (registers the API key generation hooks on every session)

__all__ = ["Store", "make_engine", "migrate", "MIGRATIONS_DIR", "safe_url"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, *, schema: str | None = None) -> Engine:
    """Create an engine for SQLite or PostgreSQL; `schema` pins PostgreSQL's search_path (tests). A URL
    SQLAlchemy cannot read (a port that is not a number, an unknown driver) is a ConfigError showing the
    URL with its password hidden, never a ValueError traceback."""
    try:
        return _make_engine(url, schema)
    except (ArgumentError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        userinfo = url.split("://", 1)[-1].rpartition("@")[0]
        password = userinfo.partition(":")[2]
        if password and password in reason:
            reason = type(err).__name__  # the client's words would show the password
        raise ConfigError(f"cannot read the URL {without_credentials(url)}: {reason}", field="RINGFENCE_DATABASE_URL") from None


def _make_engine(url: str, schema: str | None) -> Engine:
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


#: In a serve data directory: where that node's identity database is (`record_location`).
LOCATION_FILE = "identity-store.json"


def record_location(data_dir: Path, engine: Engine) -> None:
    """Write where `serve` on `data_dir` keeps users, sessions and API keys (the dialect, the URL
    without its password, a SQLite file's path), so that `backup create` on that directory finds
    them or refuses: a backup of a PostgreSQL node taken without RINGFENCE_DATABASE_URL said OK and
    held no identity at all (new-user review, session 19). Mode 0600; rewritten at every start."""
    import json

    url = engine.url.set(query={})  # a password may also be a query parameter: no query is kept
    record = {"dialect": engine.dialect.name, "url": url.render_as_string(hide_password=True)}
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        path = Path(str(engine.url.database)).resolve()  # inside the data directory: relative (a moved folder keeps it)
        root = data_dir.resolve()
        record["path"] = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    from ..nodekey import write_private

    # a new file of this user's: DIR/.identity-store.json.tmp, a link uid 4242 made to a root file, was
    # opened O_TRUNC, so that file was overwritten and the link renamed into place (intruder review, session 23)
    write_private(data_dir / LOCATION_FILE, json.dumps(record).encode())


def recorded_location(data_dir: Path) -> dict[str, str] | None:
    """What `record_location` wrote for `data_dir`, or None (a node older than it, or not a serve directory)."""
    import json

    try:
        record = json.loads((data_dir / LOCATION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {k: str(v) for k, v in record.items()} if isinstance(record, dict) else None


def same_database(url: str, recorded: str) -> bool:
    """Whether database URL `url` names the database `recorded` (a URL without its password) does."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    def names(u: str) -> tuple[object, ...]:  # the driver (postgresql, postgresql+psycopg) and password aside
        parsed = make_url(u)
        return parsed.get_backend_name(), parsed.username, (parsed.host or "").lower(), parsed.port or 5432, parsed.database

    try:
        return names(url) == names(recorded)
    except (ArgumentError, ValueError):
        return False


def node_identity_store(data: Path, pg_url: str = "", *, url_option: str = "RINGFENCE_DATABASE_URL",
                        missing_field: str | None = None) -> tuple[Path | None, str]:
    """Where the node of `serve --data DATA` keeps its identity store (users, API keys, the monitoring event
    stream), as its serve recorded it (`record_location`): (the SQLite file, "") or (None, the PostgreSQL URL).
    DATA may be the node folder itself (DATA/engine). `pg_url`: a PostgreSQL URL the caller was given (by
    `url_option`), which must name the node's recorded database (`same_database`). Refused (ConfigError): a
    PostgreSQL node and no such URL (field `missing_field`, default `url_option`), a URL naming another
    database, a PostgreSQL URL for a node that keeps its store elsewhere, a recorded SQLite file that is not
    there. A node without a record: DATA/identity.sqlite3 (not checked: the caller says what it needs).
    One answer for `backup create` and `monitoring export/backtest/deidentify`."""
    data = data.parent if data.name == "engine" else data  # serve --data DIR keeps its node in DIR/engine
    record = recorded_location(data)
    if record is not None and record.get("dialect") == "postgresql":
        where = record.get("url", "?")
        if not pg_url:
            raise ConfigError(f"the node keeps its users and API keys in PostgreSQL ({where}), its event stream too; set "
                              f"{url_option} to that database", field=missing_field or url_option)
        if not same_database(pg_url, record.get("url", "")):
            raise ConfigError(f"names another database than the node's ({where})", field=url_option)
        return None, pg_url
    if record is not None and pg_url:
        raise ConfigError(f"the node keeps its users and API keys in {record.get('dialect')} "
                          f"({record.get('path') or record.get('url')}), not in PostgreSQL; unset it", field=url_option)
    if pg_url:
        return None, pg_url
    if record is not None and record.get("dialect") == "sqlite" and record.get("path"):
        recorded = data / record["path"]  # (an absolute path stays as it is)
        if not recorded.is_file():
            raise ConfigError(f"the node keeps its users and API keys in {recorded}, which is not there (moved with the "
                              "data directory from elsewhere?)", field="--data")
        return recorded, ""
    return data / "identity.sqlite3", ""


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to `revision` with the migrations shipped in the package."""
    from alembic import command  # here: a start that needs no migration never imports Alembic (sqlite_schema.py)
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # `%` doubled for the configparser under Alembic's Config: a URL with a query (?host=%2Fvar%2Frun%2Fpostgresql,
    # sslrootcert=%2Fetc...: the ways prod mode takes, store/transport.py) was "invalid interpolation syntax"
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class Store:
    """A migrated database plus a transactional session factory."""

    def __init__(self, engine: Engine, *, run_migrations: bool = True) -> None:
        self.engine = engine
        if run_migrations:
            from .sqlite_schema import prepare

            try:
                if not prepare(engine):  # a new SQLite file made by one script, or one at head already
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
