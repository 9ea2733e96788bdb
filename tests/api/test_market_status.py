"""A halted market says so (issue #13 item 17), and `order/test` refuses it as `order` does (item 10).

A graded halt journaled while the exchange was down (as the reconciler or an operator would raise
it) covers BTCUSDT (HALTED) and the `tokenized` segment (REDUCE_ONLY: spot has nothing to reduce,
so only cancels pass). Before the fix `/v1/markets` said ACTIVE and `exchangeInfo` said TRADING for
both, so a bot could not see why its orders failed.
"""

from __future__ import annotations

import httpx
import pytest

from ringfence.app import new_node
from ringfence.risk.halts import Halt

from .conftest import Server
from .test_rest import error_of, signed_query


@pytest.fixture(scope="module")
def halted(tmp_path_factory):
    data = tmp_path_factory.mktemp("halted") / "data"
    first = Server(data, chains=False)  # lists the demo markets and funds the demo accounts
    assert first.stop() == 0
    node = new_node(data / "engine")
    node.open()
    node.execute(Halt("test-btc", "market", "BTCUSDT", "HALTED", "reconciliation mismatch (test)", "{}"))
    node.execute(Halt("test-tok", "segment", "tokenized", "REDUCE_ONLY", "price feed stale (test)", "{}"))
    node.close()
    server = Server(data, chains=False)
    yield server
    assert server.stop() == 0


def post(server, path, params):
    key = server.keys["alice"]
    body = signed_query(key["api_secret"], params)
    return httpx.post(server.base + path, content=body, headers={"X-MBX-APIKEY": key["api_key"], "Content-Type": "application/x-www-form-urlencoded"})


def test_status_reports_halts_in_v1_markets_and_exchange_info(halted):
    markets = {m["symbol"]: m["status"] for m in httpx.get(halted.base + "/v1/markets").json()}
    assert markets == {"BTCUSDT": "HALTED", "AAPLXUSDT": "REDUCE_ONLY", "ETHUSDT": "ACTIVE"}
    info = {s["symbol"]: s["status"] for s in httpx.get(halted.base + "/api/v3/exchangeInfo").json()["symbols"]}
    assert info == {"BTCUSDT": "HALT", "AAPLXUSDT": "BREAK", "ETHUSDT": "TRADING"}
    only = httpx.get(halted.base + "/api/v3/exchangeInfo", params={"symbolStatus": "HALT"}).json()["symbols"]
    assert [s["symbol"] for s in only] == ["BTCUSDT"]
    r = httpx.get(halted.base + "/api/v3/ticker/price", params={"symbol": "BTCUSDT", "symbolStatus": "TRADING"})
    assert error_of(r)["code"] == -1220
    prices = httpx.get(halted.base + "/api/v3/ticker/price", params={"symbolStatus": "TRADING"}).json()
    assert [p["symbol"] for p in prices] == ["ETHUSDT"]


def test_ccxt_sees_the_halted_market_as_inactive(halted):
    from .test_ccxt import make_client

    k = halted.keys["alice"]
    markets = make_client(halted.base, k["api_key"], k["api_secret"]).load_markets()
    assert markets["BTC/USDT"]["active"] is False and markets["ETH/USDT"]["active"] is True


@pytest.mark.parametrize("symbol, price", [("BTCUSDT", "60990.00"), ("AAPLXUSDT", "189.00")])
def test_order_and_order_test_refuse_a_halted_market_alike(halted, symbol, price):
    order = {"symbol": symbol, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010" if symbol == "BTCUSDT" else "1.00", "price": price}
    seq = httpx.get(halted.base + "/readyz").json()["last_seq"]
    tested = error_of(post(halted, "/api/v3/order/test", order))
    assert httpx.get(halted.base + "/readyz").json()["last_seq"] == seq
    placed = error_of(post(halted, "/api/v3/order", order))
    assert tested == placed == {"code": -1013, "msg": "Market is closed."}
    eth = {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0100", "price": "2999.00"}
    assert post(halted, "/api/v3/order/test", eth).json() == {}  # scoped: the other markets trade
