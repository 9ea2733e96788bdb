"""Security events, the post-change withdrawal lock, e-mail change and the one-click freeze."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from ringfence.errors import AuthenticationFailed, AccountFrozen, NotFound, SecondFactorRequired, Unauthorized, ValidationError, WithdrawalsLocked
from ringfence.identity import accounts, events, second_factor as sf, sessions
from ringfence.store.models import SecurityEvent, User

from .conftest import PASSWORD, enable_totp, outbox, register, sign_in, token_from_mail


def kinds(ctx) -> list[str]:
    with ctx.store.tx() as db:
        return list(db.scalars(select(SecurityEvent.kind).order_by(SecurityEvent.id)))


def test_password_change_locks_withdrawals_for_configured_time(ctx, clock, settings):
    settings.identity_withdrawal_lock_s = 3600
    account_id = register(ctx)
    events.check_withdrawals_allowed(ctx, account_id)
    token = sign_in(ctx).session.token
    accounts.change_password(ctx, token, PASSWORD, "a completely new passphrase 5")
    with pytest.raises(WithdrawalsLocked) as err:
        events.check_withdrawals_allowed(ctx, account_id)
    assert err.value.details["locked_until_s"] == clock.now_s + 3600
    clock.advance(3599)
    with pytest.raises(WithdrawalsLocked):
        events.check_withdrawals_allowed(ctx, account_id)
    clock.advance(1)
    events.check_withdrawals_allowed(ctx, account_id)
    assert "password_changed" in kinds(ctx)


def test_this_wasnt_me_freeze_is_one_click_and_single_use(ctx, clock):
    account_id = register(ctx)
    token = sign_in(ctx).session.token
    other = sign_in(ctx, ua="other").session.token
    new = accounts.change_password(ctx, token, PASSWORD, "a completely new passphrase 5")
    alert = outbox(ctx, template="credential_changed")[-1]
    assert "If this wasn't you" in alert.body
    freeze = token_from_mail(alert)
    assert events.freeze_account(ctx, freeze) == account_id
    for tok in (token, other, new.token):
        with pytest.raises(Unauthorized):
            sessions.authenticate(ctx, tok)
    with pytest.raises(AccountFrozen):
        sign_in(ctx, password="a completely new passphrase 5")
    with pytest.raises(AccountFrozen):
        events.check_withdrawals_allowed(ctx, account_id)
    with pytest.raises(Unauthorized):
        events.freeze_account(ctx, freeze)
    assert outbox(ctx, template="account_frozen")
    assert "account_frozen" in kinds(ctx)


def test_freeze_token_garbage_and_expiry(ctx, clock):
    register(ctx)
    accounts.change_password(ctx, sign_in(ctx).session.token, PASSWORD, "a completely new passphrase 5")
    freeze = token_from_mail(outbox(ctx, template="credential_changed")[-1])
    with pytest.raises(ValidationError):
        events.freeze_account(ctx, "x")
    with pytest.raises(Unauthorized):
        events.freeze_account(ctx, "A" * 43)
    clock.advance(ctx.settings.identity_freeze_token_ttl_s + 1)
    with pytest.raises(Unauthorized):
        events.freeze_account(ctx, freeze)
    with ctx.store.tx() as db:
        assert not db.scalars(select(User.frozen)).one()


def test_email_change_confirms_new_address_and_warns_old(ctx, clock):
    totp, token, _ = enable_totp(ctx, clock)
    accounts.request_email_change(ctx, token, "alice.new@example.com")
    link = token_from_mail(outbox(ctx, to="alice.new@example.com", template="email_change_confirm")[-1])
    assert accounts.confirm_email_change(ctx, link) == "alice.new@example.com"
    old_alert = outbox(ctx, to="alice@example.com", template="credential_changed")[-1]
    assert "e-mail address changed" in old_alert.body and "freeze?token=" in old_alert.body
    assert outbox(ctx, to="alice.new@example.com", template="credential_changed")
    with pytest.raises(Unauthorized):
        accounts.confirm_email_change(ctx, link)
    assert "email_changed" in kinds(ctx)


def test_a_password_reset_link_dies_with_an_e_mail_or_password_change(ctx, clock):
    """Intruder finding: a reset link mailed to address A was refused while the account used B, and worked
    again once the address was changed back to A. Changing the address or the password ends it."""
    totp, _, _ = enable_totp(ctx, clock)

    def signed_in(email: str) -> str:  # a session with a fresh second factor
        clock.advance(30)
        return sf.complete_login(ctx, sign_in(ctx, email).session.token, method="totp", value=totp.at(clock.now_s)).token

    accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")
    link = token_from_mail(outbox(ctx, to="alice@example.com", template="password_reset")[-1])
    assert accounts.check_reset_link(ctx, link).email == "alice@example.com"
    for old, new in (("alice@example.com", "alice.new@example.com"), ("alice.new@example.com", "alice@example.com")):
        accounts.request_email_change(ctx, signed_in(old), new)  # away and back again
        accounts.confirm_email_change(ctx, token_from_mail(outbox(ctx, to=new, template="email_change_confirm")[-1]))
    with pytest.raises(Unauthorized):
        accounts.check_reset_link(ctx, link)
    accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")
    link = token_from_mail(outbox(ctx, to="alice@example.com", template="password_reset")[-1])
    accounts.change_password(ctx, signed_in("alice@example.com"), PASSWORD, "a completely new passphrase 5")
    with pytest.raises(Unauthorized):
        accounts.check_reset_link(ctx, link)

def test_email_change_needs_fresh_factor_and_does_not_reveal_taken_address(ctx, clock):
    register(ctx, "bob@example.com")
    totp, token, _ = enable_totp(ctx, clock)
    before = len(outbox(ctx))
    accounts.request_email_change(ctx, token, "bob@example.com")  # taken: same answer, nothing sent
    assert len(outbox(ctx)) == before
    clock.advance(301)
    with pytest.raises(SecondFactorRequired):
        accounts.request_email_change(ctx, token, "alice2@example.com")
    with pytest.raises(ValidationError):
        accounts.request_email_change(ctx, token, "<img src=x onerror=alert(1)>")


def test_email_change_needs_a_second_factor_that_counts(ctx, clock):
    """The password alone (a session without a second factor) cannot move the account's mailbox."""
    register(ctx)
    token = sign_in(ctx).session.token
    before = len(outbox(ctx))
    with pytest.raises(SecondFactorRequired, match="enable two-factor authentication"):
        accounts.request_email_change(ctx, token, "thief@example.com")
    assert len(outbox(ctx)) == before


