"""A revoked credential takes its streams with it (security review, session 12): a listen key made with an
API key, the sockets open on it, and `/ws-api/v3` connections logged on or subscribed with the key all end
when the account's keys are revoked by a password reset or by the freeze link (identity.events.end_access).
Before, the listen key lived on for up to 60 minutes and a socket already open on it, like a WebSocket API
user data subscription, kept receiving the account's executionReport and outboundAccountPosition.

Against real `ringfence serve --demo` processes (one process for the reset, `--gateways 2` for the
freeze: the streams live in the engine process, the clients talk to a gateway), with httpx and websockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

import httpx
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ringfence.api.access import REVOKED_REASON

from .conftest import Server
from .test_key_cache import PASSWORD, Browserless, csrf_of
from .test_mailed_links import form_fields, new_user, next_code, session
from .test_password_reset import NEW_PASSWORD, reset_link
from .test_ws_api import Client, ed25519_signed, hmac_signed, now_ms, ws_api_url

pytestmark = pytest.mark.store
ENV = {"RINGFENCE_CUSTODY_ADDRESS_COOLING_S": "0", "RINGFENCE_IDENTITY_SIGNUP_PER_IP_PER_HOUR": "60"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("revoked") / "data", env=ENV, chains=False)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("revoked-gw") / "data", env=ENV, args=("--gateways", "2"), chains=False)
    yield srv
    assert srv.stop() == 0


def identity_ctx(server):
    from ringfence.identity.context import IdentityContext
    from ringfence.settings import load_settings
    from ringfence.store import Store

    url = server.database_url
    return IdentityContext(store=Store.from_url(url), settings=load_settings(database_url=url,
                                                                               identity_gnupg_home=str((server.data / "gpg").resolve())))


def keys_of(server, b) -> tuple[dict, dict]:
    """An HMAC key made in the security centre and an Ed25519 key registered with the user's session."""
    from ringfence.identity import api_keys

    page = b.request("GET", "/security").text
    r = b.request("POST", "/security/api-keys", data={"csrf_token": csrf_of(page), "label": "streams", "scopes": ["read", "trade"], "kind": "hmac"})
    assert r.status_code == 200, r.text
    hmac_entry = {"api_key": re.search(r'id="api-key"[^>]*>([0-9a-f]{64})<', r.text).group(1),
                  "api_secret": re.search(r'id="api-secret"[^>]*>([0-9a-f]{64})<', r.text).group(1)}
    private = Ed25519PrivateKey.generate()
    public = base64.b64encode(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    created = api_keys.register_ed25519_key(identity_ctx(server), b.cookies["__Host-rf_session"], public, scopes=("read", "trade"))
    ed_entry = {"api_key": created.api_key, "private_key": base64.b64encode(private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode()}
    return hmac_entry, ed_entry


def ws_url(server, path: str) -> str:
    return server.base.replace("http://", "ws://") + path


def order(b) -> None:
    r = session(b, "POST", "/session/v3/order", data={"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                      "quantity": "0.001", "price": "60000"})
    assert r.status_code == 200, r.text


async def closed_for_revocation(ws, what: str) -> None:
    """`ws` is closed by the server with 1008 and the revocation reason within 5 s, whatever it still sent."""
    deadline = time.monotonic() + 5
    try:
        while True:
            await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1008, REVOKED_REASON), (what, closed)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: still open 5 s after the keys were revoked") from None


async def scenario(server, b, revoke) -> str:
    """Open a listen key's socket and two WebSocket API subscriptions, check they carry the account's
    events, `revoke` (blocking), and check all three are closed; returns the old listen key."""
    hmac_entry, ed_entry = keys_of(server, b)
    async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
        listen = (await http.post("/api/v3/userDataStream", headers={"X-MBX-APIKEY": hmac_entry["api_key"]})).json()["listenKey"]
    stream = await websockets.connect(ws_url(server, f"/ws/{listen}"))
    logged_on = Client(await websockets.connect(ws_api_url(server)))
    assert (await logged_on.call("session.logon", ed25519_signed(ed_entry, {})))["status"] == 200
    assert (await logged_on.call("userDataStream.subscribe"))["status"] == 200
    signed = Client(await websockets.connect(ws_api_url(server)))
    assert (await signed.call("userDataStream.subscribe.signature", hmac_signed(hmac_entry, {})))["status"] == 200
    await asyncio.to_thread(order, b)
    # the streams work: each carries the order's executionReport
    deadline = time.monotonic() + 10
    while json.loads(await asyncio.wait_for(stream.recv(), max(0.01, deadline - time.monotonic()))).get("e") != "executionReport":
        pass
    for c in (logged_on, signed):
        await c.event(lambda e: e["event"].get("e") == "executionReport")
    await asyncio.to_thread(revoke)
    for ws, what in ((stream, "the listen key's socket"), (logged_on.ws, "the logged-on WebSocket API"),
                     (signed.ws, "the WebSocket API subscribed with signed params")):
        await closed_for_revocation(ws, what)
    # a new socket on the old listen key is refused like an unknown stream
    async with websockets.connect(ws_url(server, f"/ws/{listen}")) as again:
        assert "unknown stream" in await asyncio.wait_for(again.recv(), 5)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(again.recv(), 5)
    # a new connection cannot log on or trade with the revoked key
    async with websockets.connect(ws_api_url(server)) as ws:
        c = Client(ws)
        assert (await c.call("session.logon", ed25519_signed(ed_entry, {})))["error"]["code"] == -2015
        placed = await c.call("order.place", hmac_signed(hmac_entry, {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                                     "quantity": "0.001", "price": "60000", "timestamp": now_ms()}))
        assert placed["status"] == 401 and placed["error"]["code"] == -2015, placed
    return listen


def test_a_password_reset_ends_the_old_keys_streams(server):
    b = new_user(server)

    def reset() -> None:
        assert b.request("POST", "/forgot-password", data={"email": b.email}).status_code == 200
        link = reset_link(b, b.email)
        page = b.request("GET", link)
        done = b.request("POST", "/reset-password", data={**form_fields(page.text, "/reset-password"), "password": NEW_PASSWORD,
                                                           "code": next_code(b)})
        assert done.status_code == 200 and "Password changed" in done.text, done.text

    listen = asyncio.run(scenario(server, b, reset))
    # the owner, signed in again with a new key, cannot keep the old listen key alive
    b.cookies.clear()
    assert b.request("POST", "/login", data={"email": b.email, "password": NEW_PASSWORD}).status_code in (200, 303)
    assert b.request("POST", "/login/2fa", data={"method": "totp", "code": next_code(b)}).status_code in (200, 303)
    hmac_entry, _ = keys_of(server, b)
    kept = httpx.put(server.base + "/api/v3/userDataStream", params={"listenKey": listen}, headers={"X-MBX-APIKEY": hmac_entry["api_key"]})
    assert kept.status_code == 400 and kept.json()["code"] == -1125, kept.text
    b.http.close()


def test_the_freeze_link_ends_the_keys_streams_behind_gateways(gateway_server):
    from sqlalchemy import select

    from ringfence.identity import events
    from ringfence.store.models import User

    server = gateway_server
    b = new_user(server)

    def freeze() -> None:
        ctx = identity_ctx(server)
        with ctx.store.tx() as db:  # the link a security-change notice carries
            user = db.scalars(select(User).where(User.email == b.email)).one()
            link = events.freeze_link(ctx, db, user, reason="test")
        page = b.request("GET", "/security/freeze?" + link.split("?", 1)[1])
        done = b.request("POST", "/security/freeze", data=form_fields(page.text, "/security/freeze"))
        assert done.status_code == 200, done.text

    asyncio.run(scenario(server, b, freeze))
    b.http.close()


def test_revoking_one_key_ends_only_that_keys_streams(server):
    """The owner revokes one key in the security centre: its listen key goes and its socket closes; a
    listen key made with her other key, and its socket, carry on."""
    b = new_user(server)
    first, _ = keys_of(server, b)
    second, _ = keys_of(server, b)
    page = b.request("GET", "/security").text
    first_id = int(re.findall(r'action="/security/api-keys/(\d+)/revoke"', page)[0])

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
            old, kept = [(await http.post("/api/v3/userDataStream", headers={"X-MBX-APIKEY": e["api_key"]})).json()["listenKey"]
                         for e in (first, second)]
            async with websockets.connect(ws_url(server, f"/ws/{old}")) as gone, websockets.connect(ws_url(server, f"/ws/{kept}")) as live:
                page = b.request("GET", "/security").text
                assert b.request("POST", f"/security/api-keys/{first_id}/revoke", data={"csrf_token": csrf_of(page)}).status_code == 303
                await closed_for_revocation(gone, "the revoked key's listen key socket")
                await asyncio.to_thread(order, b)
                deadline = time.monotonic() + 10
                while json.loads(await asyncio.wait_for(live.recv(), max(0.01, deadline - time.monotonic()))).get("e") != "executionReport":
                    pass
            ok = await http.put("/api/v3/userDataStream", params={"listenKey": kept}, headers={"X-MBX-APIKEY": second["api_key"]})
            assert ok.status_code == 200, ok.text
            refused = await http.put("/api/v3/userDataStream", params={"listenKey": old}, headers={"X-MBX-APIKEY": second["api_key"]})
            assert refused.status_code == 400 and refused.json()["code"] == -1125, refused.text

    asyncio.run(run())
    b.http.close()


def test_signing_out_ends_that_sessions_streams(server):
    """Intruder review (session 12): a web session's sign-out did not move the key generation, so the
    user data stream the dashboard opened with it (its listen key and socket) lived on after "Sign out".
    Now signing out ends what that session opened, at once; the account's other session, and its
    stream, carry on."""
    b = new_user(server)
    other = Browserless(server.base)  # a second browser of the same account
    other.email, other.origin = b.email, b.origin
    assert other.request("POST", "/login", data={"email": b.email, "password": PASSWORD}).status_code in (200, 303)
    other.totp, other.step = b.totp, b.step
    assert other.request("POST", "/login/2fa", data={"method": "totp", "code": next_code(other)}).status_code in (200, 303)
    b.step = other.step

    def listen_key(who) -> str:
        r = session(who, "POST", "/session/v3/userDataStream")
        assert r.status_code == 200, r.text
        return r.json()["listenKey"]

    mine, theirs = listen_key(b), listen_key(other)

    async def run() -> None:
        async with websockets.connect(ws_url(server, f"/ws/{mine}")) as gone, websockets.connect(ws_url(server, f"/ws/{theirs}")) as live:
            page = b.request("GET", "/security").text
            out = b.request("POST", "/logout", data={"csrf_token": csrf_of(page)}, follow_redirects=False)
            assert out.status_code == 303, out.text
            await closed_for_revocation(gone, "the signed-out session's listen key socket")
            await asyncio.to_thread(order, other)
            deadline = time.monotonic() + 10
            while json.loads(await asyncio.wait_for(live.recv(), max(0.01, deadline - time.monotonic()))).get("e") != "executionReport":
                pass
        async with websockets.connect(ws_url(server, f"/ws/{mine}")) as again:  # the listen key went with it
            assert "unknown stream" in await asyncio.wait_for(again.recv(), 5)

    asyncio.run(run())
    b.http.close()
    other.http.close()
