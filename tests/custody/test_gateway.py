"""The gateway side of a withdrawal request with the real identity layer (SQLite, embedded default):
fresh second factor, the post-change lock, the hold, and the confirmation e-mail carrying the user's
anti-phishing code whose link confirms the withdrawal. Refusals leave no hold and send no mail."""

from __future__ import annotations

import re

import pytest

from ringfence.custody.commands import ConfirmWithdrawalEmail
from ringfence.custody.withdrawals import submit_withdrawal
from ringfence.errors import InsufficientFunds, RingfenceError, SecondFactorRequired, WithdrawalsLocked
from ringfence.identity import IdentityContext, accounts, second_factor as sf
from ringfence.money import format_amount
from ringfence.store import Store
from pgtest import profile_store_url

from ringfence.settings import Settings
from ringfence.store.models import OutboxMessage

# the SQL store (identity, read models) is exercised: `make test` runs this file again on PostgreSQL
pytestmark = pytest.mark.store

PASSWORD = "correct horse battery staple 42"


class Clock:
    def __init__(self, now_s: int = 1_800_000_000) -> None:
        self.now_s = now_s

    def __call__(self) -> int:
        return self.now_s

    def advance(self, seconds: int) -> None:
        self.now_s += seconds


def make_settings() -> Settings:
    return Settings(mode="dev", identity_argon2_memory_kib=1024, identity_argon2_time_cost=1,
                    identity_argon2_parallelism=1, identity_rp_id="localhost", identity_origin="http://localhost:8000")


def outbox(ctx, *, template: str) -> list[OutboxMessage]:
    from sqlalchemy import select

    with ctx.store.tx() as db:
        return list(db.scalars(select(OutboxMessage).where(OutboxMessage.template == template).order_by(OutboxMessage.id)))


def enable_totp(ctx, clock, email: str = "alice@example.com"):
    """Sign up, verify through the e-mailed link, sign in, turn TOTP on: (totp, session token)."""
    import pyotp

    accounts.sign_up(ctx, email, PASSWORD, ip="198.51.100.7")
    link = outbox(ctx, template="verify_email")[-1].body
    accounts.verify_email(ctx, re.search(r"token=([A-Za-z0-9_\-]+)", link).group(1))
    token = accounts.login(ctx, email, PASSWORD, ip="198.51.100.7", user_agent="pytest").session.token
    enrollment = sf.begin_totp_enrollment(ctx, token)
    totp = pyotp.TOTP(enrollment.secret_base32)
    issued, _ = sf.confirm_totp_enrollment(ctx, token, totp.at(clock.now_s))
    confirm = outbox(ctx, template="second_factor_confirm")[-1].body  # a first factor counts once confirmed by mail
    sf.confirm_first_factor(ctx, re.search(r"confirm-factor\?token=([A-Za-z0-9_\-]+)", confirm).group(1))
    clock.advance(30)
    return totp, issued.token, None
from .flows import fund_btc, outside_btc_address


@pytest.fixture
def ident(tmp_path):
    with profile_store_url(tmp_path) as url:  # SQLite, or PostgreSQL on the suite's PostgreSQL profile
        store = Store.from_url(url)
        settings = make_settings()
        settings.identity_withdrawal_lock_s = 600
        clock = Clock()
        yield IdentityContext(store=store, settings=settings, clock=clock), clock
        store.engine.dispose()


