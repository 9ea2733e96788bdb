"""Perpetuals in the running exchange: a real `ringfence serve --demo` process, driven with httpx over
the Binance USDⓈ-M endpoints and with the unmodified ccxt `binanceusdm` class."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from api.conftest import Server  # noqa: E402  (tests/api/conftest.py: a real server on a free port)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("perps") / "data", chains=False)
    yield srv
    srv.stop()


class Client:
    def __init__(self, server: Server, account: str) -> None:
        self.key = server.keys[account]["api_key"]
        self.secret = server.keys[account]["api_secret"]
        self.http = httpx.Client(base_url=server.base, timeout=10)
        self.last_ms = 0

    def _signed(self, params: dict) -> str:
        # a new millisecond for every request: two identical requests signed in the same millisecond are
        # the same bytes, which the server's replay guard refuses (-1022) — as it should
        self.last_ms = max(int(time.time() * 1000), self.last_ms + 1)
        full = dict(params, timestamp=str(self.last_ms), recvWindow="10000")
        payload = urlencode(full)
        return payload + "&signature=" + hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()

    def call(self, method: str, path: str, params: dict | None = None) -> httpx.Response:
        headers = {"X-MBX-APIKEY": self.key}
        if method == "GET" or method == "DELETE":
            return self.http.request(method, path + "?" + self._signed(params or {}), headers=headers)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self.http.request(method, path, content=self._signed(params or {}), headers=headers)


def ok(r: httpx.Response) -> object:
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def spot_usdt(c: Client) -> Decimal:
    bal = ok(c.call("GET", "/api/v3/account"))["balances"]  # type: ignore[index]
    return sum((Decimal(b["free"]) for b in bal if b["asset"] == "USDT"), Decimal(0))


def test_exchange_info_lists_the_perpetuals(server):
    info = httpx.get(server.base + "/fapi/v1/exchangeInfo").json()
    by = {s["symbol"]: s for s in info["symbols"]}
    assert {"BTCUSDT", "ETHUSDT"} <= set(by)
    btc = by["BTCUSDT"]
    assert btc["contractType"] == "PERPETUAL" and btc["marginAsset"] == "USDT" and btc["status"] == "TRADING"
    assert btc["internalSymbol"] == "BTCUSDTPERP"  # never the spot BTCUSDT
    tick = next(f for f in btc["filters"] if f["filterType"] == "PRICE_FILTER")["tickSize"]
    assert Decimal(tick) == Decimal("0.1")


def test_transfer_trade_positions_over_http(server):
    alice, bob = Client(server, "alice"), Client(server, "bob")
    acct = ok(alice.call("GET", "/fapi/v2/account"))
    wallet0 = Decimal(acct["totalWalletBalance"])  # type: ignore[index]
    assert wallet0 >= Decimal("20000")  # the demo funded it
    # collateral moves only by an explicit transfer
    r = ok(alice.call("POST", "/sapi/v1/asset/transfer", {"type": "MAIN_UMFUTURE", "asset": "USDT", "amount": "1000.5"}))
    assert r["tranId"] > 0  # type: ignore[index]
    assert Decimal(ok(alice.call("GET", "/fapi/v3/account"))["totalWalletBalance"]) == wallet0 + Decimal("1000.5")  # type: ignore[index]
    bad = alice.call("POST", "/sapi/v1/asset/transfer", {"type": "UMFUTURE_MAIN", "asset": "USDT", "amount": "99999999"})
    assert bad.status_code == 400 and bad.json()["code"] == -2019
    bad = alice.call("POST", "/sapi/v1/asset/transfer", {"type": "MAIN_UMFUTURE", "asset": "USDT", "amount": "1.0000001"})
    assert bad.status_code == 400 and bad.json()["code"] == -1111 and "'amount'" in bad.json()["msg"], bad.text
    # too many decimals is -1111 on every endpoint, as on /api/v3/order
    bad = alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                "quantity": "0.000000001", "price": "60000"})
    assert bad.status_code == 400 and bad.json()["code"] == -1111 and "'quantity'" in bad.json()["msg"], bad.text
    # leverage and margin type
    lev = ok(alice.call("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": "10"}))
    assert lev["leverage"] == 10 and lev["symbol"] == "BTCUSDT"  # type: ignore[index]
    bad = alice.call("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": "126"})
    assert bad.status_code == 400
    assert ok(bob.call("POST", "/fapi/v1/marginType", {"symbol": "BTCUSDT", "marginType": "ISOLATED"}))["code"] == 200  # type: ignore[index]
    # bob rests a sell inside the maker's spread; alice buys it with a limit, then market-buys more
    ask = ok(bob.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC",
                                                 "quantity": "0.010", "price": "61000.1"}))
    assert ask["status"] == "NEW"  # type: ignore[index]
    buy = ok(alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                   "quantity": "0.010", "price": "61000.1"}))
    assert buy["status"] == "FILLED" and Decimal(buy["avgPrice"]) == Decimal("61000.1")  # type: ignore[index]
    pos = ok(alice.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]  # type: ignore[index]
    assert Decimal(pos["positionAmt"]) == Decimal("0.01") and Decimal(pos["entryPrice"]) == Decimal("61000.1")
    assert Decimal(pos["positionInitialMargin"]) == Decimal("61.0001")  # 610.001 at 10x
    assert Decimal(pos["markPrice"]) > 0 and Decimal(pos["liquidationPrice"]) < Decimal("61000")
    bpos = ok(bob.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]  # type: ignore[index]
    assert Decimal(bpos["positionAmt"]) == Decimal("-0.01") and bpos["marginType"] == "isolated"
    # isolated margin added and removed
    r = ok(bob.call("POST", "/fapi/v1/positionMargin", {"symbol": "BTCUSDT", "amount": "5", "type": "1"}))
    assert r["code"] == 200  # type: ignore[index]
    assert bob.call("POST", "/fapi/v1/positionMargin", {"symbol": "BTCUSDT", "amount": "6", "type": "2"}).status_code == 400
    # reduce-only larger than the position is refused with Binance's -2022, and changes nothing
    bad = alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.020", "reduceOnly": "true"})
    assert bad.status_code == 400 and bad.json()["code"] == -2022
    # an order too large for the margin: -2019
    bad = alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "100", "price": "60000"})
    assert bad.status_code == 400 and bad.json()["code"] == -2019, bad.text
    # a resting order, then cancelled
    rest = ok(alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "60000"}))
    held = Decimal(ok(alice.call("GET", "/fapi/v2/account"))["totalOpenOrderInitialMargin"])  # type: ignore[index]
    assert held > 0
    gone = ok(alice.call("DELETE", "/fapi/v1/order", {"symbol": "BTCUSDT", "orderId": str(rest["orderId"])}))  # type: ignore[index]
    assert gone["status"] == "CANCELED"  # type: ignore[index]
    # close with a reduce-only market order: the position is flat and realised PnL is in the wallet
    closed = ok(alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010", "reduceOnly": "true"}))
    assert closed["status"] == "FILLED"  # type: ignore[index]
    assert ok(alice.call("GET", "/fapi/v3/positionRisk")) == []
    # and back to spot
    before = spot_usdt(alice)
    ok(alice.call("POST", "/sapi/v1/asset/transfer", {"type": "UMFUTURE_MAIN", "asset": "USDT", "amount": "100"}))
    assert spot_usdt(alice) - before == Decimal("100")


def make_usdm(base: str, api_key: str, secret: str):  # type: ignore[no-untyped-def]
    import ccxt

    ex = ccxt.binanceusdm({"apiKey": api_key, "secret": secret,
                           "options": {"fetchCurrencies": False, "adjustForTimeDifference": False, "fetchMargins": False}})
    for name, url in list(ex.urls["api"].items()):
        if isinstance(url, str):
            ex.urls["api"][name] = base.rstrip("/") + urlsplit(url).path
    return ex


async def watching(ex, message_hash: str, watch) -> None:  # type: ignore[no-untyped-def]
    """Until ccxt pro waits for `message_hash` on a connected user data stream, so the next event
    resolves it (or the `watch` task has ended: awaiting it tells how). The server subscribes a
    `/private/ws?listenKey=` connection as it accepts it, but ccxt first posts for the listenKey and
    then connects: a fixed sleep after `watch_orders` (0.3 s) let an order go out before the
    connection on a loaded machine, and its event was never seen."""
    import asyncio

    deadline = time.monotonic() + 30
    while not watch.done() and not any(c.connected.done() and message_hash in c.futures for c in ex.clients.values()):
        assert time.monotonic() < deadline, f"ccxt is not waiting for {message_hash} on a connected stream: {[(u, list(c.futures)) for u, c in ex.clients.items()]}"
        await asyncio.sleep(0.01)


def test_ccxt_binanceusdm_loads_transfers_trades_and_reads_positions(server):
    alice = make_usdm(server.base, server.keys["alice"]["api_key"], server.keys["alice"]["api_secret"])
    bob = make_usdm(server.base, server.keys["bob"]["api_key"], server.keys["bob"]["api_secret"])
    markets = alice.load_markets()
    m = markets["ETH/USDT:USDT"]
    assert m["swap"] and m["linear"] and m["id"] == "ETHUSDT" and m["settle"] == "USDT"
    t = alice.transfer("USDT", 50, "spot", "swap")
    assert t["id"]
    alice.set_leverage(5, "ETH/USDT:USDT")
    bob.load_markets()
    bob.create_order("ETH/USDT:USDT", "limit", "sell", 0.5, 3000.01)
    o = alice.create_order("ETH/USDT:USDT", "limit", "buy", 0.5, 3000.01)
    assert o["status"] == "closed" and o["filled"] == 0.5
    positions = [p for p in alice.fetch_positions(["ETH/USDT:USDT"]) if p["contracts"]]
    assert len(positions) == 1
    p = positions[0]
    assert p["side"] == "long" and p["contracts"] == 0.5 and p["entryPrice"] == 3000.01
    assert p["marginMode"] == "cross" and p["leverage"] == 5
    bal = alice.fetch_balance()
    assert bal["USDT"]["total"] > 0 and bal["USDT"]["used"] > 0
    closed = alice.create_order("ETH/USDT:USDT", "market", "sell", 0.5, params={"reduceOnly": True})
    assert closed["status"] == "closed"
    assert not [p for p in alice.fetch_positions(["ETH/USDT:USDT"]) if p["contracts"]]


def _total_wallet(c: Client) -> Decimal:
    return Decimal(ok(c.call("GET", "/fapi/v2/account"))["totalWalletBalance"])  # type: ignore[index]


def test_ccxt_binanceusdm_market_data_history_and_funding_match_the_engine(server):
    """Every everyday ccxt call of a perpetual, each number checked against the engine's own state
    (its book at /v1/book, its wallet at /fapi/v2/account, its perpetual at /v1/risk) or against
    the fills this test made."""
    S = "BTC/USDT:USDT"
    alice = make_usdm(server.base, server.keys["alice"]["api_key"], server.keys["alice"]["api_secret"])
    bob = make_usdm(server.base, server.keys["bob"]["api_key"], server.keys["bob"]["api_secret"])
    alice.load_markets()
    bob.load_markets()
    raw_alice = Client(server, "alice")
    wallet0 = _total_wallet(raw_alice)
    since = int(time.time() * 1000) - 1
    # bob rests a sell inside the maker's spread; alice takes it, then sells it back to the maker's bid
    bob.create_order(S, "limit", "sell", 0.002, 61000.1)
    bought = alice.create_order(S, "limit", "buy", 0.002, 61000.1)
    assert bought["status"] == "closed"
    best_bid = Decimal(httpx.get(server.base + "/v1/book", params={"symbol": "BTCUSDTPERP"}).json()["bids"][0][0])
    sold = alice.create_order(S, "market", "sell", 0.002, params={"reduceOnly": True})
    assert sold["status"] == "closed" and Decimal(str(sold["average"])) == best_bid
    # fetchMyTrades (/fapi/v1/userTrades): both fills, with their realised PnL and fees
    mine = alice.fetch_my_trades(S, since=since)
    assert [(t["side"], t["amount"], Decimal(str(t["price"]))) for t in mine] == [("buy", 0.002, Decimal("61000.1")), ("sell", 0.002, best_bid)]
    assert [t["order"] for t in mine] == [bought["id"], sold["id"]]
    pnl = (best_bid - Decimal("61000.1")) * Decimal("0.002")
    assert Decimal(mine[0]["info"]["realizedPnl"]) == 0 and Decimal(mine[1]["info"]["realizedPnl"]) == pnl
    assert all(t["fee"]["currency"] == "USDT" and t["fee"]["cost"] > 0 and t["takerOrMaker"] == "taker" for t in mine)
    fees = sum(Decimal(t["info"]["commission"]) for t in mine)
    # fetchLedger (/fapi/v1/income): the two commissions and the realised PnL, which explain the wallet to the unit
    ledger = alice.fetch_ledger("USDT", since=since)
    assert sorted((e["type"], e["info"]["incomeType"]) for e in ledger) == [("commission", "COMMISSION"), ("commission", "COMMISSION"),
                                                                             ("trade", "REALIZED_PNL")]
    assert {e["referenceId"] for e in ledger} == {t["id"] for t in mine}
    income = sum(Decimal(e["info"]["income"]) for e in ledger)
    assert income == pnl - fees
    assert _total_wallet(raw_alice) - wallet0 == income
    transfers = ok(raw_alice.call("GET", "/fapi/v1/income", {"incomeType": "TRANSFER"}))
    assert transfers and all(r["incomeType"] == "TRANSFER" and r["asset"] == "USDT" for r in transfers)  # type: ignore[union-attr]
    bad = raw_alice.call("GET", "/fapi/v1/income", {"incomeType": "NOPE"})
    assert bad.status_code == 400 and "incomeType" in bad.json()["msg"]
    # fetchTrades (aggTrades by default, and /fapi/v1/trades): the same fills under the same ids
    public = alice.fetch_trades(S, limit=1000)
    assert [t["id"] for t in public[-2:]] == [t["id"] for t in mine]
    assert [t["id"] for t in alice.fetch_trades(S, params={"fetchTradesMethod": "fapiPublicGetTrades"})][-2:] == [t["id"] for t in mine]
    assert public[-1]["side"] == "sell" and public[-2]["side"] == "buy"
    # fetchOHLCV (/fapi/v1/klines): the last candle closes at the last trade; volumes add up to the trades
    candles = alice.fetch_ohlcv(S, "1m", limit=1000)
    assert Decimal(str(candles[-1][4])) == best_bid
    assert sum(Decimal(str(c[5])) for c in candles) == sum(Decimal(str(t["amount"])) for t in public)
    # fetchOrderBook (/fapi/v1/depth) is the engine's book; fetchBidsAsks and fetchTicker agree with it
    book = alice.fetch_order_book(S, 5)
    engine_book = httpx.get(server.base + "/v1/book", params={"symbol": "BTCUSDTPERP"}).json()
    assert [[Decimal(str(p)), Decimal(str(q))] for p, q in book["bids"]] == [[Decimal(p), Decimal(q)] for p, q in engine_book["bids"][:5]]
    assert [[Decimal(str(p)), Decimal(str(q))] for p, q in book["asks"]] == [[Decimal(p), Decimal(q)] for p, q in engine_book["asks"][:5]]
    ba = alice.fetch_bids_asks([S])[S]
    assert (ba["bid"], ba["ask"]) == (book["bids"][0][0], book["asks"][0][0])
    ticker = alice.fetch_ticker(S)
    assert ticker["symbol"] == S and Decimal(str(ticker["last"])) == best_bid and ticker["bid"] is None  # USDⓈ-M: no book fields
    assert set(alice.fetch_tickers()) == {"BTC/USDT:USDT", "ETH/USDT:USDT"}
    assert Decimal(str(alice.fetch_last_prices([S])[S]["price"])) == best_bid
    # fetchFundingRate / fetchMarkPrice (/fapi/v1/premiumIndex) and the history (/fapi/v1/fundingRate)
    risk = {m["symbol"]: m for m in httpx.get(server.base + "/v1/risk").json()["markets"]}["BTCUSDT"]
    fr = alice.fetch_funding_rate(S)
    assert fr["fundingTimestamp"] == risk["nextFundingTime"] and fr["fundingRate"] == float(risk["lastFundingRate"])
    assert fr["interestRate"] == 0.0001 and Decimal(str(fr["markPrice"])) == Decimal(risk["markPrice"])
    position_mark = ok(raw_alice.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]["markPrice"]  # type: ignore[index]
    assert Decimal(str(alice.fetch_mark_price(S)["markPrice"])) == Decimal(position_mark)
    assert alice.fetch_funding_rate_history(S) == []  # no round yet: the demo's interval is 8 h (tests/derivatives/test_futures_history.py)
    assert alice.fetch_funding_history(S) == []
    tiers = alice.fetch_leverage_tiers([S])[S]
    assert tiers[0]["maxLeverage"] == 125 and tiers[0]["maxNotional"] == 50_000
    oi = httpx.get(server.base + "/fapi/v1/openInterest", params={"symbol": "BTCUSDT"}).json()
    assert oi["openInterest"] == risk["openInterest"]
    # validation at the edge: unknown symbols and malformed parameters name what is wrong
    assert httpx.get(server.base + "/fapi/v1/depth", params={"symbol": "NOPE"}).json()["code"] == -1121
    r = httpx.get(server.base + "/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "7m"}).json()
    assert r["code"] == -1100 and "interval" in r["msg"]
    r = httpx.get(server.base + "/fapi/v1/trades", params={"symbol": "BTCUSDT", "limit": "0"}).json()
    assert r["code"] == -1100 and "limit" in r["msg"]


def test_futures_user_stream_through_ccxt_pro(server):
    """listenKey and the futures user data stream: ccxt pro's watchOrders and watchBalance."""
    import asyncio

    import ccxt.pro

    S = "ETH/USDT:USDT"
    raw = Client(server, "alice")
    headers = {"X-MBX-APIKEY": raw.key}
    key = httpx.post(server.base + "/fapi/v1/listenKey", headers=headers).json()["listenKey"]
    assert httpx.post(server.base + "/fapi/v1/listenKey", headers=headers).json()["listenKey"] == key  # one per account
    assert httpx.put(server.base + "/fapi/v1/listenKey", headers=headers).json()["listenKey"] == key
    assert httpx.put(server.base + "/fapi/v1/listenKey", params={"listenKey": "x" * 60}, headers=headers).json()["code"] == -1125

    async def run() -> None:
        ex = ccxt.pro.binanceusdm({"apiKey": raw.key, "secret": raw.secret,
                                   "options": {"fetchCurrencies": False, "adjustForTimeDifference": False, "fetchMargins": False}})
        for name, url in list(ex.urls["api"].items()):
            if isinstance(url, str):
                ex.urls["api"][name] = server.base + urlsplit(url).path
        ex.urls["api"]["ws"]["linear"] = server.base.replace("http://", "ws://") + "/ws"  # ccxt opens /private/ws?listenKey=
        try:
            await ex.load_markets()
            orders = asyncio.create_task(ex.watch_orders(S))
            await watching(ex, f"orders:{S}", orders)
            placed = await ex.create_order(S, "limit", "buy", 0.01, 2500)
            seen = await asyncio.wait_for(orders, 10)
            assert [(o["id"], o["status"], o["amount"], o["price"], o["symbol"]) for o in seen] == [(placed["id"], "open", 0.01, 2500.0, S)]
            orders = asyncio.create_task(ex.watch_orders(S))
            await watching(ex, f"orders:{S}", orders)
            await ex.cancel_order(placed["id"], S)
            seen = await asyncio.wait_for(orders, 10)
            assert [(o["id"], o["status"]) for o in seen] == [(placed["id"], "canceled")]
            # a fill: TRADE with its fee in the margin asset, then FILLED; closed again reduce-only
            orders = asyncio.create_task(ex.watch_orders(S))
            await watching(ex, f"orders:{S}", orders)
            taken = await ex.create_order(S, "market", "buy", 0.01)
            seen = await asyncio.wait_for(orders, 10)
            mine = [o for o in seen if o["id"] == taken["id"]]
            assert mine and mine[-1]["status"] == "closed" and mine[-1]["filled"] == 0.01
            assert mine[-1]["fee"]["currency"] == "USDT" and mine[-1]["fee"]["cost"] > 0
            await ex.create_order(S, "market", "sell", 0.01, params={"reduceOnly": True})
            # the close's ACCOUNT_UPDATE (m ORDER) can come after its HTTP answer, and then it, not the
            # transfer's, resolved the balance watch below (0.3 s of sleep hid that unless loaded): wait
            # until ccxt has the wallet the close left (each fill pays a fee, so it differs from the last)
            closed = _total_wallet(raw)
            deadline = time.monotonic() + 30
            while str(ex.balance.get("linear", {}).get("USDT", {}).get("total")) not in (str(closed), str(float(closed))):
                assert time.monotonic() < deadline, ("the close's ACCOUNT_UPDATE never reached ccxt", closed, ex.balance.get("linear"))
                await asyncio.sleep(0.05)
            # a transfer from spot changes the futures wallet: ACCOUNT_UPDATE (m DEPOSIT) -> watchBalance
            balance = asyncio.create_task(ex.watch_balance())
            await watching(ex, "linear:balance", balance)  # ccxt's type for this account's USDⓈ-M stream
            await ex.transfer("USDT", 1.5, "spot", "swap")
            bal = await asyncio.wait_for(balance, 10)
            assert Decimal(str(bal["USDT"]["total"])) == _total_wallet(raw)
            assert bal["info"]["a"]["m"] == "DEPOSIT"
        finally:
            await ex.close()

    asyncio.run(run())
    # the spot stream carries spot orders only: a perpetual order placed first never reaches it
    from websockets.sync.client import connect

    spot_key = httpx.post(server.base + "/api/v3/userDataStream", headers=headers).json()["listenKey"]
    assert httpx.put(server.base + "/fapi/v1/listenKey", params={"listenKey": spot_key}, headers=headers).json()["code"] == -1125
    with connect(server.base.replace("http://", "ws://") + "/ws/" + spot_key) as ws:
        perp = ok(raw.call("POST", "/fapi/v1/order", {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.010", "price": "2500"}))
        spot = ok(raw.call("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                                     "quantity": "0.001", "price": "60000"}))
        first = json.loads(ws.recv(timeout=10))
        assert (first["e"], first["s"], first["i"]) == ("executionReport", "BTCUSDT", spot["orderId"])  # type: ignore[index]
    ok(raw.call("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDT", "orderId": str(perp["orderId"])}))  # type: ignore[index]
    ok(raw.call("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": str(spot["orderId"])}))  # type: ignore[index]
    assert httpx.delete(server.base + "/fapi/v1/listenKey", headers=headers).json() == {}
    assert httpx.put(server.base + "/fapi/v1/listenKey", headers=headers).json()["code"] == -1125


def test_risk_page_shows_funds_open_interest_and_positions(server):
    from playwright.sync_api import sync_playwright

    view = httpx.get(server.base + "/v1/risk").json()
    fund = next(s for s in view["segments"] if s["segment"] == "derivatives")["insurance_fund"][0]
    btc = next(m for m in view["markets"] if m["symbol"] == "BTCUSDT")
    assert Decimal(btc["openInterest"]) > 0 and view["positions"] >= 1 and view["nearLiquidation"]
    # public: no owners, and nothing exact enough to work out an account's balance (the security review did,
    # from size, entry, maintenance margin and the exact ratio)
    assert all(set(p) == {"symbol", "side", "notionalApprox", "markPrice", "marginType", "marginRatioBand"} for p in view["nearLiquidation"])
    assert all(len(p["notionalApprox"].replace(".", "").strip("0")) <= 2 for p in view["nearLiquidation"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            page = browser.new_page()
            page.goto(server.base + "/risk")
            page.wait_for_selector("#markets tbody tr")
            rows = page.locator("#markets tbody tr")
            assert rows.count() == len(view["markets"])
            btc_row = page.locator("#markets tbody tr", has_text="BTCUSDT").locator("td")
            assert btc_row.nth(3).inner_text() == btc["openInterest"]
            assert page.locator("#segments tbody tr", has_text="derivatives").inner_text().endswith(f"{fund['balance']} {fund['asset']}")
            assert page.locator("#near-liquidation tbody tr").count() == min(20, view["positions"])
            assert page.locator("#markets tbody tr td").nth(7).inner_text().count(":") == 2  # the funding countdown
        finally:
            browser.close()


def test_futures_risk_command_prints_whole_tables_when_piped(server):
    """`ringfence futures risk` against the live node, its output captured (a pipe): every perpetual's
    row is there with its open interest uncut (rich would cut tables to 80 columns and '…')."""
    import os
    import subprocess

    view = httpx.get(server.base + "/v1/risk").json()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    out = subprocess.run([sys.executable, "-m", "ringfence.cli", "futures", "risk", "--url", server.base],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout, out.stdout
    for m in view["markets"]:
        row = next(line for line in out.stdout.splitlines() if f" {m['symbol']} " in line)
        assert f" {format(Decimal(m['openInterest']).normalize(), 'f')} " in row and m["lastFundingRate"] in row, row
        assert re.search(r" \d+:\d\d:\d\d ", row), row  # the next funding as a countdown, not an epoch


def test_a_resting_reduce_only_order_never_opens_the_other_side(server):
    """The attacker review's reproduction, over HTTP: buy 0.001, rest a reduce-only sell 0.001,
    close with a plain market sell. The resting order is expired (Binance's behaviour) and a later
    buyer at its price finds nothing of alice's: she stays flat."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    o = {"symbol": "BTCUSDT", "type": "LIMIT", "timeInForce": "GTC"}
    ok(alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"}))
    ro = ok(alice.call("POST", "/fapi/v1/order", o | {"side": "SELL", "quantity": "0.001", "price": "64000", "reduceOnly": "true"}))
    assert ro["status"] == "NEW" and ro["reduceOnly"] is True  # type: ignore[index]
    listed = ok(alice.call("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"}))
    assert [(o["orderId"], o["reduceOnly"]) for o in listed] == [(ro["orderId"], True)]  # type: ignore[index,union-attr]
    ok(alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.001"}))
    assert ok(alice.call("GET", "/fapi/v3/positionRisk")) == []
    gone = ok(alice.call("GET", "/fapi/v1/order", {"symbol": "BTCUSDT", "orderId": str(ro["orderId"])}))  # type: ignore[index]
    assert gone["status"] == "EXPIRED"  # type: ignore[index]
    assert ok(alice.call("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"})) == []
    bought = ok(bob.call("POST", "/fapi/v1/order", o | {"side": "BUY", "quantity": "0.001", "price": "64000", "timeInForce": "IOC"}))
    assert bought["status"] == "FILLED"  # type: ignore[index]  # from the market maker's asks, never alice's
    assert ok(alice.call("GET", "/fapi/v3/positionRisk")) == []
    ok(bob.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.001"}))


def _book(server: Server) -> tuple[list, list]:
    b = httpx.get(server.base + "/v1/book", params={"symbol": "BTCUSDTPERP"}).json()
    return b["bids"], b["asks"]


def _insurance(server: Server) -> Decimal:
    rows = httpx.get(server.base + "/v1/segments").json()
    funds = next(r["insurance_fund"] for r in rows if r["segment"] == "derivatives")
    return sum((Decimal(f["balance"]) for f in funds if f["asset"] == "USDT"), Decimal(0))


def _user_stream(c: Client, server: Server):  # type: ignore[no-untyped-def]
    from websockets.sync.client import connect

    key = ok(c.http.post("/fapi/v1/listenKey", headers={"X-MBX-APIKEY": c.key}))["listenKey"]  # type: ignore[index]
    return connect(server.base.replace("http", "ws") + "/ws/" + key)


def test_a_bankrupt_position_is_auto_deleveraged_over_the_live_api(server):
    """An illiquid book (the market maker's BTCUSDT ladder taken out), an insurance fund far smaller
    than the deficit: alice's long is deleveraged against bob's short at her bankruptcy price by the
    running liquidation worker; both get ORDER_TRADE_UPDATE `adl_autoclose` on their user data
    streams; users' equity + insurance + fees is unchanged."""
    import json

    alice, bob = Client(server, "alice"), Client(server, "bob")
    lim = {"symbol": "BTCUSDT", "type": "LIMIT"}
    # bob takes out both sides of the ladder (the market maker ends flat, and so does bob)
    bids, asks = _book(server)
    assert bids and asks
    ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "SELL", "timeInForce": "IOC", "price": bids[-1][0],
                                                 "quantity": str(sum(Decimal(q) for _, q in bids))}))
    ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "BUY", "timeInForce": "IOC", "price": asks[-1][0],
                                                 "quantity": str(sum(Decimal(q) for _, q in asks))}))
    assert _book(server) == ([], [])
    assert Decimal(ok(bob.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]["positionAmt"]) == 0  # type: ignore[index]
    ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "SELL", "timeInForce": "GTC", "price": "61000", "quantity": "2"}))
    ok(alice.call("POST", "/fapi/v1/order", lim | {"side": "BUY", "timeInForce": "GTC", "price": "61000", "quantity": "2"}))
    a_pos = ok(alice.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]  # type: ignore[index]
    b_pos = ok(bob.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]  # type: ignore[index]
    assert (Decimal(a_pos["positionAmt"]), Decimal(b_pos["positionAmt"]), a_pos["adl"], b_pos["adl"]) == (2, -2, 4, 4)
    assert ok(bob.call("GET", "/fapi/v1/adlQuantile", {"symbol": "BTCUSDT"})) == [
        {"symbol": "BTCUSDT", "adlQuantile": {"LONG": 0, "SHORT": 4, "BOTH": 4}}]

    def money() -> Decimal:
        return sum((Decimal(ok(c.call("GET", "/fapi/v2/account"))["totalMarginBalance"]) for c in (alice, bob)),  # type: ignore[index]
                   Decimal(0)) + _insurance(server)

    before = money()
    collateral = Decimal(ok(alice.call("GET", "/fapi/v2/account"))["totalWalletBalance"])  # type: ignore[index]
    bankruptcy = ((Decimal(122000) - collateral) / 2 / Decimal("0.1")).to_integral_value(rounding="ROUND_CEILING") * Decimal("0.1")
    with _user_stream(alice, server) as a_ws, _user_stream(bob, server) as b_ws:
        # the last trade (the mark: the demo runs no index feed here) at 45,000: a self-trade of bob's
        ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "BUY", "timeInForce": "GTC", "price": "45000", "quantity": "0.001"}))
        ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "SELL", "timeInForce": "GTC", "price": "45000", "quantity": "0.001"}))
        got: dict[str, list[dict]] = {"alice": [], "bob": []}
        fees = Decimal(0)
        deadline = time.time() + 15
        while time.time() < deadline and not (got["alice"] and got["bob"]):
            for name, ws in (("alice", a_ws), ("bob", b_ws)):
                try:
                    msg = json.loads(ws.recv(timeout=0.2))
                except TimeoutError:
                    continue
                if msg.get("e") != "ORDER_TRADE_UPDATE":
                    continue
                if msg["o"]["c"] == "adl_autoclose":
                    got[name].append(msg["o"])
                elif msg["o"]["x"] == "TRADE" and name == "bob":
                    fee = Decimal(msg["o"]["n"])  # the self-trade's two fees; a tenth of each to the insurance fund
                    fees += fee - (fee * 10**6 // 10) / 10**6
    assert got["alice"] and got["bob"], "no ADL on the user data streams; see " + server.log.name
    a, b = got["alice"][0], got["bob"][0]
    assert (a["c"], a["S"], Decimal(a["q"]), b["c"], b["S"], Decimal(b["q"])) == ("adl_autoclose", "SELL", 2, "adl_autoclose", "BUY", 2)
    assert Decimal(a["L"]) == Decimal(b["L"]) == bankruptcy and Decimal("45000") < bankruptcy < Decimal("61000")
    assert ok(alice.call("GET", "/fapi/v3/positionRisk")) == []
    assert Decimal(ok(alice.call("GET", "/fapi/v2/account"))["totalWalletBalance"]) >= 0  # type: ignore[index]
    assert money() == before - fees  # users' equity + insurance + fees: unchanged
    assert _book(server) == ([], [])


def test_a_margin_call_reaches_the_futures_user_stream(server):
    """MARGIN_CALL: alice's cross long, marked to where its maintenance is 80..100 % of her margin
    balance, gets one MARGIN_CALL with the position as positionRisk shows it, once; bob, far from
    it, gets none; nobody is liquidated (the running worker only acts below 100 %)."""
    import json

    alice, bob = Client(server, "alice"), Client(server, "bob")
    lim = {"symbol": "BTCUSDT", "type": "LIMIT", "timeInForce": "GTC"}
    assert _book(server) == ([], [])  # the ADL test left the book empty: the last trade is the mark
    ok(alice.call("POST", "/sapi/v1/asset/transfer", {"type": "MAIN_UMFUTURE", "asset": "USDT", "amount": "2000"}))
    ok(alice.call("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": "50"}))
    ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "SELL", "price": "60000", "quantity": "1"}))
    ok(alice.call("POST", "/fapi/v1/order", lim | {"side": "BUY", "price": "60000", "quantity": "1"}))
    wallet = Decimal(ok(alice.call("GET", "/fapi/v2/account"))["totalWalletBalance"])  # type: ignore[index]
    mm = Decimal(ok(alice.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]["maintMargin"])  # type: ignore[index]
    # the mark where her margin balance is about mm / 0.9 (maintenance ≈ 90 % of it)
    target = (Decimal(60000) - wallet + mm / Decimal("0.9")).quantize(Decimal("0.1"), rounding="ROUND_DOWN")
    with _user_stream(alice, server) as a_ws, _user_stream(bob, server) as b_ws:
        ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "BUY", "price": str(target), "quantity": "0.001"}))
        ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "SELL", "price": str(target), "quantity": "0.001"}))
        got: dict[str, list[dict]] = {"alice": [], "bob": []}
        # checked within 0.25 s of the trade, but a loaded CI machine (three xdist workers on two cores) can
        # hold the worker back for seconds: wait up to 30 s for alice's call, then listen 4 s more, in which
        # a second call (to either) must not come
        deadline = time.time() + 30
        while time.time() < deadline:
            for name, ws in (("alice", a_ws), ("bob", b_ws)):
                try:
                    msg = json.loads(ws.recv(timeout=0.1))
                except TimeoutError:
                    continue
                if msg.get("e") == "MARGIN_CALL":
                    if not got["alice"] and not got["bob"]:
                        deadline = time.time() + 4
                    got[name].append(msg)
    pr = ok(alice.call("GET", "/fapi/v3/positionRisk", {"symbol": "BTCUSDT"}))[0]  # type: ignore[index]
    account = ok(alice.call("GET", "/fapi/v2/account"))
    assert Decimal(pr["markPrice"]) == target and Decimal(pr["positionAmt"]) == 1, pr  # not liquidated
    ratio = Decimal(pr["maintMargin"]) / Decimal(account["totalMarginBalance"])  # type: ignore[index]
    assert Decimal("0.8") <= ratio < 1, ratio
    assert len(got["alice"]) == 1 and got["bob"] == [], (got, server.log.name)
    call = got["alice"][0]
    assert Decimal(call["cw"]) == Decimal(account["totalCrossWalletBalance"])  # type: ignore[index]
    assert call["p"] == [{"s": "BTCUSDT", "ps": "BOTH", "pa": pr["positionAmt"], "mt": "CROSSED", "iw": pr["isolatedWallet"],
                          "mp": pr["markPrice"], "up": pr["unRealizedProfit"], "mm": pr["maintMargin"]}]
    # both close at the mark: flat again for the next test
    ok(bob.call("POST", "/fapi/v1/order", lim | {"side": "BUY", "price": str(target), "quantity": "1"}))
    ok(alice.call("POST", "/fapi/v1/order", lim | {"side": "SELL", "price": str(target), "quantity": "1", "reduceOnly": "true"}))
    assert ok(alice.call("GET", "/fapi/v3/positionRisk")) == [] and _book(server) == ([], [])


