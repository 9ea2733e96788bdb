"""Binance's WebSocket API (`/ws-api/v3`) on a real `ringfence serve --demo` process.

1. The unmodified ccxt pro `binance` class, only its URLs pointed at the local server: bob rests a
   sell with `create_order_ws`, alice (signing with her Ed25519 key) takes it, `fetch_order_ws`,
   `fetch_open_orders_ws`, `cancel_order_ws` and `cancel_all_orders_ws` agree with REST, and `watch_orders` receives the
   user data stream over the same socket.
2. A raw `websockets` client: one `session.logon` with the Ed25519 key, then orders with no
   signature, the user data stream on the same connection, session.status / logout.
3. Bad frames and refusals with Binance's codes, and nothing changes: bad JSON, unknown method,
   params that are not an object, logon with a wrong signature or an HMAC key, an order before
   logon without a signature, a replayed or expired timestamp, a parameter the REST endpoint does
   not read; and a key revoked after logon stops the next order on the logged-on connection.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from decimal import Decimal
from urllib.parse import urlsplit

import ccxt.pro as ccxtpro
import httpx
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .test_rest import signed_query

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False


def ws_api_url(server) -> str:
    return server.base.replace("http://", "ws://") + "/ws-api/v3"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def payload_of(params: dict) -> str:
    return "&".join(f"{k}={'true' if v is True else 'false' if v is False else v}" for k, v in sorted(params.items()))


def ed25519_signed(entry: dict, params: dict) -> dict:
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["private_key"]))
    full = dict(params, apiKey=entry["api_key"])
    full.setdefault("timestamp", now_ms())
    full["signature"] = base64.b64encode(private.sign(payload_of(full).encode())).decode()
    return full


def hmac_signed(entry: dict, params: dict) -> dict:
    full = dict(params, apiKey=entry["api_key"])
    full.setdefault("timestamp", now_ms())
    full["signature"] = hmac.new(entry["api_secret"].encode(), payload_of(full).encode(), hashlib.sha256).hexdigest()
    return full


class Client:
    """A raw WebSocket API client: `call` sends a request and returns the response with its id;
    every other frame (user data events) is kept in `events`."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    async def call(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        request = {"id": f"r{self.next_id}", "method": method}
        if params is not None:
            request["params"] = params
        await self.ws.send(json.dumps(request))
        return await self.response(f"r{self.next_id}")

    async def response(self, rid) -> dict:
        deadline = time.monotonic() + 10
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            if "event" in message:
                self.events.append(message)
            elif message.get("id") == rid:
                return message

    async def event(self, pred) -> dict:
        deadline = time.monotonic() + 10
        while True:
            for e in self.events:
                if pred(e):
                    self.events.remove(e)
                    return e
            message = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            assert "event" in message, message
            self.events.append(message)


def rest_order(server, entry, order_id):
    q = signed_query(entry["api_secret"], {"symbol": "BTCUSDT", "orderId": str(order_id)})
    return httpx.get(server.base + "/api/v3/order?" + q, headers={"X-MBX-APIKEY": entry["api_key"]}).json()


def rest_open_orders(server, entry):
    q = signed_query(entry["api_secret"], {"symbol": "BTCUSDT"})
    return httpx.get(server.base + "/api/v3/openOrders?" + q, headers={"X-MBX-APIKEY": entry["api_key"]}).json()


def journal_seq(server) -> int:
    return httpx.get(server.base + "/readyz").json()["last_seq"]


def make_pro(server, api_key: str, secret: str):
    ex = ccxtpro.binance(
        {
            "apiKey": api_key,
            "secret": secret,
            "options": {"fetchMarkets": ["spot"], "fetchCurrencies": False, "fetchMargins": False, "adjustForTimeDifference": False,
                        "warnOnFetchOpenOrdersWithoutSymbol": False},
        }
    )
    for name, url in list(ex.urls["api"].items()):
        if isinstance(url, str):
            ex.urls["api"][name] = server.base + urlsplit(url).path
    ws_base = server.base.replace("http://", "ws://")
    ex.urls["api"]["ws"]["spot"] = ws_base + "/ws"
    ex.urls["api"]["ws"]["ws-api"]["spot"] = ws_base + "/ws-api/v3"
    return ex


async def user_stream_confirmed(ex) -> None:
    """Until the server has answered ccxt's `userDataStream.subscribe.signature` (ccxt marks the
    subscription first and drops its pending future when the answer arrives): an order sent before
    that would be reported before the subscription exists."""
    deadline = time.monotonic() + 10
    while True:
        client = ex.clients.get(ex.urls["api"]["ws"]["ws-api"]["spot"])
        if client is not None and client.subscriptions.get("spot") and "authenticate:signature:spot" not in client.futures:
            return
        assert time.monotonic() < deadline, "ccxt's user data subscription was not confirmed"
        await asyncio.sleep(0.01)


