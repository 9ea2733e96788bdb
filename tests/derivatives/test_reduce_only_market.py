"""A perpetual market that only reduces (issue 17): an operator's REDUCE_ONLY halt on the market, its
segment, its assets or the venue, or its index short of live sources. New orders that open risk
are refused by the halt guard; the resting makers must not open or grow a position either. A
maker is filled at most for the part that reduces its owner's position; a maker with nothing to
reduce is expired (`OrderExpired` reason `MARKET_REDUCE_ONLY`, its hold released through the
ledger) and the taker goes on to the next one (docs/derivatives.md, "Reduce-only market")."""

from __future__ import annotations

import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.commands import SetMarginType
from ringfence.derivatives.state import derivatives_state
from ringfence.risk.halts import Halt, market_status
from ringfence.staff import StaffKey
from ringfence.staff.desk import StaffDesk
from ringfence.trading.commands import CancelAll
from ringfence.trading.state import market_of

from tests.derivatives.perpworld import PERP, order, perp_world, qty, rejected, with_index
from tests.derivatives.test_conditional import _replays

OWNERS = ("alice", "bob", "carol", "dave", "erin")


def _size(d: Any, owner: str) -> int:
    pos = derivatives_state(d.engine).positions.get((owner, PERP))
    return pos.size if pos is not None else 0


def _held(d: Any, owner: str) -> int:
    return d.balance(owner, "USDT", "derivatives")[1]


def _expired(ev: list[Any]) -> dict[int, Any]:
    return {e.order_id: e for e in ev if type(e).__name__ == "OrderExpired"}


def _accepted(ev: list[Any]) -> int:
    return next(e.order_id for e in ev if type(e).__name__ == "OrderAccepted")


def _desk(d: Any, nonce: Any = None) -> StaffDesk:
    """Two operators, quorum 2; `nonce`: where their nonces come from (default: random)."""
    keys = [StaffKey(f"op{i}", Ed25519PrivateKey.from_private_bytes(bytes([60 + i]) * 32)) for i in range(2)]
    desk = StaffDesk(keys, lambda: d.ts_ns, nonce=nonce)
    assert not rejected(d.apply(desk.genesis({"op0": ["operator"], "op1": ["operator"]}, 2)))
    return desk


def _world(isolated: bool = False) -> Any:
    """alice long 0.01 (bob short 0.01); dave short 0.005 (erin long 0.005); carol flat."""
    d = perp_world(owners=OWNERS)
    if isolated:
        for o in OWNERS:
            assert not rejected(d.apply(SetMarginType(o, PERP, "ISOLATED")))
    for seller, buyer, q in (("bob", "alice", "0.01"), ("dave", "erin", "0.005")):
        assert not rejected(order(d, seller, "SELL", "60000", q))
        assert not rejected(order(d, buyer, "BUY", "60000", q))
    assert [_size(d, o) for o in OWNERS] == [qty("0.01"), -qty("0.01"), 0, -qty("0.005"), qty("0.005")]
    return d


@pytest.mark.parametrize("isolated", [False, True])
def test_a_resting_bid_of_a_flat_user_expires_instead_of_opening_a_long(isolated: bool) -> None:
    d = _world(isolated)
    carol_bid = _accepted(order(d, "carol", "BUY", "59000", "0.01"))  # before the halt: opens risk, fine
    assert _held(d, "carol") > 0
    wallet_before = d.balance("carol", "USDT", "derivatives")[0]
    assert not rejected(d.apply(Halt("ro", "market", PERP, "REDUCE_ONLY", "test")))
    assert market_status(d.engine, PERP) == "REDUCE_ONLY"
    assert rejected(order(d, "carol", "BUY", "59000", "0.01"))  # a new opening order is refused by the guard
    ev = order(d, "alice", "SELL", "59000", "0.01", reduce_only=1, tif="IOC")
    assert not rejected(ev), ev
    assert not [e for e in ev if type(e).__name__ == "Trade"]
    gone = _expired(ev)[carol_bid]
    assert gone.reason == "MARKET_REDUCE_ONLY" and gone.was_resting and gone.released > 0
    assert carol_bid not in market_of(d.engine, PERP).orders
    assert _size(d, "carol") == 0 and _size(d, "alice") == qty("0.01")
    assert _held(d, "carol") == 0 and d.balance("carol", "USDT", "derivatives")[0] == wallet_before
    d.engine.check_invariants()  # ledger sums, holds match open orders, longs = shorts
    _replays(d)


