"""What a perpetual fill no longer looks up (session 20): the order carries its hold's record and its
owner's `Seat` from placing (`Order.hold`, `Order.seat`), and a fill adds a position's key to the
book's `dirty` set only once per emptying of it (`MarkCount`). None of it is state: a restored
engine has neither record nor marks, looks them up, and reaches the same events and state hash
(tests/derivatives/test_fast_path.py restores mid-stream and compares)."""

from __future__ import annotations

from ringfence.derivatives.columns import columns_of
from ringfence.derivatives.state import derivatives_state
from ringfence.trading.state import trading_state

from tests.derivatives.perpworld import PERP, Driver, order, perp_world
from tests.trading.scenario import price, qty


def _resting(d: Driver, symbol: str, owner: str):  # type: ignore[no-untyped-def]
    m = trading_state(d.engine).markets[symbol]
    return [o for o in m.orders.values() if o.owner == owner]


def test_a_perpetual_order_carries_its_hold_record_and_its_seat() -> None:
    d = perp_world()
    order(d, "alice", "BUY", "60000", "0.5")
    (o,) = _resting(d, PERP, "alice")
    assert o.hold is d.engine.ledger.pending[o.hold_id]  # the ledger's own record, not a copy
    contract = trading_state(d.engine).markets[PERP].contract
    assert o.seat is contract._seats["alice"] and o.seat.owner == "alice"
    # A spot order carries neither (its fills settle through `settle_fill`, by hold id).
    d.fund("bob", "USDT", 100_000 * 10**6)
    d.place("bob", "BUY", price("50000"), qty("0.1"))
    (s,) = _resting(d, "BTCUSDT", "bob")
    assert s.hold is None and s.seat is None
    # Restored, the orders have neither: a fill looks them up, and settles as the original does.
    restored = Driver(d.engine.restored(d.engine.snapshot_bytes()), ts_ns=d.ts_ns)
    (r,) = _resting(restored, PERP, "alice")
    assert r.hold is None and r.seat is None
    assert order(restored, "bob", "SELL", "60000", "0.2") == order(d, "bob", "SELL", "60000", "0.2")
    assert restored.engine.state_hash() == d.engine.state_hash()


def test_a_fill_marks_a_position_again_after_the_mirror_emptied_dirty() -> None:
    d = perp_world()
    st = derivatives_state(d.engine)
    book = st.positions
    key = ("alice", PERP)
    order(d, "alice", "BUY", "60000", "0.5")
    order(d, "bob", "SELL", "60000", "0.1")  # alice opens a long
    pos = book[key]
    assert key in book.dirty and pos._marked_at == book.marks.n
    cols = columns_of(st)  # built: `dirty` emptied, the count bumped
    assert not book.dirty and pos._marked_at != book.marks.n
    order(d, "bob", "SELL", "60000", "0.1")  # alice's long grows: marked again
    assert key in book.dirty and pos._marked_at == book.marks.n
    cols.sync()
    assert not book.dirty
    order(d, "bob", "SELL", "60000", "0.1")  # and again after a sync
    assert key in book.dirty and book[key].size == qty("0.3")
    cols.verify()  # the mirror holds the book's positions as they are now
    d.engine.check_invariants()
