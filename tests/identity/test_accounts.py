"""Sign-up, verification, sign-in, lockout, sessions — and the attacks on them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ringfence.errors import AuthenticationFailed, Forbidden, RateLimited, Unauthorized, ValidationError
from ringfence.identity import accounts, sessions
from ringfence.store.models import AuthSession, SecurityEvent, User

from .conftest import PASSWORD, outbox, register, sign_in, snapshot, token_from_mail


def count(ctx, model) -> int:
    with ctx.store.tx() as db:
        return db.scalar(select(func.count()).select_from(model))


def test_sign_up_verify_login_gives_account_id(ctx):
    account_id = register(ctx)
    assert account_id.startswith("u_") and len(account_id) == 26
    result = sign_in(ctx)
    assert not result.second_factor_required and result.account_id == account_id
    info = sessions.authenticate(ctx, result.session.token)
    assert info.account_id == account_id and info.email == "alice@example.com"
    with ctx.store.tx() as db:
        user = db.scalars(select(User)).one()
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
        assert user.email_verified


def test_sign_up_does_not_reveal_existing_email(ctx):
    first = accounts.sign_up(ctx, "bob@example.com", PASSWORD, ip="198.51.100.1")
    second = accounts.sign_up(ctx, "BOB@example.com", "another fine passphrase 9", ip="198.51.100.1")
    assert first == second
    assert count(ctx, User) == 1
    # bob's account is still pending: the notice says it may be someone else's and how to take it over
    assert [m.template for m in outbox(ctx, to="bob@example.com")] == ["verify_email", "signup_existing_pending"]
    assert "/verify-email/new" in outbox(ctx, to="bob@example.com")[-1].body
    with pytest.raises(Unauthorized):  # the first sign-up's link (maybe a stranger's password) no longer confirms
        accounts.verify_email(ctx, token_from_mail(outbox(ctx, to="bob@example.com")[0]))
    accounts.resend_verification(ctx, "bob@example.com", ip="198.51.100.1")
    accounts.claim_pending_account(ctx, token_from_mail(outbox(ctx, to="bob@example.com")[-1]), PASSWORD)
    assert accounts.sign_up(ctx, "bob@example.com", PASSWORD, ip="198.51.100.1") == first
    assert outbox(ctx, to="bob@example.com")[-1].template == "signup_existing"  # confirmed: "sign in instead"


def test_sign_up_hashes_the_password_for_an_existing_address_too(ctx, monkeypatch):
    """Timing: an existing address's sign-up does the same argon2 work as a new one's (result discarded)."""
    accounts.sign_up(ctx, "carol@example.com", PASSWORD, ip="198.51.100.1")
    hashed: list[str] = []
    real_hash = ctx.passwords.hash
    monkeypatch.setattr(ctx.passwords, "hash", lambda pw: hashed.append(pw) or real_hash(pw))
    before = snapshot(ctx)["identity_users"]
    accounts.sign_up(ctx, "carol@example.com", "another fine passphrase 9", ip="198.51.100.1")
    assert hashed == ["another fine passphrase 9"]
    assert snapshot(ctx)["identity_users"] == before, "the existing account is unchanged"
    accounts.sign_up(ctx, "dave@example.com", PASSWORD, ip="198.51.100.1")
    assert hashed == ["another fine passphrase 9", PASSWORD], "a new address: one hash too"


def test_a_resent_link_hands_a_pending_account_to_the_mailbox_owner(ctx):
    """Pre-hijack: the attacker signs up with the victim's address; the victim's resent link confirms the
    address only with her new password, the attacker's stops working and his sessions end."""
    accounts.sign_up(ctx, "ceo@victim.test", "attacker passphrase 77", ip="203.0.113.9")
    first = token_from_mail(outbox(ctx, to="ceo@victim.test", template="verify_email")[-1])
    accounts.resend_verification(ctx, "ceo@victim.test", ip="198.51.100.1")
    [msg] = outbox(ctx, to="ceo@victim.test", template="verify_claim")
    assert "/verify-email/claim?token=" in msg.body
    token = token_from_mail(msg)
    with pytest.raises(Unauthorized):
        accounts.verify_email(ctx, first)  # the original link stopped working at the resend
    before = snapshot(ctx)
    assert accounts.check_claim_link(ctx, token) == "ceo@victim.test"
    with pytest.raises(Unauthorized):
        accounts.verify_email(ctx, token)  # not a plain confirmation: it needs the password
    for weak, reason in (("short", "at least 10"), ("password123", "common"), ("Qwerty2024!", "common"), ("x" * 129, "at most 128")):
        with pytest.raises(ValidationError) as err:
            accounts.claim_pending_account(ctx, token, weak, ip="198.51.100.1")
        assert err.value.field == "password" and reason in str(err.value)
    assert snapshot(ctx) == before, "reading the link and weak passwords change nothing"
    account_id = accounts.claim_pending_account(ctx, token, "victim's own passphrase 5", ip="198.51.100.1")
    with pytest.raises(AuthenticationFailed):
        sign_in(ctx, "ceo@victim.test", "attacker passphrase 77")
    assert sign_in(ctx, "ceo@victim.test", "victim's own passphrase 5").account_id == account_id
    with pytest.raises(Unauthorized):
        accounts.claim_pending_account(ctx, token, "victim's own passphrase 6", ip="198.51.100.1")  # used


