"""End-to-end: the identity pages in real Chromium (Playwright) against a real uvicorn server.

Runs on SQLite and PostgreSQL like every identity test. Chromium is Debian's /usr/bin/chromium;
passkeys use Chromium's built-in virtual authenticator (DevTools WebAuthn domain).
"""

from __future__ import annotations

import socket
import threading
import time

import pyotp
import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import select

from ringfence.identity import api_keys
from ringfence.identity.web import create_app
from ringfence.store.models import User

from .conftest import PASSWORD, confirm_first_factor_by_mail, outbox, register

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(ctx):
    port = free_port()
    ctx.settings.identity_origin = f"http://localhost:{port}"
    ctx.settings.identity_public_url = f"http://localhost:{port}"
    srv = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://localhost:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def sign_up_and_verify(ctx, page, base, email="web@example.com"):
    page.goto(f"{base}/signup")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signup")
    assert "Check your inbox" in page.inner_text("h1"), page.inner_text("body")
    assert page.get_attribute("#next", "href") == "/login", "the page leads on to signing in (new-user review)"
    link = outbox(ctx, to=email, template="verify_email")[-1].body.split("\n")
    url = next(line for line in link if "verify-email?token=" in line)
    page.goto(url)  # the link's page: the address and a button; the GET confirmed nothing
    assert page.inner_text("h1") == "Confirm your e-mail address?" and email in page.inner_text("body")
    page.click("#verify-email")
    assert "E-mail confirmed" in page.inner_text("h1")


def sign_in(page, base, email="web@example.com"):
    page.goto(f"{base}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signin")


def test_sign_up_totp_sign_in_api_key_and_anti_phishing(ctx, clock, server, browser):
    context = browser.new_context()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_up_and_verify(ctx, page, server)
    sign_in(page, server)
    assert page.inner_text("#totp-status") == "off"
    cookie = next(c for c in context.cookies() if c["name"] == "__Host-rf_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    first_cookie = cookie["value"]

    page.click("#setup-totp")
    totp = pyotp.TOTP(page.inner_text("#totp-secret"))
    page.fill("#code", totp.at(clock.now_s))
    page.click("#confirm-totp")
    assert len(page.locator("#recovery-codes li").all()) == 10
    confirm_first_factor_by_mail(ctx, "web@example.com")  # a first factor counts once confirmed from the e-mail
    rotated = next(c for c in context.cookies() if c["name"] == "__Host-rf_session")["value"]
    assert rotated != first_cookie  # privilege change rotated the session id

    page.click("#next")
    page.click("#logout")
    clock.advance(30)
    sign_in(page, server)
    assert page.url.endswith("/login/2fa")
    page.fill("#code", "000000" if totp.at(clock.now_s) != "000000" else "111111")
    page.click("#verify-totp")
    assert "not correct" in page.inner_text("#message")
    assert page.get_attribute("#back-form", "href") == "/login/2fa"  # the way back is to the form, not only the dashboard
    page.goto(f"{server}/login/2fa")
    page.fill("#code", totp.at(clock.now_s))
    page.click("#verify-totp")
    assert page.inner_text("#fresh-status") == "confirmed"

    page.fill("#key-label", "web bot")
    page.check("input[name=scopes][value=trade]")
    page.click("#create-key")
    key, secret = page.inner_text("#api-key"), page.inner_text("#api-secret")
    payload = "symbol=BTCUSDT&timestamp=1"
    principal = api_keys.verify_api_request(ctx, key, payload, api_keys.hmac_signature(secret, payload), "192.0.2.1", "trade")
    page.click("#next")
    assert page.inner_text("#account-id") == principal.account_id
    assert "withdrawals are locked" in page.inner_text("#withdrawal-lock").lower()
    # the lock the settings give (24 h by default), in the reader's words; it was "24 hours" whatever the setting
    assert page.inner_text("#lock-note").endswith("locks withdrawals for 1 day.")

    page.fill("#apc-code", "Web-Otter_1")
    page.click("#set-apc")
    assert page.inner_text("#apc") == "Web-Otter_1"
    assert "[Web-Otter_1]" in outbox(ctx, template="credential_changed")[-1].subject
    events = page.locator(".event-row").all_inner_texts()
    kinds = page.locator(".event-kind").evaluate_all("els => els.map((e) => [e.dataset.kind, e.title])")
    assert ["anti_phishing_changed"] * 2 in kinds and ["api_key_created"] * 2 in kinds, kinds  # the code on hover
    # the label people read, not the label and the code side by side
    assert any("anti-phishing code changed" in e for e in events) and not any("anti_phishing_changed" in e for e in events), events
    # the dashboard's dark colours, not a white page between dark ones
    expect(page.locator("body")).to_have_css("background-color", "rgb(15, 20, 25)")  # once the stylesheet is in
    assert dialogs == []
    context.close()


def test_passkey_registration_and_sign_in(ctx, clock, server, browser):
    context = browser.new_context()
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})
    register(ctx, "passkey@example.com")  # the sign-up's pages: test_sign_up_totp_sign_in_api_key_and_anti_phishing
    sign_in(page, server, "passkey@example.com")
    page.fill("#passkey-label", "Laptop key")
    page.click("#add-passkey")
    page.wait_for_selector("#passkeys li:has-text('Laptop key')")
    assert "not confirmed yet" in page.inner_text("#factor-pending")
    confirm_first_factor_by_mail(ctx, "passkey@example.com")
    page.click("#logout")
    sign_in(page, server, "passkey@example.com")
    assert page.url.endswith("/login/2fa")
    page.click("#passkey-login")
    page.wait_for_url(f"{server}/security")
    assert page.inner_text("#fresh-status") == "confirmed"
    assert page.inner_text("#who") == "passkey@example.com"
    # sent to sign in from another page, the passkey brings the user back there (a path on this site
    # only: another host in `next` lands on the security centre)
    for asked, landed in (("/security/freeze", "/security/freeze"), ("//evil.example/x", "/security")):
        page.goto(f"{server}/security")
        page.click("#logout")
        page.goto(f"{server}/login?next={asked}")
        page.fill("#email", "passkey@example.com")
        page.fill("#password", PASSWORD)
        page.click("#signin")
        page.wait_for_url(lambda url: url.startswith(f"{server}/login/2fa"))
        page.click("#passkey-login")
        page.wait_for_url(f"{server}{landed}")
    context.close()


