"""Spot trading: instruments, order books, matching, fees with the shield fund, market data.

Public surface: the commands and events in `ringfence.trading.commands`, the engine component
(`ringfence.trading.state`; handlers in `admin`, `orders` and the matching loop in `matching`,
registered on import) and the event-fed read model
`ringfence.trading.marketdata.MarketData`. See docs/trading.md.
"""

from . import admin, commands, matching, orders, state  # noqa: F401  (registers commands, handlers and the component)

__all__ = ["admin", "commands", "matching", "orders", "state"]
