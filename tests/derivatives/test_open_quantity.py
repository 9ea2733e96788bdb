"""Each owner's open quantity per side, kept in the contract's `Seat` (an `OrderSeat`: trading's book
adds and takes an order's `leaves` when it indexes and unindexes it, the contract takes what a
resting order fills and what a reduce-only trim cuts), which placing reads for the part of an order
that reduces its owner's position instead of walking the owner's open orders (session 24). Not
state: a restored engine's orders have no seat, and the contract counts an owner's orders when it
makes the seat. `Contract.check_seats` (run by the derivatives state's `check_invariants`) says the
counts are the book's; tests/derivatives/test_fast_path.py compares the holds with the old walk."""

from __future__ import annotations

import random

import pytest

from ringfence.derivatives.commands import PlacePerpOrder
from ringfence.errors import InvariantViolation
from ringfence.trading.commands import CancelOrder
from ringfence.trading.state import trading_state

from tests.derivatives.perpworld import PERP, Driver, order, perp_world, price, qty


def _open(d: Driver, owner: str) -> tuple[int, int]:
    """(buy, sell) leaves of the owner's indexed orders on the perpetual, from the book itself."""
    m = trading_state(d.engine).markets[PERP]
    owned = m.by_owner.get(owner, {})
    return (sum(o.leaves for o in owned.values() if o.is_buy), sum(o.leaves for o in owned.values() if not o.is_buy))


def _seat(d: Driver, owner: str):  # type: ignore[no-untyped-def]
    return trading_state(d.engine).markets[PERP].contract._seats[owner]


def test_the_seat_counts_the_owners_open_orders_through_fills_cancels_stops_and_trims() -> None:
    d = perp_world()
    order(d, "alice", "BUY", "60000", "0.5")
    order(d, "alice", "BUY", "59990", "0.3")
    order(d, "alice", "SELL", "60100", "0.2")
    seat = _seat(d, "alice")
    assert (seat.open_buy, seat.open_sell) == _open(d, "alice") == (qty("0.8"), qty("0.2"))
    order(d, "bob", "SELL", "60000", "0.2")  # alice's first buy fills in part, as a maker
    assert (seat.open_buy, seat.open_sell) == _open(d, "alice") == (qty("0.6"), qty("0.2"))
    # A stop is indexed while it waits: counted.
    d.apply(PlacePerpOrder("alice", PERP, "SELL", "STOP_LIMIT", price=price("59000"), quantity=qty("0.1"),
                           stop_price=price("59500")))
    assert (seat.open_buy, seat.open_sell) == _open(d, "alice") == (qty("0.6"), qty("0.3"))
    m = trading_state(d.engine).markets[PERP]
    for o in [o for o in m.by_owner["alice"].values()]:  # every order of hers cancelled: nothing open
        d.apply(CancelOrder("alice", PERP, o.id))
    assert (seat.open_buy, seat.open_sell) == _open(d, "alice") == (0, 0)
    # Alice is long 0.2: a reduce-only sell of 0.2 rests; her long falls to 0.1, and it is cut to 0.1.
    order(d, "alice", "SELL", "60500", "0.2", reduce_only=1)
    (ro,) = m.by_owner["alice"].values()
    order(d, "carol", "BUY", "60000", "0.1")
    order(d, "alice", "SELL", "60000", "0.1")  # fills against carol's buy
    assert ro.leaves == qty("0.1")  # trimmed
    assert (seat.open_buy, seat.open_sell) == _open(d, "alice") == (0, qty("0.1"))
    d.engine.check_invariants()


def test_a_restored_engine_counts_an_owners_orders_when_it_makes_the_seat() -> None:
    d = perp_world()
    order(d, "alice", "BUY", "60000", "0.5")
    order(d, "bob", "SELL", "60000", "0.2")  # alice long 0.2, 0.3 still resting
    order(d, "alice", "SELL", "60200", "0.1")
    restored = Driver(d.engine.restored(d.engine.snapshot_bytes()), ts_ns=d.ts_ns)
    m = trading_state(restored.engine).markets[PERP]
    assert all(o.seat is None for o in m.orders.values())
    # Alice sells 0.3: 0.2 of it would reduce her long, but her resting 0.1 sell covers 0.1 of that.
    assert order(restored, "alice", "SELL", "60300", "0.3") == order(d, "alice", "SELL", "60300", "0.3")
    seat = _seat(restored, "alice")
    assert all(o.seat is seat for o in m.by_owner["alice"].values())
    assert (seat.open_buy, seat.open_sell) == _open(restored, "alice") == (qty("0.3"), qty("0.4"))
    # Bob's seat is made at his first fill after the restore (a maker's side), counting his orders too.
    order(restored, "bob", "SELL", "60000", "0.1")
    order(d, "bob", "SELL", "60000", "0.1")
    restored.engine.check_invariants()
    assert restored.engine.state_hash() == d.engine.state_hash()


def test_a_wrong_count_is_an_invariant_violation() -> None:
    d = perp_world()
    order(d, "alice", "BUY", "60000", "0.5")
    d.engine.check_invariants()
    _seat(d, "alice").open_buy -= 1
    with pytest.raises(InvariantViolation, match="seat counts"):
        d.engine.check_invariants()


def test_seeded_streams_keep_every_seat_equal_to_the_book() -> None:
    rng = random.Random(24)
    owners = ("alice", "bob", "carol")
    d = perp_world(owners)
    m = trading_state(d.engine).markets[PERP]
    for _ in range(400):
        owner = rng.choice(owners)
        if m.by_owner.get(owner) and rng.random() < 0.15:
            d.apply(CancelOrder(owner, PERP, rng.choice(list(m.by_owner[owner]))))
        else:
            side = rng.choice(("BUY", "SELL"))
            px = str(60_000 + rng.randint(-5, 5) * 10)
            order(d, owner, side, px, str(rng.randint(1, 5) / 100), reduce_only=int(rng.random() < 0.2))  # float-ok: test sizes
        d.engine.check_invariants()
    for owner in owners:
        seat = _seat(d, owner)
        assert (seat.open_buy, seat.open_sell) == _open(d, owner)
