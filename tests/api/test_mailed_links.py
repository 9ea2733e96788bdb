"""The e-mailed links act on their page's POST button, never on GET (issue: a mail scanner or link
preview that fetched a link confirmed a withdrawal, a withdrawal address or an e-mail address), against
a real `ringfence serve --demo` process, with httpx:

for `/verify-email`, `/wallet/confirm-address` and `/wallet/confirm-withdrawal`, a GET (twice) and a
HEAD change nothing (checked through the API: the e-mail still unverified, the address book empty,
the withdrawal still waiting for its e-mail confirmation, the journal's last sequence number where it
was); the GET page names what the button confirms; the POST acts; a replayed POST says the link is used
and changes nothing; a bad token on GET or POST gets a clear error page and changes nothing.

Reproduce by hand: `ringfence serve --demo --data /tmp/rf --port 8000`, sign up at /signup, open the
link at /dev/mail (a page with a button; nothing confirmed until it is pressed).
"""

from __future__ import annotations

import json
import re
import time
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from .conftest import Server
from .test_key_cache import PASSWORD, Browserless, csrf_of, mailed_link
from .test_web_session import last_seq

# an account of its own for each test that moves money (`accounts`): more sign-ups and sign-ins from this one
# address than the per-IP defaults allow (10 sign-ups an hour, 30 sign-ins a minute); no test here is about them
ENV = {"RINGFENCE_CUSTODY_ADDRESS_COOLING_S": "0", "RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S": "0",
       "RINGFENCE_IDENTITY_SIGNUP_PER_IP_PER_HOUR": "60", "RINGFENCE_IDENTITY_LOGIN_PER_IP_PER_MIN": "120"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("links") / "data", env=ENV)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def path_of(link: str) -> str:
    parts = urlsplit(link)
    return parts.path + "?" + parts.query


def form_fields(html: str, action: str) -> dict[str, str]:
    """The hidden fields of the page's confirm form (the one that posts to `action`)."""
    form = re.search(r'<form method="post" action="' + re.escape(action) + r'">(.*?)</form>', html, re.S)
    assert form, html[:3000]
    return {unescape(n): unescape(v) for n, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(1))}


def message_of(html: str) -> str:
    m = re.search(r'<p id="message"[^>]*>(.*?)</p>', html, re.S)
    assert m, html[:3000]
    return unescape(m.group(1))


def title_of(html: str) -> str:
    m = re.search(r"<h1>(.*?)</h1>", html, re.S)
    assert m, html[:3000]
    return unescape(m.group(1))


def assert_way_back(html: str, code: str) -> None:
    """A refused link's page: links back to the dashboard and to sign-in, and the error's code only as a
    small reference for support (not a bare "error code" line)."""
    assert '<a id="back-dashboard" href="/">Back to the dashboard</a>' in html, html[-1500:]
    assert '<a id="back-sign-in" href="/login">Sign in</a>' in html, html[-1500:]
    assert f'<small>Reference for support: <code id="error-code">{code}</code></small>' in html, html[-1500:]
    assert "error code" not in html


def mail_body(b: Browserless, email: str, needle: str) -> str:
    """The text of the newest mail to `email` at /dev/mail that holds `needle` (delivered every 2 s)."""
    deadline = time.monotonic() + 30
    while True:
        page = b.request("GET", "/dev/mail").text
        for section in re.findall(r'<section class="mail" data-to="' + re.escape(email) + r'"[^>]*>(.*?)</section>', page, re.S):
            body = unescape(re.sub(r"<[^>]+>", "", section)).replace("\r\n", "\n")  # SMTP wrote CRLF
            if needle in body:
                return body
        assert time.monotonic() < deadline, f"no mail to {email} with {needle!r} at /dev/mail"
        time.sleep(0.3)


def withdrawal_link(b: Browserless, wid: str) -> str:
    """The link of withdrawal `wid`'s e-mail at the demo's /dev/mail (delivered every 2 s)."""
    deadline = time.monotonic() + 30
    while True:
        page = b.request("GET", "/dev/mail").text
        found = re.search(r'href="([^"]*/wallet/confirm-withdrawal\?id=' + re.escape(wid) + r'&amp;token=[^"]+)"', page)
        if found:
            return unescape(found.group(1))
        assert time.monotonic() < deadline, f"no mail with the link of withdrawal {wid} at /dev/mail"
        time.sleep(0.3)


def sign_in(b: Browserless, email: str) -> int:
    return b.request("POST", "/login", data={"email": email, "password": PASSWORD}).status_code


#: the commands an e-mailed address or withdrawal link sends the engine when its button is pressed
LINK_COMMANDS = ("custody.address_book.add/1", "custody.withdrawal.confirm_email/1")


def link_commands_since(server, seq: int) -> list[str]:
    """The link commands journaled after `seq` (`ringfence journal sources`). The demo server's own
    workers go on journaling (chains, withdrawals of earlier tests), so "nothing changed" is asked of
    the commands a link sends, not of the journal's length. In this process (`invoke`: no interpreter start of 1-2 s
    of CPU for each of the file's seven checks); test_the_address_and_withdrawal_links_act_only_on_their_button runs it as a process."""
    from .conftest import invoke

    got = invoke("journal", "sources", str(server.data), "--from-seq", str(seq + 1))
    assert got.returncode == 0, got.stderr
    tags = [json.loads(line)["command"] for line in got.stdout.splitlines() if line.startswith("{")]
    return [t for t in tags if t in LINK_COMMANDS]


