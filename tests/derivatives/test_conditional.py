"""Conditional (algo) orders on a perpetual in the engine: take-profit, trailing stops, mark-price
triggers, closePosition (derivatives/conditional.py). The trigger rules are checked as properties
against an independent model in exact fractions; every scenario is replayed from its commands and
from a snapshot to the same state hash."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hs

from ringfence.app import new_engine
from ringfence.derivatives.commands import (
    CancelConditionalOrder,
    ConditionalOrderEnded,
    ConditionalOrderTriggered,
    PlaceConditionalOrder,
)
from ringfence.derivatives.conditional import CHECK_EVERY_NS, MAX_CONDITIONAL_PER_MARKET, ConditionalOrder, reached, trail
from ringfence.derivatives.state import derivatives_state
from ringfence.engine.core import CommandRejected

from tests.derivatives.perpworld import PERP, order, perp_world, price, qty, rejected, with_index


def _size(d: Any, owner: str) -> int:
    pos = derivatives_state(d.engine).positions.get((owner, PERP))
    return pos.size if pos is not None else 0


def _trade(d: Any, px: str, q: str = "0.001") -> list[Any]:
    """A trade at `px` between bob and carol (neither touches alice's orders)."""
    assert not rejected(order(d, "carol", "BUY", px, q))
    ev = order(d, "bob", "SELL", px, q)
    assert not rejected(ev), ev
    return ev


def _long(d: Any, px: str = "60000", q: str = "0.01") -> None:
    """alice long `q` at `px` (the last trade)."""
    assert not rejected(order(d, "bob", "SELL", px, q))
    assert not rejected(order(d, "alice", "BUY", px, q))
    assert _size(d, "alice") == qty(q)


def _cond(d: Any, side: str, typ: str, **kw: Any) -> list[Any]:
    return d.apply(PlaceConditionalOrder("alice", PERP, side, typ, **kw))


def _fired(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, ConditionalOrderTriggered)]


def _replays(d: Any) -> None:
    """The same commands on a fresh engine, and the state through a snapshot, hash the same."""
    e2 = new_engine()
    for i, (cmd, ts, _) in enumerate(d.log):
        e2.apply(cmd, i + 1, ts, b"\x00" * 32)
    assert e2.state_hash() == d.engine.state_hash()
    assert d.engine.restored(d.engine.snapshot_bytes()).state_hash() == d.engine.state_hash()


# ------------------------------------------------------------------------------ the rules


@given(hs.booleans(), hs.integers(1, 10**12), hs.integers(0, 10**12))
def test_a_take_profit_fires_the_other_way_from_a_stop(is_buy, trigger, px):
    stop, tp = reached(False, is_buy, trigger, px), reached(True, is_buy, trigger, px)
    if px == 0:
        assert not stop and not tp  # no price yet reaches nothing
    elif px == trigger:
        assert stop and tp  # both fire at the trigger itself
    else:
        assert stop != tp
        # a SELL take-profit fires above (the long's profit), a SELL stop below (its loss)
        assert tp == ((px > trigger) if not is_buy else (px < trigger))


def _model_fire(is_buy: bool, activation: int, bp: int, start: int, prices: list[int]) -> int | None:
    """Index of `prices` at which a trailing stop placed when the price was `start` fires, in exact
    fractions (no code shared with the engine)."""
    active = False
    extreme = Fraction(0)
    rate = Fraction(bp, 10_000)
    for i, p in enumerate([start, *prices], -1):
        if not active:
            if not activation or ((p >= activation) if not is_buy else (p <= activation)):
                active, extreme = True, Fraction(p)
            continue
        if is_buy:
            extreme = min(extreme, Fraction(p))
            if p >= extreme * (1 + rate):
                return i
        else:
            extreme = max(extreme, Fraction(p))
            if p <= extreme * (1 - rate):
                return i
    return None


