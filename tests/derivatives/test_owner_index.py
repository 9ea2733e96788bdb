"""The position book's owner index (`PositionBook.by_owner`: owner -> {symbol: position}), which an
order's margin check walks instead of every listed perpetual: always exactly the book's positions,
whatever changes them (the book's own methods, the contract's native insert and removal at a fill,
a restore from a snapshot, a replay). Runs under both builds (compiled and RINGFENCE_PURE=1)."""

from __future__ import annotations

import pickle
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.commands import ListPerpetual
from ringfence.derivatives.contract import _book_insert
from ringfence.derivatives.dstate import DerivativesState
from ringfence.derivatives.margin import cross_upnl, mark_of_perp, unrealized
from ringfence.derivatives.state import Position, derivatives_state
from ringfence.derivatives.positions import index_matches, owner_index
from ringfence.engine.core import CommandRejected
from ringfence.trading.commands import CancelAll

from .perpworld import BRACKETS, PERP, USDT, order, perp_world, price, qty, rejected, transfer

OWNERS = ("a", "b", "c")
SYMBOLS = ("X", "Y", "Z")
keys = hs.tuples(hs.sampled_from(OWNERS), hs.sampled_from(SYMBOLS))
ops = hs.one_of(
    hs.tuples(hs.just("set"), keys, hs.integers(-5, 5).filter(bool)),
    hs.tuples(hs.just("del"), keys, hs.just(0)),
    hs.tuples(hs.just("pop"), keys, hs.just(0)),
    hs.tuples(hs.just("popitem"), keys, hs.just(0)),
    hs.tuples(hs.just("setdefault"), keys, hs.integers(1, 5)),
    hs.tuples(hs.just("update"), keys, hs.integers(1, 5)),
    hs.tuples(hs.just("native_insert"), keys, hs.integers(1, 5)),
    hs.tuples(hs.just("clear"), keys, hs.just(0)),
    hs.tuples(hs.just("pickle"), keys, hs.just(0)),
    hs.tuples(hs.just("restore"), keys, hs.just(0)),
)


@settings(max_examples=200, deadline=None)
@given(hs.lists(ops, max_size=40))
def test_the_owner_index_is_always_the_books_positions(steps: list[tuple[str, tuple[str, str], int]]) -> None:
    st = DerivativesState()
    for op, key, n in steps:
        book = st.positions
        if op == "set":
            book[key] = Position(n, 10 * abs(n))
        elif op == "del" and key in book:
            del book[key]
        elif op == "pop":
            book.pop(key, None)
        elif op == "popitem" and book:
            book.popitem()
        elif op == "setdefault":
            book.setdefault(key, Position(n, n))
        elif op == "update":
            book.update({key: Position(n, n)})
        elif op == "native_insert" and key not in book:
            _book_insert(book, key, Position(n, n), book.by_owner, key[0], key[1])  # what a fill opening a position does
        elif op == "clear":
            book.clear()
        elif op == "pickle":
            st.positions = pickle.loads(pickle.dumps(book))
        elif op == "restore":  # what `_restore` does: a plain dict of rows becomes a new book
            st.positions = {k: Position(p.size, p.cost) for k, p in book.items()}
        assert index_matches(st.positions), (op, key)
        assert st.positions.by_owner == owner_index(st.positions)


def _second_perp(d) -> None:
    ev = d.apply(ListPerpetual("ETHUSDTPERP", "BTC", "USDT", "BTCUSDT", BRACKETS, tick_size=10_000, lot_size=10_000,
                               min_qty=10_000, default_leverage=10, impact_notional=1_000 * USDT))
    assert not any(isinstance(e, CommandRejected) for e in ev), ev


