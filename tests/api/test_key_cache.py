"""The verified-key cache (identity/key_cache.py) against a real `serve --demo` process, with httpx:
a key is created in the security centre (sign up, e-mail link, TOTP, form with CSRF token), used
(so it is cached), revoked through the same security centre, and the very next signed request is
refused. A change committed by another process (the store's generation counter) is seen too.

Reproduce by hand: `ringfence serve --demo --data /tmp/rf --port 8000`, sign up at /signup, confirm
at /dev/mail, turn on TOTP, create an API key at /security, call GET /api/v3/account with it,
revoke it at /security, call again: -2015 "this API key was revoked".
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyotp
import pytest

from ringfence.monitoring.replay import keep_cookies

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False

# the SQL store (identity, read models) is exercised: `make test` runs this file again on PostgreSQL
pytestmark = pytest.mark.store

PASSWORD = "correct horse battery staple 42"
_last_ts = [0]


class Browserless:
    """httpx with the session cookies carried by hand: they are `Secure` (`__Host-`), which the
    standard cookie jar will not send over http://127.0.0.1 (a browser treats loopback as secure)."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=10)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        r = self.http.request(method, path, headers=headers, **kw)
        keep_cookies(self.cookies, r)  # the same jar as `ringfence monitoring replay`'s clients
        return r


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, html[:2000]
    return m.group(1)


def signed_account(http: httpx.Client, key: str, secret: str) -> httpx.Response:
    ts = max(int(time.time() * 1000), _last_ts[0] + 1)
    _last_ts[0] = ts
    payload = urlencode({"timestamp": str(ts), "recvWindow": "10000"})
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return http.get(f"/api/v3/account?{payload}&signature={sig}", headers={"X-MBX-APIKEY": key})


def mails_to(page: str, email: str) -> list[str]:
    """The sections of the /dev/mail `page` (newest first) whose recipients (the `data-to` header, comma-joined)
    include `email` exactly: another account's mail next to it, or an address that merely contains it, is not its."""
    return [body for to, body in re.findall(r'<section class="mail" data-to="([^"]*)">(.*?)</section>', page, re.S)
            if email in unescape(to).split(",")]


def mailed_link(b: "Browserless", email: str, path: str) -> str:
    """The newest link to `path` in a mail to `email` at the demo's /dev/mail (delivered every 2 s)."""
    deadline = time.monotonic() + 30
    while True:
        page = b.request("GET", "/dev/mail").text
        links = [unescape(m.group(1)) for section in mails_to(page, email)
                 for m in re.finditer(r'href="([^"]*' + re.escape(path) + r'\?token=[^"]+)"', section)]
        if links:
            return links[0]
        assert time.monotonic() < deadline, f"no mail with a {path} link for {email} at /dev/mail"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def user(server):
    """A signed-in user with TOTP on, in the security centre of the live server."""
    b = Browserless(server.base)
    email = f"cache{int(time.time() * 1000)}@example.com"
    r = b.request("POST", "/signup", data={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = parse_qs(urlsplit(mailed_link(b, email, "/verify-email")).query)["token"][0]
    assert b.request("POST", "/verify-email", data={"token": token}).status_code == 200  # the link page's button
    r = b.request("POST", "/login", data={"email": email, "password": PASSWORD})
    assert r.status_code in (200, 303), r.text
    page = b.request("GET", "/security").text
    setup = b.request("POST", "/security/totp/begin", data={"csrf_token": csrf_of(page)}).text
    totp = pyotp.TOTP(re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', setup).group(1))
    r = b.request("POST", "/security/totp/confirm", data={"csrf_token": csrf_of(setup), "code": totp.now()})
    assert r.status_code == 200, r.text
    token = parse_qs(urlsplit(mailed_link(b, email, "/security/confirm-factor")).query)["token"][0]  # the first factor counts once confirmed
    assert b.request("POST", "/security/confirm-factor", data={"token": token}).status_code == 200
    yield b
    b.http.close()


def create_key(b: Browserless) -> tuple[str, str, int]:
    page = b.request("GET", "/security").text
    r = b.request("POST", "/security/api-keys", data={"csrf_token": csrf_of(page), "label": "cache test", "scopes": "read", "kind": "hmac"})
    assert r.status_code == 200, r.text
    key = re.search(r'id="api-key"[^>]*>([0-9a-f]{64})<', r.text).group(1)
    secret = re.search(r'id="api-secret"[^>]*>([0-9a-f]{64})<', r.text).group(1)
    page = b.request("GET", "/security").text
    key_id = int(re.findall(r'action="/security/api-keys/(\d+)/revoke"', page)[-1])
    return key, secret, key_id


def test_a_key_revoked_in_the_security_centre_is_refused_on_the_very_next_request(server, user):
    key, secret, key_id = create_key(user)
    with httpx.Client(base_url=server.base, timeout=10) as http:
        for _ in range(5):  # the first fills the cache, the others are answered from it
            r = signed_account(http, key, secret)
            assert r.status_code == 200, r.text
        page = user.request("GET", "/security").text
        r = user.request("POST", f"/security/api-keys/{key_id}/revoke", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 303, r.text
        r = signed_account(http, key, secret)  # the very next request
        assert r.status_code == 401 and r.json()["code"] == -2015 and "revoked" in r.json()["msg"], r.text


def test_a_revocation_committed_by_another_process_is_seen_within_the_watch_interval(server, user):
    """Another process (here: this test, on the server's SQLite file) revokes a cached key; the
    server's watcher reads the store's generation counter every 50 ms and drops its cache."""
    from ringfence.identity import api_keys
    from ringfence.identity.context import IdentityContext
    from ringfence.settings import load_settings
    from ringfence.store import Store

    key, secret, key_id = create_key(user)
    with httpx.Client(base_url=server.base, timeout=10) as http:
        for _ in range(3):
            assert signed_account(http, key, secret).status_code == 200
        url = server.database_url
        ctx = IdentityContext(store=Store.from_url(url), settings=load_settings(database_url=url))  # the demo's dev key
        token = user.cookies["__Host-rf_session"]
        api_keys.revoke_api_key(ctx, token, key_id)
        revoked_at = time.monotonic()
        while True:
            # timed from when the request is sent: on a loaded machine one round trip can take most of a
            # second, and a request sent in time and answered late says nothing against the server
            sent_after_s = time.monotonic() - revoked_at
            r = signed_account(http, key, secret)
            if r.status_code == 401:
                break
            assert r.status_code == 200, r.text
            assert sent_after_s < 1.0, "the server kept accepting a key revoked by another process"
        assert r.json()["code"] == -2015, r.text
        print(f"refused {1000 * (time.monotonic() - revoked_at):.0f} ms after the other process committed")

