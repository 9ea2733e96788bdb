"""Take-profit and trailing-stop orders in the running exchange: a real `ringfence serve --demo`,
driven with the unmodified ccxt `binanceusdm` class through `/fapi/v1/algoOrder`,
`/fapi/v1/openAlgoOrders` and `/fapi/v1/algoOpenOrders`. The price moves by trades between two
other account's own orders (bob buys and sells to himself; the demo runs no index feed here, so the
mark price is the last trade)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from api.conftest import Server  # noqa: E402
from derivatives.test_fapi_live import Client, make_usdm, watching  # noqa: E402

S = "BTC/USDT:USDT"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("algo") / "data", chains=False)
    yield srv
    srv.stop()


def _ex(server: Server, who: str) -> Any:
    ex = make_usdm(server.base, server.keys[who]["api_key"], server.keys[who]["api_secret"])
    ex.load_markets()
    return ex


def _trade(a: Any, b: Any, px: float, q: float = 0.001) -> None:
    """A trade at `px`: `a` bids (the best bid), `b` sells into it."""
    a.create_order(S, "limit", "buy", q, px)
    done = b.create_order(S, "limit", "sell", q, px)
    assert done["status"] == "closed", done


def _clear_ladder(bob: Any) -> None:
    """bob takes the demo market maker's ladder on both sides (0.75 BTC each, around 61,000), so
    the book is empty and two accounts' own orders set the price."""
    bob.create_order(S, "market", "sell", 0.75)
    bob.create_order(S, "market", "buy", 0.75)
    book = bob.fetch_order_book(S)
    assert book["bids"] == [] and book["asks"] == [], book


def _status(ex: Any, algo_id: str) -> str:
    return ex.fetch_order(algo_id, S, {"trigger": True})["info"]["algoStatus"]


def _wait_status(ex: Any, algo_id: str, want: str, timeout_s: float = 30) -> dict:
    # 30 s, not 5: a trigger is checked every 100 ms, but three xdist workers on two cores (CI) can hold
    # the checker and each fetch back for seconds; the wait ends as soon as the status is seen
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        o = ex.fetch_order(algo_id, S, {"trigger": True})
        if o["info"]["algoStatus"] == want:
            return o
        time.sleep(0.1)
    raise AssertionError(f"algo order {algo_id} is {_status(ex, algo_id)}, not {want}")


def _contracts(ex: Any) -> float:
    return sum(p["contracts"] * (1 if p["side"] == "long" else -1) for p in ex.fetch_positions([S]) if p["contracts"])


def test_ccxt_take_profit_market_and_limit_trigger_the_other_way_from_a_stop(server):
    import ccxt

    alice, bob = _ex(server, "alice"), _ex(server, "bob")
    assert {"TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"} <= set(alice.market(S)["info"]["orderTypes"])
    _clear_ladder(bob)
    _trade(alice, bob, 60000, 0.01)  # alice long 0.01; the last trade 60,000
    # a take-profit below the price would fire at once: -2021, the price a decimal string
    with pytest.raises(ccxt.BaseError) as err:
        alice.create_order(S, "market", "sell", 0.01, None, {"takeProfitPrice": 59000, "reduceOnly": True})
    assert "-2021" in str(err.value) and "60000" in str(err.value) and "60000000000" not in str(err.value), err.value
    tp = alice.create_order(S, "market", "sell", 0.01, None, {"takeProfitPrice": 61000, "reduceOnly": True})
    assert (tp["status"], tp["type"], tp["triggerPrice"], tp["reduceOnly"]) == ("open", "market", 61000, True)
    assert (tp["info"]["orderType"], tp["info"]["algoStatus"]) == ("TAKE_PROFIT_MARKET", "NEW")
    # a take-profit limit to cancel: ccxt reads the cancelled status from the answer itself
    tpl = alice.create_order(S, "limit", "sell", 0.01, 62100, {"takeProfitPrice": 62000, "reduceOnly": True})
    assert tpl["info"]["orderType"] == "TAKE_PROFIT" and tpl["price"] == 62100
    assert sorted(o["id"] for o in alice.fetch_open_orders(S, params={"trigger": True})) == sorted([tp["id"], tpl["id"]])
    gone = alice.cancel_order(tpl["id"], S, {"trigger": True})
    assert gone["status"] == "canceled" and gone["id"] == tpl["id"], gone
    assert alice.fetch_order(tpl["id"], S, {"trigger": True})["status"] == "canceled"
    assert [o["id"] for o in alice.fetch_open_orders(S, params={"trigger": True})] == [tp["id"]]
    # no margin is held for it: a working order list without it, an untouched available balance
    assert [o for o in alice.fetch_open_orders(S) if o["id"] == tp["id"]] == []
    # the price rises toward the trigger: 60,990 leaves it waiting; bob bids, then 61,000 fires it
    _trade(bob, bob, 60990)
    assert _status(alice, tp["id"]) == "NEW"
    bob.create_order(S, "limit", "buy", 0.01, 60950)
    _trade(bob, bob, 61000)
    done = _wait_status(alice, tp["id"], "FINISHED")
    actual = done["info"]["actualOrderId"]
    assert actual and actual != tp["id"] and done["status"] == "closed"
    assert (Decimal(done["info"]["actualPrice"]), Decimal(done["info"]["actualQty"])) == (Decimal("60950"), Decimal("0.01"))
    sold = [t for t in alice.fetch_my_trades(S) if t["order"] == actual]
    assert [(t["side"], t["amount"], t["price"]) for t in sold] == [("sell", 0.01, 60950)]
    assert _contracts(alice) == 0
    assert alice.fetch_open_orders(S, params={"trigger": True}) == []