def test_the_sign_up_link_confirms_the_address_only_on_its_button(server):
    b = Browserless(server.base)
    email = f"links{int(time.time() * 1000)}@example.com"
    assert b.request("POST", "/signup", data={"email": email, "password": PASSWORD}).status_code == 200
    link = path_of(mailed_link(b, email, "/verify-email"))
    token = parse_qs(urlsplit(link).query)["token"][0]
    for _ in range(2):  # a scanner's fetch, then the person's
        page = b.request("GET", link)
        assert page.status_code == 200, page.text
        assert "Confirm your e-mail address?" in page.text and email in page.text
        assert form_fields(page.text, "/verify-email") == {"token": token}
    assert b.request("HEAD", link).status_code == 405
    refused = b.request("POST", "/login", data={"email": email, "password": PASSWORD})
    assert refused.status_code == 403 and "confirm your e-mail address first" in refused.text, "still unverified"

    for bad in ("x" * 40, token[:-2] + "xx"):  # a made-up token, on GET and POST: a clear error, nothing changes
        got = b.request("GET", "/verify-email?token=" + bad)
        assert got.status_code == 401 and "invalid, already used or expired" in message_of(got.text)
        posted = b.request("POST", "/verify-email", data={"token": bad})
        assert posted.status_code == 401 and "invalid, already used or expired" in message_of(posted.text)
    assert b.request("POST", "/verify-email", data={}).status_code == 400  # no token: the field is named
    assert sign_in(b, email) == 403

    done = b.request("POST", "/verify-email", data=form_fields(page.text, "/verify-email"))
    assert done.status_code == 200 and "E-mail confirmed" in done.text, done.text
    again = b.request("POST", "/verify-email", data={"token": token})  # replayed: used, nothing more
    assert again.status_code == 401 and "already used" in message_of(again.text)
    used = b.request("GET", link)
    assert used.status_code == 401  # the page no longer offers the button, but says what to do instead
    for page in (again, used):
        assert title_of(page.text) == "This link cannot be used"
        assert "If you already confirmed your address, sign in; otherwise ask for a new link." in message_of(page.text)
        assert '<a id="next" href="/verify-email/new">Send me a new link</a>' in page.text, page.text[-1500:]
        assert_way_back(page.text, "RF_UNAUTHORIZED")
    assert sign_in(b, email) in (200, 303)
    b.http.close()


def test_a_used_or_lost_sign_up_link_can_be_replaced_from_its_page(server):
    """The used link's "Send me a new link" leads to /verify-email/new: its form mails a new link to an
    account still waiting for its confirmation (the earlier one stops working), and the same answer,
    with no mail, for a confirmed account or an unknown address."""
    b = Browserless(server.base)
    email = f"lost{int(time.time() * 1000)}@example.com"
    assert b.request("POST", "/signup", data={"email": email, "password": PASSWORD}).status_code == 200
    first = parse_qs(urlsplit(mailed_link(b, email, "/verify-email")).query)["token"][0]
    assert '<a id="resend-link" href="/verify-email/new">' in b.request("GET", "/login").text  # a lost mail: from sign-in too
    form = b.request("GET", "/verify-email/new")
    assert form.status_code == 200 and '<form method="post" action="/verify-email/new">' in form.text and 'name="email"' in form.text
    assert "form-action 'self'" in form.headers["content-security-policy"]
    sent = b.request("POST", "/verify-email/new", data={"email": email})
    assert sent.status_code == 200 and title_of(sent.text) == "Check your inbox", sent.text
    answer = message_of(sent.text)
    assert answer == "if an account with this address is waiting for its confirmation, we sent it a new link"
    # the new link confirms together with a new password (see test_a_pre_hijacked_account_passes_to_the_mailbox_owner)
    second = parse_qs(urlsplit(mailed_link(b, email, "/verify-email/claim")).query)["token"][0]
    resent = mail_body(b, email, "/verify-email/claim")  # it says it is a re-sent link and that the sign-up link is void
    assert "This is a re-sent link, as you asked. The link in your sign-up e-mail no longer works; this one does" in resent, resent
    assert "Your new confirmation link (the sign-up link no longer works)" in b.request("GET", "/dev/mail").text
    stale = b.request("GET", "/verify-email?token=" + first)
    assert stale.status_code == 401 and "invalid, already used or expired" in message_of(stale.text), "only the newest link works"
    done = b.request("POST", "/verify-email/claim", data={"token": second, "password": PASSWORD})
    assert done.status_code == 200 and "E-mail confirmed" in done.text, done.text
    assert sign_in(b, email) in (200, 303)

    def mails_to(addr: str) -> int:
        return len(re.findall(r'data-to="' + re.escape(addr) + r'"', b.request("GET", "/dev/mail").text))

    # a confirmed account and an unknown address get the same answer and no mail: checked once a later
    # account's new link has arrived (the outbox delivers in order, so theirs would have come first)
    later = f"later{int(time.time() * 1000)}@example.com"
    assert b.request("POST", "/signup", data={"email": later, "password": PASSWORD}).status_code == 200
    mailed_link(b, later, "/verify-email")
    others = (email, f"nobody{int(time.time() * 1000)}@example.com")
    counts = [mails_to(addr) for addr in others]
    for addr in others:
        again = b.request("POST", "/verify-email/new", data={"email": addr})
        assert again.status_code == 200 and message_of(again.text) == answer
    assert message_of(b.request("POST", "/verify-email/new", data={"email": later}).text) == answer
    mailed_link(b, later, "/verify-email/claim")  # its new link has arrived
    assert [mails_to(addr) for addr in others] == counts, "no mail to a confirmed account or an unknown address"
    bad = b.request("POST", "/verify-email/new", data={"email": "not-an-address"})
    assert bad.status_code == 400 and message_of(bad.text).startswith("The e-mail address must be")  # the field, as people name it
    b.http.close()