@pytest.mark.parametrize("isolated", [False, True])
def test_a_maker_fills_its_reducing_part_and_the_rest_expires(isolated: bool) -> None:
    d = _world(isolated)
    carol_bid = _accepted(order(d, "carol", "BUY", "59500", "0.004"))  # flat: would open a long
    dave_bid = _accepted(order(d, "dave", "BUY", "59000", "0.01"))  # short 0.005: reduces 0.005, then opens
    bob_ask = _accepted(order(d, "bob", "SELL", "61000", "0.002"))  # would grow bob's short
    assert not rejected(d.apply(Halt("ro", "segment", "derivatives", "REDUCE_ONLY", "test")))
    ev = order(d, "alice", "SELL", "58000", "0.008", reduce_only=1, tif="IOC")
    trades = [(e.maker_order_id, e.quantity) for e in ev if type(e).__name__ == "Trade"]
    assert trades == [(dave_bid, qty("0.005"))]  # carol's skipped (expired), dave's reducing part only
    expired = _expired(ev)
    assert expired[carol_bid].reason == "MARKET_REDUCE_ONLY"
    assert expired[dave_bid].reason == "MARKET_REDUCE_ONLY" and expired[dave_bid].leaves == qty("0.005")
    assert _size(d, "dave") == 0 and _size(d, "carol") == 0 and _size(d, "alice") == qty("0.005")
    assert _held(d, "dave") == 0 and _held(d, "carol") == 0
    assert rejected(order(d, "dave", "BUY", "61000", "0.001"))  # dave is flat now: an opening order is refused
    assert bob_ask in market_of(d.engine, PERP).orders  # no taker reached it: it rests, untouched
    d.engine.check_invariants()
    _replays(d)


def test_fill_or_kill_counts_only_what_makers_may_fill_while_the_market_only_reduces() -> None:
    d = _world()
    carol_bid = _accepted(order(d, "carol", "BUY", "59500", "0.01"))  # flat: may fill nothing
    dave_bid = _accepted(order(d, "dave", "BUY", "59000", "0.01"))  # short 0.005: may fill 0.005
    assert not rejected(d.apply(Halt("ro", "market", PERP, "REDUCE_ONLY", "test")))
    ev = order(d, "alice", "SELL", "58000", "0.008", reduce_only=1, tif="FOK")
    assert [(e.order_id, e.reason) for e in _expired(ev).values()] == [(_accepted(ev), "FOK_NOT_FILLABLE")]
    assert not [e for e in ev if type(e).__name__ == "Trade"] and _size(d, "alice") == qty("0.01")
    ev = order(d, "alice", "SELL", "58000", "0.005", reduce_only=1, tif="FOK")
    assert [(e.maker_order_id, e.quantity) for e in ev if type(e).__name__ == "Trade"] == [(dave_bid, qty("0.005"))]
    assert _expired(ev)[carol_bid].reason == "MARKET_REDUCE_ONLY" and _size(d, "alice") == qty("0.005")
    d.engine.check_invariants()
    _replays(d)


def test_fill_or_kill_counts_a_reduce_only_maker_after_its_owners_plain_one_fills() -> None:
    """An ACTIVE market: dave (short 0.005) rests a reduce-only bid, then a plain bid at a better
    price. A FOK sell of 0.008 would fill the plain bid (dave flat), then find the reduce-only one
    with nothing to reduce: it is not fillable (it was, counting the book's totals: a FOK order
    filled in part)."""
    d = _world()
    _accepted(order(d, "dave", "BUY", "59000", "0.005", reduce_only=1))
    _accepted(order(d, "dave", "BUY", "59500", "0.005"))
    ev = order(d, "alice", "SELL", "58000", "0.008", tif="FOK")
    assert [e.reason for e in _expired(ev).values()] == ["FOK_NOT_FILLABLE"]
    assert not [e for e in ev if type(e).__name__ == "Trade"]
    assert _size(d, "alice") == qty("0.01") and _size(d, "dave") == -qty("0.005")
    d.engine.check_invariants()


def test_a_maker_that_reduces_fills_as_before() -> None:
    d = _world()
    dave_bid = _accepted(order(d, "dave", "BUY", "59000", "0.003"))  # short 0.005: all of it reduces
    assert not rejected(d.apply(Halt("ro", "venue", "*", "REDUCE_ONLY", "test")))
    ev = order(d, "alice", "SELL", "59000", "0.003", reduce_only=1)
    assert [(e.maker_order_id, e.quantity) for e in ev if type(e).__name__ == "Trade"] == [(dave_bid, qty("0.003"))]
    assert _size(d, "dave") == -qty("0.002") and _size(d, "alice") == qty("0.007")
    d.engine.check_invariants()