def test_csrf_stolen_cookie_and_script_laden_agent(ctx, clock, server, browser):
    victim = browser.new_context()
    page = victim.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    register(ctx, "csrf@example.com")  # the sign-up's pages: test_sign_up_totp_sign_in_api_key_and_anti_phishing
    sign_in(page, server, "csrf@example.com")

    # CSRF: a request carrying the victim's cookie but no valid token is refused and changes nothing.
    resp = page.request.post(f"{server}/security/anti-phishing", form={"code": "Evil-Code", "csrf_token": "0" * 64})
    assert resp.status == 403 and "CSRF" in resp.text()
    resp = page.request.post(f"{server}/security/anti-phishing", form={"code": "Evil-Code"})
    assert resp.status == 403
    with ctx.store.tx() as db:
        assert db.scalars(select(User.anti_phishing_code).where(User.email == "csrf@example.com")).one() is None

    # A script in a field we display (the browser's user agent) is escaped, never executed.
    attacker = browser.new_context(user_agent="<script>alert('xss')</script><img src=x onerror=alert(2)>")
    apage = attacker.new_page()
    sign_in(apage, server, "csrf@example.com")
    page.goto(f"{server}/security")
    agents = page.locator(".session-row .agent").all_inner_texts()
    assert "<script>alert('xss')</script><img src=x onerror=alert(2)>" in agents
    assert dialogs == []

    # Stolen cookie: copy the victim's cookies, sign out everywhere, the copy is useless.
    stolen = victim.cookies()
    page.click("#logout-everywhere")
    thief = browser.new_context()
    thief.add_cookies(stolen)
    tpage = thief.new_page()
    tpage.goto(f"{server}/security")
    assert tpage.url.endswith("/login")
    for c in (victim, attacker, thief):
        c.close()


def test_oversized_form_rejected(ctx, server, browser):
    context = browser.new_context()
    page = context.new_page()
    resp = page.request.post(f"{server}/signup", form={"email": "a@example.com", "password": "x" * 200_000})
    assert resp.status == 400 and "form" in resp.text()
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    assert resp.headers["x-frame-options"] == "DENY"
    with ctx.store.tx() as db:
        assert db.scalars(select(User)).all() == []
    context.close()


