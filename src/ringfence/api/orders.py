"""Order and trade history per account: a read model folded from engine events only.

Fed like the market-data read model (live node listeners, or a journal replay on start), so it is
rebuilt exactly after a restart. It answers the private Binance endpoints (`order`, `openOrders`,
`allOrders`, `myTrades`) and the user data stream. Every list is bounded per account.

A record's status changes only through `order_status_transition` (the table in
`ringfence.trading.vocabulary`): an event sequence that would move an order illegally (a second
FILLED, a fill after CANCELED) raises `InvariantViolation` instead of being reported to a client.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

import msgspec

from ..trading.staff_cmds import MarketDelisted
from ..trading.commands import (
    MarketListed,
    OrderAccepted,
    OrderAmended,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderTriggered,
    Trade,
)
from ..trading.vocabulary import (
    TERMINAL_STATUSES,
    OrderStatus,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
    order_status_transition,
)

__all__ = ["OrderRecord", "OrderHistory", "FINAL_STATUSES"]

FINAL_STATUSES = TERMINAL_STATUSES  # FILLED, CANCELED, EXPIRED, EXPIRED_IN_MATCH, REJECTED
_STOPS = frozenset((OrderType.STOP_LIMIT, OrderType.STOP_MARKET))
MAX_ORDERS_PER_ACCOUNT = 10_000
MAX_TRADES_PER_ACCOUNT = 10_000


def _members(enum: Any) -> dict[str, Any]:
    """Each member of a StrEnum by its value (a member hashes and compares as its value, so looking up
    a member finds itself): `enum(value)` as a dict lookup, the same member. `Enum.__call__` was four
    calls per accepted order on the engine's event loop (issue 18)."""
    return {m.value: m for m in enum}


_SIDES, _TYPES, _TIFS, _STPS = _members(Side), _members(OrderType), _members(TimeInForce), _members(SelfTradePrevention)


class OrderRecord(msgspec.Struct, gc=False):
    """One order as the private endpoints show it. Not tracked by the cyclic collector (`gc=False`:
    its fields are strings, ints, a bool and enum members, so it can be in no reference cycle): the
    history keeps up to MAX_ORDERS_PER_ACCOUNT of them per account for as long as the process runs,
    and as tracked objects each one was scanned by the young collection that followed its order, by
    the middle one after that, and by every full collection for as long as it was kept (issue 18,
    item 6: collections hold the GIL for their whole length). Build one with `OrderRecord.of`."""

    symbol: str
    order_id: int
    owner: str
    client_order_id: str
    side: Side
    order_type: OrderType
    tif: TimeInForce
    price: int
    quantity: int
    quote_amount: int
    stop_price: int
    stp: SelfTradePrevention
    status: OrderStatus
    executed: int
    cum_quote: int
    time_ms: int
    update_ms: int
    working: bool

    @classmethod
    def of(cls, e: OrderAccepted, ts_ms: int) -> OrderRecord:
        """The record of an accepted order, NEW, at `ts_ms`."""
        # `_SIDES.get(v) or Side(v)`: the member, as `Side(v)` gives it; a value that is none (not
        # from the engine) still raises Side's own ValueError
        side = _SIDES.get(e.side) or Side(e.side)
        order_type = _TYPES.get(e.order_type) or OrderType(e.order_type)
        return cls(e.symbol, e.order_id, e.owner, e.client_order_id, side, order_type,
                   _TIFS.get(e.tif) or TimeInForce(e.tif), e.price, e.quantity, e.quote_amount, e.stop_price,
                   _STPS.get(e.stp) or SelfTradePrevention(e.stp), OrderStatus.NEW, 0, 0, ts_ms, ts_ms,
                   order_type not in _STOPS)  # a stop works once triggered