def test_a_stranger_signing_up_again_does_not_void_the_owners_resent_link(ctx):
    """Intruder finding: each sign-up for a pending address ended every sign-up link, the owner's resent
    one too, so a stranger could keep her from ever taking the account over. Only the first link ends."""
    accounts.sign_up(ctx, "ceo@victim.test", "attacker passphrase 77", ip="203.0.113.9")
    accounts.resend_verification(ctx, "ceo@victim.test", ip="198.51.100.1")
    token = token_from_mail(outbox(ctx, to="ceo@victim.test", template="verify_claim")[-1])
    accounts.sign_up(ctx, "ceo@victim.test", "attacker passphrase 78", ip="203.0.113.10")
    assert accounts.check_claim_link(ctx, token) == "ceo@victim.test"
    accounts.claim_pending_account(ctx, token, "victim's own passphrase 5", ip="198.51.100.1")
    for attacker in ("attacker passphrase 77", "attacker passphrase 78"):
        with pytest.raises(AuthenticationFailed):
            sign_in(ctx, "ceo@victim.test", attacker)
    assert sign_in(ctx, "ceo@victim.test", "victim's own passphrase 5").account_id

@pytest.mark.parametrize("password, reason", [
    ("short", "at least 10"),
    ("password123", "common"),
    ("Qwerty2024!", "common"),
    ("x" * 129, "at most 128"),
    ("alice-the-great-2031", "e-mail"),
])
def test_weak_passwords_rejected_and_nothing_created(ctx, password, reason):
    with pytest.raises(ValidationError) as err:
        accounts.sign_up(ctx, "alice@example.com", password, ip="198.51.100.1")
    assert err.value.field == "password" and reason in str(err.value)
    assert count(ctx, User) == 0 and outbox(ctx) == []


@pytest.mark.parametrize("email", ["<script>alert(1)</script>@x.com", "a" * 250 + "@example.com", "no-at-sign", "a@b", 42])
def test_bad_or_script_laden_email_rejected(ctx, email):
    with pytest.raises(ValidationError) as err:
        accounts.sign_up(ctx, email, PASSWORD, ip="198.51.100.1")
    assert err.value.field == "email"
    assert count(ctx, User) == 0


def test_login_errors_do_not_reveal_whether_email_exists(ctx):
    register(ctx)
    with pytest.raises(AuthenticationFailed) as wrong_pw:
        sign_in(ctx, password="not the password at all")
    with pytest.raises(AuthenticationFailed) as unknown:
        sign_in(ctx, email="nobody@example.com")
    assert str(wrong_pw.value) == str(unknown.value) == accounts.LOGIN_FAILED_MESSAGE
    assert wrong_pw.value.to_dict() == unknown.value.to_dict()