def test_ccxt_trailing_stop_follows_the_high_survives_a_restart_and_fires_on_the_callback(server):
    import ccxt

    alice, bob = _ex(server, "alice"), _ex(server, "bob")
    assert bob.fetch_open_orders(S) == [] and alice.fetch_open_orders(S) == []  # the book is empty
    _trade(alice, bob, 60000, 0.01)  # alice long 0.01 again
    # callbackRate outside 0.1..10 %: refused naming the field
    with pytest.raises(ccxt.BaseError) as err:
        alice.create_order(S, "market", "sell", 0.01, None, {"trailingPercent": 11, "reduceOnly": True})
    assert "callbackRate" in str(err.value) and "-1100" in str(err.value), err.value
    # an activation price already reached would fire at once
    with pytest.raises(ccxt.BaseError) as err:
        alice.create_order(S, "market", "sell", 0.01, None, {"trailingPercent": 1, "trailingTriggerPrice": 59000, "reduceOnly": True})
    assert "-2021" in str(err.value) and "activatePrice 59000" in str(err.value), err.value
    trail = alice.create_order(S, "market", "sell", 0.01, None, {"trailingPercent": 2, "trailingTriggerPrice": 61000,
                                                                  "reduceOnly": True, "workingType": "MARK_PRICE"})
    info = trail["info"]
    assert (info["orderType"], info["callbackRate"], Decimal(info["activatePrice"]), info["workingType"]) == (
        "TRAILING_STOP_MARKET", "2", Decimal("61000"), "MARK_PRICE"), info
    # a 3 % fall before activation does nothing; 61,000 activates it; the high becomes 62,000
    _trade(bob, bob, 59000)
    _trade(bob, bob, 61000)
    _trade(bob, bob, 62000)
    assert _status(alice, trail["id"]) == "NEW"

    # the server stops and starts again on the same data: the order is still there, with its high
    assert server.stop() == 0
    replays = [subprocess.run([sys.executable, "-m", "ringfence.cli", "journal", "replay", str(server.data), *flag],
                              capture_output=True, text=True, timeout=300) for flag in ((), ("--from-snapshot",))]
    hashes = []
    for r in replays:
        assert r.returncode == 0 and "DIFFERS" not in r.stdout, r.stdout + r.stderr
        hashes += re.findall(r"state hash\s*│?\s*([0-9a-f]{64})", r.stdout)
    assert len(hashes) == 2 and hashes[0] == hashes[1], [r.stdout for r in replays]
    again = Server(server.data, chains=False)
    server.proc, server.base, server.keys, server.log = again.proc, again.base, again.keys, again.log  # the fixture stops it
    alice, bob = _ex(server, "alice"), _ex(server, "bob")
    assert [o["id"] for o in alice.fetch_open_orders(S, params={"trigger": True})] == [trail["id"]]
    # the restarted demo lays its market maker's ladder around 61,000 again: trading through it stays
    # above 60,760 (2 % off the high of 62,000 the order kept across the restart)
    _clear_ladder(bob)
    assert _status(alice, trail["id"]) == "NEW"
    _trade(bob, bob, 60770)
    assert _status(alice, trail["id"]) == "NEW"
    bob.create_order(S, "limit", "buy", 0.01, 60700)
    _trade(bob, bob, 60760)
    done = _wait_status(alice, trail["id"], "FINISHED")
    assert Decimal(done["info"]["actualPrice"]) == Decimal("60700"), done["info"]
    assert _contracts(alice) == 0


