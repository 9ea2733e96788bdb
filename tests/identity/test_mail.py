"""Anti-phishing code in every message, the transactional outbox, retries, and real SMTP delivery."""

from __future__ import annotations

import email
import email.policy
import pathlib
import re
import socket
import string

import pytest
from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select

from ringfence.errors import SecondFactorRequired, ValidationError
from ringfence.identity import accounts, mail, second_factor as sf
from ringfence.store.models import User

from .conftest import enable_totp, outbox, register

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "ringfence"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook name)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode("utf-8", "replace")))
        return "250 OK"


@pytest.fixture
def smtp(settings):
    port = free_port()
    settings.identity_smtp_port = port
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox
    controller.stop()


def user_row(ctx, email="alice@example.com") -> User:
    with ctx.store.tx() as db:
        return db.scalars(select(User).where(User.email == email)).one()


def test_delivery_over_real_smtp_with_anti_phishing_code(ctx, clock, smtp):
    totp, token, _ = enable_totp(ctx, clock)
    accounts.set_anti_phishing_code(ctx, token, "Blue-Otter_7")
    report = mail.deliver_due(ctx)
    assert report.sent == len(outbox(ctx)) >= 3 and report.failed == 0
    assert len(smtp.messages) == report.sent
    last = email.message_from_string(smtp.messages[-1][2], policy=email.policy.default)  # a long subject is folded
    assert last["Subject"].strip() == "[Blue-Otter_7] Security change on your account: anti-phishing code changed", last["Subject"]
    assert last.get_content().startswith("Anti-phishing code: Blue-Otter_7")
    assert smtp.messages[-1][1] == ["alice@example.com"]
    assert all(m.status == "sent" for m in outbox(ctx))
    assert mail.deliver_due(ctx).sent == 0  # nothing is sent twice


def test_every_template_carries_the_code(ctx, clock):
    register(ctx)
    with ctx.store.tx() as db:
        user = db.scalars(select(User)).one()
        user.anti_phishing_code = "Zebra42"
    user = user_row(ctx)
    for name, tpl in mail.TEMPLATES.items():
        params = {f: "x" for _, f, _, _ in string.Formatter().parse(tpl.subject + tpl.body) if f}
        subject, body, _ = mail.compose(ctx, user, name, params)
        assert subject.startswith("[Zebra42] ") and body.startswith("Anti-phishing code: Zebra42"), name


def test_only_the_mail_module_creates_outbox_rows():
    offenders = [
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
        if "OutboxMessage(" in p.read_text() and p.name not in ("mail.py", "models.py")
    ]
    assert offenders == []


def test_outbox_retries_with_backoff_then_delivers(ctx, clock, settings):
    register(ctx)
    settings.identity_smtp_port = free_port()  # nothing listens there yet
    report = mail.deliver_due(ctx)
    assert report.failed == 1 and report.sent == 0
    [msg] = outbox(ctx)
    assert msg.status == "pending" and msg.attempts == 1 and msg.next_attempt_at_s == clock.now_s + 30
    assert mail.deliver_due(ctx).failed == 0  # not due yet
    clock.advance(30)
    assert mail.deliver_due(ctx).failed == 1
    assert outbox(ctx)[0].next_attempt_at_s == clock.now_s + 60  # doubled
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=settings.identity_smtp_port)
    controller.start()
    try:
        clock.advance(60)
        assert mail.deliver_due(ctx).sent == 1
    finally:
        controller.stop()
    assert outbox(ctx)[0].status == "sent" and len(inbox.messages) == 1


def test_outbox_gives_up_after_max_attempts(ctx, clock, settings):
    settings.identity_outbox_max_attempts = 3
    register(ctx)
    settings.identity_smtp_port = free_port()
    for _ in range(3):
        mail.deliver_due(ctx)
        clock.advance(settings.identity_outbox_backoff_max_s)
    msg = outbox(ctx)[0]
    assert msg.status == "dead" and msg.attempts == 3 and msg.last_error


def test_outbox_row_is_part_of_the_transaction(ctx):
    """A failed change leaves no mail behind (the outbox commits or rolls back with it)."""
    register(ctx)
    before = len(outbox(ctx))
    with pytest.raises(ValidationError):
        accounts.sign_up(ctx, "eve@example.com", "password123", ip="198.51.100.2")
    assert len(outbox(ctx)) == before