def test_unverified_email_cannot_sign_in(ctx):
    accounts.sign_up(ctx, "carol@example.com", PASSWORD, ip="198.51.100.1")
    with pytest.raises(Forbidden):
        sign_in(ctx, email="carol@example.com")
    assert count(ctx, AuthSession) == 0


def test_verification_link_is_single_use(ctx):
    accounts.sign_up(ctx, "dave@example.com", PASSWORD, ip="198.51.100.1")
    token = token_from_mail(outbox(ctx, template="verify_email")[-1])
    for _ in range(2):  # the link's GET page reads only: a mail scanner's fetch confirms nothing
        assert accounts.check_verification_link(ctx, token) == "dave@example.com"
    with pytest.raises(Forbidden):
        sign_in(ctx, email="dave@example.com")
    accounts.verify_email(ctx, token)
    with pytest.raises(Unauthorized):
        accounts.check_verification_link(ctx, token)
    with pytest.raises(Unauthorized):
        accounts.verify_email(ctx, token)


def test_brute_force_locks_with_backoff_same_for_unknown_email(ctx, clock):
    register(ctx)
    free = ctx.settings.identity_lockout_free_failures
    for email in ("alice@example.com", "ghost@example.com"):
        for _ in range(free - 1):
            with pytest.raises(AuthenticationFailed):
                sign_in(ctx, email=email, password="wrong password guess")
        with pytest.raises(AuthenticationFailed):  # the failure that triggers the lock
            sign_in(ctx, email=email, password="wrong password guess")
        with pytest.raises(RateLimited) as locked:  # even the right password is refused while locked
            sign_in(ctx, email=email)
        assert "try again in 30 s" in str(locked.value)
    sessions_before = count(ctx, AuthSession)
    clock.advance(31)
    with pytest.raises(AuthenticationFailed):  # one more failure doubles the lock
        sign_in(ctx, password="wrong password guess")
    with pytest.raises(RateLimited) as locked:
        sign_in(ctx)
    assert "try again in 60 s" in str(locked.value)
    assert count(ctx, AuthSession) == sessions_before == 0
    clock.advance(61)
    assert sign_in(ctx).account_id  # after the backoff the owner gets in; counter resets
    with ctx.store.tx() as db:
        kinds = db.scalars(select(SecurityEvent.kind)).all()
    assert "account_locked" in kinds and kinds.count("sign_in_failed") == free + 1


def test_login_rate_limited_per_ip(ctx, clock):
    ctx.settings.identity_login_per_ip_per_min = 3
    register(ctx)
    for _i in range(3):
        sign_in(ctx, ip="203.0.113.9")
    with pytest.raises(RateLimited):
        sign_in(ctx, ip="203.0.113.9")
    sign_in(ctx, ip="203.0.113.10")  # another IP is unaffected
    clock.advance(60)
    sign_in(ctx, ip="203.0.113.9")


def test_session_fixation_each_login_issues_new_token(ctx):
    register(ctx)
    a = sign_in(ctx).session.token
    b = sign_in(ctx).session.token
    assert a != b
    planted = "attacker-chosen-token-value-123456"
    before = snapshot(ctx)
    with pytest.raises(Unauthorized):
        sessions.authenticate(ctx, planted)
    assert snapshot(ctx) == before


def test_stolen_session_useless_after_logout_and_logout_everywhere(ctx):
    register(ctx)
    s1 = sign_in(ctx).session.token
    s2 = sign_in(ctx, ua="other browser").session.token
    stolen = s1
    sessions.logout(ctx, s1)
    before = snapshot(ctx)
    with pytest.raises(Unauthorized):
        sessions.authenticate(ctx, stolen)
    with pytest.raises(Unauthorized):
        accounts.set_anti_phishing_code(ctx, stolen, "Stolen-1")
    assert snapshot(ctx) == before
    sessions.authenticate(ctx, s2)
    s3 = sign_in(ctx).session.token
    assert sessions.logout_everywhere(ctx, s3) == 2
    for tok in (s2, s3):
        with pytest.raises(Unauthorized):
            sessions.authenticate(ctx, tok)


def test_session_expires_when_idle(ctx, clock):
    register(ctx)
    tok = sign_in(ctx).session.token
    clock.advance(ctx.settings.identity_session_idle_s + 1)
    with pytest.raises(Unauthorized):
        sessions.authenticate(ctx, tok)


