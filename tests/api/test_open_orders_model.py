"""The open-orders read model (api/orders.OrderHistory) against the engine, after every command.

Issue #13 item 11: a MARKET buy by `quoteOrderQty` that the book could not spend exactly stayed
PARTIALLY_FILLED in `openOrders` for ever (the engine had ended it silently), and could not be
cancelled. A market order never rests: it ends FILLED or EXPIRED in the command that placed (or
triggered) it. Property: after any command, the read model's open orders are exactly the engine's
resting and pending-stop orders, with the same remaining quantity, and every other order the
read model knows is in a final status. Seeded; reproduce with the seed printed by hypothesis.
"""

from __future__ import annotations

import gc
import os
import sys
from enum import Enum

import msgspec
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trading"))

from scenario import Driver, btcusdt, price, qty  # noqa: E402

from ringfence.api.orders import FINAL_STATUSES, OrderHistory  # noqa: E402
from ringfence.trading.commands import (  # noqa: E402
    AmendOrder,
    CancelAll,
    CancelOrder,
    OrderCanceled,
    OrderFilled,
    PlaceOrder,
    SetReferencePrice,
    Trade,
)
from ringfence.errors import InvariantViolation  # noqa: E402
from ringfence.trading.state import market_of  # noqa: E402
from ringfence.trading.vocabulary import INITIAL_STATUSES, ORDER_STATE_TABLE, TERMINAL_STATUSES, OrderStatus  # noqa: E402

OWNERS = ("ann", "bob", "cat")
BASE_PRICE = price("61000")
TICK = 10_000  # 0.01 USDT
LOT = 10_000  # 0.0001 BTC


def new_world() -> tuple[Driver, OrderHistory]:
    d = btcusdt()
    history = OrderHistory()
    for e in d.log:
        history.feed(e[1], e[2])
    for owner in OWNERS + ("mm",):
        d.fund(owner, "BTC", qty("100"))
        d.fund(owner, "USDT", 10**7 * 10**6)
    # a market maker's ladder, so market orders (by quote above all) meet liquidity at once
    for k in range(1, 11):
        for side, p in (("SELL", BASE_PRICE + k * 37 * TICK), ("BUY", BASE_PRICE - k * 37 * TICK)):
            history.feed(d.ts_ns, d.apply(PlaceOrder("mm", "BTCUSDT", side, "LIMIT", "GTC", price=p, quantity=qty("0.0137") * k)))
    return d, history


def check_model(d: Driver, history: OrderHistory) -> None:
    engine_open = {(o.owner, oid): o for oid, o in market_of(d.engine, "BTCUSDT").orders.items()}
    model_open = {(owner, oid) for owner, ids in history.open.items() for oid in ids}
    assert model_open == set(engine_open), f"read model {sorted(model_open)} != engine {sorted(engine_open)}"
    for (_owner, oid), o in engine_open.items():
        record = history.orders[oid]
        assert record.status in ("NEW", "PARTIALLY_FILLED"), (oid, record.status)
        assert record.order_type not in ("MARKET",), f"a market order {oid} is resting"
        assert record.executed == o.filled and record.quantity - record.executed == o.leaves, (oid, record.executed, o.filled, o.leaves)
    for oid, record in history.orders.items():
        if (record.owner, oid) not in engine_open:
            assert record.status in FINAL_STATUSES, (oid, record.order_type, record.status)
        # an OrderRecord is a gc=False struct: safe only while no field refers to a container (a
        # cycle through one would never be collected); every field is an int, a str or a member
        odd = [(f, type(v)) for f, v in zip(record.__struct_fields__, msgspec.structs.astuple(record))
               if type(v) not in (int, str, bool) and not isinstance(v, Enum)]
        assert odd == [] and not gc.is_tracked(record), (oid, odd)


prices = st.integers(min_value=-40, max_value=40).map(lambda k: BASE_PRICE + k * 100 * TICK)
quantities = st.integers(min_value=1, max_value=300).map(lambda k: k * LOT)
owners = st.sampled_from(OWNERS)
sides = st.sampled_from(("BUY", "SELL"))


