"""Mail that arrives, or a clear refusal: `ringfence serve` delivers the outbox itself, checks the
SMTP server at start outside dev mode, and `ringfence identity deliver-mail` no longer reports
`sent=0` with exit 0 when its settings are wrong. Real processes, real SMTP servers (aiosmtpd).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from ringfence.identity import IdentityContext, accounts
from ringfence.settings import Settings
from ringfence.store import Store

from .conftest import Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self, refuse_rcpt: bool = False) -> None:
        self.messages: list[tuple[list[str], str]] = []
        self.refuse_rcpt = refuse_rcpt

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd hook)
        if self.refuse_rcpt:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook)
        self.messages.append((list(envelope.rcpt_tos), envelope.content.decode("utf-8", "replace")))
        return "250 OK"


@pytest.fixture
def smtp_server():
    started = []

    def start(inbox: Inbox | None = None, *, refuse_login: bool = False):
        inbox = inbox or Inbox()
        port = free_port()
        kwargs = {}
        if refuse_login:
            kwargs = {"authenticator": lambda *a: AuthResult(success=False, handled=False), "auth_require_tls": False}
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return inbox, port

    yield start
    for c in started:
        c.stop()


def run_cli(args: list[str], env: dict[str, str], timeout_s: int = 60) -> subprocess.CompletedProcess:
    full = dict(os.environ, COLUMNS="400", **env)
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], env=full, capture_output=True, text=True, timeout=timeout_s)


def queued_database(tmp_path) -> str:
    """An identity database with one queued verification e-mail."""
    url = f"sqlite:///{tmp_path}/identity.sqlite3"
    settings = Settings(mode="dev", database_url=url, identity_argon2_memory_kib=1024, identity_argon2_time_cost=1, identity_argon2_parallelism=1)
    ctx = IdentityContext(store=Store.from_url(url), settings=settings)
    accounts.sign_up(ctx, "queued@example.com", "correct horse battery staple 42", ip="192.0.2.1")
    ctx.store.engine.dispose()
    return url


def outbox_rows(url: str) -> list[tuple[str, int]]:
    store = Store.from_url(url)
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql("SELECT status, attempts FROM identity_outbox ORDER BY id")]
    store.engine.dispose()
    return rows


def test_deliver_mail_with_a_wrong_port_exits_non_zero_and_says_which_setting(tmp_path, smtp_server):
    url = queued_database(tmp_path)
    before = outbox_rows(url)
    assert before == [("pending", 0)]
    port = free_port()  # nothing listens here
    result = run_cli(["identity", "deliver-mail", "--once"], {"RINGFENCE_DATABASE_URL": url, "RINGFENCE_IDENTITY_SMTP_PORT": str(port)})
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, out
    assert f"cannot reach the SMTP server 127.0.0.1:{port}" in out and "RINGFENCE_IDENTITY_SMTP_PORT" in out, out
    assert "sent=0" not in out
    assert outbox_rows(url) == before  # nothing was attempted, nothing counted against the message

    inbox, good_port = smtp_server()
    result = run_cli(["identity", "deliver-mail", "--once"], {"RINGFENCE_DATABASE_URL": url, "RINGFENCE_IDENTITY_SMTP_PORT": str(good_port)})
    assert result.returncode == 0 and "sent=1 failed=0 dead=0" in result.stdout, result.stdout + result.stderr
    assert [m[0] for m in inbox.messages] == [["queued@example.com"]]
    assert outbox_rows(url) == [("sent", 1)]


def test_deliver_mail_with_a_refused_login_or_a_refused_message_exits_non_zero(tmp_path, smtp_server):
    url = queued_database(tmp_path)
    _, port = smtp_server(refuse_login=True)
    env = {"RINGFENCE_DATABASE_URL": url, "RINGFENCE_IDENTITY_SMTP_PORT": str(port),
           "RINGFENCE_IDENTITY_SMTP_USERNAME": "mailer", "RINGFENCE_IDENTITY_SMTP_PASSWORD": "wrong-password-123"}
    result = run_cli(["identity", "deliver-mail", "--once"], env)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, out
    assert "refused the login of 'mailer'" in out and "RINGFENCE_IDENTITY_SMTP_PASSWORD" in out, out
    assert "wrong-password-123" not in out  # the secret is never printed

    inbox, port = smtp_server(Inbox(refuse_rcpt=True))  # reachable, but refuses the recipient
    result = run_cli(["identity", "deliver-mail", "--once"], {"RINGFENCE_DATABASE_URL": url, "RINGFENCE_IDENTITY_SMTP_PORT": str(port)})
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "sent=0 failed=1" in out and "550" in out, out
    assert outbox_rows(url) == [("pending", 1)]  # retried later with back-off


def prod_env(smtp_port: int) -> dict[str, str]:
    return {
        "RINGFENCE_MODE": "prod",
        "RINGFENCE_IDENTITY_SECRET_KEY_HEX": secrets.token_hex(32),
        "RINGFENCE_IDENTITY_ORIGIN": "https://exchange.example",
        "RINGFENCE_IDENTITY_PUBLIC_URL": "https://exchange.example",
        "RINGFENCE_IDENTITY_SMTP_HOST": "127.0.0.1",
        "RINGFENCE_IDENTITY_SMTP_PORT": str(smtp_port),
        # the test catcher speaks plain SMTP on a high port: accepted only on the operator's word that this machine
        # has no other users (settings.py smtp_problems; test_prod_serve_refuses_a_plain_relay_on_a_high_local_port)
        "RINGFENCE_IDENTITY_SMTP_LOCAL_PLAIN_OK": "1",
    }


def test_prod_serve_refuses_a_plain_relay_on_a_high_local_port(tmp_path, smtp_server):
    """Port 8025 (the default) or any port >= 1024 of a loopback address is any local user's to listen on: without
    TLS it would get the password-reset and verification mail (intruder review of #22). Refused before the probe,
    naming the variable and what is allowed; as is a prod node that never set RINGFENCE_IDENTITY_SMTP_HOST."""
    _, port = smtp_server()
    args = ["serve", "--data", str(tmp_path / "data"), "--port", str(free_port())]
    env = prod_env(port)
    del env["RINGFENCE_IDENTITY_SMTP_LOCAL_PLAIN_OK"]
    result = run_cli(args, env)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "serving on" not in out and "Traceback" not in out, out
    assert "RINGFENCE_IDENTITY_SMTP_SECURITY: none is refused" in out and "RINGFENCE_IDENTITY_SMTP_LOCAL_PLAIN_OK=1" in out, out
    assert "starttls or ssl" in out and "below 1024" in out, out
    del env["RINGFENCE_IDENTITY_SMTP_HOST"], env["RINGFENCE_IDENTITY_SMTP_PORT"]
    result = run_cli(args, env)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "RINGFENCE_IDENTITY_SMTP_HOST: must be set outside dev mode" in out, out
    assert not (tmp_path / "data").exists()


def test_prod_serve_refuses_to_start_when_smtp_is_unreachable_or_refuses_the_login(tmp_path, smtp_server):
    port = free_port()
    args = ["serve", "--data", str(tmp_path / "data"), "--port", str(free_port())]
    result = run_cli(args, prod_env(port))
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, out
    assert f"cannot reach the SMTP server 127.0.0.1:{port}" in out and "serving on" not in out, out

    _, port = smtp_server(refuse_login=True)
    env = prod_env(port) | {"RINGFENCE_IDENTITY_SMTP_USERNAME": "mailer", "RINGFENCE_IDENTITY_SMTP_PASSWORD": "nope-nope-nope"}
    result = run_cli(args, env)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "refused the login of 'mailer'" in out and "nope-nope-nope" not in out, out


def test_prod_serve_delivers_mail_itself_and_has_no_dev_mail_page(tmp_path, smtp_server):
    """The links in the mail start with RINGFENCE_IDENTITY_ORIGIN when RINGFENCE_IDENTITY_PUBLIC_URL is not set (the
    docs' prod list sets only the origin): never http://localhost:8000 nor the node's own port (#21's first prod run)."""
    inbox, port = smtp_server()
    origin = "https://exchange.nu24.test"
    env = prod_env(port) | {"RINGFENCE_IDENTITY_ORIGIN": origin}
    del env["RINGFENCE_IDENTITY_PUBLIC_URL"]
    srv = Server(tmp_path / "data", env=env, demo=False)
    try:
        assert "mail: delivered every 2000 ms to 127.0.0.1:%d" % port in srv.log_text()
        r = httpx.post(srv.base + "/signup", data={"email": "prod@example.com", "password": "correct horse battery staple 42"},
                       headers={"Origin": origin})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 20
        while not inbox.messages:
            assert time.monotonic() < deadline, "serve did not deliver the verification e-mail:\n" + srv.log_text()
            time.sleep(0.2)
        rcpts, text = inbox.messages[0]
        assert rcpts == ["prod@example.com"]
        assert re.search(r"https://exchange\.nu24\.test/verify-email\?token=[A-Za-z0-9_\-]+", text), text
        assert "localhost" not in text and srv.base not in text, text
        assert httpx.get(srv.base + "/dev/mail").status_code == 404  # dev mode only
        assert httpx.get(srv.base + "/session/v3/demoFunds").status_code in (404, 405)
        assert httpx.post(srv.base + "/session/v3/demoFunds", headers={"Origin": origin}).status_code == 404
    finally:
        assert srv.stop() == 0


def test_prod_serve_refuses_a_plain_http_link_base(tmp_path, smtp_server):
    """An explicitly set RINGFENCE_IDENTITY_PUBLIC_URL outside dev mode is https://, like the origin: refused at start,
    named, with nothing created."""
    _, port = smtp_server()
    env = prod_env(port) | {"RINGFENCE_IDENTITY_PUBLIC_URL": "http://exchange.example"}
    result = run_cli(["serve", "--data", str(tmp_path / "data"), "--port", str(free_port())], env)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "serving on" not in out and "Traceback" not in out, out
    assert "RINGFENCE_IDENTITY_PUBLIC_URL: must be an https:// address outside dev mode" in out, out
    assert not (tmp_path / "data").exists()


def test_dev_serve_without_demo_has_no_dev_mail_page_and_warns_about_smtp(tmp_path):
    port = free_port()  # nothing listens: in dev mode a warning, not a refusal
    srv = Server(tmp_path / "data", env={"RINGFENCE_IDENTITY_SMTP_PORT": str(port)}, demo=False)
    try:
        log = " ".join(srv.log_text().split())
        assert f"warning: mail: cannot reach the SMTP server 127.0.0.1:{port}" in log, log
        assert httpx.get(srv.base + "/dev/mail").status_code == 404
    finally:
        assert srv.stop() == 0