def test_csrf_token_bound_to_session(ctx):
    register(ctx)
    a = sign_in(ctx).session
    b = sign_in(ctx).session
    sessions.verify_csrf(ctx, a.token, a.csrf_token)
    with pytest.raises(Forbidden) as err:
        sessions.verify_csrf(ctx, a.token, b.csrf_token)
    assert err.value.field == "csrf_token"
    with pytest.raises(Forbidden):
        sessions.verify_csrf(ctx, a.token, None)
    cookie = sessions.session_cookie(a.token, max_age_s=3600)
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie and cookie.startswith("__Host-")


def test_change_password_rotates_and_ends_other_sessions(ctx):
    register(ctx)
    mine = sign_in(ctx).session.token
    other = sign_in(ctx, ua="laptop").session.token
    new = accounts.change_password(ctx, mine, PASSWORD, "a brand new passphrase 77")
    for tok in (mine, other):
        with pytest.raises(Unauthorized):
            sessions.authenticate(ctx, tok)
    sessions.authenticate(ctx, new.token)
    with pytest.raises(AuthenticationFailed):
        sign_in(ctx)
    assert sign_in(ctx, password="a brand new passphrase 77").account_id


def test_change_password_wrong_current_changes_nothing(ctx):
    register(ctx)
    tok = sign_in(ctx).session.token
    with ctx.store.tx() as db:
        before = db.scalars(select(User.password_hash)).one()
    with pytest.raises(AuthenticationFailed):
        accounts.change_password(ctx, tok, "wrong current password", "a brand new passphrase 77")
    with ctx.store.tx() as db:
        assert db.scalars(select(User.password_hash)).one() == before
    sessions.authenticate(ctx, tok)


def test_new_device_sign_in_is_an_event_and_mail(ctx):
    register(ctx)
    sign_in(ctx)
    assert outbox(ctx, template="new_sign_in") == []
    sign_in(ctx, ip="192.0.2.44", ua="Firefox on a new laptop")
    alerts = outbox(ctx, template="new_sign_in")
    assert len(alerts) == 1 and "192.0.2.44" in alerts[0].body
    with ctx.store.tx() as db:
        assert db.scalars(select(SecurityEvent.kind).where(SecurityEvent.kind == "new_device_sign_in")).all()


def test_sign_up_rate_limited_per_ip(ctx, clock):
    ctx.settings.identity_signup_per_ip_per_hour = 2
    accounts.sign_up(ctx, "u1@example.com", PASSWORD, ip="203.0.113.50")
    accounts.sign_up(ctx, "u2@example.com", PASSWORD, ip="203.0.113.50")
    with pytest.raises(RateLimited):
        accounts.sign_up(ctx, "u3@example.com", PASSWORD, ip="203.0.113.50")
    assert count(ctx, User) == 2
    clock.advance(3600)
    accounts.sign_up(ctx, "u3@example.com", PASSWORD, ip="203.0.113.50")
    assert count(ctx, User) == 3


def test_concurrent_sign_ups_of_one_email_create_one_user(ctx):
    import threading

    from ringfence.errors import Conflict

    errors: list[Exception] = []

    def go(i: int) -> None:
        try:
            accounts.sign_up(ctx, "race@example.com", PASSWORD, ip=f"198.51.100.{i + 1}")
        except Conflict as exc:  # the loser of the race gets a clear, retryable error
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(ctx, User) == 1
    assert all(isinstance(e, Conflict) for e in errors)


