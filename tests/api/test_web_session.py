"""A newcomer's path through `ringfence serve --demo`, in Debian's Chromium (Playwright):

sign up → the verification e-mail arrives over SMTP at the demo's catcher and shows at /dev/mail →
click the link → sign in → turn on TOTP from the secret shown beside the QR code → trade on the
dashboard through the web session (cookie + CSRF token, no API secret in the browser): place an
order, see it in open orders, cancel it. Cross-site requests and requests without the CSRF token
are refused and change nothing (the journal's last sequence number does not move).

Screenshots of each step go to docs/img/web-session-*.png.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pyotp
import pytest
import segno
from playwright.sync_api import expect, sync_playwright

from .conftest import Server, early_in_a_window

# the SQL store (identity, read models) is exercised: `make test` runs this file again on PostgreSQL
pytestmark = pytest.mark.store

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery staple 42"
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve") / "data")  # with its chains: its pages are the screenshots in docs/img
    srv.web = srv.base.replace("127.0.0.1", "localhost")  # the origin the pages and cookies belong to
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Debian chromium is missing: `make setup` installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / f"web-session-{name}.png"), full_page=True)


def wait_for_mail(page, base: str, to: str, timeout_s: float = 30) -> None:
    """Reload /dev/mail until the message to `to` has arrived (the worker polls every 2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(base + "/dev/mail")
        if page.locator(f'section.mail[data-to="{to}"]').count():
            return
        assert time.monotonic() < deadline, f"no mail to {to} at /dev/mail after {timeout_s} s:\n" + page.inner_text("body")
        time.sleep(0.5)


def confirm_first_factor_from_mail(page, base: str, email: str, timeout_s: float = 30) -> str:
    """In a second tab: open the "confirm your new second factor" e-mail at /dev/mail, follow its link and
    press the confirm button. Returns the link (single-use). The caller's page stays where it was."""
    tab = page.context.new_page()
    deadline = time.monotonic() + timeout_s
    while True:
        tab.goto(base + "/dev/mail")
        mail = tab.locator(f'section.mail[data-to="{email}"]').filter(has_text="Confirm your new second factor")
        if mail.count():
            break
        assert time.monotonic() < deadline, f"no factor confirmation mail to {email} after {timeout_s} s"
        time.sleep(0.5)
    mail = mail.first
    expect(mail.locator(".mail-body")).to_contain_text("Anti-phishing code:")
    expect(mail.locator(".mail-body")).to_contain_text("If it was NOT you")
    assert mail.locator('a[href*="/security/freeze?token="]').count() == 1  # how to report it
    link = mail.locator('a[href*="/security/confirm-factor?token="]')
    href = link.get_attribute("href")
    assert href
    link.click()
    tab.click("#confirm-factor")
    expect(tab.locator("h1")).to_have_text("Second factor confirmed")
    tab.close()
    return href


def sign_up_verify_and_enable_totp(page, base: str, email: str, screenshots: bool = False, confirm: bool = True) -> pyotp.TOTP:
    page.goto(base + "/signup")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signup")
    expect(page.locator("h1")).to_have_text("Check your inbox")
    if screenshots:
        shot(page, "1-signed-up")

    wait_for_mail(page, base, email)
    mail = page.locator(f'section.mail[data-to="{email}"]').first
    expect(mail.locator(".mail-subject")).to_contain_text("Confirm your e-mail address")
    expect(mail.locator(".mail-body")).to_contain_text("Anti-phishing code: not set")
    if screenshots:
        shot(page, "2-mail-at-dev-mail")
    mail.locator('a[href*="/verify-email?token="]').click()
    expect(page.locator("h1")).to_have_text("Confirm your e-mail address?")  # the link's GET confirms nothing
    page.click("#verify-email")
    expect(page.locator("h1")).to_have_text("E-mail confirmed")
    if screenshots:
        shot(page, "3-verified")

    page.goto(base + "/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signin")
    page.wait_for_url(base + "/security")
    page.click("#setup-totp")
    qr = page.locator("svg#totp-qr")
    expect(qr).to_be_visible()
    secret = page.inner_text("#totp-secret")
    uri = page.get_attribute("#totp-uri", "href")
    assert uri and f"secret={secret}" in uri
    # the QR code the page shows encodes exactly the otpauth:// URI with that secret
    expected = segno.make(uri, error="m").svg_inline(scale=5, border=4, dark="#000", light="#fff", title="QR code for your authenticator app")
    drawn = qr.evaluate("e => [...e.querySelectorAll('path')].map(p => p.getAttribute('d'))")
    assert drawn == re.findall(r' d="([^"]+)"', expected) and len(drawn[-1]) > 100
    box = qr.bounding_box()
    assert box and box["width"] >= 150 and box["height"] >= 150, box  # big enough to scan
    if screenshots:
        shot(page, "4-totp-qr")
    totp = pyotp.TOTP(secret)
    page.fill("#code", totp.now())
    page.click("#confirm-totp")
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    # a first factor: the page says it is not on until the e-mailed link is opened (not "is on")
    expect(page.locator("#factor-pending")).to_contain_text("set up but not on yet: open the confirmation link we e-mailed you")
    expect(page.locator("#totp-on")).to_have_count(0)
    if confirm:  # a first second factor counts only once confirmed from the account's e-mail
        confirm_first_factor_from_mail(page, base, email)
    return totp


def sign_up_by_http(context, base: str, email: str, confirm: bool = True, second_factor: bool = True) -> pyotp.TOTP | None:
    """The account `sign_up_verify_and_enable_totp` leaves (signed up, e-mail verified, signed in, TOTP on, its first
    factor confirmed from the e-mail unless `confirm=False`; no TOTP at all with `second_factor=False`: None), made by posting the same pages' forms with httpx, and
    its session cookie put into the browser `context`: for the tests about what a signed-in account does, not about
    signing up (test_newcomer_signs_up_by_mail_turns_on_totp_and_trades_on_the_session clicks through all of it, and
    test_a_first_second_factor_counts_only_after_the_email_confirmation the factor's link). The clicks cost a page
    load or two each in Chromium, about 5 s of a test on a loaded machine."""
    from urllib.parse import parse_qs, urlsplit

    from .test_key_cache import Browserless, csrf_of, mailed_link

    b = Browserless(base)
    try:
        r = b.request("POST", "/signup", data={"email": email, "password": PASSWORD})
        assert r.status_code == 200 and "Check your inbox" in r.text, r.text[:2000]
        token = parse_qs(urlsplit(mailed_link(b, email, "/verify-email")).query)["token"][0]
        r = b.request("POST", "/verify-email", data={"token": token})  # the link page's button
        assert r.status_code == 200 and "E-mail confirmed" in r.text, r.text[:2000]
        r = b.request("POST", "/login", data={"email": email, "password": PASSWORD})
        assert r.status_code == 303 and r.headers["location"] == "/security", (r.status_code, r.headers.get("location"))
        totp = None
        if second_factor:
            setup = b.request("POST", "/security/totp/begin", data={"csrf_token": csrf_of(b.request("GET", "/security").text)}).text
            secret = re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', setup)
            assert secret, setup[:2000]
            totp = pyotp.TOTP(secret.group(1))
            r = b.request("POST", "/security/totp/confirm", data={"csrf_token": csrf_of(setup), "code": totp.now()})
            assert r.status_code == 200 and 'id="recovery-codes"' in r.text, r.text[:2000]
        if second_factor and confirm:
            token = parse_qs(urlsplit(mailed_link(b, email, "/security/confirm-factor")).query)["token"][0]
            r = b.request("POST", "/security/confirm-factor", data={"token": token})
            assert r.status_code == 200 and "Second factor confirmed" in r.text, r.text[:2000]
        host = urlsplit(base).hostname
        # as the server set them (`__Host-`: Secure, path /, no Domain; Chromium holds loopback secure)
        context.add_cookies([{"name": name, "value": value, "domain": host, "path": "/", "secure": True, "httpOnly": True,
                              "sameSite": "Strict"} for name, value in b.cookies.items()])
    finally:
        b.http.close()
    return totp


def last_seq(server) -> int:
    return httpx.get(server.base + "/readyz").json()["last_seq"]


def test_newcomer_signs_up_by_mail_turns_on_totp_and_trades_on_the_session(server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    base = server.web
    sign_up_verify_and_enable_totp(page, base, "newcomer@example.com", screenshots=True)

    page.click("#trade")  # from the recovery codes page to the dashboard
    page.wait_for_url(base + "/")
    expect(page.locator("#whoami")).to_have_text("signed in as newcomer@example.com")
    assert page.locator("#apisecret").count() == 0 and page.locator("#apikey").count() == 0  # no secret boxes
    page.click("#demo-funds")
    expect(page.locator("#order-status")).to_contain_text("Demo funds added")
    page.locator("#markets button", has_text="AAPLXUSDT").click()
    expect(page.locator("#symbol-title")).to_have_text("AAPLXUSDT")
    usdt_free = page.locator('#balances tr[data-asset="USDT"] td.free')
    expect(usdt_free).to_have_text("15000.00")  # 10000 spot + 5000 tokenized, trailing zeros down to two decimals
    # the caption says what the table holds: both wallets summed, held assets plus the market's two
    expect(page.locator("#balances-note")).to_contain_text("Your spot and tokenized wallets (not the futures wallet)")
    for row in page.locator("#balances tbody tr").all():
        asset, total = row.get_attribute("data-asset"), row.get_attribute("data-total")
        assert asset in ("AAPLX", "USDT") or Decimal(total or "0") > 0, (asset, total)
        assert row.locator("td.total").get_attribute("title") == total
    expect(page.locator("#fiat-incomplete")).to_be_hidden()  # every demo asset has a rate: no "*" to explain
    page.click("#demo-funds")  # once per account: a second click gives nothing
    expect(page.locator("#order-status")).to_contain_text("You already have your demo funds")
    expect(usdt_free).to_have_text("15000.00")

    page.select_option("#side", "BUY")
    page.select_option("#otype", "LIMIT")
    page.fill("#price", "189.50")
    page.fill("#qty", "2.00")
    page.click("#place")
    expect(page.locator("#order-status")).to_contain_text("NEW")
    row = page.locator("#open-orders tbody tr").filter(has_text="189.500000")
    expect(row).to_have_count(1)
    expect(usdt_free).to_have_text("14621.00")  # 379 USDT held for the order
    expect(page.locator('#bids tr[data-price="189.500000"]')).to_be_visible()
    shot(page, "5-order-placed")

    cookie = next(c for c in context.cookies() if c["name"] == "__Host-rf_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert cookie["value"] not in page.content()  # the page never holds the session id
    row.get_by_role("button", name="Cancel").click()
    expect(page.locator("#order-status")).to_contain_text("CANCELED")
    expect(page.locator("#open-orders tbody tr").filter(has_text="189.500000")).to_have_count(0)
    expect(usdt_free).to_have_text("15000.00")  # the hold is released
    shot(page, "6-order-cancelled")

    # a market order fills against the market maker; the fill is in the session's myTrades
    page.select_option("#otype", "MARKET")
    page.fill("#qty", "1.00")
    page.click("#place")
    expect(page.locator("#order-status")).to_contain_text("FILLED")
    fills = page.evaluate("fetch('/session/v3/myTrades?symbol=AAPLXUSDT').then(r => r.json())")
    assert [(f["price"], f["qty"], f["isBuyer"]) for f in fills] == [("190.020000", "1.0000", True)], fills
    # the history lists it as a market order, not at a price of 0
    market_row = page.locator("#history tbody tr").filter(has_text="FILLED").first
    expect(market_row).to_contain_text("Market")
    expect(market_row).not_to_contain_text("0.000000")

    page.click("#logout")  # the dashboard's sign-out form (session-bound CSRF token)
    page.wait_for_url(base + "/login")
    page.goto(base + "/")
    expect(page.locator("#whoami")).to_have_text("not signed in")
    assert not errors, errors
    context.close()


class _Attacker(BaseHTTPRequestHandler):
    """Another site (another origin: 127.0.0.1 on its own port) whose page posts to the exchange."""

    target = ""

    def do_GET(self):  # noqa: N802 (http.server hook)
        page = (
            "<!doctype html><form id=f method=post action='%s/session/v3/order'>"
            "<input name=symbol value=AAPLXUSDT><input name=side value=BUY><input name=type value=LIMIT>"
            "<input name=timeInForce value=GTC><input name=price value=189.00><input name=quantity value=1.00>"
            "<button id=go>go</button></form>" % self.target
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):  # keep test output quiet
        pass


def test_cross_site_and_token_less_requests_are_refused_and_change_nothing(server, browser):
    context = browser.new_context()
    page = context.new_page()
    base = server.web
    sign_up_by_http(context, base, "victim@example.com")
    page.goto(base + "/")
    expect(page.locator("#whoami")).to_have_text("signed in as victim@example.com")
    page.click("#demo-funds")
    expect(page.locator("#order-status")).to_contain_text("Demo funds added")
    csrf = page.evaluate("fetch('/session/v3/me').then(r => r.json()).then(j => j.csrfToken)")
    before_seq = last_seq(server)
    before_account = page.evaluate("fetch('/session/v3/account').then(r => r.json())")

    # 1. a real cross-site form post from another origin: no cookie (SameSite=Strict), no token
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _Attacker.target = base
    evil = ThreadingHTTPServer(("127.0.0.1", port), _Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        with page.expect_response(lambda r: "/session/v3/order" in r.url) as answer:
            page.click("#go")
        assert answer.value.status in (401, 403), answer.value.status
        assert answer.value.json()["code"] == -1002
    finally:
        evil.shutdown()

    # 2. from the exchange's own page, with the cookie but without the CSRF token
    page.goto(base + "/")
    expect(page.locator("#whoami")).to_have_text("signed in as victim@example.com")
    order = "symbol=AAPLXUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=189.00&quantity=1.00"
    js = """([body, headers]) => fetch('/session/v3/order', {method: 'POST', body,
             headers: Object.assign({'Content-Type': 'application/x-www-form-urlencoded'}, headers)})
             .then(async r => [r.status, await r.json()])"""
    status, body = page.evaluate(js, [order, {}])
    assert status == 403 and body["code"] == -1002 and "CSRF" in body["msg"], body
    status, body = page.evaluate(js, [order, {"X-CSRF-Token": "0" * 64}])
    assert status == 403 and "CSRF" in body["msg"], body

    # 3. the right cookie and token, but sent by a foreign Origin (Playwright's request API)
    r = context.request.post(base + "/session/v3/order", data=order, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert r.status == 403 and "Origin" in r.json()["msg"], r.text()

    # 4. an API signature is not accepted on the session path (one way in per endpoint)
    status, body = page.evaluate(js, [order + "&timestamp=1&signature=abc", {"X-CSRF-Token": csrf}])
    assert status == 400 and body["code"] == -1104, body

    # nothing changed: no command was journaled, no order opened, the balances are as they were
    assert last_seq(server) == before_seq
    assert page.evaluate("fetch('/session/v3/openOrders').then(r => r.json())") == []
    assert page.evaluate("fetch('/session/v3/account').then(r => r.json())")["balances"] == before_account["balances"]

    # and the same order with the token from the page goes through (the refusals were not luck)
    status, body = page.evaluate(js, [order, {"X-CSRF-Token": csrf}])
    assert status == 200 and body["status"] == "NEW", body
    assert last_seq(server) > before_seq
    context.close()


def test_without_a_second_factor_the_session_reads_but_does_not_trade(server, browser):
    context = browser.new_context()
    page = context.new_page()
    base = server.web
    email = "reader@example.com"
    sign_up_by_http(context, base, email, second_factor=False)  # signed in, no second factor (the pages: test_newcomer_...)
    page.goto(base + "/")
    expect(page.locator("#whoami")).to_have_text(f"signed in as {email}")
    expect(page.locator("#trade-hint")).to_be_visible()
    expect(page.locator("#trade-hint-pending")).to_be_hidden()
    expect(page.locator("#place")).to_be_disabled()
    csrf = page.evaluate("fetch('/session/v3/me').then(r => r.json()).then(j => j.csrfToken)")
    before_seq = last_seq(server)
    status, body = page.evaluate(
        """(csrf) => fetch('/session/v3/order', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded',
           'X-CSRF-Token': csrf}, body: 'symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.001'}).then(async r => [r.status, await r.json()])""",
        csrf,
    )
    assert status == 403 and "two-factor" in body["msg"], body
    assert last_seq(server) == before_seq
    context.close()


def test_signed_out_dashboard_offers_sign_in_and_session_api_needs_a_session(server, browser):
    page = browser.new_page()
    page.goto(server.web + "/")
    expect(page.locator("#whoami")).to_have_text("not signed in")
    expect(page.locator("#signin-link")).to_be_visible()
    expect(page.locator("#markets button", has_text="BTCUSDT")).to_be_visible()  # market data needs no sign-in
    r = httpx.get(server.base + "/session/v3/account")
    assert r.status_code == 401 and r.json()["code"] == -1002
    assert r.headers["cache-control"] == "no-store"


def test_session_requests_are_weighed_per_session(tmp_path, browser):
    """The per-key request weight applies to a session too: past it, 429 with Retry-After."""
    srv = Server(tmp_path / "data", env={"RINGFENCE_API_KEY_WEIGHT_PER_MIN": "100"}, chains=False)
    try:
        web = srv.base.replace("127.0.0.1", "localhost")
        context = browser.new_context()
        page = context.new_page()
        sign_up_by_http(context, web, "busy@example.com")
        page.goto(web + "/dev/mail")  # a page of the exchange's origin that makes no session calls itself
        early_in_a_window()
        statuses = page.evaluate("""async () => {
            const out = [];
            for (let i = 0; i < 7; i++) {
              const r = await fetch('/session/v3/account');
              out.push([r.status, r.headers.get('retry-after'), (await r.json()).code]);
            }
            return out;
        }""")
        assert [s[0] for s in statuses[:5]] == [200] * 5, statuses  # 5 x weight 20 = the 100 allowed
        assert statuses[5][0] == 429 and statuses[5][2] == -1003 and int(statuses[5][1]) >= 1, statuses
        context.close()
    finally:
        assert srv.stop() == 0


def test_a_first_second_factor_counts_only_after_the_email_confirmation(server, browser):
    """Security row 19.1: someone holding only the password enrols TOTP; the session still cannot trade
    until the link mailed to the account (anti-phishing code, freeze link) is confirmed; the link works once."""
    context = browser.new_context()
    page = context.new_page()
    base = server.web
    email = "pending-2fa@example.com"
    sign_up_by_http(context, base, email, confirm=False)  # the factor's set-up clicked through: test_newcomer_...
    page.goto(base + "/security")
    expect(page.locator("#factor-pending")).to_contain_text("not confirmed yet")
    page.goto(base + "/")
    me = page.evaluate("fetch('/session/v3/me').then(r => r.json())")
    assert me["scopes"] == ["read"] and me["secondFactorPending"] is True and me["secondFactor"] is False, me
    # the dashboard says the factor waits for its e-mailed link, not "turn on two-factor authentication"
    expect(page.locator("#trade-hint-pending")).to_contain_text("open the confirmation link we e-mailed you")
    expect(page.locator("#trade-hint")).to_be_hidden()
    order = "symbol=AAPLXUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=189.00&quantity=1.00"
    js = """([body, csrf]) => fetch('/session/v3/order', {method: 'POST', body,
             headers: {'Content-Type': 'application/x-www-form-urlencoded', 'X-CSRF-Token': csrf}})
             .then(async r => [r.status, await r.json()])"""
    before_seq = last_seq(server)
    status, body = page.evaluate(js, [order, me["csrfToken"]])
    assert status == 403 and body["code"] == -1002 and "confirm your new second factor" in body["msg"], body
    assert last_seq(server) == before_seq  # refused before the engine: nothing journaled

    href = confirm_first_factor_from_mail(page, base, email)
    page.goto(base + "/")
    expect(page.locator("#whoami")).to_have_text(f"signed in as {email}")
    me = page.evaluate("fetch('/session/v3/me').then(r => r.json())")
    assert me["scopes"] == ["read", "trade"] and me["secondFactorPending"] is False, me
    expect(page.locator("#trade-hint-pending")).to_be_hidden()
    page.click("#demo-funds")
    expect(page.locator("#order-status")).to_contain_text("Demo funds added")
    status, body = page.evaluate(js, [order, me["csrfToken"]])
    assert status == 200 and body["status"] == "NEW", body

    # the link is single-use: opened again, it says so at once and offers no confirm button
    page.goto(href)
    expect(page.locator("#message")).to_contain_text("invalid, already used or expired")
    assert page.locator("#confirm-factor").count() == 0
    context.close()