def test_ccxt_binanceusdm_stop_market_through_the_algo_order_api(server):
    """ccxt 4.5 sends conditional orders to /fapi/v1/algoOrder: a reduce-only STOP_MARKET rests
    untriggered (openAlgoOrders, not openOrders), is fetched and cancelled by algo id, and a trade at
    its trigger closes the position through the book (as a new order: `actualOrderId`); a spot-only
    type and an immediate trigger are refused (take-profit and trailing: tests/derivatives/test_algo_live.py)."""
    import ccxt

    S = "BTC/USDT:USDT"
    alice = make_usdm(server.base, server.keys["alice"]["api_key"], server.keys["alice"]["api_secret"])
    bob = make_usdm(server.base, server.keys["bob"]["api_key"], server.keys["bob"]["api_secret"])
    alice.load_markets()
    bob.load_markets()
    assert {"STOP", "STOP_MARKET"} <= set(alice.market(S)["info"]["orderTypes"])
    alice.transfer("USDT", 500, "spot", "swap")
    bob.create_order(S, "limit", "sell", 0.01, 60000)
    alice.create_order(S, "limit", "buy", 0.01, 60000)  # alice long 0.01; the last trade 60,000
    # one cancelled by algo id; another by cancelling every open algo order of the symbol
    other = alice.create_order(S, "STOP_MARKET", "buy", 0.01, None, {"triggerPrice": 70000})
    alice.cancel_order(other["id"], S, {"trigger": True})
    assert alice.fetch_order(other["id"], S, {"trigger": True})["status"] == "canceled"
    third = alice.create_order(S, "STOP", "buy", 0.01, 71000, {"triggerPrice": 70000})
    assert (third["type"], third["info"]["orderType"], third["price"]) == ("limit", "STOP", 71000)
    alice.cancel_all_orders(S, {"trigger": True})
    assert alice.fetch_open_orders(S, params={"trigger": True}) == []
    stop = alice.create_order(S, "STOP_MARKET", "sell", 0.01, None, {"triggerPrice": 59000, "reduceOnly": True})
    assert (stop["status"], stop["type"], stop["triggerPrice"], stop["amount"], stop["reduceOnly"]) == ("open", "market", 59000, 0.01, True)
    assert (stop["info"]["algoType"], stop["info"]["orderType"], stop["info"]["algoStatus"]) == ("CONDITIONAL", "STOP_MARKET", "NEW")
    assert [o["id"] for o in alice.fetch_open_orders(S, params={"trigger": True})] == [stop["id"]]
    assert [o for o in alice.fetch_open_orders(S) if o["id"] == stop["id"]] == []  # not a working order yet
    assert alice.fetch_order(stop["id"], S, {"trigger": True})["status"] == "open"
    # refused: a type of the spot API (-1116) and a stop the last price has already reached (-2021)
    tp = Client(server, "alice").call("POST", "/fapi/v1/algoOrder", {"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL",
                                                                     "type": "TAKE_PROFIT_LIMIT", "quantity": "0.01", "triggerPrice": "61000"})
    assert tp.status_code == 400 and tp.json()["code"] == -1116 and "TAKE_PROFIT_LIMIT" in tp.json()["msg"]
    with pytest.raises(ccxt.BaseError) as err:
        alice.create_order(S, "STOP_MARKET", "sell", 0.01, None, {"triggerPrice": 60500, "reduceOnly": True})
    assert "-2021" in str(err.value), err.value
    # bob bids 58,900, then a trade of his own at 59,000 reaches the trigger: alice's stop sells into his bid
    bob.create_order(S, "limit", "buy", 0.01, 58900)
    bob.create_order(S, "limit", "buy", 0.001, 59000)
    bob.create_order(S, "limit", "sell", 0.001, 59000)
    deadline = time.time() + 30  # ends when the stop fires (every 100 ms); 5 s was short on a loaded CI machine
    while time.time() < deadline and alice.fetch_order(stop["id"], S, {"trigger": True})["status"] == "open":
        time.sleep(0.1)
    done = alice.fetch_order(stop["id"], S, {"trigger": True})
    actual = done["info"]["actualOrderId"]
    assert done["status"] == "closed" and done["info"]["algoStatus"] == "FINISHED" and actual and actual != stop["id"]
    assert Decimal(done["info"]["actualPrice"]) == Decimal("58900")
    assert not [p for p in alice.fetch_positions([S]) if p["contracts"]]
    sold = [t for t in alice.fetch_my_trades(S) if t["order"] == actual]
    assert [(t["side"], t["amount"], t["price"]) for t in sold] == [("sell", 0.01, 58900)]
    assert alice.fetch_open_orders(S, params={"trigger": True}) == []