@settings(max_examples=300)
@given(hs.booleans(), hs.integers(10, 1_000), hs.integers(50_000, 70_000), hs.one_of(hs.just(0), hs.integers(50_000, 70_000)),
       hs.lists(hs.integers(45_000, 75_000), max_size=40))
def test_a_trailing_stop_fires_exactly_when_the_price_comes_back_callback_rate_from_its_extreme(is_buy, bp, start, activation, prices):
    o = ConditionalOrder(1, "alice", PERP, is_buy, "TRAILING_STOP_MARKET", 1, 0, 0, "GTC", False, True, False, bp, activation)
    trail(o, start)  # placed at `start`: with no activation price it is active from there
    fired = None
    for i, p in enumerate(prices):
        was_active = o.activated
        if trail(o, p):
            fired = i
            assert was_active, "a trailing stop fired before it was activated"
            break
    assert fired == _model_fire(is_buy, activation, bp, start, prices), (is_buy, bp, start, activation, prices)


@given(hs.booleans(), hs.integers(10, 1_000), hs.integers(1, 10**9))
def test_the_callback_boundary_itself_fires_and_one_minor_unit_short_of_it_does_not(is_buy, bp, k):
    extreme = k * 10_000  # so the boundary extreme × (1 ∓ rate) is a whole number of minor units
    boundary = k * (10_000 + bp) if is_buy else k * (10_000 - bp)
    short = boundary - 1 if is_buy else boundary + 1
    for px, fires in ((short, False), (boundary, True)):
        o = ConditionalOrder(1, "alice", PERP, is_buy, "TRAILING_STOP_MARKET", 1, 0, 0, "GTC", False, True, False, bp, 0)
        trail(o, extreme)
        assert trail(o, px) is fires and o.extreme == extreme, (is_buy, bp, k, px)


@given(hs.integers(10, 1_000), hs.integers(50_000, 70_000))
def test_seeing_the_same_price_again_changes_nothing(bp, px):
    o = ConditionalOrder(1, "alice", PERP, False, "TRAILING_STOP_MARKET", 1, 0, 0, "GTC", False, True, False, bp, 0)
    trail(o, px)
    before = o.row()
    assert not trail(o, px) and o.row() == before


# ------------------------------------------------------------------------------ in the engine


