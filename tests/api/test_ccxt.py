"""Acceptance: the unmodified ccxt `binance` class trades on a real `ringfence serve` process.

Two demo accounts trade with each other through ccxt exactly as a bot would (shared
binance-compat.md §1 for the client set-up: every URL family points at the local server).
"""

from decimal import Decimal
from urllib.parse import urlsplit

import ccxt
import pytest


def make_client(base, api_key, secret):
    ex = ccxt.binance(
        {
            "apiKey": api_key,
            "secret": secret,
            "options": {
                "fetchMarkets": ["spot"],
                "fetchCurrencies": False,
                "fetchMargins": False,
                "adjustForTimeDifference": False,
                "warnOnFetchOpenOrdersWithoutSymbol": False,
            },
        }
    )
    for name, url in list(ex.urls["api"].items()):
        ex.urls["api"][name] = base.rstrip("/") + urlsplit(url).path
    return ex


@pytest.fixture(scope="module")
def alice(server):
    k = server.keys["alice"]
    return make_client(server.base, k["api_key"], k["api_secret"])


@pytest.fixture(scope="module")
def bob(server):
    k = server.keys["bob"]
    return make_client(server.base, k["api_key"], k["api_secret"])


def free(client, asset):
    return Decimal(str(client.fetch_balance()[asset]["free"]))


def test_markets_and_public_data(alice):
    markets = alice.load_markets()
    assert {"BTC/USDT", "ETH/USDT", "AAPLX/USDT"} <= set(markets)
    btc = markets["BTC/USDT"]
    assert btc["active"] is True and btc["spot"] is True
    assert Decimal(str(btc["precision"]["price"])) == Decimal("0.01")
    assert Decimal(str(btc["precision"]["amount"])) == Decimal("0.0001")
    book = alice.fetch_order_book("BTC/USDT")
    assert book["bids"] and book["asks"] and book["bids"][0][0] < book["asks"][0][0]
    assert book["asks"][0][0] - book["bids"][0][0] >= 0.04 - 1e-9  # a spread of several ticks
    ticker = alice.fetch_ticker("BTC/USDT")
    assert ticker["bid"] == book["bids"][0][0] and ticker["ask"] == book["asks"][0][0]
    assert isinstance(alice.fetch_trades("BTC/USDT"), list)
    assert isinstance(alice.fetch_ohlcv("BTC/USDT", "1m"), list)
    assert alice.fetch_time() > 0


def test_two_accounts_trade_with_each_other(alice, bob):
    alice.load_markets()
    bob.load_markets()
    usdt_before, btc_before = free(alice, "USDT"), free(alice, "BTC")
    bob_btc_before = free(bob, "BTC")
    # bob rests a sell inside the market maker's spread; alice's limit buy takes it
    ask = bob.create_order("BTC/USDT", "limit", "sell", 0.01, 61000.01)
    assert ask["status"] == "open" and ask["remaining"] == 0.01
    assert any(o["id"] == ask["id"] for o in bob.fetch_open_orders("BTC/USDT"))
    buy = alice.create_order("BTC/USDT", "limit", "buy", 0.01, 61000.01)
    assert buy["status"] == "closed" and buy["filled"] == 0.01
    assert Decimal(str(buy["cost"])) == Decimal("610.0001")
    # fees are charged in what each side receives (0.1 %): alice gets 0.01 BTC minus 0.00001
    assert free(alice, "BTC") - btc_before == Decimal("0.00999000")
    assert usdt_before - free(alice, "USDT") == Decimal("610.000100")
    assert bob_btc_before - free(bob, "BTC") == Decimal("0.01")
    mine = alice.fetch_my_trades("BTC/USDT")
    assert mine and mine[-1]["side"] == "buy" and mine[-1]["takerOrMaker"] == "taker"
    theirs = bob.fetch_my_trades("BTC/USDT")
    assert theirs[-1]["takerOrMaker"] == "maker" and theirs[-1]["order"] == ask["id"]
    assert bob.fetch_order(ask["id"], "BTC/USDT")["status"] == "closed"


def test_market_post_only_cancel_and_cancel_all(alice, bob):
    alice.load_markets()
    eth_before = free(alice, "ETH")
    market = alice.create_order("ETH/USDT", "market", "buy", 0.1)
    assert market["status"] == "closed" and market["filled"] == 0.1
    assert free(alice, "ETH") > eth_before
    post = alice.create_order("ETH/USDT", "limit", "buy", 0.1, 2900.00, params={"postOnly": True})
    assert post["status"] == "open" and post["postOnly"] is True
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        alice.create_order("ETH/USDT", "limit", "buy", 0.1, 3100.00, params={"postOnly": True})
    canceled = alice.cancel_order(post["id"], "ETH/USDT")
    assert canceled["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        alice.cancel_order(post["id"], "ETH/USDT")
    usdt_free = free(alice, "USDT")
    for price in (2800.00, 2810.00, 2820.00):
        alice.create_order("ETH/USDT", "limit", "buy", 0.1, price)
    assert free(alice, "USDT") < usdt_free
    assert len(alice.fetch_open_orders("ETH/USDT")) == 3
    result = alice.cancel_all_orders("ETH/USDT")
    assert len(result) == 3 and all(o["status"] == "canceled" for o in result)
    assert alice.fetch_open_orders("ETH/USDT") == []
    assert free(alice, "USDT") == usdt_free  # every hold released
    orders = alice.fetch_orders("ETH/USDT")
    assert {o["status"] for o in orders} >= {"closed", "canceled"}
    assert alice.fetch_order(orders[0]["id"], "ETH/USDT")["id"] == orders[0]["id"]


def test_errors_map_to_ccxt_exceptions(alice, server):
    alice.load_markets()
    with pytest.raises(ccxt.InsufficientFunds):
        alice.create_order("BTC/USDT", "limit", "buy", 100, 61000.00)
    with pytest.raises(ccxt.BadSymbol):
        alice.publicGetDepth({"symbol": "NOSUCH"})
    with pytest.raises(ccxt.BadRequest):
        alice.privatePostOrder({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "NaN", "price": "1"})
    with pytest.raises(ccxt.OrderNotFound):
        alice.fetch_order("999999999", "BTC/USDT")
    intruder = make_client(server.base, server.keys["alice"]["api_key"], "0" * 64)
    with pytest.raises(ccxt.AuthenticationError):
        intruder.fetch_balance()


def test_continuous_reconciliation_runs_beside_trading_without_false_halts(alice, server):
    """`serve` runs the reconciler (a second code path folding the journal) every few seconds;
    after the trading above it has checked the engine and found nothing to halt."""
    import time

    import httpx

    deadline = time.time() + 30
    state = {}
    while time.time() < deadline:
        state = httpx.get(server.base + "/v1/reconcile").json()
        if state.get("last_run") and state["last_run"]["seq"] > 60:
            break
        time.sleep(0.5)
    assert state["running"] is True and state["last_run"]["accounts_checked"] > 0, state
    assert state["last_run"]["mismatches"] == [] and state["errors"] == []
    assert httpx.get(server.base + "/v1/halts").json() == []
