"""A perpetual in REDUCE_ONLY in the running exchange (issue 17): a real `ringfence serve --demo`, an
operator's `ringfence halts raise` on the market, and the unmodified ccxt `binanceusdm` class. A
resting bid of a flat account is expired, not filled, when a reduce-only sell reaches it; a bid
that reduces its owner's short still fills; after the operators lift the halt, bids fill again."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from api.conftest import Server  # noqa: E402
from derivatives.test_algo_live import S, _cancel_open, _cli, _contracts, _ex  # noqa: E402

PERP = "BTCUSDTPERP"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("reduce-only") / "data", chains=False)
    yield srv
    srv.stop()


def _available(ex: Any) -> Decimal:
    return Decimal(ex.fapiPrivateV2GetAccount()["availableBalance"])


def test_a_flat_accounts_resting_bid_expires_under_a_reduce_only_market(server):
    import ccxt

    alice, bob = _ex(server, "alice"), _ex(server, "bob")
    for ex in (alice, bob):
        _cancel_open(ex)
    assert _contracts(bob) == 0  # a fresh server: bob is flat
    book = bob.fetch_order_book(S)
    best_bid, best_ask = Decimal(str(book["bids"][0][0])), Decimal(str(book["asks"][0][0]))  # the demo maker's ladder
    bob_px = float(best_bid + Decimal("0.1"))  # bob's bid is the best bid, inside the maker's spread (tick 0.1)
    assert Decimal(str(bob_px)) < best_ask
    alice.create_order(S, "market", "buy", 0.01)  # alice long 0.01 from the maker's asks (the maker goes short)
    start_alice = _contracts(alice)
    assert start_alice >= 0.01
    bob_free = _available(bob)
    bid = bob.create_order(S, "limit", "buy", 0.005, bob_px)  # opens risk: fine while the market is ACTIVE
    assert bid["status"] == "open" and _available(bob) < bob_free  # its margin is held

    staff, url = str(server.data / "demo-staff.json"), ("--url", server.base)
    out = _cli("halts", "raise", "perp-ro", "--scope-kind", "market", "--scope", PERP, "--level", "REDUCE_ONLY",
               "--reason", "issue 17", "--key", staff + "#ada", *url)
    assert out.returncode == 0, out.stderr
    try:
        info = httpx.get(server.base + "/fapi/v1/exchangeInfo").json()
        assert {s["symbol"]: s["status"] for s in info["symbols"]}["BTCUSDT"] == "SETTLING"  # (was TRADING: halts ignored)
        with pytest.raises(ccxt.MarketClosed):  # a new opening order is refused (-1013)
            bob.create_order(S, "limit", "buy", 0.005, bob_px)
        # alice (long) sells reduce-only at bob's price: bob is flat, so his bid would open a long
        done = alice.create_order(S, "limit", "sell", 0.005, bob_px, {"reduceOnly": True, "timeInForce": "IOC"})
        assert done["status"] == "expired" and not done["filled"], done
        gone = bob.fetch_order(bid["id"], S)
        assert gone["status"] == "expired" and not gone["filled"], gone
        assert _contracts(bob) == 0 and bob.fetch_open_orders(S) == []
        assert _available(bob) == bob_free  # the hold came back whole
        assert _contracts(alice) == start_alice
        # the maker is short now: its bids reduce, so they fill (the reduce-only rule is not a halt on trading)
        hit = alice.create_order(S, "market", "sell", 0.004, None, {"reduceOnly": True})
        assert hit["status"] == "closed" and Decimal(str(hit["filled"])) == Decimal("0.004"), hit
        assert round(_contracts(alice) - start_alice, 6) == -0.004
    finally:
        out = _cli("halts", "lift", "perp-ro", "--reason", "checked", "--key", staff + "#ada", "--key", staff + "#ben", *url)
        assert out.returncode == 0, out.stderr
    # lifted: a resting bid of a flat account fills again, and opens its long
    bid = bob.create_order(S, "limit", "buy", 0.002, bob_px)
    done = alice.create_order(S, "limit", "sell", 0.002, bob_px, {"reduceOnly": True, "timeInForce": "IOC"})
    assert done["status"] == "closed", done
    assert bob.fetch_order(bid["id"], S)["status"] == "closed" and round(_contracts(bob), 6) == 0.002
    info = httpx.get(server.base + "/fapi/v1/exchangeInfo").json()
    assert {s["symbol"]: s["status"] for s in info["symbols"]}["BTCUSDT"] == "TRADING"