def test_a_take_profit_market_holds_nothing_then_closes_the_long_when_the_last_trade_reaches_it():
    d = perp_world()
    _long(d)
    free = d.balance("alice", "USDT", "derivatives")
    ev = _cond(d, "SELL", "TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("61000"), reduce_only=1)
    assert not rejected(ev), ev
    assert d.balance("alice", "USDT", "derivatives") == free  # an untriggered conditional order holds no margin
    assert not _fired(_trade(d, "60990"))  # below the trigger: a sell take-profit waits
    assert not rejected(order(d, "carol", "BUY", "60900", "0.01"))  # the bid it will sell into
    ev = _trade(d, "61000")
    [t] = _fired(ev)
    assert t.price == price("61000") and t.order_id and not t.reason
    assert _size(d, "alice") == 0
    assert not derivatives_state(d.engine).conditional
    _replays(d)


def test_a_buy_take_profit_limit_fires_at_or_below_and_rests_at_its_price():
    d = perp_world()
    assert not rejected(order(d, "alice", "SELL", "60000", "0.01"))
    assert not rejected(order(d, "bob", "BUY", "60000", "0.01"))  # alice short 0.01
    ev = _cond(d, "BUY", "TAKE_PROFIT", quantity=qty("0.01"), trigger_price=price("59000"), price=price("58950"), reduce_only=1)
    assert not rejected(ev), ev
    assert not _fired(_trade(d, "59010"))
    ev = _trade(d, "59000")
    [t] = _fired(ev)
    m = d.engine.components["trading"].markets[PERP]
    resting = m.orders[t.order_id]
    assert resting.price == price("58950") and resting.leaves == qty("0.01") and resting.owner == "alice"
    _replays(d)


def test_an_order_that_would_trigger_at_once_is_refused_with_the_price_as_a_decimal():
    d = perp_world()
    _long(d)
    for typ, side, trig in (("TAKE_PROFIT_MARKET", "SELL", "59000"), ("STOP_MARKET", "SELL", "60500"),
                            ("TAKE_PROFIT_MARKET", "BUY", "61000"), ("STOP_MARKET", "BUY", "60000")):
        [e] = _cond(d, side, typ, quantity=qty("0.01"), trigger_price=price(trig))
        assert isinstance(e, CommandRejected) and e.code == "RF_WOULD_TRIGGER" and e.field == "trigger_price", e
        assert "60000" in e.message and f"{trig}" in e.message and "60000000000" not in e.message, e.message
    [e] = _cond(d, "SELL", "TRAILING_STOP_MARKET", quantity=qty("0.01"), callback_bp=100, activation_price=price("59990"))
    assert e.code == "RF_WOULD_TRIGGER" and e.field == "activation_price"
    assert not derivatives_state(d.engine).conditional


def test_bad_conditional_orders_are_refused_naming_the_field_and_change_nothing():
    d = perp_world()
    _long(d)
    before = d.engine.snapshot_state()[3:]
    cases = [
        (dict(side="SELL", order_type="TRAILING_STOP_MARKET", quantity=qty("0.01"), callback_bp=9), "callback_bp"),
        (dict(side="SELL", order_type="TRAILING_STOP_MARKET", quantity=qty("0.01"), callback_bp=1_001), "callback_bp"),
        (dict(side="SELL", order_type="TRAILING_STOP_MARKET", quantity=qty("0.01"), callback_bp=100, trigger_price=price("1")), "trigger_price"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("61000"), callback_bp=100), "callback_bp"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.01")), "trigger_price"),
        (dict(side="SELL", order_type="TAKE_PROFIT", quantity=qty("0.01"), trigger_price=price("61000")), "price"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("61000"), price=price("61000")), "price"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("61000.005")), "trigger_price"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.00001"), trigger_price=price("61000")), "quantity"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", close_position=1, quantity=qty("0.01"), trigger_price=price("61000")), "quantity"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", close_position=1, reduce_only=1, trigger_price=price("61000")), "reduce_only"),
        (dict(side="SELL", order_type="TAKE_PROFIT", close_position=1, trigger_price=price("61000"), price=price("61000")), "close_position"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("61000"), working_type="INDEX"), "working_type"),
        (dict(side="SELL", order_type="TAKE_PROFIT_LIMIT", quantity=qty("0.01"), trigger_price=price("61000")), "order_type"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=-1, trigger_price=price("61000")), "quantity"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("61000"),
              client_algo_id="x" * 37), "client_algo_id"),
        (dict(side="SELL", order_type="TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("61000"),
              client_algo_id="a b"), "client_algo_id"),
    ]
    for kw, field in cases:
        [e] = d.apply(PlaceConditionalOrder("alice", PERP, **kw))
        assert isinstance(e, CommandRejected) and e.field == field, (kw, e)
    [e] = d.apply(CancelConditionalOrder("bob", PERP, 1))
    assert isinstance(e, CommandRejected) and e.field == "algo_id"
    after = d.engine.snapshot_state()[3:]
    assert after[1:] == before[1:] and after[0] is not None


def test_a_trailing_stop_follows_the_high_after_activation_and_fires_on_the_callback():
    d = perp_world()
    _long(d)
    ev = _cond(d, "SELL", "TRAILING_STOP_MARKET", quantity=qty("0.01"), callback_bp=100, activation_price=price("61000"), reduce_only=1)
    assert not rejected(ev), ev
    # before activation a fall of more than 1 % does nothing
    assert not _fired(_trade(d, "60500")) and not _fired(_trade(d, "59000"))
    assert not _fired(_trade(d, "61000"))  # activated; the high is 61,000
    assert not _fired(_trade(d, "62000"))  # the high is 62,000: it fires at 61,380 (1 % off) or below
    assert not _fired(_trade(d, "61390"))
    assert not rejected(order(d, "carol", "BUY", "61000", "0.01"))
    [t] = _fired(_trade(d, "61380"))
    assert t.price == price("61380") and t.order_id
    assert _size(d, "alice") == 0
    _replays(d)