def test_ccxt_binanceusdm_margin_mode_isolated_margin_orders_and_transfer_back(server):
    """The rest of what a ccxt user calls first: setMarginMode, addMargin / reduceMargin,
    fetchOpenOrders / fetchOrder / cancelOrder on a resting order, and transfer('swap', 'spot')."""
    S = "ETH/USDT:USDT"
    alice = make_usdm(server.base, server.keys["alice"]["api_key"], server.keys["alice"]["api_secret"])
    alice.load_markets()
    raw = Client(server, "alice")
    alice.transfer("USDT", 200, "spot", "swap")
    alice.set_margin_mode("isolated", S)
    alice.create_order(S, "market", "buy", 0.1)  # from the market maker's ETH ladder
    pos = [p for p in alice.fetch_positions([S]) if p["contracts"]][0]
    assert pos["marginMode"] == "isolated" and pos["contracts"] == 0.1

    def isolated_wallet() -> Decimal:
        return Decimal(ok(raw.call("GET", "/fapi/v3/positionRisk", {"symbol": "ETHUSDT"}))[0]["isolatedWallet"])  # type: ignore[index]

    w0 = isolated_wallet()
    alice.add_margin(S, 5)
    assert isolated_wallet() == w0 + 5
    alice.reduce_margin(S, 3)
    assert isolated_wallet() == w0 + 2
    resting = alice.create_order(S, "limit", "buy", 0.01, 2000)
    assert [o["id"] for o in alice.fetch_open_orders(S)] == [resting["id"]]
    assert alice.fetch_order(resting["id"], S)["status"] == "open"
    alice.cancel_order(resting["id"], S)
    assert alice.fetch_order(resting["id"], S)["status"] == "canceled" and alice.fetch_open_orders(S) == []
    alice.create_order(S, "market", "sell", 0.1, None, {"reduceOnly": True})
    assert not [p for p in alice.fetch_positions([S]) if p["contracts"]]
    alice.set_margin_mode("cross", S)
    assert ok(raw.call("GET", "/fapi/v3/positionRisk", {"symbol": "ETHUSDT"}))[0]["marginType"] == "cross"  # type: ignore[index]
    spot_before = spot_usdt(raw)
    alice.transfer("USDT", 10, "swap", "spot")  # ccxt sends UMFUTURE_MAIN
    assert spot_usdt(raw) == spot_before + 10