def test_cross_site_login_post_refused(ctx, server, browser):
    """Login CSRF: a form on another site posting to /login is refused by its Origin."""
    register(ctx, "origin@example.com")
    context = browser.new_context()
    page = context.new_page()
    resp = page.request.post(f"{server}/login", form={"email": "origin@example.com", "password": PASSWORD},
                             headers={"Origin": "https://evil.example"}, max_redirects=0)
    assert resp.status == 403 and "cross-site" in resp.text()
    assert not any(c["name"].startswith("__Host-rf") for c in context.cookies())
    resp = page.request.post(f"{server}/login", form={"email": "origin@example.com", "password": PASSWORD},
                             headers={"Origin": server}, max_redirects=0)
    assert resp.status == 303
    context.close()


def test_change_password_in_security_centre(ctx, server, browser):
    laptop = browser.new_context()
    phone = browser.new_context()
    page, other = laptop.new_page(), phone.new_page()
    register(ctx, "pw@example.com")  # the sign-up's pages: test_sign_up_totp_sign_in_api_key_and_anti_phishing
    sign_in(page, server, "pw@example.com")
    sign_in(other, server, "pw@example.com")
    page.fill("#current-password", "wrong current password")
    page.fill("#new-password", "fresh and unusual passphrase 8")
    page.click("#change-password")
    expect(page.locator("#message")).to_contain_text("incorrect")
    page.goto(f"{server}/security")
    page.fill("#current-password", PASSWORD)
    page.fill("#new-password", "password123")
    page.click("#change-password")
    expect(page.locator("#message")).to_contain_text("common")
    page.goto(f"{server}/security")
    page.fill("#current-password", PASSWORD)
    page.fill("#new-password", "fresh and unusual passphrase 8")
    page.click("#change-password")
    expect(page.locator("#withdrawal-lock")).to_be_visible()  # the reloaded page: the change holds withdrawals
    assert page.url.endswith("/security")
    other.goto(f"{server}/security")
    assert other.url.endswith("/login")  # the other device was signed out
    page.click("#logout")
    page.goto(f"{server}/login")
    page.fill("#email", "pw@example.com")
    page.fill("#password", "fresh and unusual passphrase 8")
    page.click("#signin")
    assert page.inner_text("#who") == "pw@example.com"
    laptop.close()
    phone.close()


def test_register_an_ed25519_public_key_in_the_security_centre(ctx, clock, server, browser):
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    context = browser.new_context()
    page = context.new_page()
    register(ctx, "ed@example.com")  # the sign-up's pages: test_sign_up_totp_sign_in_api_key_and_anti_phishing
    sign_in(page, server, email="ed@example.com")
    page.click("#setup-totp")
    totp = pyotp.TOTP(page.inner_text("#totp-secret"))
    page.fill("#code", totp.at(clock.now_s))
    page.click("#confirm-totp")
    confirm_first_factor_by_mail(ctx, "ed@example.com")
    page.click("#next")
    assert page.inner_text("#fresh-status") == "confirmed"

    private = ed25519.Ed25519PrivateKey.generate()
    public_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    bad = [
        (base64.b64encode(public_raw[:31]).decode(), "decodes to 31 bytes"),  # wrong length
        ("not base64 at all!", "neither PEM nor valid base64"),
        ("-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZQ==\n-----END PUBLIC KEY-----", "does not decode to a public key"),
        (rsa_pem, "not Ed25519"),
        (private_pem, "PRIVATE key"),
    ]
    for value, message in bad:
        page.goto(f"{server}/security")
        page.fill("#ed-label", "bot")
        page.fill("#ed-public-key", value)
        page.click("#register-ed25519")
        body = page.inner_text("body")
        assert ("The public key " in body or "Public key: " in body) and message in body, (message, body)  # named as people name it
        assert "BEGIN PRIVATE KEY" not in body  # a pasted private key is never echoed
    with ctx.store.tx() as db:
        from ringfence.store.models import ApiKey

        assert db.scalars(select(ApiKey)).first() is None  # every refusal changed nothing

    page.goto(f"{server}/security")
    page.fill("#ed-label", "ed bot")
    page.fill("#ed-public-key", public_pem)
    page.check("#api-keys form:has(#ed-label) input[name=scopes][value=trade]")
    page.click("#register-ed25519")
    assert page.inner_text("#api-kind") == "ed25519"
    assert page.locator("#api-secret").count() == 0  # nothing secret exists on our side
    key = page.inner_text("#api-key")
    payload = "symbol=BTCUSDT&side=BUY&timestamp=1"
    signature = base64.b64encode(private.sign(payload.encode())).decode()
    principal = api_keys.verify_api_request(ctx, key, payload, signature, "192.0.2.1", "trade")
    assert principal.scopes == ("read", "trade")
    forged = base64.b64encode(ed25519.Ed25519PrivateKey.generate().sign(payload.encode())).decode()
    from ringfence.errors import Unauthorized

    with pytest.raises(Unauthorized, match="not valid"):
        api_keys.verify_api_request(ctx, key, payload, forged, "192.0.2.1", "trade")
    page.goto(f"{server}/security")
    created_events = [k for k in page.locator(".event-kind").evaluate_all("els => els.map((e) => e.dataset.kind)") if k == "api_key_created"]
    assert len(created_events) == 1, created_events
    context.close()