def test_a_buy_trailing_stop_with_no_activation_price_is_active_from_the_price_it_was_placed_at():
    d = perp_world()
    assert not rejected(order(d, "alice", "SELL", "60000", "0.01"))
    assert not rejected(order(d, "bob", "BUY", "60000", "0.01"))  # alice short; the last trade 60,000
    assert not rejected(_cond(d, "BUY", "TRAILING_STOP_MARKET", quantity=qty("0.01"), callback_bp=50, reduce_only=1))
    assert not _fired(_trade(d, "60290"))  # 0.5 % above 60,000 is 60,300
    assert not _fired(_trade(d, "59000"))  # a new low: it now fires at 59,295
    assert not rejected(order(d, "bob", "SELL", "59400", "0.01"))
    [t] = _fired(_trade(d, "59295"))
    assert t.order_id and _size(d, "alice") == 0
    _replays(d)


def test_a_mark_price_stop_fires_on_an_index_quote_before_the_next_command():
    d = perp_world()
    quote = with_index(d)
    quote("60000")
    _long(d)
    ev = _cond(d, "SELL", "STOP_MARKET", quantity=qty("0.01"), trigger_price=price("55000"), working_type="MARK_PRICE", reduce_only=1)
    assert not rejected(ev), ev
    assert not _fired(_trade(d, "54000"))  # the last trade is not what it watches
    assert derivatives_state(d.engine).conditional
    assert not rejected(order(d, "carol", "BUY", "53000", "0.01"))
    assert not _fired(quote("54000"))  # the index (so the mark) falls below the trigger, between two checks ...
    d.ts_ns += CHECK_EVERY_NS
    ev = quote("54000")  # ... and the first command at the next check time fires it first
    [t] = _fired(ev)
    assert t.order_id and ev.index(t) < [type(e).__name__ for e in ev].index("QuoteAccepted")  # before the quote's own events
    assert _size(d, "alice") == 0
    _replays(d)


def test_close_position_sizes_the_order_to_the_whole_position_when_it_fires():
    d = perp_world()
    _long(d, q="0.01")
    assert not rejected(_cond(d, "SELL", "TAKE_PROFIT_MARKET", close_position=1, trigger_price=price("62000")))
    assert not rejected(order(d, "bob", "SELL", "60000", "0.02"))
    assert not rejected(order(d, "alice", "BUY", "60000", "0.02"))  # the position grew after placing
    assert _size(d, "alice") == qty("0.03")
    assert not rejected(order(d, "carol", "BUY", "61900", "0.05"))
    [t] = _fired(_trade(d, "62000"))
    assert t.order_id and _size(d, "alice") == 0


def test_close_position_with_no_position_left_expires_when_it_fires():
    d = perp_world()
    _long(d)
    assert not rejected(_cond(d, "SELL", "STOP_MARKET", close_position=1, trigger_price=price("59000")))
    assert not rejected(order(d, "carol", "BUY", "60000", "0.01"))
    assert not rejected(order(d, "alice", "SELL", "60000", "0.01", reduce_only=1))  # closed by hand
    [t] = _fired(_trade(d, "59000"))
    assert t.order_id == 0 and t.reason == "NO_POSITION"


