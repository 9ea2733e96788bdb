"""WebSocket streams with a real client (`websockets`): the book rebuilt from a REST snapshot plus
depth diffs equals the engine's own book exactly; trades, klines, tickers and the user data stream
arrive in Binance's shape. Random orders are seeded; the seed is printed."""

import asyncio
import json
import os
import random
import time
from decimal import Decimal

import httpx
import pytest
import websockets

from .test_rest import signed_query

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False


def ws_url(server, path):
    return server.base.replace("http://", "ws://") + path


async def place(http, key, secret, params):
    body = signed_query(secret, params)
    return await http.post("/api/v3/order", content=body, headers={"X-MBX-APIKEY": key, "Content-Type": "application/x-www-form-urlencoded"})


def test_book_rebuilt_from_snapshot_and_diffs_equals_engine(server):
    seed = int(os.environ.get("RINGFENCE_WS_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"ws book seed={seed}")
    rng = random.Random(seed)

    async def scenario():
        alice, bob = server.keys["alice"], server.keys["bob"]
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
            async with websockets.connect(ws_url(server, "/ws/ethusdt@depth")) as ws:
                buffered = []

                async def reader():
                    while True:
                        buffered.append(json.loads(await ws.recv()))

                task = asyncio.create_task(reader())
                await asyncio.sleep(0.2)
                # orders from two accounts: resting, crossing, cancelled
                placed = []
                for i in range(40):
                    who = alice if rng.random() < 0.5 else bob
                    side = rng.choice(["BUY", "SELL"])
                    ticks = rng.randrange(-12, 13)
                    price = Decimal("3000.00") + Decimal(ticks) * Decimal("0.01")
                    qty = Decimal(rng.randrange(1, 30)) * Decimal("0.0100")
                    r = await place(http, who["api_key"], who["api_secret"], {"symbol": "ETHUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC", "quantity": str(qty), "price": str(price)})
                    assert r.status_code == 200, r.text
                    if r.json()["status"] in ("NEW", "PARTIALLY_FILLED"):
                        placed.append((who, r.json()["orderId"]))
                    if i == 15:
                        snapshot = (await http.get("/api/v3/depth", params={"symbol": "ETHUSDT", "limit": 5000})).json()
                for who, order_id in placed[::3]:
                    q = signed_query(who["api_secret"], {"symbol": "ETHUSDT", "orderId": str(order_id)})
                    await http.delete("/api/v3/order?" + q, headers={"X-MBX-APIKEY": who["api_key"]})
                engine_book = (await http.get("/v1/book", params={"symbol": "ETHUSDT", "limit": 5000})).json()
                # the last diffs are on their way: wait for them (a fixed 0.5 s was short on a loaded CI
                # machine), up to a deadline; the comparison below is the same either way
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and rebuilt(snapshot, buffered)[:2] != (engine_book["bids"], engine_book["asks"]):
                    await asyncio.sleep(0.1)
                task.cancel()
        return snapshot, buffered, engine_book

    snapshot, diffs, engine_book = asyncio.run(scenario())
    assert diffs, "no depth diffs arrived"
    rebuilt_bids, rebuilt_asks, applied = rebuilt(snapshot, diffs)
    assert applied > 0
    assert rebuilt_bids == engine_book["bids"]
    assert rebuilt_asks == engine_book["asks"]


def rebuilt(snapshot: dict, diffs: list[dict]) -> tuple[list, list, int]:
    """The book from a REST snapshot plus the depth diffs after it (Binance's recipe): bids, asks and
    how many diffs were applied."""
    bids = {p: q for p, q in snapshot["bids"]}
    asks = {p: q for p, q in snapshot["asks"]}
    last = snapshot["lastUpdateId"]
    applied = 0
    for d in diffs:
        assert d["e"] == "depthUpdate" and d["s"] == "ETHUSDT"
        if d["u"] <= last:
            continue
        assert d["U"] <= last + 1 <= d["u"], "a gap in the diff stream"
        for side, book in (("b", bids), ("a", asks)):
            for p, q in d[side]:
                if Decimal(q) == 0:
                    book.pop(p, None)
                else:
                    book[p] = q
        last = d["u"]
        applied += 1
    rebuilt_bids = sorted(bids.items(), key=lambda kv: -Decimal(kv[0]))
    rebuilt_asks = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))
    return [list(x) for x in rebuilt_bids], [list(x) for x in rebuilt_asks], applied