def test_a_refused_sign_up_or_sign_in_shows_its_form_again_with_what_was_typed(ctx, clock, server, browser):
    """A refusal leads back to the form the user came from, not to a message page that leads to the
    dashboard: the address kept, the password never, the field named as people name it."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server}/signup")
    page.fill("#email", "typed@example.com")
    page.evaluate("document.getElementById('password').removeAttribute('minlength')")  # the server's own check
    page.fill("#password", "short")
    with page.expect_response(f"{server}/signup") as answer:
        page.click("#signup")
    assert answer.value.status == 400
    assert page.url == f"{server}/signup" and page.inner_text("h1") == "Create your account"
    assert page.inner_text("#message") == "The password must be at least 10 characters."
    assert page.input_value("#email") == "typed@example.com" and page.input_value("#password") == ""
    assert "password:" not in page.inner_text("body") and page.locator("#back-dashboard").count() == 0
    page.fill("#password", "password123")  # the form works again from here: a common one, refused the same way
    page.click("#signup")
    assert page.inner_text("#message") == "The password is on the list of common or breached passwords; choose another."
    with ctx.store.tx() as db:
        assert db.scalars(select(User)).all() == []  # nothing was created

    sign_up_and_verify(ctx, page, server, "known@example.com")
    page.goto(f"{server}/login")
    page.fill("#email", "known@example.com")
    page.fill("#password", "not the password at all")
    with page.expect_response(f"{server}/login") as answer:
        page.click("#signin")
    assert answer.value.status == 401
    assert page.url == f"{server}/login" and page.inner_text("h1") == "Sign in"
    assert page.input_value("#email") == "known@example.com" and page.input_value("#password") == ""
    assert page.inner_text("#message") == "the e-mail or password is incorrect"  # a sentence of its own: no field prefix
    sign_in(page, server, "known@example.com")
    assert page.url.endswith("/security")
    for path, button in (("/forgot-password", "#forgot"), ("/verify-email/new", "#resend")):  # the other pre-sign-in forms
        page.goto(f"{server}{path}")
        page.fill("#email", "a@b")  # a browser accepts it; the server does not
        page.click(button)
        assert page.url == f"{server}{path}" and page.input_value("#email") == "a@b"
        assert page.inner_text("#message").startswith("The e-mail address must be "), page.inner_text("#message")
    context.close()


def test_error_sentences_name_the_field_for_people():
    from ringfence.errors import AuthenticationFailed, ValidationError
    from ringfence.identity.web import for_people

    assert for_people(ValidationError("must be at least 10 characters", field="body.password")) == \
        "The password must be at least 10 characters."
    assert for_people(ValidationError("must be an e-mail address like name@example.com", field="email")) == \
        "The e-mail address must be an e-mail address like name@example.com."
    assert for_people(AuthenticationFailed("the e-mail or password is incorrect")) == "the e-mail or password is incorrect"
    assert for_people(ValidationError("must be one of ['de', 'en']", field="body.new_locale")) == \
        "The new locale must be one of ['de', 'en']."
    assert for_people(ValidationError("decodes to 31 bytes", field="public_key")) == "Public key: decodes to 31 bytes"
    assert for_people(ValidationError("cross-site requests are not allowed", field="origin")) == "Origin: cross-site requests are not allowed"