@st.composite
def commands(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(("limit", "limit", "limit", "ioc", "fok", "maker", "market", "quote", "quote", "stop", "stop_market", "cancel", "cancel_all", "amend")))
    owner, side = draw(owners), draw(sides)
    if kind in ("limit", "ioc", "fok"):
        tif = {"limit": "GTC", "ioc": "IOC", "fok": "FOK"}[kind]
        return PlaceOrder(owner, "BTCUSDT", side, "LIMIT", tif, price=draw(prices), quantity=draw(quantities))
    if kind == "maker":
        return PlaceOrder(owner, "BTCUSDT", side, "LIMIT_MAKER", "GTC", price=draw(prices), quantity=draw(quantities))
    if kind == "market":
        return PlaceOrder(owner, "BTCUSDT", side, "MARKET", "IOC", quantity=draw(quantities))
    if kind == "quote":
        # any quote amount, usually not a whole number of lots at the book's prices
        return PlaceOrder(owner, "BTCUSDT", side, "MARKET", "IOC", quote_amount=draw(st.integers(min_value=1, max_value=2_000 * 10**6)))
    if kind == "stop":
        return PlaceOrder(owner, "BTCUSDT", side, "STOP_LIMIT", "GTC", price=draw(prices), quantity=draw(quantities), stop_price=draw(prices))
    if kind == "stop_market":
        return PlaceOrder(owner, "BTCUSDT", side, "STOP_MARKET", "IOC", quantity=draw(quantities), stop_price=draw(prices))
    order_id = draw(st.integers(min_value=1, max_value=60))
    if kind == "cancel":
        return CancelOrder(owner, "BTCUSDT", order_id)
    if kind == "cancel_all":
        return CancelAll(owner, "BTCUSDT")
    return AmendOrder(owner, "BTCUSDT", order_id, price=draw(st.one_of(st.just(0), prices)), quantity=draw(st.one_of(st.just(0), quantities)))


@seed(20261203)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), min_size=1, max_size=40))
def test_open_orders_read_model_equals_engine_after_every_command(cmds: list[object]) -> None:
    d, history = new_world()
    for c in cmds:
        events = d.apply(c)
        history.feed(d.ts_ns, events)
        check_model(d, history)


def test_market_buy_by_quote_that_cannot_be_spent_exactly_is_filled_and_leaves_open_orders() -> None:
    d, history = new_world()
    for c in (
        PlaceOrder("bob", "BTCUSDT", "SELL", "LIMIT", "GTC", price=price("61000.01"), quantity=qty("1")),
        SetReferencePrice("BTCUSDT", price("61000")),
    ):
        history.feed(d.ts_ns, d.apply(c))
    usdt_before = d.balance("ann", "USDT")
    reports: list[tuple[str, str, bool]] = []  # what the user data stream is told: (kind, status, with a fill)
    history.subscribers.append(lambda owner, kind, payload: reports.append((kind, (payload if kind == "order" else payload[0]).status, kind == "trade")) if owner == "ann" else None)
    # 100 USDT buys 0.0016 BTC (97.600016 USDT); the 2.399984 left cannot buy one more lot
    events = d.apply(PlaceOrder("ann", "BTCUSDT", "BUY", "MARKET", "IOC", quote_amount=100 * 10**6))
    history.feed(d.ts_ns, events)
    # as on Binance: NEW, then the fill that completes it says FILLED; no fill-less FILLED report
    assert reports == [("order", "NEW", False), ("trade", "FILLED", True)], reports
    trades = [e for e in events if isinstance(e, Trade)]
    assert [t.quantity for t in trades] == [qty("0.0016")]
    done = [e for e in events if isinstance(e, OrderFilled)]
    assert len(done) == 1 and done[0].quote_left == 100 * 10**6 - trades[0].quote_qty and done[0].released == done[0].quote_left
    record = history.orders[done[0].order_id]
    assert record.status == "FILLED" and not history.open_orders("ann")
    assert d.balance("ann", "USDT") == (usdt_before[0] - trades[0].quote_qty, 0), "the unspent quote is still held"
    check_model(d, history)


