"""Trading's vocabulary as value types: sides, order types, time in force, self-trade modes, market
and order status, and the order status state machine.

Every enum is a `StrEnum` whose values are exactly the strings the wire has always carried
(Binance's spelling), and every member's name equals its value. So a member *is* that string for
encoding (msgspec writes `"BUY"`), hashing and comparison: command and event fields stay `str`,
the journal, snapshots and the state hash do not change, and a member can be looked up in a dict
keyed by the plain string a command decoded to. The engine turns a command's strings into members
once, where it validates them (`state._SIDES`, `_TYPES`, ...), and compares members after that.

Order status moves only along `ORDER_STATE_TABLE` (nautilus_trader's `_ORDER_STATE_TABLE` is the
model): `order_status_transition` is the one way to change a status, and an illegal transition is
a broken invariant, not a client error.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import InvariantViolation

__all__ = [
    "Side",
    "OrderType",
    "TimeInForce",
    "SelfTradePrevention",
    "MarketStatus",
    "OrderStatus",
    "ORDER_STATE_TABLE",
    "INITIAL_STATUSES",
    "TERMINAL_STATUSES",
    "order_status_transition",
]


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    LIMIT = "LIMIT"
    LIMIT_MAKER = "LIMIT_MAKER"  # post-only
    MARKET = "MARKET"
    STOP_LIMIT = "STOP_LIMIT"
    STOP_MARKET = "STOP_MARKET"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class SelfTradePrevention(StrEnum):
    """The taker's self-trade prevention mode."""

    NONE = "NONE"
    EXPIRE_TAKER = "EXPIRE_TAKER"
    EXPIRE_MAKER = "EXPIRE_MAKER"
    EXPIRE_BOTH = "EXPIRE_BOTH"


class MarketStatus(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCE_ONLY = "REDUCE_ONLY"  # cancels only
    HALTED = "HALTED"  # nothing


class OrderStatus(StrEnum):
    """Binance's order statuses. A stop that has not triggered yet is NEW and not working
    (`isWorking: false`), as on Binance: there is no separate pending-trigger status."""

    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    EXPIRED_IN_MATCH = "EXPIRED_IN_MATCH"  # expired by self-trade prevention
    REJECTED = "REJECTED"


_ENDINGS = frozenset(
    (OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.EXPIRED_IN_MATCH)
)

#: Legal transitions: status -> the statuses it may move to. A status with no way out is terminal.
#: PARTIALLY_FILLED -> PARTIALLY_FILLED is a further partial fill.
ORDER_STATE_TABLE: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.NEW: _ENDINGS | {OrderStatus.PARTIALLY_FILLED},
    OrderStatus.PARTIALLY_FILLED: _ENDINGS | {OrderStatus.PARTIALLY_FILLED},
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
    OrderStatus.EXPIRED_IN_MATCH: frozenset(),
    OrderStatus.REJECTED: frozenset(),
}

#: The statuses an order is born with: NEW once accepted (`OrderAccepted`); REJECTED if refused
#: before it got an id (`OrderRejected`; no read model keeps those).
INITIAL_STATUSES = frozenset((OrderStatus.NEW, OrderStatus.REJECTED))
TERMINAL_STATUSES = frozenset(s for s, nxt in ORDER_STATE_TABLE.items() if not nxt)


def order_status_transition(current: OrderStatus | str, new: OrderStatus | str) -> OrderStatus:
    """`new` as an `OrderStatus` if `current -> new` is legal by `ORDER_STATE_TABLE`.

    Raises `InvariantViolation` otherwise (an unknown status included): the events that drive a
    status never allow an illegal move, so one means the engine or the read model is wrong.
    """
    try:
        allowed = ORDER_STATE_TABLE[current]  # type: ignore[index]
        # a member as it is (the read model passes members: `OrderStatus(member)` is an Enum call
        # per finished order and per fill on the engine's event loop, the same member)
        target = new if type(new) is OrderStatus else OrderStatus(new)
    except (KeyError, ValueError):
        raise InvariantViolation(f"order status {current!s} -> {new!s}: unknown status") from None
    if target not in allowed:
        raise InvariantViolation(f"illegal order status transition {current!s} -> {new!s}")
    return target