async def watching(ex, message_hash: str) -> None:
    """Until ccxt waits for `message_hash` (so the next event resolves it)."""
    deadline = time.monotonic() + 10
    while message_hash not in ex.clients[ex.urls["api"]["ws"]["ws-api"]["spot"]].futures:
        assert time.monotonic() < deadline, f"ccxt is not waiting for {message_hash}"
        await asyncio.sleep(0.005)


def test_ccxt_pro_places_fetches_cancels_and_watches_orders_over_the_ws_api(server):
    bob_key, alice_ed = server.keys["bob"], server.ed25519_keys["alice"]
    pem = Ed25519PrivateKey.from_private_bytes(base64.b64decode(alice_ed["private_key"])).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

    async def scenario():
        bob = make_pro(server, bob_key["api_key"], bob_key["api_secret"])
        alice = make_pro(server, alice_ed["api_key"], pem)  # ccxt signs with the Ed25519 key
        try:
            await bob.load_markets()
            await alice.load_markets()
            seq_before = journal_seq(server)
            # bob watches his orders over the WebSocket API's user data stream
            watcher = asyncio.create_task(bob.watch_orders("BTC/USDT"))
            await user_stream_confirmed(bob)
            ask = await bob.create_order_ws("BTC/USDT", "limit", "sell", 0.01, 61000.01)
            assert ask["status"] == "open" and ask["remaining"] == 0.01 and ask["price"] == 61000.01
            assert rest_order(server, bob_key, ask["id"])["status"] == "NEW"  # REST sees the same order
            assert journal_seq(server) > seq_before
            seen = await asyncio.wait_for(watcher, 10)
            assert any(o["id"] == ask["id"] and o["status"] == "open" for o in seen)

            fetched = await bob.fetch_order_ws(ask["id"], "BTC/USDT")
            assert fetched["id"] == ask["id"] and fetched["status"] == "open" and fetched["amount"] == 0.01
            open_ids = {o["id"] for o in await bob.fetch_open_orders_ws("BTC/USDT")}
            assert ask["id"] in open_ids and open_ids == {str(o["orderId"]) for o in rest_open_orders(server, bob_key)}

            # alice takes half of it; bob's stream reports the partial fill
            watcher = asyncio.create_task(bob.watch_orders("BTC/USDT"))
            await watching(bob, "orders:BTC/USDT")
            buy = await alice.create_order_ws("BTC/USDT", "limit", "buy", 0.005, 61000.01)
            assert buy["status"] == "closed" and buy["filled"] == 0.005
            assert Decimal(str(buy["cost"])) == Decimal("305.00005")
            filled = [o for o in await asyncio.wait_for(watcher, 10) if o["id"] == ask["id"]]
            assert filled and filled[-1]["filled"] == 0.005 and filled[-1]["status"] == "open" and filled[-1]["remaining"] == 0.005

            canceled = await bob.cancel_order_ws(ask["id"], "BTC/USDT")
            assert canceled["status"] == "canceled" and canceled["id"] == ask["id"]
            assert rest_order(server, bob_key, ask["id"])["status"] == "CANCELED"
            assert ask["id"] not in {o["id"] for o in await bob.fetch_open_orders_ws("BTC/USDT")}

            for price in (61500.00, 61500.01):
                await bob.create_order_ws("BTC/USDT", "limit", "sell", 0.001, price)
            cleared = await bob.cancel_all_orders_ws("BTC/USDT")
            assert len(cleared) == 2 and all(o["status"] == "canceled" for o in cleared)
            assert rest_open_orders(server, bob_key) == []

            # Binance's error codes reach ccxt's exception classes
            with pytest.raises(ccxtpro.InsufficientFunds):
                await bob.create_order_ws("BTC/USDT", "limit", "sell", 1000, 61000.01)
            with pytest.raises(ccxtpro.OrderNotFound):
                await bob.cancel_order_ws("987654321", "BTC/USDT")
        finally:
            await bob.close()
            await alice.close()

    asyncio.run(scenario())