def test_a_password_reset_link_is_single_use_short_lived_and_only_for_confirmed_accounts(ctx, clock):
    """`/forgot-password`: one answer for every address, mail only to a confirmed account; a link works
    for 30 minutes, once, and a newer one does not end it (a stranger may ask too), using one ends all;
    the reset ends every session and is a credential change."""
    from ringfence.store.models import SecurityEvent as Event

    register(ctx)
    issued = sign_in(ctx).session
    accounts.sign_up(ctx, "pending@example.com", PASSWORD, ip="198.51.100.2")
    answers = {accounts.request_password_reset(ctx, addr, ip="198.51.100.1").message
               for addr in ("alice@example.com", "pending@example.com", "nobody@example.com")}
    assert answers == {accounts.RESET_MESSAGE}
    assert [m.to_addr for m in outbox(ctx, template="password_reset")] == ["alice@example.com"]
    first = token_from_mail(outbox(ctx, template="password_reset")[-1])
    accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")
    second = token_from_mail(outbox(ctx, template="password_reset")[-1])
    assert accounts.check_reset_link(ctx, first) == accounts.ResetLink("alice@example.com", ""), "a new link ends none"
    assert accounts.check_reset_link(ctx, second) == accounts.ResetLink("alice@example.com", "")
    before = snapshot(ctx)
    with pytest.raises(ValidationError) as err:
        accounts.reset_password(ctx, second, "password123", ip="198.51.100.1")
    assert err.value.field == "password"
    assert snapshot(ctx) == before, "reading the link and a weak password change nothing"
    clock.advance(accounts.RESET_LINK_TTL_S + 1)
    with pytest.raises(Unauthorized):
        accounts.reset_password(ctx, second, "a brand new passphrase 1", ip="198.51.100.1")  # expired
    accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")
    third = token_from_mail(outbox(ctx, template="password_reset")[-1])
    accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")
    fourth = token_from_mail(outbox(ctx, template="password_reset")[-1])
    assert accounts.reset_password(ctx, third, "a brand new passphrase 1", ip="198.51.100.1").api_keys_revoked == 0
    with pytest.raises(Unauthorized):
        accounts.check_reset_link(ctx, fourth)  # using one link ended the others
    with pytest.raises(Unauthorized):
        sessions.authenticate(ctx, issued.token)  # every session ended
    with pytest.raises(AuthenticationFailed):
        sign_in(ctx)
    assert sign_in(ctx, password="a brand new passphrase 1").account_id
    with pytest.raises(Unauthorized):
        accounts.reset_password(ctx, third, "another passphrase 22", ip="198.51.100.1")  # used
    with ctx.store.tx() as db:
        user = db.scalars(select(User).where(User.email == "alice@example.com")).one()
        assert user.withdrawals_locked_until_s == clock() + ctx.settings.identity_withdrawal_lock_s
        assert "password_changed" in db.scalars(select(Event.kind).where(Event.user_id == user.id)).all()
    assert "/security/freeze?token=" in outbox(ctx, to="alice@example.com", template="password_reset_done")[-1].body


def test_password_reset_requests_are_rate_limited_per_requester(ctx):
    """A requester's budget for one address is hers: a stranger spending his does not refuse the owner."""
    register(ctx)
    for _ in range(accounts.RESEND_PER_ADDRESS_PER_HOUR):
        accounts.request_password_reset(ctx, "alice@example.com", ip="203.0.113.50")
    with pytest.raises(RateLimited):
        accounts.request_password_reset(ctx, "alice@example.com", ip="203.0.113.50")
    accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")


def test_a_passkey_only_account_without_recovery_codes_is_sent_to_support(ctx, clock):
    from ringfence.store.models import WebAuthnCredential

    register(ctx)
    with ctx.store.tx() as db:
        user = db.scalars(select(User).where(User.email == "alice@example.com")).one()
        db.add(WebAuthnCredential(user_id=user.id, credential_id=b"cred", public_key=b"pk", label="key", created_at_s=clock()))
    accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")
    token = token_from_mail(outbox(ctx, template="password_reset")[-1])
    assert accounts.check_reset_link(ctx, token).needs == "support"
    before = snapshot(ctx)
    with pytest.raises(Forbidden):
        accounts.reset_password(ctx, token, "a brand new passphrase 1", ip="198.51.100.1")
    assert snapshot(ctx) == before


@pytest.mark.parametrize("ask, check", [(accounts.request_password_reset, accounts.check_reset_link),
                                        (accounts.resend_verification, accounts.check_claim_link)])