def test_a_restart_keeps_positions_and_resting_perpetual_orders(server):
    bob = Client(server, "bob")
    rest = ok(bob.call("POST", "/fapi/v1/order", {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.010", "price": "2500"}))
    before = ok(bob.call("GET", "/fapi/v2/account"))
    positions = ok(bob.call("GET", "/fapi/v3/positionRisk"))
    income = ok(bob.call("GET", "/fapi/v1/income", {"limit": "1000"}))
    fills = ok(bob.call("GET", "/fapi/v1/userTrades", {"symbol": "BTCUSDT"}))
    assert income and fills
    marks = httpx.get(server.base + "/fapi/v1/markPriceKlines", params={"symbol": "BTCUSDT", "interval": "1m"}).json()
    assert server.stop() == 0
    again = Server(server.data, chains=False)  # the same data directory: snapshot + journal, demo seeding idempotent
    try:
        bob2 = Client(again, "bob")
        now = ok(bob2.call("GET", "/fapi/v3/positionRisk"))
        assert positions and len(now) == len(positions)  # type: ignore[arg-type]
        for a, b in zip(now, positions):  # type: ignore[call-overload]
            assert (a["symbol"], a["positionAmt"], a["entryPrice"], a["positionInitialMargin"]) == (
                b["symbol"], b["positionAmt"], b["entryPrice"], b["positionInitialMargin"])
        after = ok(bob2.call("GET", "/fapi/v2/account"))
        assert after["totalWalletBalance"] == before["totalWalletBalance"]  # type: ignore[index]
        # the futures read model is rebuilt from the journal: the same income and fills, ids included
        assert ok(bob2.call("GET", "/fapi/v1/income", {"limit": "1000"})) == income
        assert ok(bob2.call("GET", "/fapi/v1/userTrades", {"symbol": "BTCUSDT"})) == fills
        # mark candles are sampled from the journal's batches again: the closed minutes are identical
        again_marks = httpx.get(again.base + "/fapi/v1/markPriceKlines", params={"symbol": "BTCUSDT", "interval": "1m"}).json()
        assert again_marks[: len(marks) - 1] == marks[:-1] and again_marks[len(marks) - 1][:2] == marks[-1][:2]
        open_ids = [o["orderId"] for o in ok(bob2.call("GET", "/fapi/v1/openOrders", {"symbol": "ETHUSDT"}))]  # type: ignore[union-attr]
        assert rest["orderId"] in open_ids  # type: ignore[index]
        gone = ok(bob2.call("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDT", "orderId": str(rest["orderId"])}))  # type: ignore[index]
        assert gone["status"] == "CANCELED"  # type: ignore[index]
    finally:
        again.stop()
