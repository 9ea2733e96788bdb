"""The `touch_bp` of the stream's `order_placed` events (monitoring/stream.py `_engine_rows`): how far an
order's price is from the best price of its side, in basis points. The best price is a scan of every
level of that side; it is kept per (symbol, side) while the market's read model and its `update_id`
are the same (trading/marketdata.py moves `update_id` with every level change), so an order that
leaves the book as it was (an IOC that expires) costs no scan on the event loop (issue 18)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from ringfence.monitoring.stream import _engine_rows
from ringfence.trading.commands import OrderAccepted


class Levels(dict):
    """A side's levels that count the scans (max/min iterate the dict)."""

    scans = 0

    def __iter__(self):
        Levels.scans += 1
        return super().__iter__()


class Book:
    def __init__(self) -> None:
        self.bids: dict[int, int] = Levels()
        self.asks: dict[int, int] = Levels()
        self.update_id = 0

    def level(self, is_buy: bool, price: int, qty: int) -> None:
        """As SymbolData._level + _flush: a change of a level moves update_id."""
        side = self.bids if is_buy else self.asks
        if qty:
            side[price] = qty
        else:
            side.pop(price, None)
        self.update_id += 1


class Market:
    base_decimals = 8


class FakeExchange:
    def __init__(self) -> None:
        self.marketdata: dict[str, Book] = {"BTCUSDT": Book()}

    def market(self, symbol: str) -> Market:
        return Market()


def _placed(symbol: str, side: str, price: int) -> OrderAccepted:
    return OrderAccepted(symbol=symbol, order_id=1, owner="a", client_order_id="c", side=side, order_type="LIMIT", tif="IOC",
                         price=price, quantity=10**5, quote_amount=0, stop_price=0, stp="NONE", hold=0)


def _touch(rows: Any, symbol: str, side: str, price: int) -> int:
    [(_, _, _, data)] = list(rows(1, 0, [[_placed(symbol, side, price)]]))
    return data["touch_bp"]


def _expected(book: Book | None, side: str, price: int) -> int:
    if book is None:
        return 10_000
    levels = dict(book.bids if side == "BUY" else book.asks)
    best = (max(levels) if side == "BUY" else min(levels)) if levels else 0
    if best <= 0 or price <= 0:
        return 10_000
    return min(10_000, abs(best - price) * 10_000 // best)


_prices = st.integers(min_value=1, max_value=50)
_ops = st.lists(st.one_of(
    st.tuples(st.just("level"), st.booleans(), _prices, st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("relist")),  # a new read model object for the market (its update_id starts again at 0)
    st.tuples(st.just("delist")),
    st.tuples(st.just("touch"), st.sampled_from(["BUY", "SELL"]), st.integers(min_value=0, max_value=60)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_touch_bp_is_the_distance_from_the_best_price_of_the_book_as_it_is_now(ops: list[tuple[Any, ...]]) -> None:
    exchange = FakeExchange()
    rows = _engine_rows(exchange)
    for op in ops:
        book = exchange.marketdata.get("BTCUSDT")
        if op[0] == "level" and book is not None:
            book.level(op[1], op[2], op[3])
        elif op[0] == "relist":
            exchange.marketdata["BTCUSDT"] = Book()
        elif op[0] == "delist":
            exchange.marketdata.pop("BTCUSDT", None)
        elif op[0] == "touch":
            assert _touch(rows, "BTCUSDT", op[1], op[2]) == _expected(book, op[1], op[2])


def test_orders_that_leave_the_book_as_it_was_scan_its_levels_once():
    exchange = FakeExchange()
    book = exchange.marketdata["BTCUSDT"]
    for p in range(100, 200):
        book.level(True, p, 1)
        book.level(False, p + 200, 1)
    rows = _engine_rows(exchange)
    Levels.scans = 0
    for _ in range(50):
        assert _touch(rows, "BTCUSDT", "BUY", 190) == 10_000 * 9 // 199
        assert _touch(rows, "BTCUSDT", "SELL", 310) == 10_000 * 10 // 300
    assert Levels.scans == 2  # one per side
    book.level(True, 199, 0)  # the best bid leaves: scanned again
    assert _touch(rows, "BTCUSDT", "BUY", 190) == 10_000 * 8 // 198
    assert Levels.scans == 3
