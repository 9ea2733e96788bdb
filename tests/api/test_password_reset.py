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

import httpx
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import Server
from .test_key_cache import PASSWORD, Browserless, create_key, mailed_link, signed_account
from .test_mailed_links import form_fields, mail_body, message_of, new_user, next_code, path_of

NEW_PASSWORD = "a brand new passphrase 2026"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # every client here is 127.0.0.1: room for the requests of one address past its own budget, twice;
    # behind the loopback "proxy" a test's X-Forwarded-For makes requesters of other IPs
    srv = Server(tmp_path_factory.mktemp("reset") / "data", env={"RINGFENCE_CUSTODY_ADDRESS_COOLING_S": "0",
                                                                  "RINGFENCE_IDENTITY_SIGNUP_PER_IP_PER_HOUR": "60",
                                                                  "RINGFENCE_API_FORWARDED_ALLOW_IPS": "127.0.0.1"}, chains=False)
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


def test_a_reset_lifts_the_sign_in_lockout_and_revokes_the_api_keys(server):
    """Intruder review: a reset did not lift the sign-in lockout an attacker's wrong guesses had set (the
    owner, with her new password, still waited) and left the API keys working (a freeze stops them).
    Now the reset lifts the lockout, revokes every API key as the freeze link does (the next signed
    request is refused), ends every session, and the form, the page and the notice mail say so."""
    b = new_user(server)
    key, secret, _ = create_key(b)
    api = httpx.Client(base_url=server.base, timeout=10)
    assert signed_account(api, key, secret).status_code == 200, "the key works (and is cached)"
    assert b.request("POST", "/forgot-password", data={"email": b.email}).status_code == 200
    link = reset_link(b, b.email)
    page = b.request("GET", link)
    assert page.status_code == 200 and 'id="reset-api-keys"' in page.text, page.text
    code = next_code(b)  # before the lock: from the guesses to her sign-in takes seconds, the lock 30 s
    attacker = Browserless(server.base)
    for _ in range(5):
        assert sign_in(attacker, b.email, "an attacker's wrong guess") == 401
    locked = Browserless(server.base).request("POST", "/login", data={"email": b.email, "password": PASSWORD})
    assert locked.status_code == 429, "locked: the right password waits too"
    assert int(re.search(r"try again in (\d+) s", locked.text).group(1)) > 20, locked.text[-800:]
    done = b.request("POST", "/reset-password", data={**form_fields(page.text, "/reset-password"), "password": NEW_PASSWORD,
                                                       "code": code})
    assert done.status_code == 200 and "Password changed" in done.text, done.text
    assert "Its API keys were revoked (1): if you use the API, create new keys in the security centre." in message_of(done.text)
    refused = signed_account(api, key, secret)  # the very next request
    assert refused.status_code == 401 and refused.json()["code"] == -2015 and "revoked" in refused.json()["msg"], refused.text
    assert b.request("GET", "/security", follow_redirects=False).status_code != 200, "the old session has ended"
    owner = Browserless(server.base)
    assert sign_in(owner, b.email, NEW_PASSWORD) in (200, 303), "at once: the lockout is lifted"
    notice = mail_body(b, b.email, "The password of your account was reset")
    assert "API keys revoked: 1" in notice and "create new keys in the security centre" in notice, notice
    assert "/security/freeze?token=" in notice, notice
    assert sign_in(attacker, b.email, PASSWORD) == 401, "the old password is gone"
    for client in (b, attacker, owner):
        client.http.close()
    api.close()


