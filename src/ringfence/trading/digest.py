"""Trading's part of `Engine.state_digest`, worked out from what changed: each market's encoding kept.

The value is exactly what the engine computes for a component from nothing, SHA-256 of the
canonical encoding of trading's snapshot. A JSON list encodes as its elements' encodings joined by
commas inside brackets, so that encoding is put together from the entries before the markets, each
market's own encoding (kept in `memo` from the last digest unless a command since may have touched
the market) and the entries after: a batch re-encodes the markets it touched, not every book.

Which markets a batch may have touched: the engine passes the commands of the `NARROW` types (the
order actions of `orders._DISPATCH` and `TradingBatch` of them) only when nothing else that may
change trading ran since the last digest (`StateComponent.narrow`; listings, reference prices, fee
tiers, derivatives, the index and every timer count as "anything may have changed", and every
market is encoded again). Their handlers reach no market but the one their `symbol` names. On a
perpetual the contract (derivatives code) runs inside them, so a command naming a perpetual counts
as touching every market. `Engine.check_digest_cache` compares the result with the snapshot's hash.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from ..engine.commands import encode
from .commands import AmendOrder, CancelAll, CancelOrder, PlaceOrder, TradingBatch
from .module import MODULE
from .state import TradingState, market_snapshot, snapshot_around_markets

__all__ = ["NARROW", "digest_of_changes"]

NARROW = (PlaceOrder, CancelOrder, CancelAll, AmendOrder, TradingBatch)


def _named_symbols(commands: Sequence[Any]) -> set[str]:
    symbols: set[str] = set()
    for c in commands:
        if type(c) is TradingBatch:
            symbols.update(action.symbol for action in c.actions)
        else:
            symbols.add(c.symbol)
    return symbols


def digest_of_changes(st: TradingState, commands: Sequence[Any] | None, memo: dict[Any, Any]) -> str:
    """SHA-256 (hex) of `encode(snapshot)`, re-encoding only the markets `commands` may have touched
    (every market when `commands` is None)."""
    markets = st.markets
    kept: dict[str, bytes] = memo.setdefault("markets", {})
    if commands is None:
        kept.clear()
    else:
        for symbol in _named_symbols(commands):
            m = markets.get(symbol)
            if m is not None and m.contract is not None:  # a perpetual: its contract may reach others
                kept.clear()
                break
            kept.pop(symbol, None)
    encoded = []
    for symbol in sorted(markets):
        one = kept.get(symbol)
        if one is None:
            one = kept[symbol] = encode(market_snapshot(symbol, markets[symbol]))
        encoded.append(one)
    if len(kept) > len(markets):  # (only after a listing change, which clears it: kept tidy anyway)
        for gone in set(kept) - set(markets):
            del kept[gone]
    head, tail = snapshot_around_markets(st)
    h = hashlib.sha256(b"[")
    for entry in head:
        h.update(encode(entry))
        h.update(b",")
    h.update(b"[")
    h.update(b",".join(encoded))
    h.update(b"]")
    for entry in tail:
        h.update(b",")
        h.update(encode(entry))
    h.update(b"]")
    return h.hexdigest()


MODULE.declare_digest_of_changes(digest_of_changes, NARROW)