def test_cancel_every_open_algo_order_and_the_edge_checks(server):
    alice = _ex(server, "alice")
    http = Client(server, "alice")
    base = {"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL"}
    refusals = [
        ({"type": "TRAILING_STOP_MARKET", "quantity": "0.01"}, -1102, "callbackRate"),
        ({"type": "TRAILING_STOP_MARKET", "quantity": "0.01", "callbackRate": "1.005"}, -1111, "callbackRate"),
        ({"type": "TRAILING_STOP_MARKET", "quantity": "0.01", "callbackRate": "0.09"}, -1100, "callbackRate"),
        ({"type": "TRAILING_STOP_MARKET", "closePosition": "true", "callbackRate": "1"}, -4136, "TRAILING_STOP_MARKET"),
        ({"type": "TAKE_PROFIT_MARKET", "quantity": "0.01"}, -1102, "triggerPrice"),
        ({"type": "TAKE_PROFIT_MARKET", "quantity": "0.01", "triggerPrice": "70000", "callbackRate": "1"}, -1106, "callbackRate"),
        ({"type": "TAKE_PROFIT_MARKET", "quantity": "0.01", "triggerPrice": "70000.0000001"}, -1111, "triggerPrice"),
        ({"type": "TAKE_PROFIT_MARKET", "quantity": "0.01", "triggerPrice": "70000.01"}, -4014, "triggerPrice"),
        ({"type": "TAKE_PROFIT_MARKET", "quantity": "0.0105", "triggerPrice": "70000"}, -4023, "quantity"),
        ({"type": "TAKE_PROFIT_MARKET", "closePosition": "true", "quantity": "0.01", "triggerPrice": "70000"}, -4137, "quantity"),
        ({"type": "TAKE_PROFIT_MARKET", "closePosition": "true", "reduceOnly": "true", "triggerPrice": "70000"}, -1106, "reduceOnly"),
        ({"type": "TAKE_PROFIT", "quantity": "0.01", "triggerPrice": "70000"}, -1102, "price"),
        ({"type": "TAKE_PROFIT_MARKET", "quantity": "0.01", "triggerPrice": "70000", "workingType": "INDEX_PRICE"}, -1100, "workingType"),
        ({"type": "TAKE_PROFIT_LIMIT", "quantity": "0.01", "triggerPrice": "70000"}, -1116, "TAKE_PROFIT_LIMIT"),
    ]
    for extra, code, field in refusals:
        r = http.call("POST", "/fapi/v1/algoOrder", base | extra)
        assert r.status_code == 400 and r.json()["code"] == code and field in r.json()["msg"], (extra, r.text)
    assert alice.fetch_open_orders(S, params={"trigger": True}) == []
    # closePosition with no position is accepted (it expires if there is still none when it fires)
    ids = [alice.create_order(S, "market", "sell", None, None, {"takeProfitPrice": 90000, "closePosition": True})["id"],
           alice.create_order(S, "market", "buy", 0.01, None, {"trailingPercent": 0.5})["id"]]
    assert sorted(o["id"] for o in alice.fetch_open_orders(S, params={"trigger": True})) == sorted(ids)
    alice.cancel_all_orders(S, {"trigger": True})
    assert alice.fetch_open_orders(S, params={"trigger": True}) == []
    assert {alice.fetch_order(i, S, {"trigger": True})["status"] for i in ids} == {"canceled"}


