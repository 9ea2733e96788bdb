"""Halts hold conditional (algo) orders (derivatives/conditional.py, "Halts"): a reached trigger
fires only if the order it places would pass the halt guard as a direct `PlacePerpOrder` (the
guard's own check, `risk.halts.refusal_of`). Held, it stays open and fires after the lift if its
price is still beyond the trigger; a REDUCE_ONLY halt fires reduce-only / close_position orders
and holds the others. Every scenario replays to the same state hash."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.commands import ConditionalOrderTriggered, PlaceConditionalOrder
from ringfence.derivatives.conditional import CHECK_EVERY_NS, as_direct_order
from ringfence.derivatives.state import derivatives_state
from ringfence.risk.halts import Halt, halts_of, refusal_of
from ringfence.staff import StaffKey
from ringfence.staff.desk import StaffDesk

from tests.derivatives.perpworld import PERP, order, perp_world, price, qty, rejected, with_index
from tests.derivatives.test_conditional import _replays, _size


def _fired(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, ConditionalOrderTriggered)]


def _desk(d: Any) -> StaffDesk:
    keys = [StaffKey(f"op{i}", Ed25519PrivateKey.from_private_bytes(bytes([40 + i]) * 32)) for i in range(2)]
    desk = StaffDesk(keys, lambda: d.ts_ns)
    assert not rejected(d.apply(desk.genesis({"op0": ["operator"], "op1": ["operator"]}, 2)))
    return desk


def _lift(d: Any, desk: StaffDesk, halt_id: str) -> None:
    assert not rejected(d.apply(desk.lift(d.engine, halt_id, "checked", ["op0", "op1"])))


def _world() -> tuple[Any, Any, StaffDesk]:
    """alice long 0.01 at 60000, the mark at 60000 (one index venue), carol bidding 53000 and bob
    offering 54500 for whatever fires."""
    d = perp_world()
    quote = with_index(d)
    desk = _desk(d)  # (after the index: staff genesis makes its admin commands need approvals)
    quote("60000")
    assert not rejected(order(d, "bob", "SELL", "60000", "0.01"))
    assert not rejected(order(d, "alice", "BUY", "60000", "0.01"))
    assert not rejected(order(d, "carol", "BUY", "53000", "0.05"))
    assert not rejected(order(d, "bob", "SELL", "54500", "0.05"))
    assert _size(d, "alice") == qty("0.01")
    return d, quote, desk


def _algo(d: Any, side: str, typ: str, trigger: str, **kw: Any) -> int:
    ev = d.apply(PlaceConditionalOrder("alice", PERP, side, typ, trigger_price=price(trigger), working_type="MARK_PRICE", **kw))
    assert not rejected(ev), ev
    return int(ev[0].algo_id)


def _next_check(d: Any, quote: Any, px: str) -> list[Any]:
    d.ts_ns += CHECK_EVERY_NS
    return quote(px)


def test_a_halted_market_holds_a_reached_stop_open_and_it_fires_after_the_lift():
    d, quote, desk = _world()
    algo = _algo(d, "SELL", "STOP_MARKET", "55000", quantity=qty("0.02"))  # not reduce-only: would flip alice short
    assert not rejected(d.apply(Halt("h", "market", PERP, "HALTED", "incident")))
    assert rejected(order(d, "alice", "SELL", "53000", "0.02", order_type="MARKET"))  # a direct order is refused ...
    assert not _fired(quote("54000"))
    for _ in range(3):
        assert not _fired(_next_check(d, quote, "54000"))  # ... and the reached stop does not fire
    assert algo in derivatives_state(d.engine).conditional  # still open, unchanged
    assert _size(d, "alice") == qty("0.01")
    _lift(d, desk, "h")
    [t] = _fired(_next_check(d, quote, "54000"))  # the first check after the lift, the price still beyond it
    assert t.algo_id == algo and t.order_id and not t.reason
    assert _size(d, "alice") == -qty("0.01")
    assert not derivatives_state(d.engine).conditional
    _replays(d)


def test_a_held_stop_whose_price_came_back_before_the_lift_does_not_fire_then():
    d, quote, desk = _world()
    algo = _algo(d, "SELL", "STOP_MARKET", "55000", quantity=qty("0.01"), reduce_only=1)
    assert not rejected(d.apply(Halt("h", "segment", "derivatives", "HALTED", "incident")))
    quote("54000")
    assert not _fired(_next_check(d, quote, "54000"))
    quote("56000")
    _lift(d, desk, "h")
    assert not _fired(_next_check(d, quote, "56000"))
    assert algo in derivatives_state(d.engine).conditional
    _replays(d)


def test_a_venue_reduce_only_halt_fires_reduce_only_and_close_position_orders_and_holds_opening_ones():
    d, quote, desk = _world()
    opening = _algo(d, "BUY", "TAKE_PROFIT_MARKET", "55000", quantity=qty("0.01"))  # would grow the long
    closing = _algo(d, "SELL", "STOP_MARKET", "55000", quantity=qty("0.005"), reduce_only=1)
    closer = _algo(d, "SELL", "STOP_MARKET", "55000", close_position=1)
    # Under REDUCE_ONLY a maker fills only what reduces its owner's position (issue 17): flat
    # carol's bid would open a long, so it is expired; short bob's bid behind it takes alice's sells.
    assert not rejected(order(d, "bob", "BUY", "53000", "0.01"))
    assert not rejected(d.apply(Halt("r", "venue", "*", "REDUCE_ONLY", "incident")))
    assert not _fired(quote("54000"))  # the mark moves now; the next check sees it
    ev = _next_check(d, quote, "54000")
    fired = _fired(ev)
    assert [t.algo_id for t in fired] == [closing, closer]
    assert all(t.order_id and not t.reason for t in fired)
    assert _size(d, "alice") == 0 and _size(d, "bob") == 0 and _size(d, "carol") == 0  # reduced, never grown
    assert [e.owner for e in ev if type(e).__name__ == "OrderExpired" and e.reason == "MARKET_REDUCE_ONLY"] == ["carol"]
    assert list(derivatives_state(d.engine).conditional) == [opening]
    assert not _fired(_next_check(d, quote, "54000"))
    _lift(d, desk, "r")
    [t] = _fired(_next_check(d, quote, "54000"))
    assert t.algo_id == opening and _size(d, "alice") == qty("0.01")
    _replays(d)


def test_the_trigger_asks_the_guard_about_the_order_a_client_would_send():
    d, quote, desk = _world()
    _algo(d, "SELL", "STOP", "55000", quantity=qty("0.01"), price=price("54000"), reduce_only=1)
    [o] = derivatives_state(d.engine).conditional.values()
    direct = as_direct_order(o)
    assert (direct.order_type, direct.side, direct.price, direct.reduce_only) == ("LIMIT", "SELL", price("54000"), 1)
    assert refusal_of(d.engine, direct) is None
    assert not rejected(d.apply(Halt("a", "asset", "BTC", "HALTED", "incident")))
    refused = refusal_of(d.engine, direct)
    assert refused is not None and "asset BTC is HALTED" in str(refused)
    assert halts_of(d.engine).active


# ------------------------------------------------------------------------------ the property

_SCOPES = [("market", PERP), ("segment", "derivatives"), ("asset", "BTC"), ("venue", "*"), ("market", "BTCUSDT")]
_PRICES = ["50000", "54000", "57000", "60000", "63000", "66000"]
_algo_step = hs.tuples(hs.sampled_from(["BUY", "SELL"]), hs.sampled_from(["STOP_MARKET", "TAKE_PROFIT_MARKET"]),
                       hs.sampled_from(["52000", "56000", "58000", "62000", "64000"]), hs.sampled_from(["plain", "reduce", "close"]))
_during_step = hs.one_of(hs.tuples(hs.just("quote"), hs.sampled_from(_PRICES)),
                         hs.tuples(hs.just("book"), hs.sampled_from(["BUY", "SELL"]), hs.sampled_from(["50000", "55000", "60000", "65000"])),
                         hs.tuples(hs.just("algo"), _algo_step))


def _covered(d: Any) -> int:
    """The most severe level that covers the perpetual's trading now (0: none)."""
    st = halts_of(d.engine)
    return max(st.level_at(k, s) for k, s in _SCOPES[:4])


