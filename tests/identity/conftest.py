"""Fixtures: every identity test runs on SQLite AND on the real PostgreSQL at 127.0.0.1:5432.

PostgreSQL runs in a fresh schema per test, created and dropped by the fixture (tests/pg.py). If PostgreSQL is not reachable the
PostgreSQL half FAILS — it is never skipped. The clock is a settable integer so tests move time.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from ringfence.identity import IdentityContext, accounts
from ringfence.settings import Settings
from ringfence.store import Store
from ringfence.store.models import Base, OutboxMessage

from pgtest import PG_URL, pg_schema

START_S = 1_800_000_000
PASSWORD = "correct horse battery staple 42"


class Clock:
    def __init__(self, now_s: int = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> int:
        return self.now_s

    def advance(self, seconds: int) -> None:
        self.now_s += seconds


@pytest.fixture
def pg_store():
    """A fresh PostgreSQL schema per test, migrated on open and dropped afterwards (~70 ms)."""
    with pg_schema() as schema:
        st = Store.from_url(PG_URL, schema=schema)
        try:
            yield st
        finally:
            st.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        st = Store.from_url(f"sqlite:///{tmp_path}/identity.sqlite3")
        yield st
        st.engine.dispose()
        return
    yield request.getfixturevalue("pg_store")


@pytest.fixture
def clock():
    return Clock()


def make_settings(**overrides) -> Settings:
    base = dict(
        mode="dev",
        identity_argon2_memory_kib=1024,
        identity_argon2_time_cost=1,
        identity_argon2_parallelism=1,
        identity_rp_id="localhost",
        identity_origin="http://localhost:8000",
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings(tmp_path_factory):
    return make_settings()


@pytest.fixture
def ctx(store, settings, clock):
    return IdentityContext(store=store, settings=settings, clock=clock)


def outbox(ctx, *, to: str | None = None, template: str | None = None) -> list[OutboxMessage]:
    with ctx.store.tx() as db:
        q = select(OutboxMessage).order_by(OutboxMessage.id)
        if to:
            q = q.where(OutboxMessage.to_addr == to)
        if template:
            q = q.where(OutboxMessage.template == template)
        return list(db.scalars(q))


def token_from_mail(msg: OutboxMessage) -> str:
    m = re.search(r"token=([A-Za-z0-9_\-]+)", msg.body)
    assert m, msg.body
    return m.group(1)


def register(ctx, email: str = "alice@example.com", password: str = PASSWORD, ip: str = "198.51.100.7") -> str:
    """Sign up and verify through the real e-mail link. Returns the account_id."""
    accounts.sign_up(ctx, email, password, ip=ip)
    msg = outbox(ctx, to=email, template="verify_email")[-1]
    return accounts.verify_email(ctx, token_from_mail(msg))


def sign_in(ctx, email: str = "alice@example.com", password: str = PASSWORD, ip: str = "198.51.100.7", ua: str = "pytest"):
    return accounts.login(ctx, email, password, ip=ip, user_agent=ua)


def enable_totp(ctx, clock, email: str = "alice@example.com"):
    """Register, sign in and turn TOTP on. Returns (pyotp.TOTP, fresh session token, recovery codes)."""
    import pyotp

    from ringfence.identity import second_factor as sf

    register(ctx, email)
    token = sign_in(ctx, email).session.token
    enrollment = sf.begin_totp_enrollment(ctx, token)
    totp = pyotp.TOTP(enrollment.secret_base32)
    issued, codes = sf.confirm_totp_enrollment(ctx, token, totp.at(clock.now_s))
    confirm_first_factor_by_mail(ctx, email)
    clock.advance(30)
    return totp, issued.token, codes


def confirm_first_factor_by_mail(ctx, email: str = "alice@example.com") -> str:
    """Click the link of the latest "confirm your new second factor" e-mail. Returns the account_id."""
    from ringfence.identity import second_factor as sf

    msg = outbox(ctx, to=email, template="second_factor_confirm")[-1]
    link = re.search(r"/security/confirm-factor\?token=([A-Za-z0-9_\-]+)", msg.body)
    assert link, msg.body
    return sf.confirm_first_factor(ctx, link.group(1))


def snapshot(ctx) -> dict[str, list[tuple]]:
    """Every row of every identity table: compare before/after an attack to prove nothing changed."""
    out: dict[str, list[tuple]] = {}
    with ctx.store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            out[table.name] = sorted((tuple(r) for r in conn.execute(table.select())), key=repr)
    return out
