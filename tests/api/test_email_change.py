"""Changing the account's e-mail address on the running exchange (`ringfence serve --demo`), with httpx:

the security centre's form (`POST /security/email`) and the session's JSON endpoint
(`POST /session/v3/account/email`, CSRF header, Origin, a fresh second factor when two-factor is on)
send a link to the new address; the link's `/confirm-email` page (as `/verify-email`: GET reads
only, the POST button acts once) changes the address; the old address gets the security-change
e-mail with its freeze link and withdrawals lock as after every credential change. A taken address
gets the same answer as a free one and no mail; a bad one a clear error naming `new_email`.

Reproduce by hand: `ringfence serve --demo --data /tmp/rf --port 8000`, sign up, change the address
in /security, open the link at /dev/mail.
"""

from __future__ import annotations

import re
import time
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from .conftest import Server
from .test_key_cache import PASSWORD, Browserless, csrf_of
from .test_mailed_links import assert_way_back, form_fields, message_of, next_code, path_of, session, sign_in, title_of

LOCK_S = 86400
ENV = {"RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S": str(LOCK_S)}
CHANGE_SUBJECT = "Security change on your account: e-mail address changed"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("email") / "data", env=ENV, chains=False)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def unique(name: str) -> str:
    time.sleep(0.002)
    return f"{name}{time.time_ns() // 1000}@example.com"


def mails(b: Browserless) -> list[tuple[str, str, str]]:
    """(to, subject, body) of every message the demo's mail catcher holds (/dev/mail), newest first."""
    page = b.request("GET", "/dev/mail").text
    found = re.findall(r'<section class="mail" data-to="([^"]*)">.*?class="mail-subject">(.*?)</strong>.*?'
                       r'<pre class="mail-body">(.*?)</pre>', page, re.S)
    return [(unescape(to), unescape(subject), unescape(re.sub(r"<[^>]+>", "", body))) for to, subject, body in found]


def wait_mail(b: Browserless, to: str, needle: str) -> str:
    """The body of the newest mail to `to` that contains `needle` (delivered within a second)."""
    deadline = time.monotonic() + 30
    while True:
        for addr, subject, body in mails(b):
            if addr == to and needle in subject + "\n" + body:
                return body
        assert time.monotonic() < deadline, f"no mail to {to} with {needle!r}"
        time.sleep(0.2)


def change_link(b: Browserless, to: str) -> str:
    return path_of(re.search(r"https?://\S+/confirm-email\?token=\S+", wait_mail(b, to, "/confirm-email?token=")).group(0))


