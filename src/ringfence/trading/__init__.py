"""Spot trading: instruments, order books, matching, fees with the shield fund, market data.

Public surface: the commands and events in `ringfence.trading.commands`, the engine component
(`ringfence.trading.state`; handlers in `admin`, `orders` and the matching loop in `matching`,
registered on import) and the event-fed read model
`ringfence.trading.marketdata.MarketData`. See docs/trading.md.
"""

# First: choose the compiled or the pure-Python hot path (ringfence/native.py) before any of its
# modules is imported.
from .. import native as _native

_native.activate()

from . import admin, commands, matching, orders, staff_cmds, state  # noqa: F401  (registers commands, handlers and the component)
from . import digest  # noqa: F401,E402  (after `state`: how the component's digest follows its changes)

__all__ = ["admin", "commands", "digest", "matching", "orders", "staff_cmds", "state"]