def test_cancel_ends_it_and_a_refused_trigger_says_why():
    d = perp_world()
    _long(d)
    ev = _cond(d, "SELL", "TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("62000"), reduce_only=1)
    algo_id = ev[0].algo_id
    [e] = d.apply(CancelConditionalOrder("alice", PERP, algo_id))
    assert isinstance(e, ConditionalOrderEnded) and e.status == "CANCELED"
    assert not derivatives_state(d.engine).conditional
    # reduce-only with no position left when it fires: trading refuses the order, the event says so
    assert not rejected(_cond(d, "SELL", "TAKE_PROFIT_MARKET", quantity=qty("0.01"), trigger_price=price("62000"), reduce_only=1))
    assert not rejected(order(d, "carol", "BUY", "60000", "0.01"))
    assert not rejected(order(d, "alice", "SELL", "60000", "0.01", reduce_only=1))
    ev = _trade(d, "62000")
    [t] = _fired(ev)
    assert t.order_id == 0 and t.reason == "REDUCE_ONLY_REJECTED"
    assert not any(type(e).__name__ == "OrderRejected" for e in ev)  # not mistaken for carol's or bob's refusal
    _replays(d)


@settings(max_examples=25, deadline=None)
@given(hs.integers(10, 300), hs.lists(hs.integers(58_000, 62_000), min_size=1, max_size=15))
def test_in_the_engine_a_trailing_stop_fires_at_the_first_trade_the_model_says(bp, walk):
    """Trades at the walk's prices; the engine fires where the exact model does, never earlier."""
    d = perp_world(usdt=1_000_000)
    _long(d)
    assert not rejected(_cond(d, "SELL", "TRAILING_STOP_MARKET", quantity=qty("0.01"), callback_bp=bp,
                              activation_price=price("60100"), reduce_only=1))
    expected = _model_fire(False, price("60100"), bp, price("60000"), [price(str(p)) for p in walk])
    fired_at = None
    for i, p in enumerate(walk):
        if _fired(_trade(d, str(p))):
            fired_at = i
            break
    assert fired_at == expected, (bp, walk)
    _replays(d)


@settings(max_examples=25, deadline=None)
@given(hs.lists(hs.tuples(hs.booleans(), hs.booleans(), hs.integers(580, 620)), min_size=1, max_size=12),
       hs.lists(hs.integers(580, 620), min_size=1, max_size=10))
def test_in_the_engine_stops_and_take_profits_fire_exactly_where_reached_says(orders, walk):
    """Random stops and take-profits on both sides (triggers 58,000..62,000 in steps of 100), then
    trades along a walk: each trade fires exactly the open orders `reached` says, and placing one
    is refused exactly when `reached` says the last price (60,000) has already reached it."""
    d = perp_world(usdt=1_000_000)
    _trade(d, "60000")
    open_: dict[int, tuple[bool, bool, int]] = {}
    for take_profit, is_buy, t in orders:
        trigger = price(str(t * 100))
        ev = _cond(d, "BUY" if is_buy else "SELL", "TAKE_PROFIT_MARKET" if take_profit else "STOP_MARKET",
                   quantity=qty("0.001"), trigger_price=trigger)
        if reached(take_profit, is_buy, trigger, price("60000")):
            assert ev[0].code == "RF_WOULD_TRIGGER", ev
        else:
            open_[ev[0].algo_id] = (take_profit, is_buy, trigger)
    for p in walk:
        px = price(str(p * 100))
        fired = {t.algo_id for t in _fired(_trade(d, str(p * 100)))}
        want = {i for i, (tp, buy, trig) in open_.items() if reached(tp, buy, trig, px)}
        assert fired == want, (p, open_)
        for i in fired:
            del open_[i]
    assert set(derivatives_state(d.engine).conditional) == set(open_)
    _replays(d)


@settings(max_examples=25, deadline=None)
@given(hs.lists(hs.tuples(hs.booleans(), hs.integers(10, 300), hs.integers(0, 15)), min_size=1, max_size=8),
       hs.lists(hs.integers(-30, 30), min_size=1, max_size=15))
def test_in_the_engine_many_trailing_stops_each_fire_where_the_model_says(stops, steps):
    """Several trailing stops on both sides (activation prices 100·k away, or none) and a walk in
    steps of 100: each fires at the trade the exact model says, however the engine skips looking."""
    d = perp_world(usdt=1_000_000)
    _trade(d, "60000")
    start = price("60000")
    walk = [60_000 + 100 * sum(steps[: i + 1]) for i in range(len(steps))]
    expect: dict[int, int | None] = {}
    for is_buy, bp, k in stops:
        activation = price(str(60_000 + (-100 * k if is_buy else 100 * k))) if k else 0
        ev = _cond(d, "BUY" if is_buy else "SELL", "TRAILING_STOP_MARKET", quantity=qty("0.001"), callback_bp=bp,
                   activation_price=activation)
        assert not rejected(ev), ev
        expect[ev[0].algo_id] = _model_fire(is_buy, activation, bp, start, [price(str(p)) for p in walk])
    got: dict[int, int | None] = {i: None for i in expect}
    for i, p in enumerate(walk):
        for t in _fired(_trade(d, str(p))):
            got[t.algo_id] = i
    assert got == expect, (stops, walk)
    _replays(d)


def test_at_most_a_hundred_open_per_owner_and_market_and_a_client_algo_id_once_while_open():
    d = perp_world()
    _long(d)
    ids = []
    for i in range(MAX_CONDITIONAL_PER_MARKET):
        ev = _cond(d, "SELL", "TAKE_PROFIT_MARKET", quantity=qty("0.001"), trigger_price=price(str(61_000 + i)),
                   client_algo_id=f"tp-{i}")
        assert not rejected(ev), ev
        ids.append(ev[0].algo_id)
    [e] = _cond(d, "SELL", "TAKE_PROFIT_MARKET", quantity=qty("0.001"), trigger_price=price("62000"))
    assert isinstance(e, CommandRejected) and e.field == "symbol", e
    assert not rejected(d.apply(PlaceConditionalOrder("bob", PERP, "SELL", "STOP_MARKET", qty("0.001"), price("50000"))))
    assert not rejected(d.apply(CancelConditionalOrder("alice", PERP, ids[0])))
    [e] = _cond(d, "SELL", "TAKE_PROFIT_MARKET", quantity=qty("0.001"), trigger_price=price("62000"), client_algo_id="tp-1")
    assert isinstance(e, CommandRejected) and e.field == "client_algo_id", e
    ev = _cond(d, "SELL", "TAKE_PROFIT_MARKET", quantity=qty("0.001"), trigger_price=price("62000"), client_algo_id="tp-0")
    assert not rejected(ev), ev  # freed by the cancel
    # the counts are derived state: a restored engine refuses the same way
    e2 = d.engine.restored(d.engine.snapshot_bytes())
    [e] = e2.apply(PlaceConditionalOrder("alice", PERP, "SELL", "TAKE_PROFIT_MARKET", qty("0.001"), price("62000")),
                   d.engine.last_seq + 1, d.ts_ns + 1, b"\x00" * 32)
    assert isinstance(e, CommandRejected) and e.field == "symbol", e
    _replays(d)


def test_a_quantity_over_the_markets_max_qty_is_refused_at_placement_and_changes_nothing():
    """LOT_SIZE maxQty, as for a plain order: refused when placed, not only when it would fire."""
    d = perp_world(max_qty=qty("1"))
    _long(d)
    before = d.engine.snapshot_state()[3:]
    for typ, kw in (("STOP_MARKET", dict(trigger_price=price("59000"))),
                    ("TAKE_PROFIT", dict(trigger_price=price("61000"), price=price("61000"))),
                    ("TRAILING_STOP_MARKET", dict(callback_bp=100))):
        [e] = _cond(d, "SELL", typ, quantity=qty("1.001"), **kw)
        assert isinstance(e, CommandRejected) and (e.code, e.field) == ("RF_LOT_SIZE", "quantity"), e
        assert "at most 1" in e.message, e.message
    after = d.engine.snapshot_state()[3:]
    assert after[1:] == before[1:]
    # the maximum itself is accepted
    assert not any(isinstance(e, CommandRejected)
                   for e in _cond(d, "SELL", "STOP_MARKET", quantity=qty("1"), trigger_price=price("59000")))
    _replays(d)
