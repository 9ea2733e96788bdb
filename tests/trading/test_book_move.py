"""`Market.move` (an amend's non-crossing re-price, fused) leaves the book exactly as `unlink`, the
new fields and `rest` leave it, on random books and moves: the same price lists, the same levels
with the same orders in the same order, totals and counts (compiled or pure, whichever loaded);
given the new price as an int object (`price_obj`), a level it creates is keyed by that object."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ringfence.trading.book import Market, Order

TICK = 10_000


def _book(orders: list[tuple[bool, int, int]]) -> Market:
    m = Market("BTCUSDT", "BTC", "USDT", "spot", 10**8)
    for k, (is_buy, ticks, lots) in enumerate(orders, start=1):
        o = Order()
        o.id, o.owner, o.is_buy = k, f"u{k % 7}", is_buy
        o.price, o.qty, o.leaves, o.filled, o.ts_ns, o.coid = ticks * TICK, lots * 100, lots * 100, 0, k, ""
        m.rest(o)
        m.index(o)
    return m


def _shape(m: Market) -> list[object]:
    levels = []
    for side, book in ((True, m.bids), (False, m.asks)):
        for price, lv in sorted(book.items()):
            assert lv.price == price
            ids, o = [], lv.head
            while o is not None:
                assert o.level is lv
                ids.append((o.id, o.price, o.qty, o.leaves, o.ts_ns))
                o = o.next
            levels.append((side, price, lv.total, lv.count, ids, lv.tail.id if lv.tail else None))
    return [list(m.bid_prices), list(m.ask_prices), m.book_orders, levels]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 60), st.integers(1, 9)), min_size=1, max_size=80),
    st.data(),
)
def test_move_is_unlink_then_rest(orders: list[tuple[bool, int, int]], data: st.DataObject) -> None:
    fused, plain = _book(orders), _book(orders)
    for _ in range(data.draw(st.integers(1, 10))):
        oid = data.draw(st.sampled_from(sorted(fused.orders)))
        o = fused.orders[oid]
        near = data.draw(st.booleans())
        ticks = o.price // TICK + data.draw(st.integers(-3, 3)) if near else data.draw(st.integers(1, 60))
        price = max(1, ticks) * TICK
        if price == o.price:
            continue
        qty = data.draw(st.integers(1, 9)) * 100
        leaves = data.draw(st.integers(1, qty // 100)) * 100  # (part of it may have filled)
        # The caller may hand over `price` as an int object of its own (an amend's command's):
        # the level a move creates takes that very object as its key and price-list entry.
        price_obj = int(str(price)) if data.draw(st.booleans()) else None
        book, prices = (fused.bids, fused.bid_prices) if o.is_buy else (fused.asks, fused.ask_prices)
        new_level = price not in book
        fused.move(o, price, qty, leaves, 10**6 + oid, price_obj)
        if price_obj is not None and new_level:
            assert next(k for k in book if k == price) is price_obj
            assert next(x for x in prices if x == price) is price_obj
        p = plain.orders[oid]
        plain.unlink(p)
        p.price, p.qty, p.leaves, p.ts_ns = price, qty, leaves, 10**6 + oid
        plain.rest(p)
        assert _shape(fused) == _shape(plain)
