"""Mark price: what margin, unrealised PnL and liquidation will use (never the last trade alone).

Binance's model, in integers (docs/index.md, "Mark price"). For a symbol with an index:

* `p1 = index + floor(index * funding_basis_ppm / 1_000_000)` — the index carried by the funding
  basis. Spot has no funding: `funding_basis_ppm = 0`, so `p1 = index`. The perpetuals work passes
  its funding basis (funding rate × time to next funding, in millionths).
* `p2 = index + ma_basis`, where `ma_basis = floor(sum(b_k) / count)` over the basis samples
  `b_k = price_k − index_k` of the last `ma_window_ns` of sequencer time (at most one sample per
  `ma_sample_ns`, taken when a quote is applied; `price_k` is the book's mid
  `floor((best_bid + best_ask) / 2)` when both sides exist, else the last trade price; with
  neither, no sample). No sample in the window: `ma_basis = 0`.
* `p3 = last trade price`, or the index when the market has not traded.
* `mark = median(p1, p2, p3)` — the middle one of the three; no rounding at this step.

`floor` is Python's `//` (towards −∞) throughout. No index yet → no mark price.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.core import Engine
from .price import PPM
from .state import SymbolIndex

__all__ = ["MarkPrice", "mark_price", "ma_basis", "mark_of", "book_price"]


def mark_price(index_minor: int, funding_basis_ppm: int, ma_basis_minor: int, last_minor: int) -> int:
    """The mark price from its inputs (see the module docstring)."""
    assert index_minor > 0, "a mark price needs an index"
    p1 = index_minor + index_minor * funding_basis_ppm // PPM
    p2 = index_minor + ma_basis_minor
    p3 = last_minor if last_minor > 0 else index_minor
    return sorted((p1, p2, p3))[1]


def ma_basis(s: SymbolIndex, now_ns: int) -> tuple[int, int]:
    """`(floor mean of the basis samples inside the window, how many)`."""
    since = now_ns - s.ma_window_ns
    values = [b for t, b in s.samples if t >= since]
    return (sum(values) // len(values), len(values)) if values else (0, 0)


def book_price(engine: Engine, symbol: str) -> int:
    """The market's mid `floor((best bid + best ask) / 2)`, else its last trade price, else 0."""
    trading = engine.components.get("trading")
    m = trading.markets.get(symbol) if trading is not None else None
    if m is None:
        return 0
    if m.bid_prices and m.ask_prices:
        return (m.bid_prices[-1] + m.ask_prices[0]) // 2  # type: ignore[no-any-return]
    return m.last_price  # type: ignore[no-any-return]


def _last_trade(engine: Engine, symbol: str) -> int:
    trading = engine.components.get("trading")
    m = trading.markets.get(symbol) if trading is not None else None
    return m.last_price if m is not None else 0


@dataclass(frozen=True, slots=True)
class MarkPrice:
    symbol: str
    mark_minor: int
    index_minor: int
    funding_price_minor: int
    basis_price_minor: int
    last_minor: int
    ma_basis_minor: int
    ma_samples: int
    funding_basis_ppm: int

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def mark_of(engine: Engine, symbol: str, funding_basis_ppm: int = 0) -> MarkPrice | None:
    """`symbol`'s mark price now (a pure function of the engine state), or None without an index."""
    state = engine.components.get("index")
    s = state.symbols.get(symbol) if state is not None else None
    if s is None or not s.index_minor:
        return None
    basis, count = ma_basis(s, engine.now_ns)
    last = _last_trade(engine, symbol)
    index = s.index_minor
    mark = mark_price(index, funding_basis_ppm, basis, last)
    return MarkPrice(symbol, mark, index, index + index * funding_basis_ppm // PPM, index + basis, last, basis, count, funding_basis_ppm)