@pytest.mark.parametrize("code", ["<script>", "ab", "x" * 21, "a b c d", "ünïcode", "line\nbreak"])
def test_script_laden_or_bad_anti_phishing_code_rejected(ctx, clock, code):
    totp, token, _ = enable_totp(ctx, clock)
    before = len(outbox(ctx))
    with pytest.raises(ValidationError) as err:
        accounts.set_anti_phishing_code(ctx, token, code)
    assert err.value.field == "anti_phishing_code"
    assert user_row(ctx).anti_phishing_code is None and len(outbox(ctx)) == before


def test_anti_phishing_change_needs_fresh_second_factor(ctx, clock):
    totp, token, _ = enable_totp(ctx, clock)
    clock.advance(301)
    with pytest.raises(SecondFactorRequired):
        accounts.set_anti_phishing_code(ctx, token, "Okapi-99")
    token = sf.step_up(ctx, token, method="totp", value=totp.at(clock.now_s)).token
    accounts.set_anti_phishing_code(ctx, token, "Okapi-99")
    assert user_row(ctx).anti_phishing_code == "Okapi-99"


def test_header_injection_in_params_rejected(ctx):
    register(ctx)
    with pytest.raises(ValidationError) as err:
        with ctx.store.tx() as db:
            user = db.scalars(select(User)).one()
            mail.enqueue(ctx, db, user, "credential_changed",
                         {"change": "x\r\nBcc: victim@example.com", "ip": "1", "locked_until": 1, "freeze_link": "x"})
    assert err.value.field == "params.change"


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(code=st.from_regex(re.compile(r"[A-Za-z0-9_-]{4,20}"), fullmatch=True),
       template=st.sampled_from(sorted(mail.TEMPLATES)))
def test_property_code_always_present(ctx, code, template):
    user = User(id=1, account_id="u_x", email="p@example.com", password_hash="x", created_at_s=0,
                anti_phishing_code=code, pgp_fingerprint=None)
    tpl = mail.TEMPLATES[template]
    params = {f: "value" for _, f, _, _ in string.Formatter().parse(tpl.subject + tpl.body) if f}
    subject, body, _ = mail.compose(ctx, user, template, params)
    assert f"[{code}]" in subject and f"Anti-phishing code: {code}" in body


WITHDRAWAL_PARAMS: dict[str, object] = {"amount": "0.5", "fee": "0.0001", "received": "0.4999", "asset": "BTC", "address": "bc1qxyz",
                                        "link": "https://x/c?t=1", "expires_at": 1796510787, "freeze_link": "https://x/f?t=2"}


def test_the_withdrawal_and_address_mails_carry_the_fee_the_expiry_and_a_freeze_link(ctx, clock, smtp):
    """The withdrawal's confirmation mail says what the account pays, the fee and what arrives (as the
    link's page does), until when the link works, and carries the one-click freeze link; the
    address-book mail carries that freeze link too (it named a freeze control the security centre lacks)."""
    register(ctx, "ida@example.com")
    user = user_row(ctx, "ida@example.com")
    body = mail.compose(ctx, user, "withdrawal_confirmation", WITHDRAWAL_PARAMS)[1]
    assert ("asked to withdraw 0.5 BTC to this address:\nbc1qxyz\nFee: 0.0001 BTC\nThe address receives: 0.4999 BTC\n\n"
            "If it was you, confirm it (the link works once, until Dec 5, 2026, 10:46:27\u202fPM UTC):\nhttps://x/c?t=1\n\n"
            "If it was not you, do not click that link: freeze your account with one click, then change your password:\n"
            "https://x/f?t=2") in body, body
    with pytest.raises(ValidationError) as exc:  # no freeze link, no mail
        mail.compose(ctx, user, "withdrawal_confirmation", {k: v for k, v in WITHDRAWAL_PARAMS.items() if k != "freeze_link"})
    assert exc.value.field == "params.freeze_link"
    body = mail.compose(ctx, user, "withdrawal_address_confirmation", {
        "asset": "BTC", "address": "bc1qxyz", "network": "BTC", "ip": "198.51.100.9", "link": "https://x/a?t=1",
        "cooling": "24 h", "freeze_link": "https://x/f?t=3"})[1]
    assert "from the security centre" not in body, body
    assert body.endswith("If it was not you, do not click that link: freeze your account with one click, then change your "
                         "password:\nhttps://x/f?t=3"), body


