"""Perpetuals in the running exchange: a real `ringfence serve --demo` process, driven with httpx over
the Binance USDⓈ-M endpoints and with the unmodified ccxt `binanceusdm` class."""

from __future__ import annotations

import hashlib
import hmac
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
    srv = Server(tmp_path_factory.mktemp("perps") / "data")
    yield srv
    srv.stop()


class Client:
    def __init__(self, server: Server, account: str) -> None:
        self.key = server.keys[account]["api_key"]
        self.secret = server.keys[account]["api_secret"]
        self.http = httpx.Client(base_url=server.base, timeout=10)

    def _signed(self, params: dict) -> str:
        full = dict(params, timestamp=str(int(time.time() * 1000)), recvWindow="10000")
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
    assert bad.status_code == 400 and "amount" in bad.json()["msg"]
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
    rest = ok(alice.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "50000"}))
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
                if msg.get("e") == "ORDER_TRADE_UPDATE":
                    got[name].append(msg["o"])
                elif msg.get("e") == "executionReport" and msg["x"] == "TRADE" and name == "bob":
                    fee = Decimal(msg["n"])  # the self-trade's two fees; a tenth of each to the insurance fund
                    fees += fee - (fee * 10**6 // 10) / 10**6
    assert got["alice"] and got["bob"], "no ADL on the user data streams; see " + server.log.name
    a, b = got["alice"][0], got["bob"][0]
    assert (a["c"], a["S"], Decimal(a["q"]), b["c"], b["S"], Decimal(b["q"])) == ("adl_autoclose", "SELL", 2, "adl_autoclose", "BUY", 2)
    assert Decimal(a["L"]) == Decimal(b["L"]) == bankruptcy and Decimal("45000") < bankruptcy < Decimal("61000")
    assert ok(alice.call("GET", "/fapi/v3/positionRisk")) == []
    assert Decimal(ok(alice.call("GET", "/fapi/v2/account"))["totalWalletBalance"]) >= 0  # type: ignore[index]
    assert money() == before - fees  # users' equity + insurance + fees: unchanged
    assert _book(server) == ([], [])


def test_a_restart_keeps_positions_and_resting_perpetual_orders(server):
    bob = Client(server, "bob")
    rest = ok(bob.call("POST", "/fapi/v1/order", {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.010", "price": "2500"}))
    before = ok(bob.call("GET", "/fapi/v2/account"))
    positions = ok(bob.call("GET", "/fapi/v3/positionRisk"))
    assert server.stop() == 0
    again = Server(server.data)  # the same data directory: snapshot + journal, demo seeding idempotent
    try:
        bob2 = Client(again, "bob")
        now = ok(bob2.call("GET", "/fapi/v3/positionRisk"))
        assert positions and len(now) == len(positions)  # type: ignore[arg-type]
        for a, b in zip(now, positions):  # type: ignore[call-overload]
            assert (a["symbol"], a["positionAmt"], a["entryPrice"], a["positionInitialMargin"]) == (
                b["symbol"], b["positionAmt"], b["entryPrice"], b["positionInitialMargin"])
        after = ok(bob2.call("GET", "/fapi/v2/account"))
        assert after["totalWalletBalance"] == before["totalWalletBalance"]  # type: ignore[index]
        open_ids = [o["orderId"] for o in ok(bob2.call("GET", "/fapi/v1/openOrders", {"symbol": "ETHUSDT"}))]  # type: ignore[union-attr]
        assert rest["orderId"] in open_ids  # type: ignore[index]
        gone = ok(bob2.call("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDT", "orderId": str(rest["orderId"])}))  # type: ignore[index]
        assert gone["status"] == "CANCELED"  # type: ignore[index]
    finally:
        again.stop()