def test_a_strangers_requests_never_void_or_withhold_the_owners_link(ctx, clock, ask, check):
    """Intruder reviews: a stranger could spend an address's 5 requests an hour from 5 IPs, each new link
    ending the one before, so the owner's link died in her mailbox; then (session 12) the spent budget
    refused the owner a new link for the rest of the hour once those links expired. Now a new link ends
    none of the others, many IPs together get at most `LIVE_LINKS_MAX` links out at a time (no mail
    bombing), a requester's refusal is her own and the same for every address, and once a link expires
    the owner's next request in the same hour gets a new one."""
    clock.advance(3600 - clock.now_s % 3600)  # the top of an hour: the links below expire within it
    if ask is accounts.request_password_reset:
        register(ctx)
        addr, template, ttl_s = "alice@example.com", "password_reset", accounts.RESET_LINK_TTL_S
    else:
        accounts.sign_up(ctx, "ceo@victim.test", "attacker passphrase 77", ip="203.0.113.9")
        addr, template, ttl_s = "ceo@victim.test", "verify_claim", ctx.settings.identity_email_token_ttl_s

    def newest() -> str:
        return token_from_mail(outbox(ctx, to=addr, template=template)[-1])

    ask(ctx, addr, ip="198.51.100.1")
    owners = newest()
    for i in range(3 * accounts.LIVE_LINKS_MAX):  # a stranger with many IPs
        ask(ctx, addr, ip=f"203.0.113.{i + 20}")
    tokens = [token_from_mail(m) for m in outbox(ctx, to=addr, template=template)]
    assert len(tokens) == accounts.LIVE_LINKS_MAX and tokens[0] == owners, "no more links out than LIVE_LINKS_MAX"
    refusals = []
    for other, ip in ((addr, "203.0.113.50"), ("nobody@example.com", "203.0.113.51")):  # past one requester's
        for _ in range(accounts.RESEND_PER_ADDRESS_PER_HOUR):                          # budget: the same refusal
            ask(ctx, other, ip=ip)
        with pytest.raises(RateLimited) as err:
            ask(ctx, other, ip=ip)
        refusals.append(err.value.message)
    assert refusals[0] == refusals[1] and refusals[0].startswith("too many requests for this address"), refusals
    assert len(outbox(ctx, to=addr, template=template)) == accounts.LIVE_LINKS_MAX, "nothing mailed past the cap"
    for token in tokens:
        assert check(ctx, token), "every link in her mailbox still works, hers too"
    clock.advance(60)
    ask(ctx, addr, ip="198.51.100.1")  # her own budget is whole: answered, though nothing new goes out yet
    assert len(outbox(ctx, to=addr, template=template)) == accounts.LIVE_LINKS_MAX
    clock.advance(ttl_s)  # every link out has expired
    with pytest.raises(Unauthorized):
        check(ctx, owners)
    ask(ctx, addr, ip="198.51.100.1")  # hers, at once (for a reset still within the stranger's hour)
    assert len(outbox(ctx, to=addr, template=template)) == accounts.LIVE_LINKS_MAX + 1
    if template == "password_reset":
        accounts.reset_password(ctx, newest(), "victim's own passphrase 5", ip="198.51.100.1")
    else:
        accounts.claim_pending_account(ctx, newest(), "victim's own passphrase 5", ip="198.51.100.1")
    assert sign_in(ctx, addr, "victim's own passphrase 5").account_id


def test_using_one_link_ends_the_others(ctx):
    register(ctx)
    for i in range(3):
        accounts.request_password_reset(ctx, "alice@example.com", ip=f"198.51.100.{i + 1}")
    tokens = [token_from_mail(m) for m in outbox(ctx, to="alice@example.com", template="password_reset")]
    accounts.reset_password(ctx, tokens[1], "victim's own passphrase 5", ip="198.51.100.1")
    for token in tokens:
        with pytest.raises(Unauthorized):
            accounts.check_reset_link(ctx, token)