def test_a_pre_hijacked_account_passes_to_the_mailbox_owner(server):
    """Account pre-hijack (security review, session 10): an attacker signs up with the victim's address and
    his own password. The victim's sign-up gets a notice that names the way to take the pending account
    over; her "Send me a new link" link shows a password form (GET changes nothing), refuses a weak
    password naming the field (nothing changes), and its POST confirms the address with her password in
    one step: the attacker's password stops working."""
    stamp = int(time.time() * 1000)
    email, attacker_pw, victim_pw = f"ceo{stamp}@victim.test", "attacker's own passphrase 77", "victim chose this one 2026"
    attacker, victim = Browserless(server.base), Browserless(server.base)
    assert attacker.request("POST", "/signup", data={"email": email, "password": attacker_pw}).status_code == 200
    assert victim.request("POST", "/signup", data={"email": email, "password": victim_pw}).status_code == 200
    notice = mail_body(victim, email, "Someone tried to create a ringfence account")
    assert "not confirmed yet" in notice and "/verify-email/new" in notice, notice
    first = re.search(r"https?://\S+/verify-email\?token=\S+", mail_body(victim, email, "/verify-email?token=")).group(0)
    stale = victim.request("GET", path_of(first))  # the first sign-up's link (the attacker's password): no longer
    assert stale.status_code == 401 and "invalid, already used or expired" in message_of(stale.text)
    assert victim.request("POST", "/login", data={"email": email, "password": victim_pw}).status_code == 401
    assert '<a id="resend-link" href="/verify-email/new">' in victim.request("GET", "/login").text
    assert victim.request("POST", "/verify-email/new", data={"email": email}).status_code == 200
    # from her own mail's section (mailed_link looks 3000 characters back, which may reach another's link)
    link = path_of(re.search(r"https?://\S+/verify-email/claim\?token=\S+", mail_body(victim, email, "/verify-email/claim?token=")).group(0))
    token = parse_qs(urlsplit(link).query)["token"][0]

    def attacker_sign_in() -> int:
        return attacker.request("POST", "/login", data={"email": email, "password": attacker_pw}).status_code

    for _ in range(2):  # a mail scanner's fetch, then hers: nothing changes
        page = victim.request("GET", link)
        assert page.status_code == 200 and email in page.text, page.text
        assert form_fields(page.text, "/verify-email/claim") == {"token": token}
        assert 'name="password" type="password"' in page.text
        assert "form-action 'self'" in page.headers["content-security-policy"]
    assert victim.request("HEAD", link).status_code == 405
    assert attacker_sign_in() == 403, "still pending, the attacker's password unchanged"

    foreign = victim.request("POST", "/verify-email/claim", data={"token": token, "password": victim_pw},
                             headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    for weak in ("password123", "short"):
        refused = victim.request("POST", "/verify-email/claim", data={"token": token, "password": weak})
        assert refused.status_code == 400 and "password" in message_of(refused.text), refused.text
        assert form_fields(refused.text, "/verify-email/claim") == {"token": token}, "the form again, to correct"
    assert attacker_sign_in() == 403 and victim.request("GET", link).status_code == 200, "nothing changed"

    done = victim.request("POST", "/verify-email/claim", data={"token": token, "password": victim_pw})
    assert done.status_code == 200 and "E-mail confirmed" in done.text, done.text
    assert attacker_sign_in() == 401, "the attacker's password no longer works"
    assert victim.request("POST", "/login", data={"email": email, "password": victim_pw}).status_code in (200, 303)
    again = victim.request("POST", "/verify-email/claim", data={"token": token, "password": "another long passphrase 1"})
    assert again.status_code == 401 and "already used" in message_of(again.text)
    assert victim.request("POST", "/login", data={"email": email, "password": victim_pw}).status_code in (200, 303)
    attacker.http.close()
    victim.http.close()


#: the tests that move money, each with an account of its own (a TOTP code is spent on each address and
#: withdrawal, and identity takes at most one step ahead of its clock: one shared account waited up to 30 s
#: for the clock before most of them, about two minutes in all)
MONEY_TESTS = 5


@pytest.fixture(scope="module")
def accounts(server):
    """Signed-in users with TOTP on (confirmed by mail) and the demo's funds, made together at the module's
    first need: by the time a later test takes its own, its clock has moved on, and the codes of the steps
    up to one ahead of it are all still unused (an account made just before its test has one at once, then
    one per 30 s)."""
    made = [new_user(server) for _ in range(MONEY_TESTS)]
    fresh = list(made)
    yield made, fresh
    for b in made:
        b.http.close()


@pytest.fixture
def user(server, accounts):
    """A signed-in user with TOTP on, the demo's funds and an empty address book, this test's own."""
    made, fresh = accounts
    if not fresh:  # more tests than MONEY_TESTS (or one run twice): one more account
        made.append(new_user(server))
        fresh.append(made[-1])
    return fresh.pop(0)


@pytest.fixture
def signed_in(accounts):
    """A signed-in user of the module's, for a test that spends no code and changes nothing."""
    return accounts[0][0]


def new_user(server: Server) -> Browserless:
    b = Browserless(server.base)
    b.email = f"saver{int(time.time() * 1000)}@example.com"
    assert b.request("POST", "/signup", data={"email": b.email, "password": PASSWORD}).status_code == 200
    token = parse_qs(urlsplit(mailed_link(b, b.email, "/verify-email")).query)["token"][0]
    assert b.request("POST", "/verify-email", data={"token": token}).status_code == 200
    assert sign_in(b, b.email) in (200, 303)
    page = b.request("GET", "/security").text
    setup = b.request("POST", "/security/totp/begin", data={"csrf_token": csrf_of(page)}).text
    b.totp = pyotp.TOTP(re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', setup).group(1))
    # Identity takes a code of the step before its clock's, its own or the one after, each once and in
    # order: confirming the factor with the step before and signing in with the current one leaves the
    # step after for the test's first `next_code`, not a wait of up to 30 s for the clock. The confirm
    # must reach the server within the step: with less than 15 s of it left, confirmed with the current
    # step and signed in with the next (both still taken once the clock moves on), the test's first code
    # comes when the clock does, within 15 s (`next_code` waits), not after a wait here of up to 15 s.
    now_s = time.time()
    b.step = int(now_s) // 30 - (1 if now_s % 30 <= 15 else 0)
    assert b.request("POST", "/security/totp/confirm", data={"csrf_token": csrf_of(setup), "code": b.totp.at(b.step * 30)}).status_code == 200
    token = parse_qs(urlsplit(mailed_link(b, b.email, "/security/confirm-factor")).query)["token"][0]
    assert b.request("POST", "/security/confirm-factor", data={"token": token}).status_code == 200
    r = sign_in(b, b.email)  # again, now with the second factor: a session that may move money
    b.step += 1
    r = b.request("POST", "/login/2fa", data={"method": "totp", "code": b.totp.at(b.step * 30)})
    assert r.status_code in (200, 303), r.text
    b.origin = {"Origin": server.base.replace("127.0.0.1", "localhost")}
    assert session(b, "POST", "/session/v3/demoFunds").status_code == 200
    return b


def session(b: Browserless, method: str, path: str, **kw):
    me = b.request("GET", "/session/v3/me", headers=b.origin).json()
    return b.request(method, path, headers={**b.origin, "X-CSRF-Token": me["csrfToken"]}, **kw)


def next_code(b: Browserless) -> str:
    """A TOTP code of a step after every one used before (identity accepts one step ahead of its clock)."""
    b.step = max(b.step + 1, int(time.time()) // 30)
    while b.step > int(time.time()) // 30 + 1:
        time.sleep(0.5)
    return b.totp.at(b.step * 30)


def book(b: Browserless) -> list[dict]:
    return b.request("GET", "/session/v3/addressBook?coin=BTC", headers=b.origin).json()["entries"]


def withdrawals(b: Browserless) -> list[dict]:
    return b.request("GET", "/session/v3/capital/withdraw/history", headers=b.origin).json()


def test_the_address_and_withdrawal_links_act_only_on_their_button(server, user):
    b = user
    entries = json.loads((server.data / "demo-keys.json").read_text())
    dest = next(e["withdraw_addresses"]["BTC"] for e in entries if e.get("withdraw_addresses"))  # outside the account
    r = session(b, "POST", "/session/v3/addressBook", data={"coin": "BTC", "network": "BTC", "address": dest, "code": next_code(b)})
    assert r.status_code == 200 and r.json()["status"] == "email_sent", r.text
    link = path_of(mailed_link(b, b.email, "/wallet/confirm-address"))
    body = mail_body(b, b.email, "Confirm a new withdrawal address")
    # its "not you" line carries the one-click freeze link, as the security-change notices do
    assert "from the security centre" not in body, body
    assert re.search(r"freeze your account with one click, then change your password:\s*https?://\S+/security/freeze\?token=", body), body
    freeze = re.search(r"(/security/freeze\?token=[^\s\"]+)", body).group(1)
    shown = b.request("GET", freeze)  # the page with the freeze button (pressing it would freeze this test's account)
    assert shown.status_code == 200 and 'action="/security/freeze"' in shown.text, shown.text[:2000]
    before = last_seq(server)
    for _ in range(2):
        page = b.request("GET", link)
        assert page.status_code == 200, page.text
        assert "Add this withdrawal address?" in page.text and dest in page.text and "BTC" in page.text
        assert "form-action 'self'" in page.headers["content-security-policy"], "the browser may post the button's form"
    assert b.request("HEAD", link).status_code == 405
    assert book(b) == [] and not link_commands_since(server, before), "the GETs added nothing"
    fields = form_fields(page.text, "/wallet/confirm-address")
    for bad in ("x" * 40, fields["token"][:-3] + "AAA"):
        got = b.request("GET", "/wallet/confirm-address?token=" + bad)
        assert got.status_code == 400 and message_of(got.text) == "This confirmation link is not valid."
        assert title_of(got.text) == "Address not added"
        assert_way_back(got.text, "-1002")
        posted = b.request("POST", "/wallet/confirm-address", data={"token": bad})
        assert posted.status_code == 400 and message_of(posted.text) == "This confirmation link is not valid."
    assert book(b) == [] and not link_commands_since(server, before)

    done = b.request("POST", "/wallet/confirm-address", data=fields)
    assert done.status_code == 200 and "Withdrawal address added" in done.text, done.text
    [entry] = book(b)
    assert entry["address"] == dest and entry["status"] == "usable"
    after = last_seq(server)
    again = b.request("POST", "/wallet/confirm-address", data=fields)
    reopened = b.request("GET", link)  # no button for a used link
    for page in (again, reopened):  # a second click: used, not "Address not added", and nothing about the book
        assert page.status_code == 409, page.text
        assert title_of(page.text) == "This link cannot be used", page.text
        assert message_of(page.text) == "This confirmation link was already used."
        assert dest not in page.text and "Address not added" not in page.text
        assert_way_back(page.text, "-1002")
    assert book(b) == [entry] and not link_commands_since(server, after)

    # ---- the withdrawal's link
    r = session(b, "POST", "/session/v3/capital/withdraw/apply",
                data={"coin": "BTC", "network": "BTC", "address": dest, "amount": "0.01", "code": next_code(b)})
    assert r.status_code == 200 and r.json()["status"] == 0, r.text
    wid = r.json()["id"]
    link = path_of(withdrawal_link(b, wid))
    assert parse_qs(urlsplit(link).query)["id"] == [wid]
    body = mail_body(b, b.email, f"id={wid}")
    # what the page shows (the amount asked for, the fee, what arrives), the link's end, a freeze link
    assert f"asked to withdraw 0.01 BTC to this address:\n{dest}\nFee: 0.0001 BTC\nThe address receives: 0.0099 BTC\n" in body, body
    assert re.search(r"If it was you, confirm it \(the link works once, until [A-Z][a-z]{2} \d+, \d{4}, [^)]+ UTC\):", body), body
    assert re.search(r"freeze your account with one click, then change your password:\s*https?://\S+/security/freeze\?token=", body), body
    before = last_seq(server)
    for _ in range(2):
        page = b.request("GET", link)
        assert page.status_code == 200, page.text
        assert "form-action 'self'" in page.headers["content-security-policy"]
        shown = {k: unescape(v) for k, v in re.findall(r'id="wd-(asset|amount|fee|received|address)"[^>]*>([^<]*)<', page.text)}
        assert shown == {"asset": "BTC (BTC)", "amount": "0.01 BTC", "fee": "0.0001 BTC", "received": "0.0099 BTC",
                         "address": dest}, shown
    assert b.request("HEAD", link).status_code == 405
    [w] = withdrawals(b)
    assert w["id"] == wid and w["status"] == 0 and w["info"] == "waiting for the e-mail confirmation", w
    assert not link_commands_since(server, before), "the GETs confirmed nothing"
    fields = form_fields(page.text, "/wallet/confirm-withdrawal")
    assert fields["id"] == wid
    for bad in ({"id": wid, "token": "x" * 32}, {"id": wid, "token": ""}, {"id": "nope", "token": fields["token"]}):
        got = b.request("GET", "/wallet/confirm-withdrawal", params=bad)
        assert got.status_code == 400 and message_of(got.text) == "This confirmation link is not valid."
        assert_way_back(got.text, "-1002")
        posted = b.request("POST", "/wallet/confirm-withdrawal", data=bad)
        assert posted.status_code == 400 and message_of(posted.text) == "This confirmation link is not valid."
    assert withdrawals(b)[0]["status"] == 0 and not link_commands_since(server, before)

    done = b.request("POST", "/wallet/confirm-withdrawal", data=fields)
    assert done.status_code == 200 and "Withdrawal confirmed" in done.text and wid in done.text, done.text
    assert withdrawals(b)[0]["info"] != "waiting for the e-mail confirmation"
    seq = last_seq(server)
    again = b.request("POST", "/wallet/confirm-withdrawal", data=fields)
    reopened = b.request("GET", link)
    for page in (again, reopened):  # confirmed: said as such, not under "Withdrawal not confirmed"
        assert page.status_code == 409, page.text
        assert title_of(page.text) == "Withdrawal already confirmed", page.text
        assert message_of(page.text) == "This withdrawal is already confirmed; follow it on the withdraw page."
        assert '<p id="message" class="ok">' in page.text and "not confirmed" not in page.text and "error-code" not in page.text
        assert '<a id="next" href="/wallet/withdraw">' in page.text
    # the confirmed withdrawal goes on by itself (risk review, signing): the replay added no command of its own
    from .conftest import cli

    later = cli("journal", "sources", str(server.data), "--from-seq", str(seq + 1))
    assert later.returncode == 0, later.stderr
    assert "confirm_email" not in later.stdout, later.stdout


def test_the_users_withdrawal_history_names_no_rule_score_or_signal(server, user):
    """New-user review: the history (the dashboard's list and timeline, and the Binance `info`) showed
    "policy: allow: wallet tier hot in ['hot']" and "risk review: score 50: ...; credentials changed
    ... s ago", the exchange's fraud rules and risk signals. The user sees a plain status; the staff
    view (/admin/v1/withdrawals/ID, signed) keeps the rule, the score and the signals."""
    import httpx

    from ringfence.staff.decisions import read_key_file
    from ringfence.staff.requests import signed_headers

    b = user
    entries = json.loads((server.data / "demo-keys.json").read_text())
    dest = next(e["withdraw_addresses"]["BTC"] for e in entries if e.get("withdraw_addresses"))
    add_by_link(server, b, dest)  # the test's own account: its book is empty
    r = session(b, "POST", "/session/v3/capital/withdraw/apply",
                data={"coin": "BTC", "network": "BTC", "address": dest, "amount": "0.01", "code": next_code(b)})
    assert r.status_code == 200 and r.json()["status"] == 0, r.text
    wid = r.json()["id"]
    fields = form_fields(b.request("GET", path_of(withdrawal_link(b, wid))).text, "/wallet/confirm-withdrawal")
    assert b.request("POST", "/wallet/confirm-withdrawal", data=fields).status_code == 200

    def staff_view() -> dict:
        path = f"/admin/v1/withdrawals/{wid}"
        headers = signed_headers(read_key_file(server.data / "demo-staff.json", "cy"), "GET", path, "", b"")
        res = httpx.get(server.base + path, headers=headers, timeout=10)
        assert res.status_code == 200, res.text
        return res.json()

    deadline = time.monotonic() + 60
    while not ((seen := staff_view())["decision_reasons"] and seen["risk_reasons"]):
        assert time.monotonic() < deadline, f"the withdrawal was not decided: {seen}"
        time.sleep(0.2)
    # the operators' view: the rule that decided, the score and the signals (a new account's credentials)
    assert seen["rule"] and any("credentials changed" in x for x in seen["risk_reasons"]), seen
    [mine] = [w for w in withdrawals(b) if w["id"] == wid]
    shown = json.dumps(mine)
    for secret in [seen["rule"], *seen["decision_reasons"], *seen["risk_reasons"], "score", "policy", "risk", "credentials"]:
        assert secret not in shown, (secret, mine)
    assert [s["step"] for s in mine["timeline"]][:3] == ["e-mail sent", "e-mail confirmed", "checks"], mine


def test_a_foreign_origin_cannot_post_a_link(server, signed_in):
    """As for /security/confirm-factor: no session CSRF token (the link's token is the secret), but a
    cross-site form post is refused before the token is even looked at."""
    evil = {"Origin": "https://evil.example"}
    for path, data in (("/verify-email", {"token": "x" * 32}), ("/verify-email/new", {"email": signed_in.email}),
                       ("/wallet/confirm-address", {"token": "x" * 32}),
                       ("/wallet/confirm-withdrawal", {"id": "1", "token": "x" * 32})):
        r = signed_in.request("POST", path, data=data, headers=evil)
        assert r.status_code == 403 and "cross-site" in r.text, (path, r.status_code, r.text[:500])


def add_by_link(server: Server, b: Browserless, dest: str) -> dict[str, str]:
    """Ask for `dest` in the BTC address book and press the mailed link's button; the form's fields."""
    r = session(b, "POST", "/session/v3/addressBook", data={"coin": "BTC", "network": "BTC", "address": dest, "code": next_code(b)})
    assert r.status_code == 200 and r.json()["status"] == "email_sent", r.text
    page = b.request("GET", path_of(mailed_link(b, b.email, "/wallet/confirm-address")))
    assert page.status_code == 200, page.text
    fields = form_fields(page.text, "/wallet/confirm-address")
    done = b.request("POST", "/wallet/confirm-address", data=fields)
    assert done.status_code == 200 and "Withdrawal address added" in done.text, done.text
    assert [e["address"] for e in book(b)] == [dest]
    return fields


def respellings(token: str) -> list[str]:
    """The same sealed bytes spelled otherwise: lenient base64 decoders read each as the token."""
    out = [token + "....", token + "!", token + "=" * (4 - len(token) % 4)]
    if "-" in token or "_" in token:  # the standard alphabet's spelling (a 250-character token lacks both once in ~2,800)
        out.append(token.replace("-", "+").replace("_", "/"))
    if "-" in token and "_" in token:  # one character re-spelled, the other left
        out += [token.replace("-", "+", 1), token.replace("_", "/", 1)]
    return out


def test_removing_the_address_stops_a_withdrawal_awaiting_its_link(server, user):
    """Intruder review F2: a withdrawal to a book address waits for its e-mail; the user removes the
    address; the link's POST then fails the withdrawal (the engine: the book is required and the
    destination is no longer in it), nothing goes out and the hold comes back to available."""
    b = user
    entries = json.loads((server.data / "demo-keys.json").read_text())
    dest = next(e["withdraw_addresses"]["BTC"] for e in entries if e.get("withdraw_addresses"))
    add_by_link(server, b, dest)  # the test's own account: its book is empty

    def btc_free() -> str:
        bal = session(b, "GET", "/session/v3/account").json()["balances"]
        return next(x["free"] for x in bal if x["asset"] == "BTC")

    free_before = btc_free()
    r = session(b, "POST", "/session/v3/capital/withdraw/apply",
                data={"coin": "BTC", "network": "BTC", "address": dest, "amount": "0.01", "code": next_code(b)})
    assert r.status_code == 200 and r.json()["status"] == 0, r.text
    wid = r.json()["id"]
    assert btc_free() != free_before, "the withdrawal holds its amount"
    link = path_of(withdrawal_link(b, wid))
    fields = form_fields(b.request("GET", link).text, "/wallet/confirm-withdrawal")
    r = session(b, "DELETE", "/session/v3/addressBook", params={"coin": "BTC", "address": dest})
    assert r.status_code == 200 and r.json()["status"] == "removed", r.text

    posted = b.request("POST", "/wallet/confirm-withdrawal", data=fields)
    assert posted.status_code == 409, posted.text
    assert "removed from your address book" in message_of(posted.text), message_of(posted.text)
    [w] = [w for w in withdrawals(b) if w["id"] == wid]
    assert w["status"] == 5 and "removed from your address book" in w["info"] and not w.get("txId"), w
    assert btc_free() == free_before, "the hold was released"
    again = b.request("POST", "/wallet/confirm-withdrawal", data=fields)
    assert again.status_code == 409 and [x for x in withdrawals(b) if x["id"] == wid][0]["status"] == 5



def aged(token: str, seconds: int) -> str:
    """The address link `token` as it will be `seconds` later than its 30 minutes allow: its sealed payload
    with the expiry moved back, sealed again with the server's own key (the demo runs on the dev key from
    the same environment), as the server itself would have sealed it that long ago."""
    from ringfence.api.session_money import ADDRESS_PURPOSE, _b64, _unb64
    from ringfence.identity.sealing import Sealer
    from ringfence.settings import Settings

    sealer = Sealer(Settings().secret_key())
    payload = json.loads(sealer.unseal(_unb64(token), purpose=ADDRESS_PURPOSE))
    payload["x"] = int(time.time()) - seconds
    return _b64(sealer.seal(json.dumps(payload).encode(), purpose=ADDRESS_PURPOSE))


def test_an_expired_or_used_address_link_tells_nothing_of_the_book(server, user):
    """Intruder review: an expired address link's page said "already in your address book" while the
    address was there and "expired" once it was not, so whoever held an old mail could read the book.
    An expired link and a used link now get one page each, the same whether or not the address is in
    the book, naming no address; only a link that could still add the address says it is already there."""
    b = user
    entries = json.loads((server.data / "demo-keys.json").read_text())
    dest = next(e["withdraw_addresses"]["BTC"] for e in entries if e.get("withdraw_addresses"))
    assert book(b) == [], "the test's own account: its book is empty, no removal of `dest` before the first link"

    def ask_for_link() -> str:
        """Ask to add `dest`; the token of the link in the mail that answers (not an earlier test's)."""
        seen = set(re.findall(r"/wallet/confirm-address\?token=([A-Za-z0-9_-]+)", b.request("GET", "/dev/mail").text))
        r = session(b, "POST", "/session/v3/addressBook", data={"coin": "BTC", "network": "BTC", "address": dest, "code": next_code(b)})
        assert r.status_code == 200 and r.json()["status"] == "email_sent", r.text
        deadline = time.monotonic() + 30
        while (token := parse_qs(urlsplit(mailed_link(b, b.email, "/wallet/confirm-address")).query)["token"][0]) in seen:
            assert time.monotonic() < deadline, "no new address link at /dev/mail"
            time.sleep(0.3)
        return token

    used = ask_for_link()
    done = b.request("POST", "/wallet/confirm-address", data={"token": used})
    assert done.status_code == 200 and [e["address"] for e in book(b)] == [dest], done.text
    fresh = ask_for_link()
    expired = aged(fresh, 60)

    def pages() -> dict[str, tuple[int, str, str]]:
        out = {}
        for name, token in (("used", used), ("expired", expired)):
            for how in ("GET", "POST"):
                got = (b.request("GET", "/wallet/confirm-address", params={"token": token}) if how == "GET"
                       else b.request("POST", "/wallet/confirm-address", data={"token": token}))
                assert dest not in got.text, (name, how, got.text[-1500:])
                out[f"{name} {how}"] = (got.status_code, title_of(got.text), message_of(got.text))
        return out

    listed = pages()
    assert listed["expired GET"] == (400, "This link cannot be used", "This confirmation link expired (30 minutes); add the address again.")
    assert listed["used GET"] == (409, "This link cannot be used", "This confirmation link was already used.")
    assert listed["expired POST"] == listed["expired GET"] and listed["used POST"] == listed["used GET"]
    # a link that can still act tells its holder what pressing it would: the address is already there
    still = b.request("GET", "/wallet/confirm-address", params={"token": fresh})
    assert still.status_code == 409 and title_of(still.text) == "Withdrawal address already added", still.text
    # and where its cooling stands now (none in these tests: RINGFENCE_CUSTODY_ADDRESS_COOLING_S=0)
    assert message_of(still.text) == f"{dest} is in your BTC address book and can receive withdrawals now.", still.text

    assert session(b, "DELETE", "/session/v3/addressBook", params={"coin": "BTC", "address": dest}).status_code == 200
    assert book(b) == []
    before = last_seq(server)
    assert pages() == listed, "the same pages once the address is gone: they say nothing of the book"
    assert book(b) == [] and not link_commands_since(server, before), "neither link added the address"
    # Intruder review (session 12): the still-live link added the address back after its owner removed it.
    # The removal voids it; its page says only that, on GET and POST, and nothing reaches the engine.
    for how in ("GET", "POST"):
        got = (b.request("GET", "/wallet/confirm-address", params={"token": fresh}) if how == "GET"
               else b.request("POST", "/wallet/confirm-address", data={"token": fresh}))
        assert got.status_code == 409 and dest not in got.text, (how, got.text[-1500:])
        assert (title_of(got.text), message_of(got.text)) == ("This link cannot be used", "This confirmation link is no longer valid."), how
    assert book(b) == [] and not link_commands_since(server, before), "the removed address's live link added nothing"
    time.sleep(1)  # the removal's second is past (a link made in it is void too)
    page = b.request("GET", "/wallet/confirm-address", params={"token": ask_for_link()})  # a link asked for since works
    assert page.status_code == 200 and "Add this withdrawal address?" in page.text, page.text
    done = b.request("POST", "/wallet/confirm-address", data=form_fields(page.text, "/wallet/confirm-address"))
    assert done.status_code == 200 and [e["address"] for e in book(b)] == [dest], done.text


def test_a_claim_sets_the_language_of_the_person_claiming(server):
    """Intruder reviews: the account taken over through a resent link kept the language of the first
    sign-up (the stranger's), so its security mail came in it; and (session 12) the resent link's mail came
    in the language of whoever asked for it, so a stranger chose the language of the owner's mail. The
    resent link's mail is in the account's language (here the owner's own sign-up's: German, though a
    Japanese page asked), and the claim sets the account's language to the claiming page's: signed in
    later with no language of the browser's, the pages (and so the mail) are in hers."""
    stamp = int(time.time() * 1000)
    email = f"lang{stamp}@victim.test"
    stranger, victim = Browserless(server.base), Browserless(server.base)
    ja, de = {"Accept-Language": "ja"}, {"Accept-Language": "de-DE,de;q=0.9"}
    assert victim.request("POST", "/signup", data={"email": email, "password": "a first passphrase 2026"},
                          headers=de).status_code == 200
    assert stranger.request("POST", "/verify-email/new", data={"email": email}, headers=ja).status_code == 200
    body = mail_body(victim, email, "/verify-email/claim?token=")
    assert "Anti-Phishing-Code: nicht gesetzt" in body and "Ihr neuer Bestätigungslink" in body, body[:300]  # not Japanese
    link = path_of(re.search(r"https?://\S+/verify-email/claim\?token=\S+", body).group(0))
    page = victim.request("GET", link, headers=de)
    assert page.status_code == 200 and '<html lang="de"' in page.text, page.text[:500]
    done = victim.request("POST", "/verify-email/claim", data={**form_fields(page.text, "/verify-email/claim"),
                                                                "password": "victim chose this one 2026"}, headers=de)
    assert done.status_code == 200 and '<html lang="de"' in done.text, done.text
    assert "rf_lang" not in victim.cookies, "no language cookie: what follows comes from the profile"
    assert victim.request("POST", "/login", data={"email": email, "password": "victim chose this one 2026"}).status_code in (200, 303)
    centre = victim.request("GET", "/security")  # no Accept-Language, no cookie: the profile's language
    assert centre.status_code == 200 and '<html lang="de"' in centre.text, centre.text[:500]
    stranger.http.close()
    victim.http.close()


def test_a_used_address_link_never_adds_the_address_again(server, user):
    """Intruder review F1: confirm, remove the address, then replay the link's POST as it was, with
    junk appended, with '+'/'/' for '-'/'_' and with padding: every one is refused and the book stays
    empty; after a restart of the server too (the used state is in identity's store, not in memory).
    Last in the module: it restarts the module's server (on another port)."""
    b = user
    entries = json.loads((server.data / "demo-keys.json").read_text())
    dest = next(e["withdraw_addresses"]["BTC"] for e in entries if e.get("withdraw_addresses"))
    fields = add_by_link(server, b, dest)
    r = session(b, "DELETE", "/session/v3/addressBook", params={"coin": "BTC", "address": dest})
    assert r.status_code == 200 and r.json()["status"] == "removed", r.text
    assert book(b) == []
    before = last_seq(server)
    again = b.request("POST", "/wallet/confirm-address", data=fields)
    assert again.status_code == 409 and message_of(again.text) == "This confirmation link was already used.", again.text
    assert b.request("GET", "/wallet/confirm-address", params={"token": fields["token"]}).status_code == 409
    for other in respellings(fields["token"]):
        posted = b.request("POST", "/wallet/confirm-address", data={"token": other})
        assert posted.status_code == 400, (other[-8:], posted.status_code, posted.text[:500])
        assert "not as it was e-mailed" in message_of(posted.text), message_of(posted.text)
        assert b.request("GET", "/wallet/confirm-address", params={"token": other}).status_code == 400
    assert book(b) == [] and not link_commands_since(server, before), "no replay reached the engine"

    server.restart()  # the same data, the same settings
    b.http.close()
    b.http = Browserless(server.base).http
    b.origin = {"Origin": server.base.replace("127.0.0.1", "localhost")}
    before = last_seq(server)
    for token in (fields["token"], *respellings(fields["token"])):
        posted = b.request("POST", "/wallet/confirm-address", data={"token": token})
        assert posted.status_code in (400, 409), (token[-8:], posted.status_code, posted.text[:500])
    assert book(b) == [] and not link_commands_since(server, before), "after the restart too"
