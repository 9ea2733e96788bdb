"""Market data as a read model derived only from engine events (so replay rebuilds it exactly).

Feed it from a live node (`node.listeners.append(md.on_batch)`) or from a journal replay
(`replay_journal(dir, on_batch=md.on_replay)`): the same journal gives the same market data, byte
for byte (`MarketData.digest`). Timestamps are the sequencer's batch timestamps, never a clock.

Per market it keeps:

* **L3** (order level): every resting order, and a bounded feed of order-level events for auditors.
* **L2** (price level): totals per price, a snapshot carrying `last_update_id`, and incremental
  diffs, one per command that changed the book, with `first_update_id`/`last_update_id`
  (Binance's `U`/`u`): each changed level consumes one update id. A client rebuilds the book by
  taking a snapshot, dropping diffs with `last_update_id <= snapshot.last_update_id`, and applying
  the rest in order (the first must satisfy `first <= snapshot + 1 <= last`); a quantity of 0
  removes the level.
* **Trades** (bounded history), **klines** 1m/5m/15m/1h/4h/1d (bounded per interval) and a rolling
  **24 h ticker** computed from the 1-minute klines (so "24 h" has one-minute resolution).

All prices and quantities are integers in minor units, as in the engine.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any, Iterable

import msgspec

from .commands import (
    MarketListed,
    OrderAmended,
    OrderCanceled,
    OrderExpired,
    OrderRested,
    Trade,
)
from .vocabulary import Side

__all__ = ["MarketData", "SymbolData", "KLINE_INTERVALS_NS"]

_BUY, _SELL = Side.BUY, Side.SELL  # module constants: cheaper than `Side.BUY` per event

_MIN = 60 * 10**9
KLINE_INTERVALS_NS = {
    "1m": _MIN,
    "5m": 5 * _MIN,
    "15m": 15 * _MIN,
    "1h": 60 * _MIN,
    "4h": 240 * _MIN,
    "1d": 1440 * _MIN,
}
DAY_NS = 1440 * _MIN


class SymbolData:
    """Everything the read model knows about one market."""

    def __init__(self, symbol: str, trade_limit: int, kline_limit: int, diff_limit: int, l3_limit: int) -> None:
        self.symbol = symbol
        self.update_id = 0
        self.orders: dict[int, list[Any]] = {}  # id -> [is_buy, price, leaves, owner]
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.diffs: deque[dict[str, Any]] = deque(maxlen=diff_limit)
        self.l3: deque[list[Any]] = deque(maxlen=l3_limit)
        self.trades: deque[dict[str, Any]] = deque(maxlen=trade_limit)
        self.trade_count = 0
        self.kline_limit = kline_limit
        # interval -> {open_time_ns: [open_time_ns, open, high, low, close, volume, quote_volume, count]}
        self.klines: dict[str, dict[int, list[int]]] = {name: {} for name in KLINE_INTERVALS_NS}
        self.last_price = 0
        self.last_ts_ns = 0
        self._changed: dict[tuple[bool, int], None] = {}

    # ------------------------------------------------------------------ book upkeep

    def _level(self, is_buy: bool, price: int, delta: int) -> None:
        side = self.bids if is_buy else self.asks
        total = side.get(price, 0) + delta
        if total < 0:
            raise AssertionError(f"{self.symbol}: level {price} went negative in the read model")
        if total:
            side[price] = total
        else:
            side.pop(price, None)
        self._changed[(is_buy, price)] = None

    def _flush(self, ts_ns: int) -> None:
        if not self._changed:
            return
        first = self.update_id + 1
        bids: list[list[int]] = []
        asks: list[list[int]] = []
        for is_buy, price in self._changed:
            side = self.bids if is_buy else self.asks
            (bids if is_buy else asks).append([price, side.get(price, 0)])
        self.update_id += len(self._changed)
        self._changed = {}
        self.diffs.append({"first_update_id": first, "last_update_id": self.update_id, "ts_ns": ts_ns, "bids": bids, "asks": asks})

    # ------------------------------------------------------------------ queries

    def snapshot(self, limit: int = 100) -> dict[str, Any]:
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:limit]
        asks = sorted(self.asks.items())[:limit]
        return {
            "last_update_id": self.update_id,
            "bids": [[p, q] for p, q in bids],
            "asks": [[p, q] for p, q in asks],
        }

    def diffs_after(self, update_id: int) -> list[dict[str, Any]]:
        return [d for d in self.diffs if d["last_update_id"] > update_id]

    def kline_rows(self, interval: str, limit: int = 500) -> list[list[int]]:
        """Rows `[open_ns, open, high, low, close, volume, quote_volume, trades, taker_buy_volume,
        taker_buy_quote_volume, first_trade_id, last_trade_id]`, oldest first (integers)."""
        buckets = self.klines[interval]
        return [buckets[k] for k in sorted(buckets)[-limit:]]

    def ticker(self) -> dict[str, Any]:
        """Rolling 24 h statistics ending at the last event time (1-minute resolution)."""
        since = self.last_ts_ns - DAY_NS
        rows = [row for k, row in sorted(self.klines["1m"].items()) if k + _MIN > since]
        best_bid = max(self.bids) if self.bids else 0
        best_ask = min(self.asks) if self.asks else 0
        open_price = rows[0][1] if rows else 0
        return {
            "symbol": self.symbol,
            "last_price": self.last_price,
            "open_price": open_price,
            "high_price": max((r[2] for r in rows), default=0),
            "low_price": min((r[3] for r in rows), default=0),
            "volume": sum(r[5] for r in rows),
            "quote_volume": sum(r[6] for r in rows),
            "count": sum(r[7] for r in rows),
            "price_change": self.last_price - open_price if rows else 0,
            "bid_price": best_bid,
            "bid_qty": self.bids.get(best_bid, 0),
            "ask_price": best_ask,
            "ask_qty": self.asks.get(best_ask, 0),
            "close_time_ns": self.last_ts_ns,
        }

    def state(self) -> list[Any]:
        """Canonical plain form (for digests and tests)."""
        return [
            self.symbol,
            self.update_id,
            sorted([k, *v] for k, v in self.orders.items()),
            sorted(self.bids.items()),
            sorted(self.asks.items()),
            list(self.diffs),
            list(self.l3),
            list(self.trades),
            self.trade_count,
            [[name, sorted(b.values())] for name, b in sorted(self.klines.items())],
            self.last_price,
            self.last_ts_ns,
        ]


class MarketData:
    """The read model over all markets. Feed every batch of events in order, exactly once."""

    def __init__(self, *, trade_limit: int = 1000, kline_limit: int = 1000, diff_limit: int = 10_000, l3_limit: int = 10_000) -> None:
        self.symbols: dict[str, SymbolData] = {}
        self.limits = (trade_limit, kline_limit, diff_limit, l3_limit)
        self.last_seq = 0

    # ------------------------------------------------------------------ feeding

    def on_batch(self, first_seq: int, ts_ns: int, commands: list[Any], outputs: list[list[Any]]) -> None:
        """`Node.listeners` signature."""
        for i, events in enumerate(outputs):
            self.feed(first_seq + i, ts_ns, events)

    def on_replay(self, engine: Any, batch: Any, outputs: list[list[Any]]) -> None:
        """`replay_journal(on_batch=...)` signature."""
        self.on_batch(batch.first_seq, batch.ts_ns, batch.commands, outputs)

    def feed(self, seq: int, ts_ns: int, events: Iterable[Any]) -> None:
        """Apply one command's events (all share the sequencer timestamp `ts_ns`)."""
        self.last_seq = seq
        touched: dict[str, SymbolData] = {}
        for e in events:
            t = type(e)
            if t is MarketListed:
                self.symbols.setdefault(e.symbol, SymbolData(e.symbol, *self.limits))
                continue
            symbol = getattr(e, "symbol", None)
            if symbol is None:
                continue
            sd = self.symbols.get(symbol)
            if sd is None:
                continue
            touched[symbol] = sd
            if t is OrderRested:
                is_buy = e.side == _BUY
                sd.orders[e.order_id] = [is_buy, e.price, e.leaves, e.owner]
                sd._level(is_buy, e.price, e.leaves)
                sd.l3.append(["add", seq, e.order_id, e.side, e.price, e.leaves])
            elif t is Trade:
                self._trade(sd, seq, ts_ns, e)
            elif t is OrderCanceled or t is OrderExpired:
                if e.was_resting:
                    o = sd.orders.pop(e.order_id)
                    sd._level(o[0], o[1], -o[2])
                    sd.l3.append(["remove", seq, e.order_id, o[1], o[2]])
            elif t is OrderAmended:
                amended = sd.orders.get(e.order_id)
                if amended is None:
                    continue
                if e.kept_priority:
                    sd._level(amended[0], amended[1], e.leaves - amended[2])
                    amended[2] = e.leaves
                    sd.l3.append(["reduce", seq, e.order_id, amended[1], e.leaves])
                else:  # it left the book; OrderRested (if any) puts it back at the back of a level
                    del sd.orders[e.order_id]
                    sd._level(amended[0], amended[1], -amended[2])
                    sd.l3.append(["remove", seq, e.order_id, amended[1], amended[2]])
        for sd in touched.values():
            sd.last_ts_ns = ts_ns
            sd._flush(ts_ns)

    def _trade(self, sd: SymbolData, seq: int, ts_ns: int, e: Trade) -> None:
        o = sd.orders[e.maker_order_id]
        sd._level(o[0], o[1], -e.quantity)
        o[2] = e.maker_leaves
        if e.maker_leaves == 0:
            del sd.orders[e.maker_order_id]
        sd.l3.append(["fill", seq, e.maker_order_id, o[1], e.quantity])
        sd.trade_count += 1
        sd.last_price = e.price
        sd.trades.append(
            {
                "id": e.trade_id,
                "price": e.price,
                "qty": e.quantity,
                "quote_qty": e.quote_qty,
                "ts_ns": ts_ns,
                "is_buyer_maker": e.taker_side == _SELL,
            }
        )
        taker_buy = e.taker_side == _BUY
        taker_buy_qty = e.quantity if taker_buy else 0
        taker_buy_quote = e.quote_qty if taker_buy else 0
        for name, width in KLINE_INTERVALS_NS.items():
            buckets = sd.klines[name]
            start = ts_ns - ts_ns % width
            row = buckets.get(start)
            if row is None:
                buckets[start] = [start, e.price, e.price, e.price, e.price, e.quantity, e.quote_qty, 1, taker_buy_qty, taker_buy_quote, e.trade_id, e.trade_id]
                if len(buckets) > sd.kline_limit:
                    del buckets[min(buckets)]
            else:
                if e.price > row[2]:
                    row[2] = e.price
                if e.price < row[3]:
                    row[3] = e.price
                row[4] = e.price
                row[5] += e.quantity
                row[6] += e.quote_qty
                row[7] += 1
                row[8] += taker_buy_qty
                row[9] += taker_buy_quote
                row[11] = e.trade_id

    # ------------------------------------------------------------------ queries

    def __getitem__(self, symbol: str) -> SymbolData:
        return self.symbols[symbol]

    def digest(self) -> str:
        """SHA-256 over the canonical state of every market: equal digests, equal market data."""
        data = [self.last_seq, [self.symbols[s].state() for s in sorted(self.symbols)]]
        return hashlib.sha256(msgspec.json.encode(data)).hexdigest()