def test_mail_goes_out_in_the_users_language_with_the_code(ctx, clock, smtp):
    """Signed up from a German page, the user's mail is German (docs/i18n.md), the anti-phishing code in
    the subject and the first body line, the link intact; the language can change later (the selector)."""
    accounts.sign_up(ctx, "grete@example.com", "correct horse battery staple 42", ip="198.51.100.9", locale="de")
    [verify] = outbox(ctx, to="grete@example.com", template="verify_email")
    assert verify.subject == "Bestätigen Sie Ihre E-Mail-Adresse", verify.subject
    assert verify.body.startswith("Anti-Phishing-Code: nicht gesetzt.") and "Willkommen bei ringfence." in verify.body
    assert "/verify-email?token=" in verify.body
    accounts.verify_email(ctx, re.search(r"token=([A-Za-z0-9_\-]+)", verify.body).group(1))
    with ctx.store.tx() as db:
        db.scalars(select(User).where(User.email == "grete@example.com")).one().anti_phishing_code = "Rhein-Otter_9"
    user = user_row(ctx, "grete@example.com")
    subject, body, _ = mail.compose(ctx, user, "withdrawal_confirmation", WITHDRAWAL_PARAMS)
    assert subject == "[Rhein-Otter_9] Bestätigen Sie Ihre Auszahlung"
    assert body.splitlines()[0] == "Anti-Phishing-Code: Rhein-Otter_9"
    assert "möchte 0.5 BTC an diese Adresse auszahlen:\nbc1qxyz\nGebühr: 0.0001 BTC\nDie Adresse erhält: 0.4999 BTC\n" in body, body
    assert "(der Link gilt einmal, bis 05.12.2026, 22:46:27 UTC):\nhttps://x/c?t=1\n" in body, body
    assert "Frieren Sie Ihr Konto mit einem Klick ein" in body and body.endswith("\nhttps://x/f?t=2"), body
    # a security change names its kind in the reader's language; the caller's data keeps the machine identifier
    params = {"change": "anti_phishing_changed", "ip": "198.51.100.9", "locked_until": 1, "freeze_link": "https://x/f?t=1"}
    subject, body, _ = mail.compose(ctx, user, "credential_changed", params)
    assert subject == "[Rhein-Otter_9] Sicherheitsänderung an Ihrem Konto: Anti-Phishing-Code geändert", subject
    assert "Anti-Phishing-Code geändert" in body and "anti_phishing_changed" not in body and params["change"] == "anti_phishing_changed"
    # the lock's end as a German date and time, not a Unix timestamp (a new user read "1796510787 (Unix time)")
    params["locked_until"] = 1796510787
    body = mail.compose(ctx, user, "credential_changed", params)[1]
    assert "gesperrt bis 05.12.2026, 22:46:27 UTC." in body and "1796510787" not in body, body
    english = User(id=2, account_id="u_en", email="e@example.com", password_hash="x", created_at_s=0, anti_phishing_code="Okapi-99")
    assert mail.compose(ctx, english, "credential_changed", params)[0] == "[Okapi-99] Security change on your account: anti-phishing code changed"
    # delivered over real SMTP as UTF-8, umlauts intact
    assert mail.deliver_due(ctx).sent == 1
    sent = smtp.messages[-1][2]
    assert smtp.messages[-1][1] == ["grete@example.com"]
    parsed = email.message_from_string(sent, policy=email.policy.default)
    assert parsed["Subject"] == "Bestätigen Sie Ihre E-Mail-Adresse"
    assert parsed.get_content().startswith("Anti-Phishing-Code: nicht gesetzt.")
    # the selector changes the profile's language; an unknown one is refused, nothing changed
    token = accounts.login(ctx, "grete@example.com", "correct horse battery staple 42", ip="198.51.100.9", user_agent="t").session.token
    assert accounts.set_locale(ctx, token, "ar") == "ar" and accounts.profile_locale(ctx, token) == "ar"
    with pytest.raises(ValidationError):
        accounts.set_locale(ctx, token, "xx")
    assert accounts.profile_locale(ctx, token) == "ar"
    subject, body, _ = mail.compose(ctx, user_row(ctx, "grete@example.com"), "account_frozen", {})
    assert subject == "[Rhein-Otter_9] حسابك مجمَّد" and body.startswith("رمز مكافحة التصيّد: Rhein-Otter_9")