@settings(max_examples=100, deadline=None)
@given(hs.lists(_algo_step, min_size=1, max_size=6), hs.sampled_from(range(len(_SCOPES))),
       hs.sampled_from(["HALTED", "REDUCE_ONLY", "WITHDRAWALS_PAUSED"]), hs.lists(_during_step, min_size=1, max_size=10),
       hs.booleans(), hs.lists(hs.sampled_from(_PRICES), max_size=3))
def test_no_conditional_order_grows_a_position_while_a_halt_makes_its_market_reduce_only_or_halted(algos, scope, level, during, lift, after):
    """Conditional orders placed, a halt raised, then quotes (the mark moves and the orders are
    checked), others' orders and more conditional orders; the halt lifted or not; more quotes.
    While the halt covers the perpetual: HALTED changes no position; under REDUCE_ONLY no position
    grows — alice's conditional orders never grow hers, and bob's and carol's resting orders from
    before the halt fill only for what reduces their own positions (the rest is expired: issue 17,
    docs/derivatives.md "Reduce-only market")."""
    d, quote, desk = _world()

    def place(step: tuple[str, str, str, str]) -> None:
        side, typ, trig, flag = step
        # (a plain order of 0.03 grows alice's 0.01 long whichever side it is)
        kw: dict[str, Any] = ({"close_position": 1} if flag == "close" else {"quantity": qty("0.01"), "reduce_only": 1}
                              if flag == "reduce" else {"quantity": qty("0.03")})
        d.apply(PlaceConditionalOrder("alice", PERP, side, typ, trigger_price=price(trig), working_type="MARK_PRICE", **kw))

    def tick(px: str) -> None:
        d.ts_ns += CHECK_EVERY_NS
        try:
            quote(px)
        except AssertionError as refused:  # a HALTED venue (or BTC) refuses the quote itself
            assert "RF_HALTED" in str(refused), refused

    for a in algos:
        place(a)
    kind, where = _SCOPES[scope]
    assert not rejected(d.apply(Halt("h", kind, where, level, "property")))
    covered = _covered(d)
    for step in during:
        before = {o: abs(_size(d, o)) for o in ("alice", "bob", "carol")}
        if step[0] == "quote":
            tick(step[1])
        elif step[0] == "algo":
            place(step[1])
        else:
            _, side, px = step
            order(d, "carol" if side == "BUY" else "bob", side, px, "0.01")
        if covered >= 3:  # HALTED: no position changes at all
            assert {o: abs(_size(d, o)) for o in before} == before, step
        elif covered >= 2:
            assert all(abs(_size(d, o)) <= before[o] for o in before), (step, before)
    if lift:
        _lift(d, desk, "h")
    for px in after:
        tick(px)
    _replays(d)


