"""Reduce-only orders can only reduce: at placement, at fill time, and while they rest (a position
that shrinks by other fills cuts them down or expires them, as Binance does)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.state import derivatives_state
from ringfence.trading.commands import CancelAll
from ringfence.trading.state import market_of

from .perpworld import PERP, order, perp_world, qty, rejected


def _size(d, owner):
    pos = derivatives_state(d.engine).positions.get((owner, PERP))
    return pos.size if pos is not None else 0


def _accepted_id(ev):
    return next(e.order_id for e in ev if type(e).__name__ == "OrderAccepted")


def test_a_resting_reduce_only_order_expires_when_its_position_closes():
    # The bug (attacker review, 2026-12-03): buy 0.001, rest a reduce-only sell 0.001, close with a
    # plain sell; the resting order used to fill later and open a 0.001 short.
    d = perp_world()
    order(d, "bob", "SELL", "60000", "0.001")
    order(d, "alice", "BUY", "60000", "0.001")
    ev = order(d, "alice", "SELL", "65000", "0.001", reduce_only=1)
    assert not rejected(ev)
    ro = _accepted_id(ev)
    order(d, "carol", "BUY", "59000", "0.001")
    ev = order(d, "alice", "SELL", "59000", "0.001")  # closes the position with a plain order
    assert _size(d, "alice") == 0
    expired = [e for e in ev if type(e).__name__ == "OrderExpired" and e.order_id == ro]
    assert expired and expired[0].reason == "REDUCE_ONLY" and expired[0].was_resting and expired[0].released > 0
    assert ro not in market_of(d.engine, PERP).orders
    order(d, "carol", "BUY", "65000", "0.001")  # nothing of alice's is left to fill
    assert _size(d, "alice") == 0
    d.engine.check_invariants()


def test_a_resting_reduce_only_order_is_cut_down_to_a_smaller_position():
    d = perp_world()
    order(d, "bob", "SELL", "60000", "0.010")
    order(d, "alice", "BUY", "60000", "0.010")
    first = _accepted_id(order(d, "alice", "SELL", "65000", "0.006", reduce_only=1))
    second = _accepted_id(order(d, "alice", "SELL", "66000", "0.004", reduce_only=1))
    order(d, "carol", "BUY", "59000", "0.007")
    ev = order(d, "alice", "SELL", "59000", "0.007")  # 0.010 -> 0.003: keep the oldest, cut to 0.003
    m = market_of(d.engine, PERP)
    amended = [e for e in ev if type(e).__name__ == "OrderAmended"]
    assert [(e.order_id, e.leaves) for e in amended] == [(first, qty("0.003"))]
    assert m.orders[first].leaves == qty("0.003") and second not in m.orders
    d.engine.check_invariants()  # the cut order's hold is its pro-rata share again
    order(d, "carol", "BUY", "66000", "0.010")
    assert _size(d, "alice") == 0  # both reduce-only orders together never went past flat
    d.engine.check_invariants()


def test_a_reduce_only_maker_fills_at_most_the_position_left_in_the_same_sweep():
    # Inside one taker's sweep the maker's plain order closes its position first; its reduce-only
    # order behind it at the same price must not fill.
    d = perp_world()
    order(d, "bob", "SELL", "60000", "0.002")
    order(d, "alice", "BUY", "60000", "0.002")
    ro = _accepted_id(order(d, "alice", "SELL", "61000", "0.002", reduce_only=1))
    assert not rejected(order(d, "alice", "SELL", "60500", "0.002"))  # a plain sell, earlier in price
    ev = order(d, "carol", "BUY", "61000", "0.004")
    assert _size(d, "alice") == 0
    assert [e.reason for e in ev if type(e).__name__ == "OrderExpired" and e.order_id == ro] == ["REDUCE_ONLY"]
    d.engine.check_invariants()


def _check_never_grows(ev, reduce_only_ids):
    """For each trade an open reduce-only order took part in: its owner's |position| did not grow."""
    changes = []
    for e in ev:
        name = type(e).__name__
        if name == "PositionChanged":
            changes.append(e)
        elif name == "Trade":
            for oid, owner in ((e.taker_order_id, e.taker_owner), (e.maker_order_id, e.maker_owner)):
                if oid in reduce_only_ids:
                    mine = [c for c in changes if c.owner == owner]
                    before = mine[0].size - mine[0].trade_qty
                    assert abs(mine[-1].size) <= abs(before), (oid, owner, before, mine[-1].size)
            changes = []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, 2**32))
def test_a_reduce_only_order_never_increases_the_position(seed):
    print("seed", seed)
    rng = random.Random(seed)
    owners = ("a1", "a2", "a3")
    d = perp_world(owners=owners, usdt=50_000)
    reduce_only_ids: set[int] = set()
    for _ in range(40):
        o = rng.choice(owners)
        if rng.random() < 0.1:
            ev = d.apply(CancelAll(o, PERP))
        else:
            ro = int(rng.random() < 0.4)
            kw = {"order_type": "MARKET"} if rng.random() < 0.2 else {}
            ev = order(d, o, rng.choice(["BUY", "SELL"]), str(rng.randint(59_990, 60_010)), f"0.00{rng.randint(1, 9)}",
                       reduce_only=ro, **kw)
            if ro:
                reduce_only_ids |= {e.order_id for e in ev if type(e).__name__ == "OrderAccepted"}
        _check_never_grows(ev, reduce_only_ids)
        d.engine.check_invariants()  # includes: open reduce-only orders fit inside their positions