@pytest.mark.parametrize("ask, path", [("/forgot-password", "/reset-password"), ("/verify-email/new", "/verify-email/claim")])
def test_a_stranger_cannot_void_the_link_in_the_owners_mailbox(server, ask, path):
    """Intruder review: 5 requests an hour for one address from a stranger each ended the link before,
    so the owner's link died in her mailbox (and the sixth got a refusal). Now the owner's link keeps
    working while a stranger asks 4 more times, and past the address's budget; the refusal past the
    budget is the same for an unknown address; the link she uses ends the others."""
    stamp = time.time_ns()
    email = f"owner{stamp}@example.com"
    owner, stranger = Browserless(server.base), Browserless(server.base)
    assert owner.request("POST", "/signup", data={"email": email, "password": PASSWORD}).status_code == 200
    if ask == "/forgot-password":  # a confirmed account; /verify-email/new is for one still pending
        token = parse_qs(urlsplit(mailed_link(owner, email, "/verify-email")).query)["token"][0]
        assert owner.request("POST", "/verify-email", data={"token": token}).status_code == 200

    def links() -> list[str]:
        """The tokens of the `path` links in the mails to `email` at /dev/mail, each once."""
        text = owner.request("GET", "/dev/mail").text
        mine = re.findall(r'<section class="mail" data-to="' + re.escape(email) + r'"[^>]*>(.*?)</section>', text, re.S)
        return list(dict.fromkeys(t for section in mine for t in re.findall(re.escape(path) + r"\?token=([A-Za-z0-9_-]+)", section)))

    assert owner.request("POST", ask, data={"email": email}).status_code == 200
    mail_body(owner, email, path + "?token=")  # her link has arrived
    first = links()
    assert len(first) == 1
    for _ in range(4):  # the rest of the address's hour, spent by a stranger
        assert stranger.request("POST", ask, data={"email": email}).status_code == 200
    deadline = time.monotonic() + 30
    while len(links()) < 5:
        assert time.monotonic() < deadline, links()
        time.sleep(0.3)
    past = stranger.request("POST", ask, data={"email": email})
    nobody = f"nobody{stamp}@example.com"
    for _ in range(5):
        assert stranger.request("POST", ask, data={"email": nobody}).status_code == 200
    unknown = stranger.request("POST", ask, data={"email": nobody})
    assert past.status_code == unknown.status_code == 429, past.text
    assert re.sub(r"\d+", "N", message_of(past.text)) == re.sub(r"\d+", "N", message_of(unknown.text)), \
        "the same refusal for every address (the seconds to wait aside)"
    assert "that link still works" in message_of(past.text)
    mailed = links()
    assert len(mailed) == 5 and first[0] in mailed, "nothing mailed past the budget"
    for token in mailed:  # the owner's first link and every later one still work
        assert owner.request("GET", f"{path}?token={token}").status_code == 200
    form = {"token": first[0], "password": NEW_PASSWORD}
    done = owner.request("POST", path, data=form)
    assert done.status_code == 200, done.text
    for token in mailed:  # the one she used ended the others
        assert owner.request("GET", f"{path}?token={token}").status_code == 401
    assert sign_in(Browserless(server.base), email, NEW_PASSWORD) in (200, 303)
    owner.http.close()
    stranger.http.close()


def expire_links(server: Server, email: str) -> None:
    """Every mailed link of `email`'s account expires now, as if its lifetime had passed (written to the
    server's identity database: a test cannot wait 30 minutes)."""
    from sqlalchemy import update

    from ringfence.store import Store
    from ringfence.store.models import EmailToken

    store = Store.from_url(server.database_url)
    with store.tx() as db:
        db.execute(update(EmailToken).where(EmailToken.email == email).values(expires_at_s=int(time.time()) - 1))


