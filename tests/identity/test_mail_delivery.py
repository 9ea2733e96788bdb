"""The mail worker `ringfence serve` runs (identity/delivery.py): supervised, so a failing round
(here the outbox table is really missing) is logged and retried, and mail flows again once the
cause is gone; `stop()` ends it. The demo's catcher receives over real SMTP."""

from __future__ import annotations

import socket
import time

import pytest

from aiosmtpd.controller import Controller
from pgtest import profile_store_url

from ringfence.identity import IdentityContext, accounts
from ringfence.identity.delivery import MailCatcher, MailDelivery, prepare_for_serve
from ringfence.store import Store
from ringfence.store.models import OutboxMessage

from .conftest import PASSWORD, make_settings


class Inbox:
    def __init__(self) -> None:
        self.rcpts: list[list[str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook)
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.store
def test_a_failing_round_is_retried_and_mail_flows_again(tmp_path):
    with profile_store_url(tmp_path) as url:  # SQLite, or PostgreSQL on the suite's PostgreSQL profile
        _failing_round_is_retried(url)


def _failing_round_is_retried(url: str) -> None:
    port = free_port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    store = Store.from_url(url)
    ctx = IdentityContext(store=store, settings=make_settings(identity_smtp_port=port))
    OutboxMessage.__table__.drop(store.engine)  # every round now fails in the database
    worker = MailDelivery(ctx, poll_ms=50)
    worker.start()
    try:
        # SQLite: "no such table"; PostgreSQL: 'relation "identity_outbox" does not exist'
        wait_until(lambda: "no such table" in worker.last_error or "does not exist" in worker.last_error)
        assert worker._thread is not None and worker._thread.is_alive()  # supervised: still running
        OutboxMessage.__table__.create(store.engine)
        accounts.sign_up(ctx, "late@example.com", PASSWORD, ip="192.0.2.1")
        wait_until(lambda: inbox.rcpts == [["late@example.com"]], timeout_s=30)  # after a failed round or two the pause is a few seconds
        wait_until(lambda: worker.sent_total == 1)  # counted once the SMTP server has answered: just after the inbox has it
    finally:
        worker.stop()
        controller.stop()
    assert worker._thread is None
    store.engine.dispose()


def test_demo_catcher_receives_over_smtp_and_prod_never_gets_one(tmp_path):
    store = Store.from_url(f"sqlite:///{tmp_path}/identity.sqlite3")
    ctx = IdentityContext(store=store, settings=make_settings())
    setup = prepare_for_serve(ctx, demo=True, smtp_configured=False)
    try:
        assert isinstance(setup.catcher, MailCatcher) and ctx.settings.identity_smtp_port == setup.catcher.port
        assert setup.warnings == []  # the probe reached the catcher
        accounts.sign_up(ctx, "demo@example.com", PASSWORD, ip="192.0.2.1")
        setup.delivery.run_once()
        (mail,) = setup.catcher.messages()
        assert mail.to == ("demo@example.com",) and "verify-email?token=" in mail.body
    finally:
        setup.stop()
    store.engine.dispose()
    # with an SMTP server named explicitly, --demo uses it and starts no catcher
    ctx2 = IdentityContext(store=Store.from_url(f"sqlite:///{tmp_path}/b.sqlite3"),
                           settings=make_settings(identity_smtp_port=free_port()))
    setup2 = prepare_for_serve(ctx2, demo=True, smtp_configured=True)
    assert setup2.catcher is None and "cannot reach the SMTP server" in setup2.warnings[0]
