"""Binance conformance at the API edge (issue #13 items 2, 3, 10, 11, 12, 14, 18), against a real
`ringfence serve --demo` process with real signing (httpx) and, where it applies, ccxt.

Each test sends the bytes an attacker or a real client sent and checks the answer *and* that a
refused request changed nothing (balances, open orders, the engine's book, the journal position).
Reproduce one with `pytest tests/api/test_conformance.py -k <name>`; the server's log is next to
the pytest temporary directory (`serve-<port>.log`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from decimal import Decimal
from urllib.parse import urlencode

import httpx
import pytest
import websockets

from .test_ccxt import make_client
from .test_rest import BASE_ORDER, Client, error_of, signed_query

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False


@pytest.fixture(scope="module")
def alice(server):
    return Client(server)


@pytest.fixture(scope="module")
def bob(server):
    return Client(server, "bob")


def sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def now_ms() -> str:
    return str(int(time.time() * 1000))


def last_seq(client: Client) -> int:
    return client.http.get("/readyz").json()["last_seq"]


def raw_post(client: Client, path: str, query: str, body: str) -> httpx.Response:
    headers = {"X-MBX-APIKEY": client.key, "Content-Type": "application/x-www-form-urlencoded"}
    return client.http.post(path + ("?" + query if query else ""), content=body, headers=headers)


# ---------------------------------------------------------------------------- item 2: parameters


def test_signed_bytes_re_split_between_query_and_body_cannot_change_the_quantity(alice):
    """The signature covers query + body concatenated (Binance's rule), so the same signed bytes
    can be cut anywhere. Cut after `quantity=0.001` of `quantity=0.0011`: the query then says
    0.001 and the body starts with a stray parameter `1`. It must be refused, not placed."""
    before, seq = alice.state(), last_seq(alice)
    order = {**BASE_ORDER, "quantity": "0.0011", "price": "60000.00", "timestamp": now_ms(), "recvWindow": "10000"}
    payload = urlencode(order)
    cut = payload.index("quantity=0.001") + len("quantity=0.001")
    signature = sign(alice.secret, payload)
    r = raw_post(alice, "/api/v3/order", payload[:cut], payload[cut:] + "&signature=" + signature)
    body = error_of(r)
    assert r.status_code == 400 and body["code"] == -1104, body
    assert "Not all sent parameters were read" in body["msg"] and "'1'" in body["msg"], body
    assert alice.state() == before and last_seq(alice) == seq
    # the same bytes cut at a parameter boundary are the same request: accepted once
    cut = payload.index("&price=")
    r = raw_post(alice, "/api/v3/order", payload[:cut], payload[cut:] + "&signature=" + signature)
    assert r.status_code == 200 and r.json()["origQty"] == "0.00110000", r.text
    cancel = alice.http.delete("/api/v3/order?" + signed_query(alice.secret, {"symbol": "BTCUSDT", "orderId": r.json()["orderId"]}), headers={"X-MBX-APIKEY": alice.key})
    assert cancel.status_code == 200, cancel.text


def test_undefined_parameters_are_refused_with_1104_on_every_kind_of_endpoint(alice):
    before, seq = alice.state(), last_seq(alice)
    r = alice.post("/api/v3/order", {**BASE_ORDER, "quantityy": "5"})
    body = error_of(r)
    assert body["code"] == -1104 and "read 9 parameter(s) but was sent 10" in body["msg"] and "'quantityy'" in body["msg"], body
    r = alice.get("/api/v3/depth", {"symbol": "BTCUSDT", "limit": "5", "foo": "1"})
    assert error_of(r)["code"] == -1104 and "'foo'" in r.json()["msg"]
    r = alice.get("/api/v3/openOrders", {"symbol": "BTCUSDT", "startTime": "1"}, signed=True)
    assert error_of(r)["code"] == -1104 and "'startTime'" in r.json()["msg"]
    # /trades reads symbol and limit only (fromId belongs to historicalTrades)
    r = alice.get("/api/v3/trades", {"symbol": "BTCUSDT", "fromId": "1"})
    assert error_of(r)["code"] == -1104
    # a public endpoint does not read the signed-request framework parameters either
    r = alice.get("/api/v3/time", {"timestamp": now_ms()})
    assert error_of(r)["code"] == -1104
    r = alice.get("/api/v3/depth", {"symbol": "BTCUSDT", "limit": ""})
    assert error_of(r)["code"] == -1100 and "'limit'" in r.json()["msg"]
    assert alice.state() == before and last_seq(alice) == seq


def test_a_parameter_sent_in_query_and_body_is_refused(alice):
    before, seq = alice.state(), last_seq(alice)
    order = {**BASE_ORDER, "timestamp": now_ms(), "recvWindow": "10000"}
    query = "quantity=0.0010"
    body = urlencode(order)
    r = raw_post(alice, "/api/v3/order", query, body + "&signature=" + sign(alice.secret, query + body))
    assert error_of(r)["code"] == -1101 and "'quantity'" in r.json()["msg"], r.text
    assert alice.state() == before and last_seq(alice) == seq


@pytest.mark.parametrize(
    "extra, code, words",
    [
        ({"icebergQty": "5"}, -1013, "Iceberg orders are not supported"),
        ({"trailingDelta": "100"}, -1013, "Trailing stop orders are not supported"),
        ({"strategyId": "1"}, -1106, "'strategyId'"),
        ({"strategyType": "1000000"}, -1106, "'strategyType'"),
        ({"pegPriceType": "PRIMARY_PEG"}, -1013, "Pegged orders"),
        ({"stopPrice": "-1"}, -1106, "Parameter 'stopPrice' sent when not required."),
        ({"stopPrice": "61000.00"}, -1106, "Parameter 'stopPrice' sent when not required."),
        ({"quoteOrderQty": "100"}, -1106, "Parameter 'quoteOrderQty' sent when not required."),
    ],
)
def test_binance_parameters_that_do_not_apply_are_refused_not_ignored(alice, extra, code, words):
    """Item 18: `stopPrice=-1` on a LIMIT was 200, `icebergQty=5` was 200 and ignored."""
    before, seq = alice.state(), last_seq(alice)
    for path in ("/api/v3/order", "/api/v3/order/test"):
        body = error_of(alice.post(path, {**BASE_ORDER, **extra}))
        assert body["code"] == code and words in body["msg"], (path, body)
    assert alice.state() == before and last_seq(alice) == seq


def test_type_dependent_parameters_of_market_and_stop_orders(alice):
    before = alice.state()
    market = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0010"}
    for extra, name in (({"price": "61000.00"}, "price"), ({"timeInForce": "GTC"}, "timeInForce"), ({"stopPrice": "61000.00"}, "stopPrice")):
        body = error_of(alice.post("/api/v3/order", {**market, **extra}))
        assert body == {"code": -1106, "msg": f"Parameter '{name}' sent when not required."}, body
    stop = {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_LOSS", "quantity": "0.0010", "stopPrice": "60000.00", "price": "59000.00"}
    assert error_of(alice.post("/api/v3/order", stop))["msg"] == "Parameter 'price' sent when not required."
    assert alice.state() == before


def test_exchange_info_says_iceberg_orders_are_not_allowed(alice):
    info = alice.get("/api/v3/exchangeInfo", {"symbol": "BTCUSDT"}).json()["symbols"][0]
    assert info["icebergAllowed"] is False and info["allowTrailingStop"] is False


def test_cancel_honours_new_client_order_id_and_cancel_restrictions(alice):
    placed = alice.post("/api/v3/order", {**BASE_ORDER, "quantity": "0.0010", "price": "60000.00"}).json()
    oid = placed["orderId"]
    delete = lambda params: alice.http.delete("/api/v3/order?" + signed_query(alice.secret, params), headers={"X-MBX-APIKEY": alice.key})  # noqa: E731
    r = delete({"symbol": "BTCUSDT", "orderId": oid, "cancelRestrictions": "ONLY_PARTIALLY_FILLED"})
    assert error_of(r) == {"code": -2011, "msg": "Order was not canceled due to cancel restrictions."}
    assert any(o["orderId"] == oid for o in alice.get("/api/v3/openOrders", {"symbol": "BTCUSDT"}, signed=True).json())
    r = delete({"symbol": "BTCUSDT", "orderId": oid, "cancelRestrictions": "ONLY_NEW", "newClientOrderId": "my-cancel-1"})
    assert r.status_code == 200, r.text
    assert r.json()["clientOrderId"] == "my-cancel-1" and r.json()["origClientOrderId"] == placed["clientOrderId"]
    assert r.json()["status"] == "CANCELED"


def test_order_id_and_a_client_order_id_of_another_order_together_find_nothing(alice):
    """Binance: with both ids sent, the order found by orderId must also carry origClientOrderId;
    otherwise neither the query nor the cancel touches it."""
    first = alice.post("/api/v3/order", {**BASE_ORDER, "quantity": "0.0010", "price": "60000.00", "newClientOrderId": "both-ids-1"}).json()
    second = alice.post("/api/v3/order", {**BASE_ORDER, "quantity": "0.0010", "price": "60000.00", "newClientOrderId": "both-ids-2"}).json()
    mixed = {"symbol": "BTCUSDT", "orderId": first["orderId"], "origClientOrderId": "both-ids-2"}
    assert error_of(alice.get("/api/v3/order", mixed, signed=True)) == {"code": -2013, "msg": "Order does not exist."}
    before = alice.state()
    r = alice.http.delete("/api/v3/order?" + signed_query(alice.secret, mixed), headers={"X-MBX-APIKEY": alice.key})
    assert error_of(r) == {"code": -2011, "msg": "Unknown order sent."}
    assert alice.state() == before
    match = {"symbol": "BTCUSDT", "orderId": second["orderId"], "origClientOrderId": "both-ids-2"}
    assert alice.get("/api/v3/order", match, signed=True).json()["orderId"] == second["orderId"]
    for placed in (first, second):
        r = alice.http.delete("/api/v3/order?" + signed_query(alice.secret, {"symbol": "BTCUSDT", "orderId": placed["orderId"]}),
                              headers={"X-MBX-APIKEY": alice.key})
        assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------- item 3: Unicode digits

UNICODE_NUMBERS = ["²", "٣", "３", "߃", "১", "𝟙", "¹0", "1²", "٦٠٠٠٠", "Ⅴ", "1_0", " 5", "+5", "5\n"]


@pytest.mark.parametrize("text", UNICODE_NUMBERS)
def test_unicode_digits_are_a_400_naming_the_parameter_never_a_500_or_a_number(alice, text):
    r = alice.get("/api/v3/depth", {"symbol": "BTCUSDT", "limit": text})
    assert r.status_code == 400 and error_of(r)["code"] == -1100 and "'limit'" in r.json()["msg"], (text, r.status_code, r.text)
    r = alice.get("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "startTime": text})
    assert r.status_code == 400 and "'startTime'" in r.json()["msg"], (text, r.text)
    # no valid key needed: the timestamp is read before the key is looked up
    query = urlencode({"timestamp": text, "signature": "0" * 64})
    r = alice.http.get("/api/v3/account?" + query, headers={"X-MBX-APIKEY": "f" * 64})
    assert r.status_code == 400 and error_of(r)["code"] == -1100 and "'timestamp'" in r.json()["msg"], (text, r.status_code, r.text)
    r = alice.http.get("/v1/book", params={"symbol": "BTCUSDT", "limit": text})
    assert r.status_code == 400 and "'limit'" in r.json()["msg"], (text, r.text)


@pytest.mark.parametrize("field", ["quantity", "price"])
@pytest.mark.parametrize("text", ["٠٫٥", "٦٠٠٠٠", "０.５", "6０000", "¹"])
def test_unicode_digits_in_amounts_are_refused_and_change_nothing(alice, field, text):
    before = alice.state()
    body = error_of(alice.post("/api/v3/order", {**BASE_ORDER, field: text}))
    assert body["code"] == -1100 and f"'{field}'" in body["msg"], body
    assert alice.state() == before


# ---------------------------------------------------------------------------- item 10: order/test


@pytest.mark.parametrize(
    "change, word",
    [
        ({"price": "60000.005"}, "PRICE_FILTER"),
        ({"quantity": "0.00015"}, "LOT_SIZE"),
        ({"quantity": "0.0001", "price": "40000.00"}, "PERCENT_PRICE_BY_SIDE"),
        ({"symbol": "ETHUSDT", "price": "3000.00", "quantity": "0.0001"}, "NOTIONAL"),
        ({"price": "100.00"}, "PERCENT_PRICE_BY_SIDE"),
        ({"type": "LIMIT_MAKER", "timeInForce": None, "price": "61000.02"}, "Order would immediately match and take."),
        ({"type": "STOP_LOSS_LIMIT", "stopPrice": "1000000000000000000000000", "price": "61000.00"}, "PERCENT_PRICE_BY_SIDE"),
    ],
)
def test_order_test_runs_every_check_order_runs_and_places_nothing(alice, change, word):
    before, seq = alice.state(), last_seq(alice)
    params = {k: v for k, v in {**BASE_ORDER, **change}.items() if v is not None}
    tested = error_of(alice.post("/api/v3/order/test", params))
    assert last_seq(alice) == seq, "order/test journaled something"
    placed = error_of(alice.post("/api/v3/order", params))  # a rejected order is journaled, as a rejection
    assert tested == placed and word in tested["msg"], (tested, placed)
    assert alice.state() == before


def test_order_test_accepts_a_good_order_and_journals_nothing(alice):
    before, seq = alice.state(), last_seq(alice)
    assert alice.post("/api/v3/order/test", {**BASE_ORDER, "quantity": "0.0010"}).json() == {}
    rates = alice.post("/api/v3/order/test", {**BASE_ORDER, "quantity": "0.0010", "computeCommissionRates": "true"}).json()
    assert rates["standardCommissionForOrder"] == {"maker": "0.001000", "taker": "0.001000"}, rates
    # like Binance's, the test order does not reach the matching engine: no balance check
    assert alice.post("/api/v3/order/test", {**BASE_ORDER, "quantity": "1000"}).json() == {}
    assert alice.state() == before and last_seq(alice) == seq
    assert error_of(alice.post("/api/v3/order", {**BASE_ORDER, "quantity": "1000"}))["code"] == -2010


# ---------------------------------------------------------------------------- item 11: market by quote


def test_market_buy_by_quote_that_cannot_be_spent_exactly_is_filled_and_not_open(server, alice):
    """100 USDT at ~61000 buys 0.0016 BTC and leaves ~2.4 USDT that cannot buy one more lot. The
    order was left PARTIALLY_FILLED, in openOrders with isWorking true, and could not be cancelled."""
    account = lambda: {b["asset"]: b for b in alice.get("/api/v3/account", {}, signed=True).json()["balances"]}  # noqa: E731
    usdt_locked = account()["USDT"]["locked"]
    r = alice.post("/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quoteOrderQty": "100"})
    assert r.status_code == 200, r.text
    order = r.json()
    assert order["status"] == "FILLED" and Decimal(order["executedQty"]) == Decimal("0.0016"), order
    assert Decimal(order["cummulativeQuoteQty"]) < 100
    assert order["orderId"] not in [o["orderId"] for o in alice.get("/api/v3/openOrders", {}, signed=True).json()]
    got = alice.get("/api/v3/order", {"symbol": "BTCUSDT", "orderId": order["orderId"]}, signed=True).json()
    assert got["status"] == "FILLED" and got["isWorking"] is True
    r = alice.http.delete("/api/v3/order?" + signed_query(alice.secret, {"symbol": "BTCUSDT", "orderId": order["orderId"]}), headers={"X-MBX-APIKEY": alice.key})
    assert error_of(r)["code"] == -2011
    assert account()["USDT"]["locked"] == usdt_locked, "the unspent quote is still held"
    # the same through ccxt: a market buy with a cost is a closed order
    k = server.keys["alice"]
    ex = make_client(server.base, k["api_key"], k["api_secret"])
    ccxt_order = ex.create_market_buy_order_with_cost("BTC/USDT", 100)
    assert ccxt_order["status"] == "closed", ccxt_order["info"]
    assert all(o["id"] != ccxt_order["id"] for o in ex.fetch_open_orders("BTC/USDT"))


# ---------------------------------------------------------------------------- item 12: klines


def test_klines_have_binances_12_fields_with_taker_buy_volumes(alice, bob):
    def sums():
        rows = alice.get("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": "1000"}).json()
        assert rows and all(len(r) == 12 for r in rows), rows[:1]
        for r in rows:
            assert r[11] == "0" and Decimal(r[9]) <= Decimal(r[5]) and Decimal(r[10]) <= Decimal(r[7])
        return sum(Decimal(r[5]) for r in rows), sum(Decimal(r[9]) for r in rows), sum(Decimal(r[10]) for r in rows)

    # make sure there is at least one trade, then a taker buy and a taker sell of known size
    assert bob.post("/api/v3/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.0003"}).status_code == 200
    volume, buy_volume, buy_quote = sums()
    buy = alice.post("/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0007"}).json()
    sell = bob.post("/api/v3/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.0002"}).json()
    assert buy["status"] == sell["status"] == "FILLED"
    volume2, buy_volume2, buy_quote2 = sums()
    assert volume2 - volume == Decimal("0.0009")
    assert buy_volume2 - buy_volume == Decimal("0.0007")
    assert buy_quote2 - buy_quote == Decimal(buy["cummulativeQuoteQty"])


def test_websocket_kline_payload_has_binances_k_fields(server, alice):
    async def scenario():
        url = server.base.replace("http://", "ws://") + "/ws/btcusdt@kline_1m"
        async with websockets.connect(url) as ws:
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(base_url=server.base) as http:
                body = signed_query(alice.secret, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0004"})
                r = await http.post("/api/v3/order", content=body, headers={"X-MBX-APIKEY": alice.key, "Content-Type": "application/x-www-form-urlencoded"})
                assert r.status_code == 200, r.text
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("e") == "kline":
                    return msg["k"]

    k = asyncio.run(scenario())
    assert set(k) == {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}, k
    assert k["B"] == "0" and Decimal(k["V"]) >= Decimal("0.0004") and Decimal(k["V"]) <= Decimal(k["v"])
    assert Decimal(k["Q"]) <= Decimal(k["q"]) and k["f"] <= k["L"] and k["L"] - k["f"] + 1 <= k["n"]


# ---------------------------------------------------------------------------- item 14: stop prices


@pytest.mark.parametrize(
    "side, stop, word",
    [
        ("SELL", "1000000000000000000000000", "PERCENT_PRICE_BY_SIDE"),
        ("BUY", "1000000000000000000000000", "PERCENT_PRICE_BY_SIDE"),
        ("SELL", "0.01", "PERCENT_PRICE_BY_SIDE"),
        ("SELL", "60000.001", "PRICE_FILTER"),
    ],
)
def test_stop_price_gets_the_band_and_tick_checks_of_a_limit_price(alice, side, stop, word):
    before = alice.state()
    for order in (
        {"symbol": "BTCUSDT", "side": side, "type": "STOP_LOSS_LIMIT", "timeInForce": "GTC", "quantity": "0.0010", "price": "61000.00", "stopPrice": stop},
        {"symbol": "BTCUSDT", "side": side, "type": "STOP_LOSS", "quantity": "0.0010", "stopPrice": stop},
    ):
        seq = last_seq(alice)
        body = error_of(alice.post("/api/v3/order/test", order))
        assert body["code"] == -1013 and word in body["msg"], (order, body)
        assert last_seq(alice) == seq
        assert error_of(alice.post("/api/v3/order", order)) == body
    assert alice.state() == before


def test_exchange_info_publishes_the_band_as_percent_price_by_side(alice):
    markets = {m["symbol"]: m for m in alice.http.get("/v1/markets").json()}
    info = {s["symbol"]: s for s in alice.get("/api/v3/exchangeInfo").json()["symbols"]}
    for symbol, m in markets.items():
        band = {f["filterType"]: f for f in info[symbol]["filters"]}["PERCENT_PRICE_BY_SIDE"]
        up, down = Decimal(1) + Decimal(m["band_ppm"]) / 10**6, Decimal(1) - Decimal(m["band_ppm"]) / 10**6
        assert Decimal(band["bidMultiplierUp"]) == Decimal(band["askMultiplierUp"]) == up, band
        assert Decimal(band["bidMultiplierDown"]) == Decimal(band["askMultiplierDown"]) == down, band
    # the numbers are the ones enforced: just inside the band passes the checks, just outside fails
    ref = Decimal(markets["BTCUSDT"]["reference_price"])
    hi = (ref * up).quantize(Decimal("0.01"))
    inside = {**BASE_ORDER, "side": "SELL", "quantity": "0.0010", "price": str(hi)}
    outside = {**inside, "price": str(hi + Decimal("0.01"))}
    assert alice.post("/api/v3/order/test", inside).json() == {}
    assert "PERCENT_PRICE_BY_SIDE" in error_of(alice.post("/api/v3/order/test", outside))["msg"]


# ---------------------------------------------------------------------------- a second real client


def test_python_binance_client_works_against_the_server(server):
    """python-binance 1.0.x (pinned in the dev extra) drives the server like ccxt does: it adds
    its own `newClientOrderId` to every order and puts POST parameters in the body."""
    from binance.client import Client as BinanceClient
    from binance.exceptions import BinanceAPIException

    k = server.keys["bob"]
    client = BinanceClient(k["api_key"], k["api_secret"], ping=False)
    client.API_URL = server.base + "/api"
    assert client.ping() == {}
    assert client.get_symbol_info("BTCUSDT")["status"] == "TRADING"
    assert len(client.get_order_book(symbol="BTCUSDT", limit=5)["asks"]) == 5
    klines = client.get_klines(symbol="BTCUSDT", interval="1m", limit=5)
    assert klines and all(len(row) == 12 for row in klines)
    order = client.create_order(symbol="BTCUSDT", side="SELL", type="LIMIT", timeInForce="GTC", quantity="0.0010", price="61100.00")
    assert order["status"] == "NEW" and order["clientOrderId"].startswith("x-")
    assert any(o["orderId"] == order["orderId"] for o in client.get_open_orders(symbol="BTCUSDT"))
    assert client.get_order(symbol="BTCUSDT", orderId=order["orderId"])["status"] == "NEW"
    assert client.cancel_order(symbol="BTCUSDT", orderId=order["orderId"])["status"] == "CANCELED"
    assert client.create_test_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.0010", price="61000.00") == {}
    with pytest.raises(BinanceAPIException) as err:
        client.create_test_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.0010", price="61000.005")
    assert err.value.code == -1013
    with pytest.raises(BinanceAPIException) as err:
        client.create_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.0010", price="61000.00", icebergQty="0.0005")
    assert err.value.code == -1013 and "Iceberg" in err.value.message
    balances = {b["asset"] for b in client.get_account(omitZeroBalances="true")["balances"]}
    assert "BTC" in balances


def test_every_ccxt_call_sends_only_parameters_the_table_defines(server):
    """The parameters ccxt actually sends (binance-compat.md §4) are all in the table: a -1104 here
    means a unified call broke. Each call's raw request is checked through ccxt's own error path."""
    import ccxt

    k = server.keys["alice"]
    ex = make_client(server.base, k["api_key"], k["api_secret"])
    ex.load_markets()
    since = ex.milliseconds() - 3_600_000
    calls = {
        "fetch_trades since": lambda: ex.fetch_trades("BTC/USDT", since, 5),
        "fetch_trades /trades": lambda: ex.fetch_trades("BTC/USDT", None, 5, {"fetchTradesMethod": "publicGetTrades"}),
        "fetch_ohlcv since until": lambda: ex.fetch_ohlcv("BTC/USDT", "1m", since, 10, {"until": ex.milliseconds()}),
        "fetch_order_book limit": lambda: ex.fetch_order_book("BTC/USDT", 5),
        "fetch_tickers list": lambda: ex.fetch_tickers(["BTC/USDT", "ETH/USDT"]),
        "fetch_orders since": lambda: ex.fetch_orders("BTC/USDT", since, 5),
        "fetch_my_trades since": lambda: ex.fetch_my_trades("BTC/USDT", since, 5),
        "fetch_balance": lambda: ex.fetch_balance(),
    }
    for name, call in calls.items():
        try:
            call()
        except ccxt.BaseError as err:
            raise AssertionError(f"{name}: {err}") from None
    post_only = ex.create_order("BTC/USDT", "limit", "buy", 0.001, 60000, {"postOnly": True})
    ioc = ex.create_order("BTC/USDT", "limit", "buy", 0.001, 59000, {"timeInForce": "IOC"})
    stop = ex.create_order("BTC/USDT", "limit", "sell", 0.001, 59000, {"stopPrice": 59500})
    assert post_only["status"] == "open" and ioc["status"] == "expired" and stop["status"] == "open", (post_only["info"], ioc["info"], stop["info"])
    assert ex.fetch_order(post_only["id"], "BTC/USDT", {"clientOrderId": post_only["clientOrderId"]})["id"] == post_only["id"]
    assert ex.cancel_order(None, "BTC/USDT", {"clientOrderId": post_only["clientOrderId"]})["status"] == "canceled"
    assert ex.fetch_order_trades(ioc["id"], "BTC/USDT") == []
    assert ex.cancel_all_orders("BTC/USDT")


def test_a_band_refusal_says_which_prices_the_side_may_use_now(alice):
    """PERCENT_PRICE_BY_SIDE keeps Binance's code and text start (what clients match) and says the range
    allowed now, as decimal prices on the tick (the engine's integers, written at the edge), for the
    order's side."""
    from ringfence.money import format_amount

    market = {m["symbol"]: m for m in alice.http.get("/v1/markets").json()}["BTCUSDT"]
    info = {s["symbol"]: s for s in alice.get("/api/v3/exchangeInfo").json()["symbols"]}["BTCUSDT"]
    decimals, ppm = info["quoteAssetPrecision"], int(market["band_ppm"])
    tick = int(Decimal(next(f for f in info["filters"] if f["filterType"] == "PRICE_FILTER")["tickSize"]) * 10**decimals)
    ref_minor = int(Decimal(market["reference_price"]) * 10**decimals)
    lo_minor, hi_minor = (ref_minor * (10**6 + sign * ppm) // 10**6 for sign in (-1, 1))
    # the prices on the tick within the band: ones a client can send
    lo, hi = (format_amount(v, decimals, trim=True) for v in (-(-lo_minor // tick) * tick, hi_minor // tick * tick))
    before = alice.state()
    for order, words in (
        ({**BASE_ORDER, "price": "100.00"}, f"The price of a BUY order must be between {lo} and {hi} now"),
        ({**BASE_ORDER, "side": "SELL", "price": "1000000.00"}, f"The price of a SELL order must be between {lo} and {hi} now"),
        ({"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_LOSS", "quantity": "0.0010", "stopPrice": "0.01"},
         f"The stopPrice of a SELL order must be between {lo} and {hi} now"),
    ):
        for path in ("/api/v3/order/test", "/api/v3/order"):
            body = error_of(alice.post(path, order))
            assert body["code"] == -1013 and body["msg"].startswith("Filter failure: PERCENT_PRICE_BY_SIDE. "), body
            assert words in body["msg"], (words, body)
    assert alice.state() == before


@pytest.mark.parametrize(
    "change, words",
    [
        ({"price": "60000.005"}, "Filter failure: PRICE_FILTER. The price must be a multiple of the tick size 0.01."),
        ({"quantity": "0.00015"}, "Filter failure: LOT_SIZE. The quantity must be a multiple of the step size "),
        ({"symbol": "ETHUSDT", "price": "3000.00", "quantity": "0.0001"},
         "Filter failure: NOTIONAL. The order's value (price x quantity) must be at least "),
    ],
)
def test_a_filter_refusal_says_what_the_filter_allows(alice, change, words):
    """New-user review: "Filter failure: PRICE_FILTER" alone does not say the tick; the text now goes on
    with what the filter allows (as exchangeInfo publishes it), after the start clients match."""
    before = alice.state()
    params = {k: v for k, v in {**BASE_ORDER, **change}.items() if v is not None}
    info = {s["symbol"]: s for s in alice.get("/api/v3/exchangeInfo").json()["symbols"]}[params["symbol"]]
    filters = {f["filterType"]: f for f in info["filters"]}
    published = {"PRICE_FILTER": filters["PRICE_FILTER"]["tickSize"], "LOT_SIZE": filters["LOT_SIZE"]["stepSize"],
                 "NOTIONAL": filters["NOTIONAL"]["minNotional"]}
    for path in ("/api/v3/order/test", "/api/v3/order"):
        body = error_of(alice.post(path, params))
        assert body["code"] == -1013 and body["msg"].startswith(words), body
        kind = words.split(": ")[1].split(".")[0]
        said = body["msg"].rsplit(" ", 1)[1].removesuffix(".")
        assert Decimal(said) == Decimal(published[kind]) and not said.endswith("0"), (body, published[kind])
    assert alice.state() == before