class OrderHistory:
    def __init__(self) -> None:
        self.orders: dict[int, OrderRecord] = {}
        self.by_owner: dict[str, deque[int]] = {}
        self.open: dict[str, dict[int, None]] = {}
        self.trades: dict[str, deque[dict[str, Any]]] = {}
        self.markets: dict[str, tuple[str, str]] = {}  # symbol -> (base, quote)
        self.perps: set[str] = set()  # perpetuals: both sides pay their fee in the quote (margin) asset
        #: Delisted markets, as the delisting described them: their orders and trades stay queryable.
        self.delisted: dict[str, MarketDelisted] = {}
        #: Callbacks `(owner, kind, payload)` for the user data stream.
        self.subscribers: list[Any] = []

    # ------------------------------------------------------------------ feeding

    def on_batch(self, first_seq: int, ts_ns: int, commands: list[Any], outputs: list[list[Any]]) -> None:
        for events in outputs:
            self.feed(ts_ns, events)

    def on_replay(self, engine: Any, batch: Any, outputs: list[list[Any]]) -> None:
        for events in outputs:
            self.feed(batch.ts_ns, events)

    def feed(self, ts_ns: int, events: Iterable[Any]) -> None:
        ts_ms = ts_ns // 1_000_000
        events = events if isinstance(events, list) else list(events)
        # An order by quote amount learns it is FILLED from an `OrderFilled` after its last Trade
        # (whose `taker_leaves` is the quote left). Mark that last Trade as the filling one, so the
        # user stream reports TRADE/FILLED once, as Binance does, not TRADE/PARTIALLY_FILLED and then
        # a fill-less FILLED.
        filling: dict[int, int] = {}
        if any(type(e) is OrderFilled for e in events):
            last_trade = {e.taker_order_id: e.trade_id for e in events if type(e) is Trade}
            filling = {e.order_id: last_trade.get(e.order_id, -1) for e in events if type(e) is OrderFilled}
        for e in events:
            t = type(e)
            if t is OrderAccepted:
                self._accepted(e, ts_ms)
            elif t is Trade:
                self._trade(e, ts_ms, filling.get(e.taker_order_id) == e.trade_id)
            elif t is OrderCanceled:
                self._finish(e.order_id, OrderStatus.CANCELED, ts_ms)
            elif t is OrderExpired:
                expired = OrderStatus.EXPIRED_IN_MATCH if e.reason == "SELF_TRADE_PREVENTED" else OrderStatus.EXPIRED
                self._finish(e.order_id, expired, ts_ms)
            elif t is MarketDelisted:
                self.delisted[e.symbol] = e
            elif t is OrderFilled:
                record = self.orders.get(e.order_id)
                if record is not None and record.status != OrderStatus.FILLED:  # no Trade marked it (not expected)
                    self._finish(e.order_id, OrderStatus.FILLED, ts_ms)
            elif t is OrderAmended:
                record = self.orders.get(e.order_id)
                if record is not None:
                    record.price = e.price
                    record.quantity = e.quantity
                    record.update_ms = ts_ms
                    self._notify(record.owner, "order", record)
            elif t is OrderTriggered:
                record = self.orders.get(e.order_id)
                if record is not None:
                    record.working = True
                    record.update_ms = ts_ms
            elif t is MarketListed:
                self.markets[e.symbol] = (e.base, e.quote)
            elif t.__name__ == "PerpetualListed":
                self.perps.add(e.symbol)

    def _accepted(self, e: OrderAccepted, ts_ms: int) -> None:
        record = OrderRecord.of(e, ts_ms)
        self.orders[e.order_id] = record
        history = self.by_owner.setdefault(e.owner, deque())
        history.append(e.order_id)
        if len(history) > MAX_ORDERS_PER_ACCOUNT:
            old = history.popleft()
            old_record = self.orders.get(old)
            if old_record is not None and old_record.status in FINAL_STATUSES:
                del self.orders[old]
        self.open.setdefault(e.owner, {})[e.order_id] = None
        self._notify(e.owner, "order", record)

    def _trade(self, e: Trade, ts_ms: int, fills_taker: bool = False) -> None:
        base, quote = self.markets.get(e.symbol, ("", ""))
        for order_id, leaves, owner, fee, is_maker in (
            (e.taker_order_id, 0 if fills_taker else e.taker_leaves, e.taker_owner, e.taker_fee, False),
            (e.maker_order_id, e.maker_leaves, e.maker_owner, e.maker_fee, True),
        ):
            record = self.orders.get(order_id)
            is_buyer = (e.taker_side == Side.BUY) != is_maker
            if record is not None:
                record.executed += e.quantity
                record.cum_quote += e.quote_qty
                status = OrderStatus.FILLED if leaves == 0 else OrderStatus.PARTIALLY_FILLED
                record.status = order_status_transition(record.status, status)
                record.update_ms = ts_ms
                if leaves == 0:
                    self.open.get(owner, {}).pop(order_id, None)
            fill = {
                "symbol": e.symbol,
                "id": e.trade_id,
                "orderId": order_id,
                "price": e.price,
                "qty": e.quantity,
                "quoteQty": e.quote_qty,
                "commission": fee,
                "commissionAsset": base if is_buyer and e.symbol not in self.perps else quote,
                "time": ts_ms,
                "isBuyer": is_buyer,
                "isMaker": is_maker,
            }
            trades = self.trades.setdefault(owner, deque(maxlen=MAX_TRADES_PER_ACCOUNT))
            trades.append(fill)
            if record is not None:
                self._notify(owner, "trade", (record, fill))

    def _finish(self, order_id: int, status: OrderStatus, ts_ms: int) -> None:
        record = self.orders.get(order_id)
        if record is None:
            return
        record.status = order_status_transition(record.status, status)
        record.update_ms = ts_ms
        self.open.get(record.owner, {}).pop(order_id, None)
        self._notify(record.owner, "order", record)

    def _notify(self, owner: str, kind: str, payload: Any) -> None:
        for fn in self.subscribers:
            fn(owner, kind, payload)

    # ------------------------------------------------------------------ queries

    def get(self, owner: str, symbol: str, order_id: int = 0, client_order_id: str = "") -> OrderRecord | None:
        if order_id:
            # Binance: with both ids, the order found by orderId must also carry origClientOrderId
            record = self.orders.get(order_id)
            if record is None or record.owner != owner or record.symbol != symbol:
                return None
            return record if not client_order_id or record.client_order_id == client_order_id else None
        for oid in reversed(self.by_owner.get(owner, ())):
            record = self.orders.get(oid)
            if record is not None and record.symbol == symbol and record.client_order_id == client_order_id:
                return record
        return None

    def open_orders(self, owner: str, symbol: str | None = None) -> list[OrderRecord]:
        out = [self.orders[oid] for oid in self.open.get(owner, {}) if oid in self.orders]
        return [r for r in out if symbol is None or r.symbol == symbol]

    def all_orders(self, owner: str, symbol: str) -> list[OrderRecord]:
        return [r for r in (self.orders.get(oid) for oid in self.by_owner.get(owner, ())) if r is not None and r.symbol == symbol]

    def my_trades(self, owner: str, symbol: str) -> list[dict[str, Any]]:
        return [t for t in self.trades.get(owner, ()) if t["symbol"] == symbol]