def test_one_logon_then_unsigned_orders_and_the_user_stream_on_the_same_socket(server):
    alice_ed = server.ed25519_keys["alice"]

    async def scenario():
        async with websockets.connect(ws_api_url(server)) as ws:
            c = Client(ws)
            status = await c.call("session.status")
            assert status["status"] == 200 and status["result"]["apiKey"] is None and status["result"]["authorizedSince"] is None
            logon = await c.call("session.logon", ed25519_signed(alice_ed, {}))
            assert logon["status"] == 200, logon
            assert logon["result"]["apiKey"] == alice_ed["api_key"] and logon["result"]["authorizedSince"] >= logon["result"]["connectedSince"]
            assert logon["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
            sub = await c.call("userDataStream.subscribe")
            assert sub == {"id": sub["id"], "status": 200, "result": {"subscriptionId": 0}, "rateLimits": sub["rateLimits"]}

            placed = await c.call("order.place", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                  "quantity": "0.0020", "price": "59000.00", "newClientOrderId": "mm-1", "timestamp": now_ms()})
            assert placed["status"] == 200, placed
            order = placed["result"]
            assert order["status"] == "NEW" and order["clientOrderId"] == "mm-1" and order["origQty"] == "0.00200000"
            report = await c.event(lambda e: e["event"].get("e") == "executionReport" and e["event"]["i"] == order["orderId"])
            assert report["subscriptionId"] == 0 and report["event"]["x"] == "NEW" and report["event"]["c"] == "mm-1"
            position = await c.event(lambda e: e["event"].get("e") == "outboundAccountPosition")
            assert {b["a"] for b in position["event"]["B"]} == {"BTC", "USDT"}

            status = await c.call("order.status", {"symbol": "BTCUSDT", "origClientOrderId": "mm-1", "timestamp": now_ms()})
            assert status["result"]["orderId"] == order["orderId"] and status["result"]["status"] == "NEW"
            opened = await c.call("openOrders.status", {"symbol": "BTCUSDT", "timestamp": now_ms()})
            assert order["orderId"] in {o["orderId"] for o in opened["result"]}
            canceled = await c.call("order.cancel", {"symbol": "BTCUSDT", "orderId": order["orderId"], "timestamp": now_ms()})
            assert canceled["result"]["status"] == "CANCELED" and canceled["result"]["origClientOrderId"] == "mm-1"
            report = await c.event(lambda e: e["event"].get("e") == "executionReport" and e["event"]["x"] == "CANCELED")
            assert report["event"]["i"] == order["orderId"]

            # openOrders.cancelAll: two resting orders gone in one request
            for price in ("58000.00", "58000.01"):
                r = await c.call("order.place", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                 "quantity": "0.0010", "price": price, "timestamp": now_ms()})
                assert r["status"] == 200, r
            gone = await c.call("openOrders.cancelAll", {"symbol": "BTCUSDT", "timestamp": now_ms(), "returnRateLimits": False})
            assert len(gone["result"]) >= 2 and all(o["status"] == "CANCELED" for o in gone["result"]) and "rateLimits" not in gone
            assert (await c.call("openOrders.status", {"symbol": "BTCUSDT", "timestamp": now_ms()}))["result"] == []

            account = (await c.call("account.status", {"timestamp": now_ms(), "omitZeroBalances": True}))["result"]
            assert account["accountType"] == "SPOT" and {"BTC", "USDT"} <= {b["asset"] for b in account["balances"]}
            assert (await c.call("ping"))["result"] == {}
            assert abs((await c.call("time"))["result"]["serverTime"] - now_ms()) < 5_000
            assert (await c.call("userDataStream.unsubscribe"))["result"] == {}
            out = await c.call("session.logout")
            assert out["result"]["apiKey"] is None and out["result"]["userDataStream"] is False
            refused = await c.call("order.place", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                   "quantity": "0.0010", "price": "58000.00", "timestamp": now_ms()})
            assert refused["status"] == 400 and refused["error"]["code"] == -1102 and "apiKey" in refused["error"]["msg"]

    asyncio.run(scenario())