# ------------------------------------------------------------------------------ trading's resting stops


def test_a_resting_perpetual_stop_is_held_by_a_reduce_only_halt_and_triggers_at_the_first_trade_after_the_lift():
    from ringfence.derivatives.commands import PlacePerpOrder
    from ringfence.trading.commands import OrderTriggered

    d = perp_world()
    desk = _desk(d)
    assert not rejected(order(d, "bob", "SELL", "60000", "0.01"))
    assert not rejected(order(d, "alice", "BUY", "60000", "0.01"))  # alice long, bob short; last 60,000
    stop = d.apply(PlacePerpOrder("carol", PERP, "BUY", "STOP_MARKET", quantity=qty("0.01"), stop_price=price("61000")))
    assert not rejected(stop), stop
    assert not rejected(order(d, "alice", "SELL", "61000", "0.005"))
    assert not rejected(order(d, "alice", "SELL", "61500", "0.005"))
    assert not rejected(order(d, "bob", "SELL", "62000", "0.02"))  # what carol's stop would buy
    assert not rejected(d.apply(Halt("r", "market", PERP, "REDUCE_ONLY", "incident")))
    # bob (short) buys reduce-only through the stop price: the stop is reached but held
    ev = order(d, "bob", "BUY", "61000", "0.005", reduce_only=1)
    assert not rejected(ev) and not [e for e in ev if isinstance(e, OrderTriggered)], ev
    assert _size(d, "carol") == 0
    _lift(d, desk, "r")
    ev = order(d, "bob", "BUY", "61500", "0.002", reduce_only=1)  # the first trade after the lift
    assert [e.order_id for e in ev if isinstance(e, OrderTriggered)] == [stop[0].order_id]
    assert _size(d, "carol") == qty("0.01")
    _replays(d)