def _cross_upnl_every_perp(engine, st, owner: str, asset: str) -> int:
    """`cross_upnl` as it was before the index: every listed perpetual looked up for the owner."""
    total = 0
    for sym, p in st.perps.items():
        pos = st.positions.get((owner, sym))
        if pos is not None and p.quote == asset and (owner, sym) not in st.isolated:
            total += unrealized(pos, mark_of_perp(engine, p), p.scale)
    return total


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, 2**32))
def test_trading_two_perpetuals_keeps_the_index_through_restore_and_replay(seed: int) -> None:
    from ringfence.app import engine_from_snapshot, new_engine
    from ringfence.derivatives.commands import PlacePerpOrder
    from ringfence.trading.state import market_of

    rng = random.Random(seed)
    owners = ("a1", "a2", "a3")
    d = perp_world(owners=owners, usdt=20_000)
    _second_perp(d)
    second = market_of(d.engine, "ETHUSDTPERP")
    assert second.contract is not None
    for _ in range(40):
        o = rng.choice(owners)
        sym = rng.choice([PERP, "ETHUSDTPERP"])
        if rng.random() < 0.85:
            px = rng.randint(59_000, 61_000) * USDT
            q = rng.randint(1, 200) * 10_000
            d.apply(PlacePerpOrder(o, sym, rng.choice(["BUY", "SELL"]), price=px, quantity=q,
                                        reduce_only=int(rng.random() < 0.2)))
        elif rng.random() < 0.5:
            d.apply(CancelAll(o, sym))
        else:
            transfer(d, o, rng.randint(1, 5_000) * USDT, "UMFUTURE_MAIN")
        st = derivatives_state(d.engine)
        assert index_matches(st.positions)
        for who in owners:
            assert cross_upnl(d.engine, st, who, "USDT") == _cross_upnl_every_perp(d.engine, st, who, "USDT")
    d.engine.check_invariants()  # (which checks the index too)
    restored = engine_from_snapshot(d.engine.snapshot_bytes())
    rst = derivatives_state(restored)
    assert index_matches(rst.positions) and rst.positions.by_owner.keys() == derivatives_state(d.engine).positions.by_owner.keys()
    assert restored.state_hash() == d.engine.state_hash()
    replayed = new_engine()
    for i, (cmd, ts, _) in enumerate(d.log):
        replayed.apply(cmd, i + 1, ts, b"\x00" * 32)
    assert index_matches(derivatives_state(replayed).positions)
    assert replayed.state_hash() == d.engine.state_hash()


def test_a_seat_keeps_the_leverage_setting_only_while_the_state_has_not_changed_it() -> None:
    """`Seat.leverage`: the owner's setting read once, read again after a `SetLeverage` (which counts
    its changes) or a restore (a new dict), the market's default when there is none."""
    from ringfence.derivatives.contract import Seat

    st = DerivativesState()
    seat = Seat()
    key = ("a", "X")
    assert seat.leverage(st, key, 20) == 20
    st.leverage[key] = 5
    st.leverage_version += 1
    assert seat.leverage(st, key, 20) == 5
    st.leverage = {key: 7}  # a restore's new dict
    assert seat.leverage(st, key, 20) == 7
    del st.leverage[key]
    st.leverage_version += 1
    assert seat.leverage(st, key, 20) == 20


def test_set_leverage_changes_the_next_orders_hold() -> None:
    """Through the engine: an order's hold follows a `SetLeverage` between two orders of one owner
    (what `initial_margin`, reading the state's settings directly, gives, plus the fee reserve)."""
    from ringfence.derivatives.commands import SetLeverage
    from ringfence.derivatives.margin import initial_margin
    from ringfence.trading.state import market_of

    d = perp_world(owners=("a1",), usdt=20_000)
    st = derivatives_state(d.engine)
    p = st.perps[PERP]
    m = market_of(d.engine, PERP)
    holds = []
    for lev in (10, 2, 25):
        if lev != 10:
            assert not rejected(d.apply(SetLeverage("a1", PERP, lev)))
        assert not rejected(order(d, "a1", "BUY", "50000", "0.1"))
        newest = max(m.by_owner["a1"].values(), key=lambda o: o.id)
        q = qty("0.1")
        notional = -(-price("50000") * q // p.scale)
        im = initial_margin(st, p, "a1", q, notional, p.open_interest + q)
        holds.append((d.engine.ledger.pending_hold(newest.hold_id).amount, im, notional))
    assert holds[0][0] < holds[1][0] and holds[2][0] < holds[0][0]
    for amount, im, notional in holds:
        assert im < amount <= im + notional // 100  # the IM and a fee reserve (under 1 % of the notional)