def test_algo_updates_reach_ccxt_pro_watch_orders(server):
    """Binance's ALGO_UPDATE on the futures user stream: ccxt pro's watchOrders sees a conditional
    order placed (open, its algo id) and cancelled (canceled)."""
    import asyncio
    from urllib.parse import urlsplit

    import ccxt.pro

    E = "ETH/USDT:USDT"
    raw = Client(server, "alice")

    async def run() -> None:
        ex = ccxt.pro.binanceusdm({"apiKey": raw.key, "secret": raw.secret,
                                   "options": {"fetchCurrencies": False, "adjustForTimeDifference": False, "fetchMargins": False}})
        for name, url in list(ex.urls["api"].items()):
            if isinstance(url, str):
                ex.urls["api"][name] = server.base + urlsplit(url).path
        ex.urls["api"]["ws"]["linear"] = server.base.replace("http://", "ws://") + "/ws"
        try:
            await ex.load_markets()
            orders = asyncio.create_task(ex.watch_orders(E))
            await watching(ex, f"orders:{E}", orders)
            tp = await ex.create_order(E, "market", "sell", 0.01, None, {"takeProfitPrice": 9000})
            seen = await asyncio.wait_for(orders, 10)
            assert [(o["id"], o["status"], o["info"]["o"], o["triggerPrice"]) for o in seen] == [(tp["id"], "open", "TAKE_PROFIT_MARKET", 9000.0)]
            orders = asyncio.create_task(ex.watch_orders(E))
            await watching(ex, f"orders:{E}", orders)
            await ex.cancel_order(tp["id"], E, {"trigger": True})
            seen = await asyncio.wait_for(orders, 10)
            assert [(o["id"], o["status"]) for o in seen] == [(tp["id"], "canceled")]
        finally:
            await ex.close()

    asyncio.run(run())


def test_algo_orders_over_the_market_filters_are_refused_when_placed_like_a_plain_order(server):
    """exchangeInfo's LOT_SIZE maxQty and PRICE_FILTER maxPrice hold at placement (not only when
    the order fires): the plain order's codes, the field named as sent, nothing opened."""
    c = Client(server, "alice")
    info = c.http.get("/fapi/v1/exchangeInfo").json()
    filters = {f["filterType"]: f for f in next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")["filters"]}
    max_qty, max_price = Decimal(filters["LOT_SIZE"]["maxQty"]), Decimal(filters["PRICE_FILTER"]["maxPrice"])
    step, tick = Decimal(filters["LOT_SIZE"]["stepSize"]), Decimal(filters["PRICE_FILTER"]["tickSize"])
    assert Decimal(filters["MARKET_LOT_SIZE"]["maxQty"]) == max_qty
    over_qty, over_price = format(max_qty + step, "f"), format(max_price + tick, "f")
    base = dict(algoType="CONDITIONAL", symbol="BTCUSDT", side="SELL")

    def place(**kw: str) -> dict:
        r = c.call("POST", "/fapi/v1/algoOrder", dict(base, **kw))
        assert r.status_code == 400, (kw, r.status_code, r.text)
        return r.json()

    before = c.call("GET", "/fapi/v1/openAlgoOrders", {"symbol": "BTCUSDT"}).json()
    for kw in (dict(type="STOP_MARKET", quantity=over_qty, triggerPrice="50000"),
               dict(type="STOP_MARKET", quantity="10000000000000001", triggerPrice="50000"),
               dict(type="TAKE_PROFIT", quantity=over_qty, triggerPrice="70000", price="70000"),
               dict(type="TRAILING_STOP_MARKET", quantity=over_qty, callbackRate="1")):
        err = place(**kw)
        assert err["code"] == -1013 and "LOT_SIZE" in err["msg"] and "quantity" in err["msg"], (kw, err)
    # the plain order's answer for the same filter is the same code and text
    plain = {"code": -1013, "msg": "Filter failure: LOT_SIZE"}
    assert place(type="STOP_MARKET", quantity=over_qty, triggerPrice="50000")["msg"].startswith(plain["msg"])
    for kw, field in ((dict(type="STOP_MARKET", quantity="0.01", triggerPrice=over_price), "triggerPrice"),
                      (dict(type="STOP", quantity="0.01", triggerPrice="50000", price=over_price), "price"),
                      (dict(type="TRAILING_STOP_MARKET", quantity="0.01", callbackRate="1", activatePrice=over_price), "activatePrice")):
        err = place(**kw)
        assert err["code"] == -1100 and field in err["msg"], (kw, err)
    plain_err = c.call("POST", "/fapi/v1/order", dict(symbol="BTCUSDT", side="SELL", type="LIMIT", timeInForce="GTC",
                                                       quantity="0.01", price=over_price)).json()
    assert plain_err["code"] == -1100 and "price" in plain_err["msg"], plain_err
    assert c.call("GET", "/fapi/v1/openAlgoOrders", {"symbol": "BTCUSDT"}).json() == before


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120)