def test_failed_second_factor_and_new_country_are_events(ctx, clock):
    totp, token, _ = enable_totp(ctx, clock)
    pending = sign_in(ctx).session.token
    with pytest.raises(AuthenticationFailed):
        sf.complete_login(ctx, pending, method="totp", value="000000" if totp.at(clock.now_s) != "000000" else "111111")
    sf.complete_login(ctx, pending, method="totp", value=totp.at(clock.now_s), country="DE")
    clock.advance(30)
    pending = accounts.login(ctx, "alice@example.com", PASSWORD, ip="198.51.100.7", user_agent="pytest").session.token
    sf.complete_login(ctx, pending, method="totp", value=totp.at(clock.now_s), country="BR")
    ks = kinds(ctx)
    assert "second_factor_failed" in ks and ks.count("new_country_sign_in") == 1
    with ctx.store.tx() as db:
        uid = db.scalars(select(User.id)).one()
    recent = events.recent_events(ctx, uid, limit=5)
    assert recent[0].kind in ("sign_in", "new_country_sign_in") and len(recent) == 5


def test_check_withdrawals_unknown_account(ctx):
    with pytest.raises(NotFound) as err:
        events.check_withdrawals_allowed(ctx, "u_doesnotexist")
    assert err.value.field == "account_id"


def test_authorize_withdrawal_needs_fresh_factor_and_no_lock(ctx, clock, settings):
    settings.identity_withdrawal_lock_s = 600
    totp, token, _ = enable_totp(ctx, clock)
    with pytest.raises(WithdrawalsLocked):  # turning TOTP on was itself a credential change
        events.authorize_withdrawal(ctx, token)
    clock.advance(601)
    with pytest.raises(SecondFactorRequired):  # lock is over, but the factor is no longer fresh
        events.authorize_withdrawal(ctx, token)
    token = sf.step_up(ctx, token, method="totp", value=totp.at(clock.now_s)).token
    assert events.authorize_withdrawal(ctx, token).startswith("u_")
    until = events.withdrawal_address_changed(ctx, token, ip="192.0.2.9")
    assert until == clock.now_s + 600
    with pytest.raises(WithdrawalsLocked):
        events.authorize_withdrawal(ctx, token)
    assert "withdrawal_address_changed" in kinds(ctx)
