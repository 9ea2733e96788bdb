"""Trading's engine module: its declaration (commands, events, state, scopes, effects).

The handlers (in this package's matching files) declare themselves on `MODULE` with
`@MODULE.handles(...)`; importing `ringfence.trading` imports them all, so `MODULE` is complete
once the package is. Scopes and effects are what halts read (`risk/halts.py`): a command naming a
`symbol` touches that market, its segment and both its assets; what it does to risk is declared
per type, and for an amend it depends on the order it amends.
"""

from __future__ import annotations

from typing import Any

from ..engine.core import Engine
from ..engine.module import Effect, Module, Scope
from .commands import (
    AccountFeeTierSet,
    AmendOrder,
    FeeTierSet,
    MarketListed,
    MarketStatusChanged,
    OrderAccepted,
    OrderAmended,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderRested,
    OrderTriggered,
    ReferencePriceSet,
    Trade,
    TradingBatch,
)

__all__ = ["MODULE", "market_scopes", "amend_effect", "batch_actions", "refuse_set_market_status"]

MODULE = Module("trading", writes=("trading", "ledger", "derivatives", "staff"))  # a perpetual's fills: derivatives
MODULE.declare_events(
    MarketListed,
    MarketStatusChanged,
    ReferencePriceSet,
    FeeTierSet,
    AccountFeeTierSet,
    OrderAccepted,
    OrderRejected,
    OrderRested,
    OrderTriggered,
    Trade,
    OrderAmended,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
)


def market_scopes(engine: Engine, command: Any) -> list[Scope]:
    """The market a command names, and (once it is listed) its segment, base and quote assets."""
    symbol: str = command.symbol
    out: list[Scope] = [("market", symbol)]
    market = engine.components["trading"].markets.get(symbol)
    if market is not None:
        out += [("segment", market.segment), ("asset", market.base), ("asset", market.quote)]
    return out


def amend_effect(engine: Engine, command: AmendOrder) -> Effect:
    """An amend only reduces risk when it keeps the price and lowers the total quantity of an
    open order of the same owner; anything else (a new price, more quantity, an unknown order)
    counts as opening risk. Compared with the order's total `qty` — the amend's `quantity` is a
    new total, not what is left (a partly filled order amended down still reduces)."""
    market = engine.components["trading"].markets.get(command.symbol)
    order = market.orders.get(command.order_id) if market is not None else None
    if order is None or order.owner != command.owner or order.level is None:
        return Effect.OPENS_RISK
    keeps_price = command.price in (0, order.price)
    lowers_qty = 0 < command.quantity < order.qty
    return Effect.REDUCES_RISK if keeps_price and lowers_qty else Effect.OPENS_RISK


def batch_actions(command: TradingBatch) -> list[Any]:
    """Halts check each action of a `TradingBatch` as if it came alone."""
    return list(command.actions)


def refuse_set_market_status(engine: Engine, command: Any) -> None:
    """`SetMarketStatus` was a second, quorum-less halt; it is refused at the edge now.

    A market is halted or made reduce-only with `Halt(scope_kind="market", scope=symbol, level=...)`
    and reopened only by `LiftHalt` with an operator quorum (docs/engine.md, "Halts"). Journaled
    `SetMarketStatus` records from before still replay exactly as they did (the handler stays;
    prechecks never run on replay)."""
    from ..errors import Forbidden

    raise Forbidden(
        "SetMarketStatus is retired: raise Halt(scope_kind='market', scope=<symbol>, level=REDUCE_ONLY|HALTED); "
        "lifting needs LiftHalt with an operator quorum",
        field="status",
    )
