"""`ringfence serve` on both store profiles: SQLite (embedded default) and PostgreSQL (production).

Each parametrized run starts a real server process. The PostgreSQL run gets a fresh database
(created and dropped by tests/pgtest.py) through `RINGFENCE_DATABASE_URL`; an unreachable
PostgreSQL makes it FAIL, never skip. Checked through the running exchange: the schema is
migrated on start, API-key authentication (HMAC signatures) reads keys from that database, a
sign-up over HTTP lands in it, and a restart keeps every key working (migrations are idempotent).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from pgtest import PROFILE, pg_database, profile_database_url
from sqlalchemy import create_engine, text

from .conftest import Server, free_port


def _signed(secret: str, params: dict[str, str]) -> str:
    full = dict(params, timestamp=str(int(time.time() * 1000)), recvWindow="10000")
    payload = urlencode(full)
    return payload + "&signature=" + hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


@contextlib.contextmanager
def _profile(kind: str, tmp_path) -> Iterator[tuple[dict[str, str], str]]:
    """Yield (environment for serve, SQLAlchemy URL the server's identity lives in)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'identity.sqlite3'}"
        # the default (no setting) is SQLite in the data folder; on the suite's PostgreSQL profile
        # (tests/pgtest.py) the Server would get a database, so SQLite is then chosen explicitly
        yield ({} if PROFILE == "sqlite" else {"RINGFENCE_DATABASE_URL": url}), url
        return
    with pg_database() as url:
        yield {"RINGFENCE_DATABASE_URL": url}, url


def _rows(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_serve_runs_identity_and_api_keys_on_the_selected_store(kind, tmp_path):
    with _profile(kind, tmp_path) as (env, url):
        srv = Server(tmp_path / "data", env=env, chains=False)
        try:
            assert f"identity store: {kind} " in srv.log_text()
            assert "schema revision 0005_i18n" in srv.log_text()
            alice = srv.keys["alice"]
            with httpx.Client(base_url=srv.base, timeout=10) as http:
                ok = http.get("/api/v3/account?" + _signed(alice["api_secret"], {}), headers={"X-MBX-APIKEY": alice["api_key"]})
                assert ok.status_code == 200, ok.text
                assert {b["asset"] for b in ok.json()["balances"]} >= {"BTC", "USDT"}
                forged = http.get("/api/v3/account?" + _signed("0" * 64, {}), headers={"X-MBX-APIKEY": alice["api_key"]})
                assert forged.status_code in (400, 401) and forged.json()["code"] == -1022, forged.text
                signup = http.post("/signup", data={"email": f"carol-{kind}@example.com", "password": "correct horse battery staple 42"})
                assert signup.status_code == 200, signup.text
            # the keys and the new user are rows of the selected database, nowhere else
            keys = _rows(url, "SELECT count(*) FROM identity_api_keys")[0][0]
            assert keys >= 3
            assert _rows(url, f"SELECT email FROM identity_users WHERE email = 'carol-{kind}@example.com'") == [(f"carol-{kind}@example.com",)]
            assert (tmp_path / "data" / "identity.sqlite3").exists() == (kind == "sqlite")
        finally:
            assert srv.stop() == 0
        # restart on the same data and database: migrations run again (no-op), keys still work
        again = Server(tmp_path / "data", env=env, chains=False)
        try:
            with httpx.Client(base_url=again.base, timeout=10) as http:
                ok = http.get("/api/v3/account?" + _signed(alice["api_secret"], {}), headers={"X-MBX-APIKEY": alice["api_key"]})
                assert ok.status_code == 200, ok.text
            assert _rows(url, "SELECT version_num FROM alembic_version") == [("0005_i18n",)]
        finally:
            assert again.stop() == 0


def test_serve_refuses_an_unreachable_database_without_printing_its_password(tmp_path):
    port = free_port()  # nothing listens there
    env = {"RINGFENCE_DATABASE_URL": f"postgresql+psycopg://rf:hunter2-secret@127.0.0.1:{port}/nope"}
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "data"), "--port", str(free_port())],
        env=dict(os.environ, **env), capture_output=True, text=True, timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "RINGFENCE_DATABASE_URL" in out and "cannot open the database" in out, out
    assert "hunter2-secret" not in out and "***" in out, out
    assert "Traceback" not in out, out


def test_the_suite_profile_gives_each_data_folder_its_own_postgresql_database(tmp_path):
    """`RINGFENCE_TEST_PROFILE=postgresql` (make test-postgresql): a database per server folder, the
    same one for a restart on that folder, a real PostgreSQL database (no SQLite fallback), all
    dropped at the end of the session. The sqlite profile leaves the server's default alone."""
    from pgtest import drop_profile_databases

    assert profile_database_url(tmp_path / "a", "sqlite") is None
    first = profile_database_url(tmp_path / "a", "postgresql")
    assert first is not None and first.startswith("postgresql")
    assert profile_database_url(tmp_path / "a", "postgresql") == first  # a restart finds its users again
    other = profile_database_url(tmp_path / "b", "postgresql")
    assert other is not None and other != first
    assert _rows(first, "SELECT current_database()") == [(first.rsplit("/", 1)[1],)]
    names = {first.rsplit("/", 1)[1], other.rsplit("/", 1)[1]}
    assert drop_profile_databases([tmp_path / "a", tmp_path / "b"]) == 2
    with pg_database() as admin_url:  # any connection to the server, to list what is left
        left = {r[0] for r in _rows(admin_url, "SELECT datname FROM pg_database")}
    assert not names & left