@pytest.mark.parametrize("ask, path", [("/forgot-password", "/reset-password"), ("/verify-email/new", "/verify-email/claim")])
def test_a_stranger_cannot_spend_the_owners_mail_budget(server, ask, path):
    """Intruder review (session 12): the address's 5 link mails an hour were one budget for everybody, so
    a stranger spending it at the top of the hour left the owner without a working link once those
    expired (30 minutes) until the hour ended, and the 429 told anyone asking that somebody had asked
    for the address. Now the budget is the requester's (per IP, and per IP and address): a stranger past
    his own gets a 429 whose Retry-After is the clock hour's end (nothing of anybody's requests), the
    owner from her own IP is answered; many IPs together get no more than 5 links out at a time; and the
    moment those expire, the owner's next request mails her a new one that works."""
    stamp = time.time_ns()
    email = f"budget{stamp}@example.com"
    owner, stranger = Browserless(server.base), Browserless(server.base)
    hers = {"X-Forwarded-For": "198.51.100.77"}
    assert owner.request("POST", "/signup", data={"email": email, "password": PASSWORD}, headers=hers).status_code == 200
    if ask == "/forgot-password":  # a confirmed account; /verify-email/new is for one still pending
        token = parse_qs(urlsplit(mailed_link(owner, email, "/verify-email")).query)["token"][0]
        assert owner.request("POST", "/verify-email", data={"token": token}, headers=hers).status_code == 200

    def links() -> list[str]:
        text = owner.request("GET", "/dev/mail").text
        mine = re.findall(r'<section class="mail" data-to="' + re.escape(email) + r'"[^>]*>(.*?)</section>', text, re.S)
        return list(dict.fromkeys(t for section in mine for t in re.findall(re.escape(path) + r"\?token=([A-Za-z0-9_-]+)", section)))

    his = {"X-Forwarded-For": f"203.0.113.{stamp % 200 + 1}"}
    for _ in range(5):
        assert stranger.request("POST", ask, data={"email": email}, headers=his).status_code == 200
    refused = stranger.request("POST", ask, data={"email": email}, headers=his)
    to_the_hour = 3600 - int(time.time()) % 3600
    assert refused.status_code == 429, refused.text
    assert abs(int(refused.headers["Retry-After"]) - to_the_hour) <= 2, (refused.headers["Retry-After"], to_the_hour)
    for i in range(5):  # more IPs of his: answered, but no more links go out
        other = {"X-Forwarded-For": f"192.0.2.{(stamp + i) % 200 + 1}"}
        assert stranger.request("POST", ask, data={"email": email}, headers=other).status_code == 200
    answered = owner.request("POST", ask, data={"email": email}, headers=hers)
    assert answered.status_code == 200 and "Retry-After" not in answered.headers, answered.text
    deadline = time.monotonic() + 30
    while len(links()) < 5:
        assert time.monotonic() < deadline, links()
        time.sleep(0.3)
    time.sleep(1)  # the mail catcher's polls: a sixth would have come by now
    out = links()
    assert len(out) == 5, "no more than 5 links out at a time, however many IPs ask"
    expire_links(server, email)
    assert owner.request("POST", ask, data={"email": email}, headers=hers).status_code == 200
    deadline = time.monotonic() + 30
    while len(links()) < 6:
        assert time.monotonic() < deadline, "the owner got no new link once the stranger's expired"
        time.sleep(0.3)
    newest = next(t for t in links() if t not in out)
    page = owner.request("GET", f"{path}?token={newest}")
    assert page.status_code == 200, page.text
    done = owner.request("POST", path, data={"token": newest, "password": NEW_PASSWORD}, headers=hers)
    assert done.status_code == 200, done.text
    assert sign_in(Browserless(server.base), email, NEW_PASSWORD) in (200, 303)
    owner.http.close()
    stranger.http.close()


def test_two_concurrent_uses_of_a_reset_link_set_one_password(server):
    """Intruder review (session 12): the reset link's use was a read, then a write of `used_at_s`, so two
    POSTs at once could both set a password. Now exactly one of two concurrent POSTs of one link sets its
    password (200); the other is refused as a used link (401), and only the winner's password signs in."""
    import asyncio

    email = f"race{time.time_ns()}@example.com"
    owner = Browserless(server.base)
    assert owner.request("POST", "/signup", data={"email": email, "password": PASSWORD}).status_code == 200
    token = parse_qs(urlsplit(mailed_link(owner, email, "/verify-email")).query)["token"][0]
    assert owner.request("POST", "/verify-email", data={"token": token}).status_code == 200
    assert owner.request("POST", "/forgot-password", data={"email": email}).status_code == 200
    link = reset_link(owner, email)
    fields = form_fields(owner.request("GET", link).text, "/reset-password")
    passwords = ("first racer passphrase 2026", "second racer passphrase 2026")

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            return list(await asyncio.gather(*(http.post("/reset-password", data={**fields, "password": p}) for p in passwords)))

    answers = asyncio.run(race())
    assert sorted(r.status_code for r in answers) == [200, 401], [(r.status_code, r.text[-500:]) for r in answers]
    loser = next(r for r in answers if r.status_code == 401)
    assert "already used" in message_of(loser.text), loser.text
    winner = passwords[[r.status_code for r in answers].index(200)]
    assert sign_in(Browserless(server.base), email, winner) in (200, 303)
    assert sign_in(Browserless(server.base), email, passwords[passwords.index(winner) - 1]) == 401
    owner.http.close()