def test_a_claim_sets_the_claimers_language(ctx):
    """Intruder reviews: a claim kept the language the first sign-up (maybe the stranger's) chose, so every
    later e-mail came in it; and (session 12) the resent link's mail came in the asking page's language,
    so a stranger chose the language of the mail the owner gets. The resent link's mail is in the
    account's language; the claim sets the account's to the claiming page's, as sign-up does."""
    accounts.sign_up(ctx, "ceo@victim.test", "attacker passphrase 77", ip="203.0.113.9", locale="de")
    accounts.resend_verification(ctx, "ceo@victim.test", ip="198.51.100.1")
    msg = outbox(ctx, to="ceo@victim.test", template="verify_claim")[-1]
    assert msg.subject == "Ihr neuer Bestätigungslink (der Registrierungslink funktioniert nicht mehr)", msg.subject  # the account's
    accounts.claim_pending_account(ctx, token_from_mail(msg), "victim's own passphrase 5", ip="198.51.100.1", locale="ja")
    with ctx.store.tx() as db:
        assert db.scalars(select(User.locale).where(User.email == "ceo@victim.test")).one() == "ja"


@pytest.mark.parametrize("ask", [accounts.request_password_reset, accounts.resend_verification])
def test_a_mailed_link_request_answers_before_it_looks_the_address_up(ctx, ask):
    """Intruder finding: `/forgot-password` took 12-21 ms for a confirmed account and 6-10 ms for an unknown
    address (only the first makes a link and a mail). The answer now does only what every address does
    (validation and rate limits) and hands the look-up and the mail to `later`, which the web route runs
    after the response is sent."""
    register(ctx)
    accounts.sign_up(ctx, "pending@example.com", PASSWORD, ip="198.51.100.2")
    for addr in ("alice@example.com", "pending@example.com", "nobody@example.com"):
        def rows() -> dict[str, list[tuple]]:
            return {k: v for k, v in snapshot(ctx).items() if k != "identity_rate_limits"}

        before, deferred = rows(), []
        receipt = ask(ctx, addr, ip="198.51.100.1", later=deferred.append)
        assert receipt.message in (accounts.RESET_MESSAGE, accounts.RESEND_MESSAGE)
        assert len(deferred) == 1, "the same work is left for later whatever the address"
        assert rows() == before, "nothing but the rate-limit counters changed before the answer"
        sent = len(outbox(ctx))
        deferred[0]()
        wanted = {accounts.request_password_reset: "alice@example.com",
                  accounts.resend_verification: "pending@example.com"}[ask]
        assert len(outbox(ctx)) == sent + (addr == wanted)


@pytest.mark.parametrize("use", ["reset", "claim"])
def test_two_concurrent_uses_of_one_link_make_one_change(ctx, monkeypatch, use):
    """Intruder review (session 12): a reset link's use read the row, then set `used_at_s`: two uses at
    once (two processes on one PostgreSQL) could both pass and both set a password. The use is now a
    conditional UPDATE (WHERE used_at_s IS NULL, its row count checked) after a lock taken first: of two
    threads using one link at once, exactly one succeeds and the other is refused as a used link. The
    password hash is slowed so that both are inside their transactions together."""
    import threading
    import time

    if use == "reset":
        register(ctx)
        accounts.request_password_reset(ctx, "alice@example.com", ip="198.51.100.1")
        token = token_from_mail(outbox(ctx, template="password_reset")[-1])
        act = accounts.reset_password
    else:
        accounts.sign_up(ctx, "ceo@victim.test", "attacker passphrase 77", ip="203.0.113.9")
        accounts.resend_verification(ctx, "ceo@victim.test", ip="198.51.100.1")
        token = token_from_mail(outbox(ctx, template="verify_claim")[-1])
        act = accounts.claim_pending_account
    slow_hash = ctx.passwords.hash

    def hash_slowly(password: str) -> str:
        time.sleep(0.3)
        return slow_hash(password)

    monkeypatch.setattr(ctx.passwords, "hash", hash_slowly)
    start, results = threading.Barrier(2), []

    def run(password: str) -> None:
        start.wait()
        try:
            act(ctx, token, password, ip="198.51.100.1")
            results.append("ok")
        except Unauthorized:
            results.append("used")

    threads = [threading.Thread(target=run, args=(p,)) for p in ("first new passphrase 11", "second new passphrase 22")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["ok", "used"], results