def _cancel_open(ex: Any) -> None:
    for o in ex.fetch_open_orders(S):
        ex.cancel_order(o["id"], S)


def test_a_venue_reduce_only_halt_holds_a_risk_increasing_algo_order_and_fires_a_reduce_only_one(server):
    """The review's scenario (halts were checked on the incoming command only, so a conditional
    order fired through them): under a venue-wide REDUCE_ONLY halt a direct opening order is refused
    (-1013); a reached reduce-only stop fires; a reached opening take-profit is held open (it would
    grow alice's long) and fires after the operators lift the halt, the price still beyond it."""
    import ccxt

    alice, bob = _ex(server, "alice"), _ex(server, "bob")
    for ex in (alice, bob):
        _cancel_open(ex)
        ex.cancel_all_orders(S, {"trigger": True})
    book = bob.fetch_order_book(S)
    if book["bids"] or book["asks"]:  # run alone: the demo market maker's ladder is still there
        _clear_ladder(bob)
    start_alice = _contracts(alice)
    _trade(alice, bob, 60000, 0.01)  # alice long 0.01 more, bob short 0.01 more; the last trade 60,000
    bob.create_order(S, "limit", "buy", 0.005, 57000)  # the bid alice's stop sells into (with the reduce-only buy below, within bob's short)
    bob.create_order(S, "limit", "sell", 0.02, 58500)  # the ask alice's take-profit would buy from
    alice.create_order(S, "limit", "sell", 0.002, 58000)  # the ask bob's reduce-only buy takes under the halt
    opening = alice.create_order(S, "market", "buy", 0.01, None, {"takeProfitPrice": 59000, "workingType": "MARK_PRICE"})
    closing = alice.create_order(S, "market", "sell", 0.004, None, {"stopLossPrice": 59000, "reduceOnly": True,
                                                                     "workingType": "MARK_PRICE"})
    assert (opening["info"]["orderType"], closing["info"]["orderType"]) == ("TAKE_PROFIT_MARKET", "STOP_MARKET")
    staff, url = str(server.data / "demo-staff.json"), ("--url", server.base)
    out = _cli("halts", "raise", "algo-ro", "--scope-kind", "venue", "--scope", "*", "--level", "REDUCE_ONLY",
               "--reason", "review scenario", "--key", staff + "#ada", *url)
    assert out.returncode == 0, out.stderr
    try:
        with pytest.raises(ccxt.MarketClosed):  # -1013 "Market is closed."
            alice.create_order(S, "market", "buy", 0.01)
        # the price falls through both triggers: bob (short) buys reduce-only from alice's ask
        bob.create_order(S, "limit", "buy", 0.002, 58000, {"reduceOnly": True})
        done = _wait_status(alice, closing["id"], "FINISHED")
        assert done["info"]["actualOrderId"] and Decimal(done["info"]["actualPrice"]) == Decimal("57000")
        held = round(_contracts(alice) - start_alice, 6)
        assert held == 0.004, held  # 0.01 - 0.002 (its ask) - 0.004 (the stop)
        time.sleep(1.5)  # fifteen checks of the conditional orders: the take-profit stays held
        assert _status(alice, opening["id"]) == "NEW"
        assert round(_contracts(alice) - start_alice, 6) == 0.004
    finally:
        out = _cli("halts", "lift", "algo-ro", "--reason", "checked", "--key", staff + "#ada", "--key", staff + "#ben", *url)
        assert out.returncode == 0, out.stderr
    # the conditional orders are checked before a command (this server runs no index feed, so
    # nothing else is journaled now): any command after the lift is the first check that sees it
    time.sleep(0.2)
    bob.create_order(S, "limit", "sell", 0.001, 65000)
    done = _wait_status(alice, opening["id"], "FINISHED")
    assert Decimal(done["info"]["actualPrice"]) == Decimal("58500")
    assert round(_contracts(alice) - start_alice, 6) == 0.014
    for ex in (alice, bob):
        _cancel_open(ex)
