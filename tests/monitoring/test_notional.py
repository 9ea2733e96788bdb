"""The `notional_minor` of the stream's `order_placed` events (monitoring/stream.py `_engine_rows`): price
times quantity in the quote's minor units, which needs the market's base decimals. They are read from
the engine at a symbol's first order and kept until an event that lists, changes or delists that
symbol passes the subscriber (a market's base, and an asset's decimals, change no other way): not a
`Node.read` on the event loop for nearly every batch (issue 18, session 21)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from ringfence.monitoring.stream import _engine_rows
from ringfence.trading.commands import MarketListed, OrderAccepted
from ringfence.trading.staff_cmds import MarketDelisted


class Market:
    def __init__(self, base_decimals: int) -> None:
        self.base_decimals = base_decimals


class Exchange:
    """The engine's markets as `Exchange.market` answers (KeyError for one not listed), counting the reads."""

    def __init__(self) -> None:
        self.decimals: dict[str, int] = {}
        self.marketdata: dict[str, Any] = {}
        self.reads = 0

    def market(self, symbol: str) -> Market:
        self.reads += 1
        return Market(self.decimals[symbol])


def _placed(symbol: str, price: int, quantity: int) -> OrderAccepted:
    return OrderAccepted(symbol=symbol, order_id=1, owner="a", client_order_id="c", side="BUY", order_type="LIMIT", tif="IOC",
                         price=price, quantity=quantity, quote_amount=0, stop_price=0, stp="NONE", hold=0)


def _listed(symbol: str) -> MarketListed:
    return MarketListed(symbol, "BTC", "USDT", "spot", 1, 1, 0, 0, 0, True)


_symbols = st.sampled_from(["BTCUSDT", "ETHUSDT"])
_ops = st.lists(st.one_of(
    st.tuples(st.just("list"), _symbols, st.integers(0, 18)),  # listed (again), perhaps with another base
    st.tuples(st.just("delist"), _symbols),
    st.tuples(st.just("order"), _symbols, st.integers(0, 10**9), st.integers(0, 10**12)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_the_notional_uses_the_base_decimals_of_the_market_as_listed_when_the_order_passes(ops: list[tuple[Any, ...]]) -> None:
    exchange = Exchange()
    rows = _engine_rows(exchange)
    kept: set[str] = set()  # the symbols whose decimals a read should have kept
    reads = 0
    for op in ops:
        symbol = op[1]
        if op[0] == "list":  # the engine lists it, then its event reaches the subscriber
            exchange.decimals[symbol] = op[2]
            assert list(rows(1, 0, [[_listed(symbol)]])) == []
            kept.discard(symbol)
        elif op[0] == "delist":
            exchange.decimals.pop(symbol, None)
            assert list(rows(1, 0, [[MarketDelisted(symbol, 0, 0, "test")]])) == []
            kept.discard(symbol)
        else:
            price, quantity = op[2], op[3]
            [(kind, _, _, data)] = list(rows(1, 0, [[_placed(symbol, price, quantity)]]))
            listed = symbol in exchange.decimals
            expected = price * quantity // 10 ** exchange.decimals[symbol] if listed and price and quantity else 0
            assert kind == "order_placed" and data["notional_minor"] == expected
            if price and quantity and symbol not in kept:
                reads += 1
                if listed:
                    kept.add(symbol)
    # one read per symbol until its listing changes (an unknown symbol's failed read is not kept)
    assert exchange.reads == reads


def test_a_stream_of_orders_reads_the_market_once() -> None:
    exchange = Exchange()
    exchange.decimals["BTCUSDT"] = 8
    rows = _engine_rows(exchange)
    for n in range(1, 200):
        [(_, _, _, data)] = list(rows(n, 0, [[_placed("BTCUSDT", 3_000_000, n * 10**6)]]))
        assert data["notional_minor"] == 3_000_000 * n * 10**6 // 10**8
    assert exchange.reads == 1
    exchange.decimals["BTCUSDT"] = 6  # relisted with another base: its event comes first
    list(rows(300, 0, [[_listed("BTCUSDT"), _placed("BTCUSDT", 3_000_000, 10**6)]]))
    [(_, _, _, data)] = list(rows(301, 0, [[_placed("BTCUSDT", 3_000_000, 10**6)]]))
    assert data["notional_minor"] == 3_000_000 and exchange.reads == 2
