"""Forwarding headers, against real `serve` processes (issue #13 item 5): X-Forwarded-For,
X-Real-IP and Forwarded from a peer that is not a configured proxy change nothing — a loopback
client cannot escape a 418 ban or pass an API key's IP allow-list by claiming another address.
With `--forwarded-allow-ips 127.0.0.1` the proxy's X-Forwarded-For is believed.

Reproduce by hand: `ringfence serve --demo --data /tmp/rf --port 8000`, get banned
(RINGFENCE_API_WEIGHT_PER_MIN=50), then `curl -H 'X-Forwarded-For: 203.0.113.9' localhost:8000/api/v3/ping`
must still answer 418.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

import httpx
import pytest

from .conftest import Server, free_port

CLAIMS = [
    {"X-Forwarded-For": "203.0.113.7"},
    {"X-Forwarded-For": "203.0.113.7, 198.51.100.1"},
    {"X-Real-IP": "203.0.113.7"},
    {"Forwarded": "for=203.0.113.7;proto=https"},
    {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7", "X-Forwarded-Proto": "https"},
]


def allow_listed_key(server: Server) -> tuple[str, str]:
    """A key for alice usable only from 203.0.113.0/24, written to the server's identity database."""
    from ringfence.identity.api_keys import issue_demo_key
    from ringfence.identity.context import IdentityContext
    from ringfence.settings import load_settings
    from ringfence.store import Store

    settings = load_settings(database_url=server.database_url)
    ctx = IdentityContext(store=Store.from_url(settings.database_url), settings=settings)
    created = issue_demo_key(ctx, "alice", "alice@demo.ringfence.local", ip_allowlist=["203.0.113.0/24"])
    assert created.secret is not None
    return created.api_key, created.secret


def signed_account(http: httpx.Client, api_key: str, secret: str, headers: dict[str, str]) -> httpx.Response:
    payload = urlencode({"timestamp": str(int(time.time() * 1000)), "recvWindow": "10000"})
    time.sleep(0.002)  # a fresh timestamp for each request: the replay guard keys on the signed bytes
    signature = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return http.get(f"/api/v3/account?{payload}&signature={signature}", headers={"X-MBX-APIKEY": api_key, **headers})


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    # a small budget so a ban comes quickly; the allow-list test runs first and stays far below it
    srv = Server(tmp_path_factory.mktemp("forwarding") / "data", env={"RINGFENCE_API_WEIGHT_PER_MIN": "400", "RINGFENCE_API_BAN_AFTER": "2"}, chains=False)
    yield srv
    assert srv.stop() == 0


def test_a_loopback_client_cannot_pass_an_ip_allow_list_by_claiming_an_address(strict_server):
    api_key, secret = allow_listed_key(strict_server)
    with httpx.Client(base_url=strict_server.base, timeout=10) as http:
        for claim in [{}] + CLAIMS:
            r = signed_account(http, api_key, secret, claim)
            assert (r.status_code, r.json()["code"]) == (401, -2015), (claim, r.text)
            assert "127.0.0.1" in r.json()["msg"], r.text  # the address that counted is the TCP peer's
        r = http.post("/api/v3/userDataStream", headers={"X-MBX-APIKEY": api_key, **CLAIMS[0]})
        assert (r.status_code, r.json()["code"]) == (401, -2015), r.text


def test_a_banned_loopback_client_stays_banned_whatever_address_it_claims(strict_server):
    with httpx.Client(base_url=strict_server.base, timeout=10) as http:
        for _ in range(1000):
            if http.get("/api/v3/ping").status_code == 418:
                break
        else:
            pytest.fail("no 418 ban after 1000 requests over a 400-weight budget")
        for claim in CLAIMS:
            r = http.get("/api/v3/ping", headers=claim)
            assert r.status_code == 418 and r.json()["code"] == -1003, (claim, r.text)


def test_a_configured_proxy_is_believed(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("proxied") / "data", args=("--forwarded-allow-ips", "127.0.0.1"), chains=False)
    try:
        api_key, secret = allow_listed_key(srv)
        with httpx.Client(base_url=srv.base, timeout=10) as http:
            r = signed_account(http, api_key, secret, {"X-Forwarded-For": "203.0.113.7"})
            assert r.status_code == 200, r.text
            r = signed_account(http, api_key, secret, {"X-Forwarded-For": "198.51.100.1"})
            assert (r.status_code, r.json()["code"]) == (401, -2015) and "198.51.100.1" in r.json()["msg"], r.text
            # only X-Forwarded-For is read, even from the proxy
            r = signed_account(http, api_key, secret, {"X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7"})
            assert (r.status_code, r.json()["code"]) == (401, -2015), r.text
    finally:
        assert srv.stop() == 0


def test_a_malformed_proxy_list_is_refused_before_anything_starts(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(data), "--port", str(free_port()), "--forwarded-allow-ips", "127.0.0.1,not-an-ip"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "RINGFENCE_API_FORWARDED_ALLOW_IPS" in r.stdout + r.stderr and "not-an-ip" in r.stdout + r.stderr, r.stdout + r.stderr
