"""The store: migrations build exactly the models' schema on both databases; settings refuse defaults."""

from __future__ import annotations

import socket

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import inspect, text

from ringfence.errors import ConfigError
from ringfence.identity import IdentityContext, accounts
from ringfence.settings import DEV_IDENTITY_SECRET_KEY_HEX, Settings, load_settings
from ringfence.store import make_engine, migrate
from ringfence.store.models import Base

from .conftest import make_settings


def test_migrations_match_models(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    tables = set(inspect(store.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables


def test_migrate_is_idempotent(store):
    migrate(store.engine)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0005_i18n"


def test_postgres_backend_really_is_postgres(store, request):
    name = store.engine.dialect.name
    assert name in ("sqlite", "postgresql")
    assert ("postgresql" in request.node.name) == (name == "postgresql")


def test_bad_database_url_is_config_error():
    with pytest.raises(ConfigError) as err:
        make_engine("mysql://x")
    assert err.value.field == "RINGFENCE_DATABASE_URL"


def test_prod_mode_refuses_default_secret(monkeypatch):
    monkeypatch.setenv("RINGFENCE_MODE", "prod")
    monkeypatch.setenv("RINGFENCE_IDENTITY_ORIGIN", "https://ex.example")
    monkeypatch.setenv("RINGFENCE_IDENTITY_SMTP_HOST", "mail.ex.example")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.field == "RINGFENCE_IDENTITY_SECRET_KEY_HEX"
    monkeypatch.setenv("RINGFENCE_IDENTITY_SECRET_KEY_HEX", "ab" * 32)
    assert load_settings().mode == "prod"
    monkeypatch.setenv("RINGFENCE_IDENTITY_ORIGIN", "http://ex.example")
    with pytest.raises(ConfigError):
        load_settings()


def test_prod_mode_refuses_weak_argon2():
    s = Settings(mode="prod", identity_secret_key_hex="cd" * 32, identity_origin="https://x", identity_argon2_memory_kib=1024)
    with pytest.raises(ConfigError):
        s.check_production_safe()


def test_context_refuses_default_key_in_prod(store):
    with pytest.raises(ConfigError):
        IdentityContext(store=store, settings=Settings(mode="prod", identity_origin="https://x",
                                                       identity_secret_key_hex=DEV_IDENTITY_SECRET_KEY_HEX))


def _dump(store) -> bytes:
    out = []
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                for value in row:
                    out.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\x00".join(out)


@hsettings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(password=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=14, max_size=40))
def test_property_no_secret_is_stored_in_plaintext(store, clock, password):
    """Sign up, enable TOTP, make an API key: neither password, TOTP seed, recovery code, session
    token nor API secret appears anywhere in the database."""
    from sqlalchemy import delete

    from ringfence.identity import api_keys

    ctx = IdentityContext(store=store, settings=make_settings(), clock=clock)
    with store.tx() as db:  # hypothesis re-runs the body: start from empty tables
        for table in reversed(Base.metadata.sorted_tables):
            db.execute(delete(table))
    password = "Zq" + password  # avoid the common list
    email = "prop@example.com"
    accounts.sign_up(ctx, email, password, ip="192.0.2.1")
    from .conftest import outbox, token_from_mail

    accounts.verify_email(ctx, token_from_mail(outbox(ctx, template="verify_email")[-1]))
    result = accounts.login(ctx, email, password, ip="192.0.2.1")
    from ringfence.identity import second_factor as sf
    import pyotp

    enrollment = sf.begin_totp_enrollment(ctx, result.session.token)
    issued, codes = sf.confirm_totp_enrollment(ctx, result.session.token, pyotp.TOTP(enrollment.secret_base32).at(clock.now_s))
    from .conftest import confirm_first_factor_by_mail

    confirm_first_factor_by_mail(ctx, email)
    key = api_keys.create_api_key(ctx, issued.token, scopes=["read"])
    dump = _dump(store)
    secrets = [password, enrollment.secret_base32, issued.token, result.session.token, key.secret, key.api_key]
    secrets += [c.replace("-", "") for c in codes] + codes
    for secret in secrets:
        assert secret.encode() not in dump
    clock.advance(3600)


def test_cli_migrate_and_deliver_mail(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ringfence.cli import app

    monkeypatch.setenv("RINGFENCE_DATABASE_URL", f"sqlite:///{tmp_path}/cli.sqlite3")
    runner = CliRunner()
    result = runner.invoke(app, ["identity", "migrate"])
    assert result.exit_code == 0, result.output
    assert "head" in result.output and (tmp_path / "cli.sqlite3").exists()
    # no SMTP server on the configured port: a clear refusal, not "sent=0" with exit 0
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RINGFENCE_IDENTITY_SMTP_PORT", str(port))
    result = runner.invoke(app, ["identity", "deliver-mail", "--once"])
    assert result.exit_code == 2 and "cannot reach the SMTP server" in " ".join(result.output.split()), result.output
    assert "sent=" not in result.output

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook)
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        result = runner.invoke(app, ["identity", "deliver-mail", "--once"])
    finally:
        controller.stop()
    assert result.exit_code == 0 and "sent=0 failed=0 dead=0" in result.output, result.output  # nothing queued
    assert "Example:" in runner.invoke(app, ["identity", "--help"]).output


@pytest.mark.parametrize(("smtp", "refused"), [
    ({}, "RINGFENCE_IDENTITY_SMTP_HOST"),  # dev mode's catcher 127.0.0.1:8025, left as it is
    ({"identity_smtp_host": "127.0.0.1"}, "RINGFENCE_IDENTITY_SMTP_SECURITY"),
    ({"identity_smtp_host": "localhost", "identity_smtp_port": 2525}, "RINGFENCE_IDENTITY_SMTP_SECURITY"),
    ({"identity_smtp_host": "::1", "identity_smtp_port": 1025}, "RINGFENCE_IDENTITY_SMTP_SECURITY"),
    ({"identity_smtp_host": "127.0.0.2", "identity_smtp_port": 8025}, "RINGFENCE_IDENTITY_SMTP_SECURITY"),
    ({"identity_smtp_host": "127.0.0.1", "identity_smtp_port": 25}, None),  # only root listens below 1024
    ({"identity_smtp_host": "127.0.0.1", "identity_smtp_security": "starttls"}, None),  # the certificate is verified
    ({"identity_smtp_host": "127.0.0.1", "identity_smtp_security": "ssl", "identity_smtp_port": 4465}, None),
    ({"identity_smtp_host": "127.0.0.1", "identity_smtp_local_plain_ok": True}, None),  # the operator's statement
    ({"identity_smtp_host": "mail.exchange.example", "identity_smtp_port": 2525}, None),
])
def test_prod_mode_refuses_a_relay_another_local_user_could_stand_in_for(smtp, refused):
    """Intruder review of #22: with the default relay 127.0.0.1:8025 and no TLS, any local user listening on 8025
    got the password-reset and verification mail in prod mode."""
    s = Settings(mode="prod", identity_secret_key_hex="cd" * 32, identity_origin="https://x", **smtp)
    assert [p.field for p in s.production_problems()] == ([refused] if refused else [])
    assert Settings(**smtp).production_problems() == []  # dev mode: its catcher


@pytest.mark.parametrize(("host", "plain_ok", "refused"), [
    ("127.1", False, True),  # 127.0.0.1, written short
    ("0.0.0.0", False, True),  # connects to this machine
    ("::ffff:127.0.0.1", False, True),  # IPv4-mapped loopback
    (socket.gethostname(), False, True),  # this machine's own name (`vm`, 127.0.0.1 in /etc/hosts)
    ("mail.exchange.example", False, False),  # does not resolve: not this machine
    ("127.1", True, False),  # the operator's statement that this machine has no other users
])
def test_prod_mode_decides_this_machine_by_address_not_by_name(host, plain_ok, refused):
    """Intruder review of #23: a host that is this machine but not written as `localhost` or 127.x in full passed,
    and a local user listening on the port got the SMTP AUTH password."""
    s = Settings(mode="prod", identity_secret_key_hex="cd" * 32, identity_origin="https://x", identity_smtp_host=host,
                 identity_smtp_port=2525, identity_smtp_local_plain_ok=plain_ok)
    assert [p.field for p in s.production_problems()] == (["RINGFENCE_IDENTITY_SMTP_SECURITY"] if refused else [])
