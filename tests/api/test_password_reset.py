"""A forgotten password (new-user review, session 10: no way to reset one): `/forgot-password` mails a
single-use link to a confirmed account and answers the same for every address; the link's page
(`/reset-password`) changes nothing on GET, refuses a weak password naming the field, and its POST sets
the password, ends every session of the account, locks withdrawals and mails the security-change
notice with its freeze link. An account with an authenticator app also needs its code. Against a real
`ringfence serve --demo` process, with httpx (mail at /dev/mail).
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import Server
from .test_key_cache import PASSWORD, Browserless, mailed_link
from .test_mailed_links import form_fields, mail_body, message_of, new_user, next_code, path_of

NEW_PASSWORD = "a brand new passphrase 2026"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("reset") / "data", env={"RINGFENCE_CUSTODY_ADDRESS_COOLING_S": "0"})
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def sign_in(b: Browserless, email: str, password: str) -> int:
    return b.request("POST", "/login", data={"email": email, "password": password}).status_code


def reset_link(b: Browserless, email: str) -> str:
    """The reset link from `email`'s own mail (not a neighbour's)."""
    return path_of(re.search(r"https?://\S+/reset-password\?token=\S+", mail_body(b, email, "/reset-password?token=")).group(0))


def test_a_forgotten_password_is_reset_from_a_mailed_link(server):
    b = Browserless(server.base)
    email = f"forgot{int(time.time() * 1000)}@example.com"
    assert b.request("POST", "/signup", data={"email": email, "password": PASSWORD}).status_code == 200
    token = parse_qs(urlsplit(mailed_link(b, email, "/verify-email")).query)["token"][0]
    assert b.request("POST", "/verify-email", data={"token": token}).status_code == 200
    assert sign_in(b, email, PASSWORD) in (200, 303)
    before = b.request("GET", "/security")
    assert before.status_code == 200 and 'id="withdrawal-lock"' not in before.text
    old_cookies = dict(b.cookies)

    login = Browserless(server.base).request("GET", "/login").text
    assert '<a id="forgot-link" href="/forgot-password">Forgot your password?</a>' in login
    asked = b.request("POST", "/forgot-password", data={"email": email})
    unknown = b.request("POST", "/forgot-password", data={"email": f"nobody{time.time_ns()}@example.com"})
    assert asked.status_code == unknown.status_code == 200
    assert message_of(asked.text) == message_of(unknown.text), "the same answer for every address"
    assert asked.text.replace(email, "") == unknown.text.replace(email, "")

    link = reset_link(b, email)
    token = parse_qs(urlsplit(link).query)["token"][0]
    stranger = Browserless(server.base)
    for _ in range(2):  # a mail scanner's fetch, then the person's: nothing changes
        page = stranger.request("GET", link)
        assert page.status_code == 200 and email in page.text, page.text
        assert form_fields(page.text, "/reset-password") == {"token": token}
        assert 'name="code"' not in page.text, "no second factor on this account"
        assert "form-action 'self'" in page.headers["content-security-policy"]
    assert stranger.request("HEAD", link).status_code == 405
    assert sign_in(Browserless(server.base), email, PASSWORD) in (200, 303), "the old password still works"

    foreign = stranger.request("POST", "/reset-password", data={"token": token, "password": NEW_PASSWORD},
                               headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    for weak in ("password123", "short"):
        refused = stranger.request("POST", "/reset-password", data={"token": token, "password": weak})
        assert refused.status_code == 400 and "password" in message_of(refused.text), refused.text
        assert form_fields(refused.text, "/reset-password") == {"token": token}, "the form again, to correct"
    assert sign_in(Browserless(server.base), email, PASSWORD) in (200, 303), "nothing changed"

    done = stranger.request("POST", "/reset-password", data={"token": token, "password": NEW_PASSWORD})
    assert done.status_code == 200 and "Password changed" in done.text, done.text
    assert sign_in(Browserless(server.base), email, PASSWORD) == 401, "the old password no longer works"
    old = Browserless(server.base)
    old.cookies = old_cookies
    assert old.request("GET", "/security", follow_redirects=False).status_code != 200, "the old session has ended"
    fresh = Browserless(server.base)
    assert sign_in(fresh, email, NEW_PASSWORD) in (200, 303)
    centre = fresh.request("GET", "/security").text
    lock = re.search(r'id="withdrawal-lock">Withdrawals are locked for (\d+) minutes more', centre)  # in words, as elsewhere
    assert lock and int(lock.group(1)) >= 9, centre[:2000]  # the demo's lock: 600 s, most of it still ahead
    notice = mail_body(b, email, "Security change on your account")
    assert "password changed" in notice and "/security/freeze?token=" in notice, notice

    again = stranger.request("POST", "/reset-password", data={"token": token, "password": "yet another passphrase 9"})
    assert again.status_code == 401 and "already used" in message_of(again.text)
    assert sign_in(Browserless(server.base), email, NEW_PASSWORD) in (200, 303), "single use: nothing changed"
    for client in (b, stranger, old, fresh):
        client.http.close()


def test_an_unknown_address_gets_no_mail(server):
    b = Browserless(server.base)
    email = f"ghost{time.time_ns()}@example.com"
    assert b.request("POST", "/forgot-password", data={"email": email}).status_code == 200
    known = f"known{time.time_ns()}@example.com"  # a mail sent after it arrives: the ghost's would have too
    assert b.request("POST", "/signup", data={"email": known, "password": PASSWORD}).status_code == 200
    mailed_link(b, known, "/verify-email")
    assert f'data-to="{email}"' not in b.request("GET", "/dev/mail").text
    b.http.close()


def test_an_authenticator_account_needs_its_code(server):
    b = new_user(server)
    assert b.request("POST", "/forgot-password", data={"email": b.email}).status_code == 200
    link = reset_link(b, b.email)
    token = parse_qs(urlsplit(link).query)["token"][0]
    page = b.request("GET", link)
    assert page.status_code == 200 and 'name="code"' in page.text, page.text
    for wrong, status in (("", 400), ("000000", 401)):
        refused = b.request("POST", "/reset-password", data={"token": token, "password": NEW_PASSWORD, "code": wrong})
        assert refused.status_code == status and "code" in message_of(refused.text).lower(), refused.text
        assert form_fields(refused.text, "/reset-password") == {"token": token}
    assert sign_in(Browserless(server.base), b.email, NEW_PASSWORD) == 401, "nothing changed"
    assert sign_in(Browserless(server.base), b.email, PASSWORD) in (200, 303)
    done = b.request("POST", "/reset-password", data={"token": token, "password": NEW_PASSWORD, "code": next_code(b)})
    assert done.status_code == 200 and "Password changed" in done.text, done.text
    assert sign_in(Browserless(server.base), b.email, NEW_PASSWORD) in (200, 303)
    b.http.close()