def test_self_trade_prevention_expiry_reads_expired_in_match() -> None:
    """Binance reports an order expired by self-trade prevention as EXPIRED_IN_MATCH; the read model
    looked for a reason starting with 'STP' while the engine says SELF_TRADE_PREVENTED."""
    d, history = new_world()
    for c in (
        PlaceOrder("ann", "BTCUSDT", "SELL", "LIMIT", "GTC", price=price("61000.01"), quantity=qty("0.01")),
        PlaceOrder("ann", "BTCUSDT", "BUY", "LIMIT", "GTC", price=price("61000.01"), quantity=qty("0.01"), stp="EXPIRE_TAKER"),
    ):
        history.feed(d.ts_ns, d.apply(c))
    taker = max(history.orders)
    assert history.orders[taker].status == "EXPIRED_IN_MATCH"
    check_model(d, history)


# ------------------------------------------------------------------ order status state machine


@seed(20261204)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), min_size=1, max_size=40))
def test_every_status_sequence_is_legal_and_ends_terminal(cmds: list[object]) -> None:
    """Random order flows through the engine: every status sequence the read model reports (each
    `order`/`trade` notification, so moves inside one command count too) starts at NEW and steps
    along `ORDER_STATE_TABLE`; once every owner has cancelled everything, every order is terminal.
    Checked against the table directly, not only through `order_status_transition` (which raises)."""
    d, history = new_world()
    seen: dict[int, list[str]] = {oid: [r.status] for oid, r in history.orders.items()}  # the ladder

    def record(owner: str, kind: str, payload: object) -> None:
        r = payload if kind == "order" else payload[0]  # type: ignore[index]
        statuses = seen.setdefault(r.order_id, [])
        # A repeated open status is a report without a move (an amend), except a further partial
        # fill; a repeated terminal status would be a move (and illegal).
        moved = not statuses or statuses[-1] != r.status or r.status in TERMINAL_STATUSES
        if moved or (kind == "trade" and r.status == OrderStatus.PARTIALLY_FILLED):
            statuses.append(r.status)

    history.subscribers.append(record)
    for c in [*cmds, *(CancelAll(owner, "BTCUSDT") for owner in (*OWNERS, "mm"))]:
        history.feed(d.ts_ns, d.apply(c))
        check_model(d, history)
    assert not market_of(d.engine, "BTCUSDT").orders
    for oid, statuses in seen.items():
        assert statuses[0] in INITIAL_STATUSES, (oid, statuses)
        for a, b in zip(statuses, statuses[1:]):
            assert b in ORDER_STATE_TABLE[OrderStatus(a)], f"order {oid}: illegal {a} -> {b} in {statuses}"
        assert statuses[-1] in TERMINAL_STATUSES, (oid, statuses)
        assert history.orders[oid].status == statuses[-1]
    assert set(seen) == set(history.orders)


def test_an_illegal_event_sequence_raises_invariant_violation() -> None:
    """A second ending for one order (CANCELED after FILLED) is a broken invariant, not a status."""
    d, history = new_world()
    events = d.apply(PlaceOrder("ann", "BTCUSDT", "BUY", "LIMIT", "IOC", price=BASE_PRICE + 37 * TICK, quantity=qty("0.0137")))
    history.feed(d.ts_ns, events)
    oid = max(history.orders)
    assert history.orders[oid].status == "FILLED"
    cancel = OrderCanceled("BTCUSDT", oid, "ann", "BUY", BASE_PRICE, 0, False, "USER_CANCELED", 0)
    with pytest.raises(InvariantViolation, match="FILLED -> CANCELED"):
        history.feed(d.ts_ns, [cancel])
