"""Ed25519 API keys against a real `ringfence serve --demo` process.

The demo writes one Ed25519 entry to demo-keys.json; it signs a real order. A user registers the
public half of their own key pair with `ringfence identity add-ed25519-key` (a real CLI process on
the server's identity database, password and authenticator code on stdin), and that key signs
requests the running server accepts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from urllib.parse import quote, urlencode

import httpx
import pyotp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import invoke

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False

PASSWORD = "correct horse battery staple 42"


def ed25519_signed(private: Ed25519PrivateKey, params: dict[str, str]) -> str:
    full = dict(params, timestamp=str(int(time.time() * 1000)), recvWindow="10000")
    payload = urlencode(full)
    return payload + "&signature=" + quote(base64.b64encode(private.sign(payload.encode())).decode(), safe="")


def test_demo_writes_an_ed25519_key_that_signs_a_real_order(server):
    path = server.data / "demo-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = json.loads(path.read_text())
    (entry,) = [e for e in entries if e.get("kind") == "ed25519"]
    assert set(entry) == {"account", "api_key", "kind", "private_key", "scopes"} and entry["account"] == "alice"
    assert entry["scopes"] == ["read", "trade"]
    assert {e["account"] for e in entries if e.get("kind") == "hmac"} == {"alice", "bob"}
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["private_key"], validate=True))
    params = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010",
              "price": "60000.00", "newClientOrderId": "ed25519-demo-1"}
    headers = {"X-MBX-APIKEY": entry["api_key"], "Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(server.base + "/api/v3/order", content=ed25519_signed(private, params), headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    order = r.json()
    assert order["clientOrderId"] == "ed25519-demo-1" and order["status"] in ("NEW", "FILLED", "PARTIALLY_FILLED")
    # the order is alice's: her HMAC key sees it
    look = httpx.get(server.base + "/api/v3/order?" + ed25519_signed(private, {"symbol": "BTCUSDT", "origClientOrderId": "ed25519-demo-1"}),
                     headers={"X-MBX-APIKEY": entry["api_key"]}, timeout=10)
    assert look.status_code == 200 and look.json()["orderId"] == order["orderId"], look.text
    # a signature by another key is refused and places nothing
    other = Ed25519PrivateKey.generate()
    forged = httpx.post(server.base + "/api/v3/order", content=ed25519_signed(other, dict(params, newClientOrderId="ed25519-forged")),
                        headers=headers, timeout=10)
    assert forged.status_code in (400, 401) and forged.json()["code"] == -1022, forged.text


def _identity_ctx(server):
    from ringfence.identity.context import IdentityContext
    from ringfence.settings import load_settings
    from ringfence.store import Store

    url = server.database_url
    settings = load_settings(database_url=url, identity_gnupg_home=str((server.data / "gpg").resolve()))
    return IdentityContext(store=Store.from_url(url), settings=settings), url


def _user_with_totp(ctx, email: str) -> pyotp.TOTP:
    from sqlalchemy import select

    from ringfence.identity import accounts, second_factor
    from ringfence.store.models import OutboxMessage

    accounts.sign_up(ctx, email, PASSWORD, ip="127.0.0.1")
    with ctx.store.tx() as db:
        body = db.scalars(select(OutboxMessage).where(OutboxMessage.to_addr == email)).all()[-1].body
    accounts.verify_email(ctx, re.search(r"token=([A-Za-z0-9_\-]+)", body).group(1))
    token = accounts.login(ctx, email, PASSWORD, ip="127.0.0.1").session.token
    enrollment = second_factor.begin_totp_enrollment(ctx, token)
    totp = pyotp.TOTP(enrollment.secret_base32)
    # enrol with the previous step's code, so the CLI's current code is not a replay; not in a step's last
    # seconds, or identity's clock can be in the next step by the time it checks, two past the code's, and
    # refuse it (it accepts one step of drift)
    while time.time() % 30 > 25:
        time.sleep(0.2)
    second_factor.confirm_totp_enrollment(ctx, token, totp.at(int(time.time()) - 30))
    with ctx.store.tx() as db:  # a first factor counts once confirmed from the e-mail
        body = db.scalars(select(OutboxMessage).where(OutboxMessage.to_addr == email,
                                                      OutboxMessage.template == "second_factor_confirm")).all()[-1].body
    second_factor.confirm_first_factor(ctx, re.search(r"confirm-factor\?token=([A-Za-z0-9_\-]+)", body).group(1))
    return totp


def _cli(args: list[str], url: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringfence.cli", "identity", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, RINGFENCE_DATABASE_URL=url))


def test_cli_registers_a_users_public_key_and_it_signs_against_the_running_server(server, tmp_path):
    ctx, url = _identity_ctx(server)
    email = "ed-cli@example.com"
    totp = _user_with_totp(ctx, email)
    private = Ed25519PrivateKey.generate()
    pub = tmp_path / "key.pub"
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    # bad public keys are refused before any secret is asked for, naming the field (the same command code in this
    # process, conftest.invoke: no Python start per refusal; the two calls that read stdin below are processes)
    for content, message in [(base64.b64encode(b"x" * 31).decode(), "decodes to 31 bytes"),
                             ("%%%not base64", "neither PEM nor valid base64"),
                             ("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", "does not decode")]:
        bad = tmp_path / "bad.pub"
        bad.write_text(content)
        out = invoke("identity", "add-ed25519-key", "--email", email, "--public-key-file", str(bad), env={"RINGFENCE_DATABASE_URL": url})
        text = " ".join(out.stderr.split())
        assert out.returncode == 2 and "public_key" in text and message in text, out.stderr
    out = invoke("identity", "add-ed25519-key", "--email", email, "--public-key-file", str(tmp_path / "missing.pub"),
                 env={"RINGFENCE_DATABASE_URL": url})
    assert out.returncode == 2 and "does not exist" in out.stderr

    # a wrong authenticator code registers nothing
    wrong = "000000" if totp.now() != "000000" else "111111"
    out = _cli(["add-ed25519-key", "--email", email, "--public-key-file", str(pub)], url, f"{PASSWORD}\n{wrong}\n")
    assert out.returncode == 1 and "api_key=" not in out.stdout, out.stdout + out.stderr

    out = _cli(["add-ed25519-key", "--email", email, "--public-key-file", str(pub), "--scope", "read", "--scope", "trade"],
               url, f"{PASSWORD}\n{totp.now()}\n")
    assert out.returncode == 0, out.stdout + out.stderr
    api_key = re.search(r"api_key=([0-9a-f]{64})", out.stdout).group(1)
    assert PASSWORD not in out.stdout + out.stderr

    r = httpx.get(server.base + "/api/v3/account?" + ed25519_signed(private, {}), headers={"X-MBX-APIKEY": api_key}, timeout=10)
    assert r.status_code == 200, r.text
    assert "balances" in r.json()
    order = httpx.post(server.base + "/api/v3/order",
                       content=ed25519_signed(private, {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                        "quantity": "0.0010", "price": "60000.00"}),
                       headers={"X-MBX-APIKEY": api_key, "Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    # authenticated and through to the engine: a new user has no funds, so the ledger refuses the hold
    assert order.status_code == 400 and order.json()["code"] == -2010, order.text