def test_after_the_lift_resting_orders_open_risk_again() -> None:
    d = _world()
    desk = _desk(d)
    carol_bid = _accepted(order(d, "carol", "BUY", "59000", "0.002"))
    assert not rejected(d.apply(Halt("ro", "asset", "USDT", "REDUCE_ONLY", "test")))
    assert not rejected(d.apply(desk.lift(d.engine, "ro", "checked", ["op0", "op1"])))
    assert market_status(d.engine, PERP) == "ACTIVE"
    ev = order(d, "alice", "SELL", "59000", "0.002", reduce_only=1)
    assert [e.maker_order_id for e in ev if type(e).__name__ == "Trade"] == [carol_bid]
    assert _size(d, "carol") == qty("0.002")
    d.engine.check_invariants()
    _replays(d)


def test_an_index_short_of_sources_makes_makers_reduce_only_too() -> None:
    """The index's automatic REDUCE_ONLY (fewer than `min_sources` live quotes): the perpetual's
    index symbol is halted, and the perpetual only reduces, its resting makers included."""
    d = _world()
    quote = with_index(d)
    quote("60000")
    carol_bid = _accepted(order(d, "carol", "BUY", "59000", "0.002"))
    d.ts_ns += 3601 * 10**9  # the only venue goes stale: the index is short of sources
    ev = order(d, "alice", "SELL", "59000", "0.002", tif="IOC")  # purely reducing: accepted
    assert not rejected(ev), ev
    assert derivatives_state(d.engine).perps[PERP].index_symbol == "BTCUSDT"
    assert _expired(ev)[carol_bid].reason == "MARKET_REDUCE_ONLY" and _size(d, "carol") == 0
    quote("60000")  # the source is live again: makers may open risk
    carol_bid = _accepted(order(d, "carol", "BUY", "59000", "0.002"))
    ev = order(d, "alice", "SELL", "59000", "0.002", tif="IOC")
    assert [e.maker_order_id for e in ev if type(e).__name__ == "Trade"] == [carol_bid]
    assert _size(d, "carol") == qty("0.002")
    d.engine.check_invariants()
    _replays(d)


# ------------------------------------------------------------------------------ the property

_SCOPES = (("market", PERP), ("segment", "derivatives"), ("asset", "USDT"), ("asset", "BTC"), ("venue", "*"))


def _grew(ev: list[Any]) -> list[Any]:
    """The position changes among `ev` that opened or grew a position."""
    return [e for e in ev if type(e).__name__ == "PositionChanged" and abs(e.size) > abs(e.size - e.trade_qty)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, 2**32), hs.sampled_from(range(len(_SCOPES))), hs.booleans())
def test_no_position_grows_while_its_market_only_reduces(seed: int, scope: int, isolated_some: bool) -> None:
    """Random order streams (plain and reduce-only, limit and market, cancels) with the market put in
    REDUCE_ONLY and lifted now and then: while it only reduces, no fill opens or grows a position —
    every `PositionChanged` leaves |size| no larger — and the invariants hold after every command;
    the whole run replays to the same state hash."""
    print("seed", seed)
    rng = random.Random(seed)
    owners = ("a1", "a2", "a3", "a4")
    d = perp_world(owners=owners, usdt=50_000)
    desk = _desk(d)
    if isolated_some:
        for o in owners[:2]:
            assert not rejected(d.apply(SetMarginType(o, PERP, "ISOLATED")))
    kind, where = _SCOPES[scope]
    halts = 0
    reducing = False
    for _ in range(60):
        r = rng.random()
        if r < 0.08:
            if reducing:
                assert not rejected(d.apply(desk.lift(d.engine, f"h{halts}", "checked", ["op0", "op1"])))
            else:
                halts += 1
                assert not rejected(d.apply(Halt(f"h{halts}", kind, where, "REDUCE_ONLY", "property")))
            reducing = not reducing
            assert (market_status(d.engine, PERP) == "REDUCE_ONLY") == reducing
            continue
        o = rng.choice(owners)
        if r < 0.15:
            ev = d.apply(CancelAll(o, PERP))
        else:
            size = _size(d, o)
            ro = int(rng.random() < 0.5)
            side = rng.choice(["BUY", "SELL"])
            if ro and size and rng.random() < 0.8:
                side = "SELL" if size > 0 else "BUY"  # mostly a reduce-only order that can be placed
            kw = {"order_type": "MARKET"} if rng.random() < 0.2 else {}
            ev = order(d, o, side, str(rng.randint(59_990, 60_010)), f"0.00{rng.randint(1, 9)}", reduce_only=ro, **kw)
        grew = _grew(ev)
        if reducing:
            assert not grew, (seed, grew)
        d.engine.check_invariants()
    _replays(d)


def test_the_property_sees_a_growing_position() -> None:
    """The property's check can fail: an opening fill is a `PositionChanged` that grows |size|."""
    d = perp_world()
    order(d, "bob", "SELL", "60000", "0.001")
    assert _grew(order(d, "alice", "BUY", "60000", "0.001"))