def test_request_needs_fresh_2fa_and_mails_anti_phishing_code(net, ident) -> None:
    ctx, clock = ident
    totp, token, _ = enable_totp(ctx, clock)
    accounts.set_anti_phishing_code(ctx, token, "Blue-Otter_7")
    with ctx.store.tx() as db:
        from sqlalchemy import select
        from ringfence.store.models import User

        account_id = db.scalars(select(User.account_id)).first()
    fund_btc(net, account_id, 100_000_000)
    dest = outside_btc_address(20)
    pending = len(net.ledger.pending)
    with pytest.raises(WithdrawalsLocked):  # enabling TOTP was a credential change: 600 s lock
        submit_withdrawal(net.node, ctx, token, asset="BTC", address=dest, amount="0.1")
    clock.advance(601)
    with pytest.raises(SecondFactorRequired):
        submit_withdrawal(net.node, ctx, token, asset="BTC", address=dest, amount="0.1")
    token = sf.step_up(ctx, token, method="totp", value=totp.at(clock.now_s)).token
    with pytest.raises(InsufficientFunds):
        submit_withdrawal(net.node, ctx, token, asset="BTC", address=dest, amount="5")
    with pytest.raises(RingfenceError) as exc:
        submit_withdrawal(net.node, ctx, token, asset="BTC", address=dest, amount="NaN")
    assert exc.value.field == "amount"
    assert len(net.ledger.pending) == pending and not outbox(ctx, template="withdrawal_confirmation")
    wid = submit_withdrawal(net.node, ctx, token, asset="BTC", address=dest, amount="0.1", device_id="d1", ip="198.51.100.7")
    w = net.state.withdrawals[wid]
    assert w.state == "requested" and w.amount_minor == 10_000_000
    (msg,) = outbox(ctx, template="withdrawal_confirmation")
    assert "[Blue-Otter_7]" in msg.subject and "Anti-phishing code: Blue-Otter_7" in msg.body
    assert "0.1 BTC" in msg.body and dest in msg.body
    # what the account pays (the amount and the fee), the fee, what arrives, the link's end, a freeze link
    fee = format_amount(w.fee_minor, 8, trim=True)
    assert f"asked to withdraw {format_amount(w.amount_minor + w.fee_minor, 8, trim=True)} BTC" in msg.body, msg.body
    assert f"Fee: {fee} BTC\nThe address receives: 0.1 BTC\n" in msg.body and "the link works once, until " in msg.body
    assert re.search(r"change your password:\nhttps?://\S+/security/freeze\?token=\S+$", msg.body), msg.body
    link_token = re.search(r"token=([A-Za-z0-9_\-]+)", msg.body).group(1)
    with pytest.raises(RingfenceError) as exc:
        net.execute(ConfirmWithdrawalEmail(wid, "BTC", "btc_hot", link_token + "x"))
    assert exc.value.field == "token"
    net.execute(ConfirmWithdrawalEmail(wid, "BTC", "btc_hot", link_token))
    assert w.state == "confirmed"
    net.withdrawals.run_until_idle()
    assert w.state == "broadcast"


def test_identity_risk_facts_feed_the_risk_review(net, ident) -> None:
    from ringfence.custody.withdrawals import identity_risk_facts

    ctx, clock = ident
    totp, token, _ = enable_totp(ctx, clock)
    clock.advance(601)
    token = sf.step_up(ctx, token, method="totp", value=totp.at(clock.now_s)).token
    from sqlalchemy import select
    from ringfence.store.models import User

    with ctx.store.tx() as db:
        account_id = db.scalars(select(User.account_id)).first()
    fund_btc(net, account_id, 100_000_000)
    net.withdrawals.identity_facts = identity_risk_facts(ctx)
    wid = submit_withdrawal(net.node, ctx, token, asset="BTC", address=outside_btc_address(21), amount="0.2",
                            device_id="d2", ip="203.0.113.99")
    link = re.search(r"token=([A-Za-z0-9_\-]+)", outbox(ctx, template="withdrawal_confirmation")[-1].body).group(1)
    net.execute(ConfirmWithdrawalEmail(wid, "BTC", "btc_hot", link))
    net.withdrawals.step()
    w = net.state.withdrawals[wid]
    assert any(r.startswith("credentials changed 631 s ago") for r in w.risk_reasons), w.risk_reasons
    assert "new IP address" in w.risk_reasons
    assert w.risk_score == 10 + 20 + 20 + 10  # first withdrawal, new address, recent change, new IP