def test_trade_kline_ticker_and_user_streams(server):
    alice, bob = server.keys["alice"], server.keys["bob"]

    async def scenario():
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
            listen = (await http.post("/api/v3/userDataStream", headers={"X-MBX-APIKEY": bob["api_key"]})).json()["listenKey"]
            r = await http.put("/api/v3/userDataStream", params={"listenKey": listen}, headers={"X-MBX-APIKEY": bob["api_key"]})
            assert r.status_code == 200
            streams = "aaplxusdt@trade/aaplxusdt@kline_1m/aaplxusdt@ticker/" + listen
            got = []
            async with websockets.connect(ws_url(server, "/stream?streams=" + streams)) as ws:
                await asyncio.sleep(0.2)
                r = await place(http, bob["api_key"], bob["api_secret"], {"symbol": "AAPLXUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC", "quantity": "1.00", "price": "190.01"})
                assert r.status_code == 200, r.text
                r = await place(http, alice["api_key"], alice["api_secret"], {"symbol": "AAPLXUSDT", "side": "BUY", "type": "MARKET", "quantity": "1.00"})
                assert r.status_code == 200, r.text
                def arrived() -> bool:  # the fill's trade, kline, ticker and bob's TRADE report
                    kinds = {m["stream"].split("@")[-1] if "@" in m["stream"] else m["data"].get("x") for m in got}
                    return {"trade", "kline_1m", "ticker", "TRADE"} <= kinds

                # then a second of quiet; a loaded CI machine can hold the server back for longer than
                # that (with a fixed 5 s and any 1 s quiet this could stop early), so quiet counts only once they are in
                deadline = time.time() + 30
                while time.time() < deadline:
                    try:
                        got.append(json.loads(await asyncio.wait_for(ws.recv(), 1)))
                    except asyncio.TimeoutError:
                        if arrived():
                            break
                # subscribe/unsubscribe messages on the same connection
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 2))
            bad = await http.put("/api/v3/userDataStream", params={"listenKey": "nope"}, headers={"X-MBX-APIKEY": bob["api_key"]})
        return got, reply, bad

    got, reply, bad = asyncio.run(scenario())
    by_stream = {}
    for message in got:
        by_stream.setdefault(message["stream"].split("@")[-1] if "@" in message["stream"] else "user", []).append(message["data"])
    trade = by_stream["trade"][0]
    assert trade["e"] == "trade" and trade["p"] == "190.010000" and trade["q"] == "1.0000" and trade["m"] is False
    assert by_stream["kline_1m"][0]["k"]["c"] == "190.010000"
    assert by_stream["ticker"][-1]["c"] == "190.010000"
    user = by_stream["user"]
    kinds = [(m["e"], m.get("x"), m.get("X")) for m in user]
    assert ("executionReport", "NEW", "NEW") in kinds
    assert ("executionReport", "TRADE", "FILLED") in kinds
    assert any(m["e"] == "outboundAccountPosition" and {b["a"] for b in m["B"]} >= {"AAPLX", "USDT"} for m in user)
    assert reply["id"] == 7 and len(reply["result"]) == 4
    assert bad.json()["code"] == -1125


def test_unknown_stream_and_bad_messages(server):
    async def scenario():
        async with websockets.connect(ws_url(server, "/ws/nosuch@depth")) as ws:
            first = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        async with websockets.connect(ws_url(server, "/ws")) as ws:
            await ws.send("not json")
            bad = json.loads(await ws.recv())
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@nonsense"], "id": 1}))
            refused = json.loads(await ws.recv())
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 2}))
            ok = json.loads(await ws.recv())
        return first, bad, refused, ok

    first, bad, refused, ok = asyncio.run(scenario())
    assert "unknown stream" in first["error"]["msg"]
    assert bad["error"]["code"] == 3
    assert refused["error"]["code"] == 2 and refused["id"] == 1
    assert ok == {"result": None, "id": 2}


def test_a_client_past_its_request_budget_is_closed_with_1008_whatever_the_server_speed(server):
    """A market-stream connection may send INCOMING_BURST requests at once, then INCOMING_PER_S a
    second (Binance allows 5-10): a client that sends 300 requests back to back gets answers to about
    the first INCOMING_BURST of them, then 1008 "too many messages". The budget is per connection: a
    new connection from the same address is answered at once, and a client within the rate is never
    closed."""
    from ringfence.api.ws import INCOMING_BURST, INCOMING_PER_S

    request = json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7})

    async def flood():
        answered = 0
        async with websockets.connect(ws_url(server, "/ws")) as ws:
            t0 = time.monotonic()
            for _ in range(300):
                await ws.send(request)
            try:
                while True:
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"result": [], "id": 7}
                    answered += 1
            except websockets.ConnectionClosed as closed:
                return answered, closed.rcvd, time.monotonic() - t0

    async def polite():
        async with websockets.connect(ws_url(server, "/ws")) as ws:
            for i in range(INCOMING_BURST + 5):  # more requests than the burst, spread over time
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"result": [], "id": i}
                if i >= INCOMING_BURST // 2:
                    await asyncio.sleep(1.5 / INCOMING_PER_S)
            return True

    answered, rcvd, seconds = asyncio.run(flood())
    print(f"flood: {answered} answered in {seconds:.2f} s, then {rcvd}")
    assert rcvd is not None and (rcvd.code, rcvd.reason) == (1008, "too many messages"), rcvd
    assert INCOMING_BURST <= answered <= INCOMING_BURST + int(seconds * INCOMING_PER_S) + 1, (answered, seconds)
    assert asyncio.run(polite())