def signed_up(server, *, totp: bool = False) -> Browserless:
    b = Browserless(server.base)
    b.email = unique("old")
    assert b.request("POST", "/signup", data={"email": b.email, "password": PASSWORD}).status_code == 200
    link = re.search(r"https?://\S+/verify-email\?token=\S+", wait_mail(b, b.email, "/verify-email?token=")).group(0)
    assert b.request("POST", "/verify-email", data={"token": parse_qs(urlsplit(link).query)["token"][0]}).status_code == 200
    assert sign_in(b, b.email) in (200, 303)
    b.origin = {"Origin": server.base.replace("127.0.0.1", "localhost")}
    if totp:
        setup = b.request("POST", "/security/totp/begin", data={"csrf_token": csrf_of(b.request("GET", "/security").text)}).text
        b.totp = pyotp.TOTP(re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', setup).group(1))
        # confirmed with the step before the clock's when the confirm surely reaches the server within this step
        # (identity takes one step of drift, each step once and in order; as test_mailed_links.new_user): the
        # sign-in below takes the clock's step and the test's first `next_code` the one after, at once, not
        # after a wait of up to 30 s for the clock
        now_s = time.time()
        b.step = int(now_s) // 30 - (1 if now_s % 30 <= 15 else 0)
        assert b.request("POST", "/security/totp/confirm", data={"csrf_token": csrf_of(setup), "code": b.totp.at(b.step * 30)}).status_code == 200
        link = re.search(r"https?://\S+/security/confirm-factor\?token=\S+", wait_mail(b, b.email, "/security/confirm-factor?token=")).group(0)
        assert b.request("POST", "/security/confirm-factor", data={"token": parse_qs(urlsplit(link).query)["token"][0]}).status_code == 200
        assert sign_in(b, b.email) in (200, 303)  # again, with the second factor that now counts: a fresh one
        r = b.request("POST", "/login/2fa", data={"method": "totp", "code": next_code(b)})
        assert r.status_code in (200, 303), r.text
    return b


def who(b: Browserless) -> str:
    page = b.request("GET", "/security").text
    return unescape(re.search(r'id="who"[^>]*>([^<]*)<', page).group(1))


def lock_of(server, email: str) -> tuple[int, int]:
    """(when the account's e-mail changed, until when its withdrawals are locked), from the server's store."""
    from sqlalchemy import select

    from ringfence.store import Store
    from ringfence.store.models import SecurityEvent, User

    store = Store.from_url(server.database_url)
    with store.tx() as db:
        user = db.scalars(select(User).where(User.email == email)).one()
        at = db.scalars(select(SecurityEvent.at_s).where(SecurityEvent.user_id == user.id, SecurityEvent.kind == "email_changed")).one()
        return at, user.withdrawals_locked_until_s


def test_the_security_page_changes_the_address_only_on_the_links_button(server):
    b = signed_up(server, totp=True)
    old, new = b.email, unique("new")
    page = b.request("GET", "/security").text
    assert 'action="/security/email"' in page and 'name="new_email"' in page
    r = b.request("POST", "/security/email", data={"csrf_token": csrf_of(page), "new_email": new})
    assert r.status_code == 200 and "a link to confirm the change is on its way" in message_of(r.text), r.text
    link = change_link(b, new)
    token = parse_qs(urlsplit(link).query)["token"][0]

    for _ in range(2):  # a mail scanner's fetch, then the person's: nothing changes
        shown = b.request("GET", link)
        assert shown.status_code == 200, shown.text
        assert "Change your e-mail address?" in shown.text and new in shown.text
        assert form_fields(shown.text, "/confirm-email") == {"token": token}
        assert "form-action 'self'" in shown.headers["content-security-policy"]
    assert b.request("HEAD", link).status_code == 405
    assert who(b) == old
    for bad in ("x" * 40, token[:-2] + "xx"):
        got = b.request("GET", "/confirm-email?token=" + bad)
        assert got.status_code == 401 and "invalid, already used or expired" in message_of(got.text)
        posted = b.request("POST", "/confirm-email", data={"token": bad})
        assert posted.status_code == 401 and "invalid, already used or expired" in message_of(posted.text)
    assert b.request("POST", "/confirm-email", data={}).status_code == 400  # no token: the field is named
    evil = b.request("POST", "/confirm-email", data={"token": token}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "cross-site" in evil.text
    assert who(b) == old and not [m for m in mails(b) if m[1] == CHANGE_SUBJECT and m[0] == old]

    done = b.request("POST", "/confirm-email", data=form_fields(shown.text, "/confirm-email"))
    assert done.status_code == 200 and "E-mail address changed" in done.text and new in message_of(done.text), done.text
    again = b.request("POST", "/confirm-email", data={"token": token})
    assert again.status_code == 401 and "already used" in message_of(again.text)
    used = b.request("GET", link)
    assert used.status_code == 401
    for page in (again, used):  # where to ask again (the security centre), the way back, the code for support
        assert title_of(page.text) == "This link cannot be used"
        assert '<a id="next" href="/security">Back to the security centre</a>' in page.text, page.text[-1500:]
        assert_way_back(page.text, "RF_UNAUTHORIZED")

    # the old address is told, with the one-click freeze link; withdrawals are locked for the lock period
    told = wait_mail(b, old, CHANGE_SUBJECT)
    assert "/security/freeze?token=" in told and "withdrawals are locked until" in told, told
    page = b.request("GET", "/security").text
    assert unescape(re.search(r'id="who"[^>]*>([^<]*)<', page).group(1)) == new
    assert 'id="withdrawal-lock"' in page
    changed_at, locked_until = lock_of(server, new)
    assert locked_until == changed_at + LOCK_S, "withdrawals lock for the full period from the change"
    assert "e-mail address changed" in page, "the security events list the change"

    fresh = Browserless(server.base)
    assert sign_in(fresh, old) not in (200, 303), "the old address no longer signs in"
    assert sign_in(fresh, new) in (200, 303), "the new one does"
    assert fresh.request("POST", "/login/2fa", data={"method": "totp", "code": next_code(b)}).status_code in (200, 303)
    assert who(fresh) == new
    fresh.http.close()
    b.http.close()


def test_without_a_second_factor_the_address_cannot_change(server):
    """The password alone must not move the mailbox every alert and recovery goes to."""
    b = signed_up(server)
    page = b.request("GET", "/security").text
    r = b.request("POST", "/security/email", data={"csrf_token": csrf_of(page), "new_email": unique("thief")})
    assert r.status_code == 403 and "enable two-factor authentication" in message_of(r.text), r.text
    r = session(b, "POST", "/session/v3/account/email", data={"new_email": unique("thief")})
    assert r.status_code == 403 and "Second factor not accepted" in r.json()["msg"], r.text
    assert who(b) == b.email
    assert not [m for m in mails(b) if "thief" in m[0]], "no link was sent"
    b.http.close()


def test_a_taken_address_gets_the_same_answer_and_no_mail(server):
    owner = signed_up(server)
    b = signed_up(server, totp=True)
    page = b.request("GET", "/security").text
    taken = b.request("POST", "/security/email", data={"csrf_token": csrf_of(page), "new_email": owner.email.upper()})
    free_addr = unique("free")
    free = b.request("POST", "/security/email", data={"csrf_token": csrf_of(page), "new_email": free_addr})
    assert taken.status_code == free.status_code == 200
    assert message_of(taken.text) == message_of(free.text)
    change_link(b, free_addr)  # the free address's mail arrived, so the earlier request's would have too
    assert not [m for m in mails(b) if m[0] == owner.email and "/confirm-email" in m[2]], "nothing to the taken address"

    json_taken = session(b, "POST", "/session/v3/account/email", data={"new_email": owner.email})
    json_free = session(b, "POST", "/session/v3/account/email", data={"new_email": unique("free")})
    assert json_taken.status_code == json_free.status_code == 200
    assert json_taken.json() == json_free.json() and json_taken.json()["status"] == "email_sent"

    for bad in ("not-an-email", "a@b", "x" * 300 + "@example.com"):
        r = b.request("POST", "/security/email", data={"csrf_token": csrf_of(page), "new_email": bad})
        assert r.status_code == 400 and "The new e-mail address must be" in r.text, r.text  # the field, as people name it
        r = session(b, "POST", "/session/v3/account/email", data={"new_email": bad})
        assert r.status_code == 400 and r.json()["code"] == -1100 and "'new_email'" in r.json()["msg"], r.text
    r = session(b, "POST", "/session/v3/account/email", data={})
    assert r.status_code == 400 and "new_email" in r.json()["msg"], r.text
    r = b.request("POST", "/security/email", data={"new_email": unique("nocsrf")})
    assert r.status_code == 403, "the form needs the session's CSRF token"
    b.http.close()
    owner.http.close()


def test_the_json_endpoint_needs_a_fresh_second_factor_and_only_the_newest_link_counts(server):
    b = signed_up(server, totp=True)
    old, first, second = b.email, unique("first"), unique("second")

    me = b.request("GET", "/session/v3/me", headers=b.origin).json()
    for headers in ({"Origin": "https://evil.example", "X-CSRF-Token": me["csrfToken"]}, {**b.origin}):
        r = b.request("POST", "/session/v3/account/email", data={"new_email": first}, headers=headers)
        assert r.status_code in (401, 403) and r.json()["code"] == -1002, r.text  # foreign Origin; no CSRF token
    r = session(b, "POST", "/session/v3/account/email", data={"new_email": first, "code": "abcdef"})
    assert r.status_code == 403 and "Second factor not accepted" in r.json()["msg"], r.text

    r = session(b, "POST", "/session/v3/account/email", data={"new_email": first, "code": next_code(b)})
    assert r.status_code == 200 and r.json()["status"] == "email_sent" and r.json()["csrfToken"], r.text
    stale = change_link(b, first)
    r = session(b, "POST", "/session/v3/account/email", data={"new_email": second, "code": next_code(b)})
    assert r.status_code == 200, r.text
    link = change_link(b, second)

    got = b.request("GET", stale)  # a later request replaced the first: its link no longer offers the button
    assert got.status_code == 401 and "no longer current" in message_of(got.text)
    posted = b.request("POST", "/confirm-email", data={"token": parse_qs(urlsplit(stale).query)["token"][0]})
    assert posted.status_code == 401 and "no longer current" in message_of(posted.text)
    assert b.request("GET", "/session/v3/me", headers=b.origin).json()["email"] == old

    done = b.request("POST", "/confirm-email", data=form_fields(b.request("GET", link).text, "/confirm-email"))
    assert done.status_code == 200 and second in message_of(done.text), done.text
    assert b.request("GET", "/session/v3/me", headers=b.origin).json()["email"] == second
    assert "/security/freeze?token=" in wait_mail(b, old, CHANGE_SUBJECT)
    r = session(b, "POST", "/session/v3/account/email", data={"new_email": second.upper(), "code": "abcdef"})
    assert r.status_code == 400 and "already your e-mail address" in r.json()["msg"], "checked before the code"
    b.http.close()