def test_bad_frames_and_refusals_get_binance_codes_and_change_nothing(server):
    alice_ed, bob = server.ed25519_keys["alice"], server.keys["bob"]
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010", "price": "58000.00"}

    async def scenario():
        async with websockets.connect(ws_api_url(server)) as ws:
            c = Client(ws)
            seq = journal_seq(server)

            await ws.send("{not json")
            bad = json.loads(await ws.recv())
            assert bad["id"] is None and bad["status"] == 400 and bad["error"]["code"] == -1135
            await ws.send(json.dumps([1, 2]))
            assert json.loads(await ws.recv())["error"]["code"] == -1135
            unknown = await c.call("order.teleport", {})
            assert unknown["status"] == 400 and unknown["error"]["code"] == -1020 and "order.teleport" in unknown["error"]["msg"]
            not_object = await c.call("order.place", ["BTCUSDT"])
            assert not_object["error"] == {"code": -1135, "msg": "Invalid 'params' in JSON request; expected an object."}
            nested = await c.call("order.place", dict(order, quantity={"x": 1}))
            assert nested["error"]["code"] == -1135 and "'quantity'" in nested["error"]["msg"]

            # an order before logon and without a signature
            anonymous = await c.call("order.place", dict(order, timestamp=now_ms()))
            assert anonymous["error"]["code"] == -1102 and "'apiKey'" in anonymous["error"]["msg"]
            # logon: wrong signature, then an HMAC key (Binance: Ed25519 only)
            forged = ed25519_signed(alice_ed, {})
            forged["timestamp"] += 1  # the signature no longer matches the params
            wrong = await c.call("session.logon", forged)
            assert wrong["status"] == 400 and wrong["error"]["code"] == -1022
            hmac_logon = await c.call("session.logon", hmac_signed(bob, {}))
            assert hmac_logon["status"] == 401 and hmac_logon["error"]["code"] == -2015 and "Ed25519" in hmac_logon["error"]["msg"]
            assert (await c.call("session.status"))["result"]["apiKey"] is None
            assert (await c.call("userDataStream.subscribe"))["error"]["code"] == -1002

            # signed per request: a replay, an expired timestamp, a parameter REST does not read
            signed = hmac_signed(bob, dict(order, recvWindow=10000))
            first = await c.call("order.test", signed)
            assert first["status"] == 200 and first["result"] == {}
            replay = await c.call("order.test", signed)
            assert replay["error"]["code"] == -1022 and "replay" in replay["error"]["msg"]
            stale = await c.call("order.place", hmac_signed(bob, dict(order, timestamp=now_ms() - 120_000)))
            assert stale["error"]["code"] == -1021
            stray = await c.call("order.place", hmac_signed(bob, dict(order, colour="red")))
            assert stray["error"]["code"] == -1104 and "'colour'" in stray["error"]["msg"]
            too_precise = await c.call("order.place", hmac_signed(bob, dict(order, price="58000.0000001")))
            assert too_precise["error"]["code"] == -1111
            await ws.send(json.dumps({"id": {"x": 1}, "method": "ping"}))
            bad_id = await c.response(None)
            assert bad_id["status"] == 400 and bad_id["error"]["code"] == -1135 and "'id'" in bad_id["error"]["msg"]
            assert journal_seq(server) == seq, "a refused request journaled a command"

            await ws.send(b"\x00binary")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 1003

    asyncio.run(scenario())


def test_revoking_the_logged_on_key_stops_the_next_request(server):
    """A key revoked (through the identity service, on the server's own database) after
    `session.logon` fails on the logged-on connection's very next request (or the connection is already closed
    for it, api/access.py), although the session
    answers from its last check while the identity database has not changed (PRAGMA data_version)."""
    from ringfence.identity import accounts, api_keys, second_factor

    from .test_ed25519_keys import PASSWORD, _identity_ctx, _user_with_totp

    from ringfence.api.access import REVOKED_REASON
    from ringfence.api.auth import IdentityAuthenticator

    ctx, _ = _identity_ctx(server)
    watcher = IdentityAuthenticator(ctx)
    email = "ws-api-revoke@example.com"
    totp = _user_with_totp(ctx, email)
    token = accounts.login(ctx, email, PASSWORD, ip="127.0.0.1").session.token
    token = second_factor.complete_login(ctx, token, method="totp", value=totp.now()).token  # a fresh second factor
    private = Ed25519PrivateKey.generate()
    public = base64.b64encode(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    created = api_keys.register_ed25519_key(ctx, token, public, scopes=("read", "trade"))
    entry = {"api_key": created.api_key,
             "private_key": base64.b64encode(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                                   serialization.NoEncryption())).decode()}

    async def scenario():
        async with websockets.connect(ws_api_url(server)) as ws:
            c = Client(ws)
            assert (await c.call("session.logon", ed25519_signed(entry, {})))["status"] == 200
            for _ in range(3):  # checked once, then answered from the session while the identity database is unchanged
                ok = await c.call("openOrders.status", {"symbol": "BTCUSDT", "timestamp": now_ms()})
                assert ok["status"] == 200 and ok["result"] == []
            before = watcher.change_version()
            api_keys.revoke_api_key(ctx, token, created.key_id)
            assert watcher.change_version() != before  # what tells the server's sessions to check again
            # the very next request is refused, or (once the server's access watch has seen the revocation,
            # api/access.py) the connection is already closed for it
            try:
                gone = await c.call("openOrders.status", {"symbol": "BTCUSDT", "timestamp": now_ms()})
                assert gone["status"] == 401 and gone["error"]["code"] == -2015 and "revoked" in gone["error"]["msg"]
                await asyncio.wait_for(ws.recv(), 5)
                raise AssertionError("the connection logged on with the revoked key stayed open")
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1008, REVOKED_REASON), closed
        async with websockets.connect(ws_api_url(server)) as ws:
            again = await Client(ws).call("session.logon", ed25519_signed(entry, {}))
            assert again["status"] == 401 and again["error"]["code"] == -2015

    asyncio.run(scenario())
